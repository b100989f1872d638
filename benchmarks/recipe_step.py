"""The recipe's training step outside a run, for the benchmarks and the device check.

``recipe_brain`` builds ``SpeakerBrain`` from ``hparams/train.yaml`` (any model block) the
way ``recipes/VoxCeleb/train.py`` does, without data preparation or checkpointer, ready
for ``fit_step`` (one ``SpeakerBrain.fit_batch`` iteration: augmentation, features,
normalisation, model, head, loss, schedules, statistics, optimizer step).
``floor_step`` is what that step must cost at least: the same modules' forward, backward
and optimizer step on features computed beforehand (``precomputed_features``).
``synthetic_batch`` gives a ``PaddedBatch`` of random audio and labels, and
``synthetic_augmentation`` the recipe's augmentation over synthetic noise and impulse
responses (``bench_loader.make_augmentation``).
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import speechbrain as sb  # noqa: E402
from speechbrain.dataio.batch import PaddedBatch  # noqa: E402

from sb_sphereface2.hparams import load_recipe_hparams  # noqa: E402
from sb_sphereface2.training.brain import SpeakerBrain  # noqa: E402

RATE = 16000
CROP_SECONDS = 2.015  # the recipe's crop: 200 frames


def synthetic_augmentation(folder):
    """The recipe's ``ReverbOrNoise`` (probability 0.6) over synthetic MUSAN-like noise and
    decaying-noise impulse responses written under ``folder``."""
    from bench_loader import make_augmentation

    return make_augmentation(Path(folder))


def recipe_brain(model="resnet34", device="cpu", batch=32, num_classes=17982, augment=False, precision="fp32",
                 overrides=None, run_opts=None, work=None):
    """A ``SpeakerBrain`` of the recipe (``hparams/train.yaml`` with ``--model=model``) on
    ``device``, its optimizer made and its training stage started (one epoch of 1,000
    iterations, for the schedules), as ``recipes/VoxCeleb/train.py`` builds it.

    Arguments
    ---------
    model : str
        Model block (``resnet34``, ``ecapa_tdnn``, ...).
    device : str
        Torch device.
    batch : int
        Batch size (for the lr schedule's batch scale).
    num_classes : int
        Classes of the head (VoxCeleb2 with speed perturbation: 17,982).
    augment : bool
        The recipe's augmentation, over synthetic noise and impulse responses.
    precision : str
        SpeechBrain's ``--precision`` (fp32, fp16, bf16).
    overrides : dict, optional
        More hyperparameter overrides (model sizes, ...).
    run_opts : dict, optional
        More SpeechBrain run options (``compile``, ``distributed_launch``, ...).
    work : str, optional
        Folder for the run's files (default: a new temporary folder).

    Returns
    -------
    SpeakerBrain
    """
    work = Path(work or tempfile.mkdtemp(prefix="recipe_step_"))
    settings = {"output_folder": str(work / "run"), "data_folder": str(work), "num_workers": 0,
                "augment": bool(augment), "batch_size": int(batch), **(overrides or {})}
    hparams = load_recipe_hparams(str(ROOT / "hparams" / "train.yaml"), {"model": model, **settings},
                                  num_classes=int(num_classes))
    if augment:
        hparams["wav_augment"] = synthetic_augmentation(work / "augment")
    options = {"device": device, "precision": precision, "noprogressbar": True, **(run_opts or {})}
    brain = SpeakerBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                         run_opts=options, checkpointer=None)
    brain.on_fit_start()
    brain.iterations_per_epoch = 1000
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    return brain


def synthetic_batch(batch=32, seconds=CROP_SECONDS, num_classes=17982, seed=0):
    """A ``PaddedBatch`` of ``batch`` utterances of random audio (``id``, ``sig``,
    ``spk_id_encoded``), all ``seconds`` long, as the training loader gives them.

    Example
    -------
    >>> batch = synthetic_batch(batch=2, seconds=0.5, num_classes=5)
    >>> batch.sig.data.shape, batch.spk_id_encoded.data.shape
    (torch.Size([2, 8000]), torch.Size([2, 1]))
    """
    generator = torch.Generator().manual_seed(seed)
    samples = int(round(seconds * RATE))
    items = [{"id": f"utt{i}", "sig": 0.1 * torch.randn(samples, generator=generator),
              "spk_id_encoded": torch.randint(0, num_classes, (1,), generator=generator)} for i in range(batch)]
    return PaddedBatch(items)


def fit_step(brain, batch):
    """One training iteration as ``Brain.fit`` runs it; returns the loss (on the CPU)."""
    brain.step += 1
    return brain.fit_batch(batch)


def precomputed_features(brain, batch):
    """The step's inputs without augmentation: (normalised features, relative lengths,
    labels), on the brain's device."""
    batch = batch.to(brain.device)
    wavs, lens = batch.sig
    with torch.no_grad():
        feats = brain.modules.mean_var_norm(brain.modules.compute_features(wavs), lens)
    return feats, lens, batch.spk_id_encoded.data


def floor_step(brain, feats, lens, labels):
    """The least a training step costs: the brain's embedding model, head and loss,
    backward and optimizer step, on features computed beforehand (precision as the
    brain's)."""
    modules = brain.modules
    with brain.training_ctx:
        loss = modules.compute_cost(modules.classifier(modules.embedding_model(feats, lens)), labels)
    brain.scaler.scale(loss).backward()
    brain.scaler.step(brain.optimizer)
    brain.scaler.update()
    brain.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device, *args):
    """(seconds, result) of ``function(*args)``, the device synchronised at both ends."""
    synchronize(device)
    began = time.perf_counter()
    result = function(*args)
    synchronize(device)
    return time.perf_counter() - began, result
