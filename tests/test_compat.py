"""Folders and yaml written by sb_sphereface2 0.1.0 still load after the package moved
into subpackages (old class paths, old import paths)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

OLD_PATHS = {
    "sb_sphereface2.SphereFace2Loss": "sb_sphereface2.losses.sphereface2.SphereFace2Loss",
    "sb_sphereface2.SphereFace2Head": "sb_sphereface2.models.head.SphereFace2Head",
    "sb_sphereface2.MarginScheduler": "sb_sphereface2.training.margin_scheduler.MarginScheduler",
    "sb_sphereface2.resnet.ResNet": "sb_sphereface2.models.resnet.ResNet",
    "sb_sphereface2.head.SphereFace2Head": "sb_sphereface2.models.head.SphereFace2Head",
    "sb_sphereface2.sphereface2.SphereFace2Loss": "sb_sphereface2.losses.sphereface2.SphereFace2Loss",
    "sb_sphereface2.aam.AAMLoss": "sb_sphereface2.losses.aam.AAMLoss",
    "sb_sphereface2.sharded.ShardedSphereFace2Head": "sb_sphereface2.models.sharded_head.ShardedSphereFace2Head",
    "sb_sphereface2.sharded.ShardedSphereFace2Loss": "sb_sphereface2.losses.sharded.ShardedSphereFace2Loss",
    "sb_sphereface2.lr_schedule.WarmupExponentialLR": "sb_sphereface2.training.lr_schedule.WarmupExponentialLR",
    "sb_sphereface2.margin_scheduler.MarginScheduler": "sb_sphereface2.training.margin_scheduler.MarginScheduler",
}


def test_old_class_paths_resolve_in_a_fresh_interpreter():
    """hyperpyyaml resolves ``!new:`` tags with pydoc.locate: each old path must give the
    very class at its new path, in an interpreter that imported nothing before."""
    code = (
        "import pydoc, sys\n"
        f"paths = {OLD_PATHS!r}\n"
        "for old, new in sorted(paths.items()):\n"
        "    found, expected = pydoc.locate(old), pydoc.locate(new)\n"
        "    assert found is not None and found is expected, (old, found, expected)\n"
        "    print(old, found.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = dict(line.split() for line in result.stdout.splitlines())
    assert printed == {old: new.rsplit(".", 1)[0] for old, new in OLD_PATHS.items()}


def test_old_module_is_the_new_module():
    import sb_sphereface2.losses.sphereface2 as new
    import sb_sphereface2.sphereface2 as old

    assert old is new
    assert new.__name__ == "sb_sphereface2.losses.sphereface2"
    assert new.__spec__.name == "sb_sphereface2.losses.sphereface2"


@pytest.mark.parametrize("folder", ["exported_v0_1", "model_folder_v0_1"])
def test_folder_from_0_1_loads_with_speechbrain_and_embeds_as_before(folder, tmp_path):
    """The 0.1.0 folders (``!new:sb_sphereface2.resnet.ResNet``...) load with
    SpeechBrain's SpeakerRecognition, offline, and embed the probe as 0.1.0 did."""
    from speechbrain.inference.speaker import SpeakerRecognition
    import torch

    source = tmp_path / folder
    shutil.copytree(FIXTURES / folder, source)
    assert "sb_sphereface2.resnet.ResNet" in (source / "hyperparams.yaml").read_text()
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = SpeakerRecognition.from_hparams(source=str(source), savedir=str(tmp_path / "savedir"))
    reference = np.load(FIXTURES / "v0_1_probe_embeddings.npz")
    signal = torch.from_numpy(reference["signal"])
    raw = model.encode_batch(signal, normalize=False).squeeze().numpy()
    np.testing.assert_allclose(raw, reference[f"{folder}_raw"], rtol=1e-5, atol=1e-6)
    if folder.startswith("exported"):
        norm = model.encode_batch(signal, normalize=True).squeeze().numpy()
        np.testing.assert_allclose(norm, reference[f"{folder}_norm"], rtol=1e-5, atol=1e-6)
        assert not np.allclose(norm, raw)  # the training mean is really subtracted
