"""The VoxCeleb recipe under torchrun: 2 CPU processes (gloo) with the sharded head
(hparams/train_sharded.yaml) on a tiny espeak-ng corpus; full-head checkpoints, per-process
optimizer state, resume, and the model folder loading into an unsharded head."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sb_sphereface2.models.head import SphereFace2Head

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--distributed_backend=gloo", "--device=cpu", "--num_workers=0", "--augment=False",
    "--speed_perturb=False", "--n_mels=40", "--resnet_channels=[8,8,16,16]",
    "--resnet_blocks=[1,1,1,1]", "--emb_dim=32", "--batch_size=4", "--dev_speakers=2",
    "--dev_trials=20", "--warmup_epochs=0",
]


def _train(*args, processes=2):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher if processes > 1 else [sys.executable]
    return subprocess.run(
        command + ["recipes/VoxCeleb/train.py", "hparams/train_sharded.yaml", *TINY, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def _epochs(out):
    lines = (out / "train_log.txt").read_text().splitlines()
    return [int(line.split(",")[0].split(":")[1]) for line in lines if line.startswith("epoch:")]


@pytest.mark.slow
def test_torchrun_sharded_head_trains_saves_full_head_and_resumes(tmp_path):
    from tools.synthetic_corpus import make_espeak_corpus

    # 9 speakers, 2 held out for validation: 7 classes, split 4 + 3 over the processes.
    corpus = make_espeak_corpus(tmp_path / "corpus", num_speakers=9, sessions_per_speaker=2,
                                utts_per_session=2, trial_speakers=2, seed=3)  # trial list unused
    out = tmp_path / "run"
    common = [f"--data_folder={corpus.root}", f"--output_folder={out}", "--average_last=2"]
    result = _train(*common, "--number_of_epochs=2")
    assert result.returncode == 0, result.stderr[-4000:]
    assert _epochs(out) == [1, 2]
    checkpoints = sorted((out / "save").glob("CKPT*"))
    assert len(checkpoints) == 2
    for ckpt in checkpoints:
        assert torch.load(ckpt / "classifier.ckpt")["weight"].shape == (7, 32)  # full head
        assert (ckpt / "optimizer.ckpt").is_file() and (ckpt / "optimizer.ckpt.rank1").is_file()
    # The averaged model folder's head loads into the unsharded head.
    head = SphereFace2Head(32, 7)
    head.load_state_dict(torch.load(out / "model" / "classifier.ckpt"))
    assert torch.isfinite(head.weight).all()

    # Resume with 2 processes: one more epoch.
    result = _train(*common, "--number_of_epochs=3")
    assert result.returncode == 0, result.stderr[-4000:]
    assert _epochs(out) == [1, 2, 3]

    # One process cannot take over the per-process optimizer state: a one-line error.
    result = _train(*common, "--number_of_epochs=4", processes=1)
    assert result.returncode != 0
    assert "resume with 2 processes" in result.stderr.strip().splitlines()[-1]
