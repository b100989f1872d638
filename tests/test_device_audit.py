"""CUDA-clean training steps, checked on the CPU: every tensor a step creates follows its
inputs' device (``benchmarks/device_audit.py``), the host waits are the known ones, and
the fp16 path (autocast + GradScaler) and bf16 keep the loss in float32."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from device_audit import DeviceAudit  # noqa: E402
from recipe_step import fit_step, recipe_brain, synthetic_batch  # noqa: E402

TINY = {
    "resnet34": {"resnet_channels": [8, 8, 16, 16], "resnet_blocks": [1, 1, 1, 1], "emb_dim": 32, "n_mels": 40},
    "ecapa_tdnn": {"ecapa_channels": 16, "emb_dim": 32, "n_mels": 40},
}
CLASSES = 50
# The host waits of a step in this package: the loss's one input check and the Brain's
# finite check of the cosines (SpeechBrain's fit_batch waits for the loss anyway); the
# lean loss's backward reads its incoming gradient on the CPU only (its own guard).
STEP_WAITS = {
    "sb_sphereface2/losses/base.py:check_values",
    "sb_sphereface2/training/brain.py:_check_finite",
    "sb_sphereface2/losses/lean.py:backward",
}


def _audited_step(brain, batch):
    fit_step(brain, batch)  # warm-up: the augmentation reads its CSVs at the first call
    with DeviceAudit() as audit:
        fit_step(brain, batch)
    return audit


def test_audit_sees_tensors_created_on_the_default_device():
    from sb_sphereface2.losses.margins import closed_form_bias

    with DeviceAudit() as audit:  # closed_form_bias works on the CPU (a float, once, at construction)
        closed_form_bias(10, 0.2)
        x = torch.ones(3)
        torch.zeros_like(x) + torch.arange(3, device=x.device)
    assert audit.ours("default device") == {"sb_sphereface2/losses/margins.py:closed_form_bias"}
    assert audit.ours("host wait") == {"sb_sphereface2/losses/margins.py:closed_form_bias"}


@pytest.mark.parametrize("model", ["resnet34", "ecapa_tdnn"])
def test_training_step_creates_tensors_on_the_inputs_device(model, tmp_path):
    brain = recipe_brain(model, batch=4, num_classes=CLASSES, augment=True, overrides=TINY[model], work=tmp_path)
    audit = _audited_step(brain, synthetic_batch(4, num_classes=CLASSES))
    shown = "\n".join(audit.lines())
    assert audit.ours("default device") == set(), shown
    # the augmentation's random choices are CPU tensors on purpose (only their indices move)
    assert audit.ours("cpu by name") == {"sb_sphereface2/data/augmentation.py:forward"}, shown
    assert audit.ours("host wait") == STEP_WAITS, shown
    assert brain.train_totals[3] == 8  # the statistics of both steps, kept on the device


@pytest.mark.parametrize("name", ["plain", "lean", "aam"])
def test_losses_create_tensors_on_the_inputs_device(name):
    from sb_sphereface2 import AAMLoss, SphereFace2Loss

    loss_fn = AAMLoss(CLASSES) if name == "aam" else SphereFace2Loss(CLASSES, implementation=name)
    cosines = (torch.rand(6, 1, CLASSES) * 2 - 1).requires_grad_()
    labels = torch.randint(0, CLASSES, (6, 1))
    with DeviceAudit() as audit:
        loss_fn(cosines, labels).backward()
    assert audit.ours("default device") == set(), "\n".join(audit.lines())
    assert audit.ours("cpu by name") == set()
    assert audit.ours("host wait") <= STEP_WAITS
    assert cosines.grad is not None


def test_fp16_step_with_grad_scaler_on_cpu(tmp_path):
    """SpeechBrain refuses --precision=fp16 on the CPU; its fp16 path on a GPU is float16
    autocast + a GradScaler, which the CPU has too: the same fit_batch, unscale, clip,
    step and update, a skipped step on an overflow."""
    from speechbrain.utils.autocast import TorchAutocast

    brain = recipe_brain("resnet34", batch=4, num_classes=CLASSES, overrides=TINY["resnet34"], work=tmp_path)
    brain.training_ctx = TorchAutocast(device_type="cpu", dtype=torch.float16)
    brain.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    batch = synthetic_batch(4, num_classes=CLASSES)
    cosines = []
    hook = brain.modules.classifier.register_forward_hook(lambda module, args, out: cosines.append(out.dtype))
    loss = fit_step(brain, batch)
    assert cosines == [torch.float16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert brain.optimizer_step == 1 and brain.scaler.get_scale() == 2.0**12

    weight = brain.modules.classifier.weight
    before = weight.detach().clone()
    handle = weight.register_hook(lambda grad: grad * float("inf"))  # an fp16 overflow
    fit_step(brain, batch)
    handle.remove()
    hook.remove()
    assert torch.equal(weight.detach(), before)  # the scaler skipped the step
    assert brain.scaler.get_scale() == 2.0**11
    fit_step(brain, batch)
    assert not torch.equal(weight.detach(), before)


def test_bf16_step_keeps_the_loss_in_float32(tmp_path):
    brain = recipe_brain("resnet34", batch=4, num_classes=CLASSES, precision="bf16", overrides=TINY["resnet34"],
                         work=tmp_path)
    cosines = []
    brain.modules.classifier.register_forward_hook(lambda module, args, out: cosines.append(out.dtype))
    loss = fit_step(brain, synthetic_batch(4, num_classes=CLASSES))
    assert cosines == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert not brain.scaler.is_enabled() and brain.optimizer_step == 1
