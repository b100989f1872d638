"""The paper's whole training schedule replayed for a VoxCeleb2-sized epoch, without training.

Closed forms (wespeaker's ExponentialDecrease with warm_from_zero=False and MarginScheduler,
examples/voxceleb/v2/conf/resnet.yaml): with E iterations per epoch, I = 150 E,
W = 6 E and s = total batch / 64,

    lr(i) = c(i) * 0.1 * exp(i / I * ln(5e-5 / 0.1)),  c(i) = 1 + (s - 1) i / W for i < W, else s
    m(i)  = 0 for i < 19 E;  0.2 (1 - 10^(-3 (i - 19 E) / (20 E))) for 19 E <= i < 39 E;  0.2 after
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sb_sphereface2.hparams import load_recipe_hparams
from sb_sphereface2.schedule import iterations_per_epoch, schedule_rows

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "hparams" / "train.yaml")
VOXCELEB2_UTTERANCES = 1_092_009


def _lr(i, per_epoch, scale=4.0, lr0=0.1, lr1=5e-5, warmup=6, epochs=150):
    coeff = 1 + (scale - 1) * i / (warmup * per_epoch) if i < warmup * per_epoch else scale
    return coeff * lr0 * math.exp(i / (epochs * per_epoch) * math.log(lr1 / lr0))


def _margin(i, per_epoch, m1=0.2):
    start, fix = 19 * per_epoch, 39 * per_epoch
    if i < start:
        return 0.0
    if i >= fix:
        return m1
    return m1 * (1 - 10 ** (-3 * (i - start) / (fix - start)))


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    return load_recipe_hparams(TRAIN, {"data_folder": "unused", "output_folder": str(tmp_path_factory.mktemp("run"))})


def test_epoch_length_is_wespeakers_loader_size():
    """(N // world) // (batch / world): 4,265 for VoxCeleb2 at a total batch of 256, for any
    process count (1092009 / 256 = 4265.7; the incomplete last batch is dropped)."""
    for world in (1, 2, 4, 8):
        assert iterations_per_epoch(VOXCELEB2_UTTERANCES, 256, world) == 4265
        assert iterations_per_epoch(VOXCELEB2_UTTERANCES, 256, world) == VOXCELEB2_UTTERANCES // world // (256 // world)
    with pytest.raises(ValueError, match="not divisible"):
        iterations_per_epoch(1000, 256, 3)


def test_replay_of_the_whole_schedule(paper):
    """lr and margin at every iteration of 150 epochs, compared with the closed forms at the
    boundaries of interest to 1e-9, and monotone between them."""
    per_epoch = iterations_per_epoch(VOXCELEB2_UTTERANCES, paper["batch_size"])
    total = paper["number_of_epochs"] * per_epoch
    lr, margin = paper["lr_scheduler"], paper["margin_scheduler"]
    boundaries = {
        "first iteration": 0,
        "last warm-up iteration": 6 * per_epoch - 1,
        "end of warm-up (epoch 7)": 6 * per_epoch,
        "last iteration before the ramp": 19 * per_epoch - 1,
        "ramp start (epoch 20)": 19 * per_epoch,
        "mid ramp": 29 * per_epoch,
        "last ramp iteration": 39 * per_epoch - 1,
        "ramp end (epoch 40)": 39 * per_epoch,
        "last iteration": total - 1,
    }
    for name, i in boundaries.items():
        assert lr(i, per_epoch) == pytest.approx(_lr(i, per_epoch), rel=1e-9, abs=1e-12), name
        assert margin(i, per_epoch) == pytest.approx(_margin(i, per_epoch), abs=1e-9), name
    assert lr(0, per_epoch) == pytest.approx(0.1, rel=1e-12)
    assert lr(total - 1, per_epoch) == pytest.approx(4 * 5e-5, rel=1e-3)
    # The whole run, every iteration: the lr rises during the warm-up and falls after it;
    # the margin never decreases.
    rates = torch.tensor([lr(i, per_epoch) for i in range(total)], dtype=torch.float64)
    margins = torch.tensor([margin(i, per_epoch) for i in range(total)], dtype=torch.float64)
    warm = 6 * per_epoch
    assert bool((rates[1:warm] > rates[: warm - 1]).all()) and bool((rates[warm + 1:] < rates[warm:-1]).all())
    assert bool((margins[1:] >= margins[:-1]).all())
    assert int((margins == 0).sum()) == 19 * per_epoch + 1  # p = 0 at the ramp start
    assert int((margins == 0.2).sum()) == total - 39 * per_epoch


def test_one_epoch_reads_each_utterance_at_most_once_and_all_but_a_batch(tmp_path):
    """The training sampler of an epoch: distinct utterances across 4 processes, as many as
    the iterations times the total batch, fewer than one total batch left out, and a new
    order each epoch (DistributedSampler with drop_last, as Brain builds it)."""
    from torch.utils.data import DistributedSampler

    utterances, total_batch, world = 1003, 32, 4
    per_epoch = iterations_per_epoch(utterances, total_batch, world)
    orders = []
    for epoch in (1, 2):
        seen = []
        for rank in range(world):
            sampler = DistributedSampler(range(utterances), num_replicas=world, rank=rank, shuffle=True,
                                         seed=1986, drop_last=True)
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(list(range(utterances)), batch_size=total_batch // world,
                                                 sampler=sampler, drop_last=True)
            batches = [b.tolist() for b in loader]
            assert len(batches) == per_epoch
            seen += [u for b in batches for u in b]
        assert len(seen) == len(set(seen)) == per_epoch * total_batch
        assert utterances - len(seen) < total_batch
        orders.append(seen)
    assert orders[0] != orders[1]


def test_schedule_rows_and_command_line():
    """`python -m sb_sphereface2.schedule ... --utterances 1092009 --world_size 4`: lr 0.1 at
    epoch 1, 0.4 exp(6/150 ln(5e-5/0.1)) = 0.2951 at epoch 7, margin 0 before epoch 20 and
    0.2 from epoch 40."""
    result = subprocess.run(
        [sys.executable, "-m", "sb_sphereface2.schedule", TRAIN, "--utterances", str(VOXCELEB2_UTTERANCES),
         "--world_size", "4"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line.split() for line in result.stdout.splitlines() if line.strip() and not line.startswith(("#", "epoch"))]
    rows = {int(r[0]): (int(r[1]), float(r[2]), float(r[3])) for r in lines}
    assert sorted(rows) == list(range(1, 151))
    assert rows[1] == (4265, 0.1, 0.0)
    assert rows[7][1] == pytest.approx(0.4 * math.exp(6 / 150 * math.log(5e-5 / 0.1)), rel=1e-5)
    assert round(rows[7][1], 4) == 0.2951
    assert all(rows[e][2] == 0.0 for e in range(1, 21))     # epoch 20 starts the ramp at 0
    assert 0 < rows[21][2] < rows[39][2] < 0.2
    assert all(rows[e][2] == 0.2 for e in range(40, 151))


def test_command_line_takes_overrides_and_rejects_unknown_keys():
    run = [sys.executable, "-m", "sb_sphereface2.schedule", TRAIN, "--utterances", "6400"]
    result = subprocess.run(run + ["--batch_size=128", "--number_of_epochs=3", "--warmup_epochs=1"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "50 iterations per epoch" in result.stdout and len(result.stdout.splitlines()) == 5
    bad = subprocess.run(run + ["--number_of_epoch=3"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: unknown hyperparameter 'number_of_epoch'; did you mean number_of_epochs")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_finetune_schedule_is_wespeakers_lm_stage(tmp_path):
    hp = load_recipe_hparams(str(REPO / "hparams" / "finetune.yaml"),
                             {"data_folder": "x", "pretrained_model": "m", "output_folder": str(tmp_path)})
    rows = schedule_rows(hp, 128 * 100)
    assert [r[1] for r in rows] == [100] * 5
    assert rows[0][2] == 0.0                                       # warm from zero
    assert rows[1][2] == pytest.approx(2 * 1e-4 * math.exp(1 / 5 * math.log(0.25)))  # scale 128 / 64
    assert all(r[3] == 0.3 for r in rows)
