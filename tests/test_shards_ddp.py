"""Shards under DDP: 2 gloo processes x 2 loader workers read every utterance exactly once
per epoch; the VoxCeleb recipe trains from shards in one process and under torchrun
(2 gloo processes), with speed-specific classes, and resumes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_epochs(rank, world_size, port, folder, labels, out):
    from sb_sphereface2.data.shards import shard_loader
    from sb_sphereface2.data.speakers import AtomicCategoricalEncoder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        encoder = AtomicCategoricalEncoder()
        encoder.update_from_iterable(labels)
        loader = shard_loader(folder, encoder, batch_size=3, num_workers=2, crop_seconds=0.25, seed=4)
        result = {}
        for epoch in (1, 2):
            loader.dataset.set_epoch(epoch)
            ids = [key for batch in loader for key in batch.id]
            gathered = [None] * world_size
            dist.all_gather_object(gathered, {"ids": ids, "batches": len(loader)})
            result[epoch] = gathered
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_with_two_workers_read_each_utterance_once_per_epoch(tmp_path):
    from sb_sphereface2.data.shard_writer import pack_shards
    from sb_sphereface2.data.speed import speed_labels
    from tests.test_shards import make_corpus

    csv_path, rows = make_corpus(tmp_path / "corpus", count=29, seed=2)
    manifest = pack_shards(csv_path, str(tmp_path / "shards"), utterances_per_shard=4)
    assert len(manifest["shards"]) == 8  # 7 x 4 + 1: uneven over 4 readers
    out = tmp_path / "ids.pt"
    mp.spawn(_read_epochs, args=(2, _free_port(), str(tmp_path / "shards"), speed_labels(manifest["speakers"]), str(out)),
             nprocs=2, join=True)
    result = torch.load(out)
    for epoch in (1, 2):
        per_rank = result[epoch]
        ids = per_rank[0]["ids"] + per_rank[1]["ids"]
        assert sorted(ids) == sorted(rows)  # every utterance, exactly once, in all
        assert per_rank[0]["batches"] == per_rank[1]["batches"]
    assert result[1][0]["ids"] != result[2][0]["ids"]


# A tiny ResNet and schedule (the recipe's defaults stay the paper's).
TINY = [
    "--device=cpu", "--augment=False", "--n_mels=40", "--resnet_channels=[8,8,16,16]",
    "--resnet_blocks=[1,1,1,1]", "--emb_dim=32", "--batch_size=4", "--dev_speakers=2", "--dev_trials=20",
    "--warmup_epochs=0", "--data_source=shards", "--utterances_per_shard=5", "--speed_perturb=True",
]


def _train(*args, processes=1):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher if processes > 1 else [sys.executable]
    extra = ["--distributed_backend=gloo"] if processes > 1 else []
    return subprocess.run(
        command + ["recipes/VoxCeleb/train.py", "hparams/train.yaml", *TINY, *extra, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def _epochs(out):
    lines = (out / "train_log.txt").read_text().splitlines()
    return [int(line.split(",")[0].split(":")[1]) for line in lines if line.startswith("epoch:")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tools.synthetic_corpus import make_espeak_corpus

    # 9 speakers, 2 held out for validation: 7 training speakers, 28 utterances.
    return make_espeak_corpus(tmp_path_factory.mktemp("espeak") / "corpus", num_speakers=9, sessions_per_speaker=2,
                              utts_per_session=2, trial_speakers=2, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_recipe_trains_from_shards_with_speed_specific_classes_and_resumes(corpus, tmp_path, processes):
    out = tmp_path / "run"
    common = [f"--data_folder={corpus.root}", f"--output_folder={out}", "--average_last=1", f"--num_workers={processes}"]
    result = _train(*common, "--number_of_epochs=2", processes=processes)
    assert result.returncode == 0, result.stderr[-4000:]
    assert _epochs(out) == [1, 2]
    manifest = (out / "data" / "shards" / "shards.json")
    assert manifest.is_file()
    classes = torch.load(out / "model" / "classifier.ckpt")["weight"].shape[0]
    assert classes == 3 * 7  # 7 training speakers x 3 speeds
    labels = (out / "model" / "label_encoder.txt").read_text()
    assert "@sp0.9" in labels and "@sp1.1" in labels
    result = _train(*common, "--number_of_epochs=3", processes=processes)
    assert result.returncode == 0, result.stderr[-4000:]
    assert _epochs(out) == [1, 2, 3]
