"""Sharded SphereFace2 head and loss across 2 CPU processes (gloo) against an
independent single-process computation of the same global batch.

Each test spawns 2 processes with ``torch.multiprocessing.spawn``; every process
writes what it measured to a file, and the parent compares with the reference
computed here in float64 by a direct eager formula (not the library's loss).
The processes meet through a fresh rendezvous file (no TCP port to race for on a busy
machine), with timeouts, and pass a barrier before leaving the process group (no
process closes its connections while another still talks to it).
"""

import datetime
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sb_sphereface2 import SphereFace2Settings
from sb_sphereface2.losses.sharded import ShardedSphereFace2Loss
from sb_sphereface2.models.head import SphereFace2Head
from sb_sphereface2.models.sharded_head import ShardedSphereFace2Head, shard_range

WORLD = 2
DIM = 6
CLASSES = 7  # not divisible by 2
BATCH = 3  # per process
SETTINGS = dict(scale=32.0, margin=0.2, lambda_=0.7, t=3.0)  # of the reference
LOSS_ARGS = dict(settings=SphereFace2Settings(scale=32.0, lambda_=0.7, t=3.0), margin=0.2)  # the same, for the loss


TIMEOUT = datetime.timedelta(seconds=300)  # a loaded CI machine is slow, not that slow


def _spawn(target, *args):
    with tempfile.TemporaryDirectory() as folder:
        init_method = "file://" + os.path.join(folder, "rendezvous")
        mp.spawn(_entry, args=(target, init_method) + args, nprocs=WORLD, join=True)


def _entry(rank, target, init_method, *args):
    os.environ["RANK"] = str(rank)  # speechbrain's if_main_process reads it
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD, timeout=TIMEOUT)
    try:
        target(rank, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _reference_loss(emb, weight, labels, bias, scale, margin, lambda_, t):
    """Type-C SphereFace2 written out directly: mean over samples of
    lambda softplus(-z+) + (1 - lambda) sum over negatives softplus(z-)."""
    cos = F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).T
    g = 2 * ((cos + 1) / 2) ** t - 1
    onehot = F.one_hot(labels, weight.shape[0]).bool()
    pos = torch.log1p(torch.exp(-(scale * (g - margin) + bias)))[onehot]
    neg = torch.log1p(torch.exp(scale * (g + margin) + bias)).masked_fill(onehot, 0).sum(1)
    return (lambda_ * pos + (1 - lambda_) * neg).mean()


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(WORLD * BATCH, DIM, generator=gen, dtype=torch.float64)
    weight = torch.randn(CLASSES, DIM, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 6, 3, 4, 3, 1])
    return emb, weight, labels, 1.25  # exact in float32 (the bias parameter is created in float32)


IMPLEMENTATIONS = ("lean", "plain")


def _loss_and_grads_worker(rank, out_dir):
    emb, weight, labels, bias = _problem()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    for implementation in IMPLEMENTATIONS:
        head = ShardedSphereFace2Head(DIM, CLASSES).double()
        head.load_state_dict({"weight": weight})  # full matrix in, this rank's rows kept
        loss_fn = ShardedSphereFace2Loss(CLASSES, bias_init=bias, implementation=implementation,
                                         **LOSS_ARGS).double()
        x = emb[rows].clone().requires_grad_()
        loss = loss_fn(head(x.unsqueeze(1)), labels[rows].unsqueeze(1))
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        torch.save(
            {
                "loss": loss.detach(), "mean_loss": mean / WORLD, "x_grad": x.grad,
                "weight_grad": head.weight.grad, "rows": (head.start, head.stop),
                "bias_grad": loss_fn.bias.grad,
            },
            os.path.join(out_dir, f"{implementation}{rank}.pt"),
        )


@pytest.mark.slow
def test_loss_and_gradients_equal_unsharded(tmp_path):
    """Both implementations per shard (lean, the default, and plain) against the reference."""
    assert ShardedSphereFace2Loss(CLASSES).implementation == "lean"
    _spawn(_loss_and_grads_worker, str(tmp_path))
    emb, weight, labels, bias = _problem()
    emb.requires_grad_()
    weight.requires_grad_()
    bias_t = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    loss = _reference_loss(emb, weight, labels, bias_t, **SETTINGS)
    loss.backward()
    results = [torch.load(tmp_path / f"{impl}{r}.pt") for impl in IMPLEMENTATIONS for r in range(WORLD)]
    assert [r["rows"] for r in results] == [(0, 4), (4, 7)] * len(IMPLEMENTATIONS)
    # The per-process values differ (each is N x its class block's share) ...
    assert not torch.allclose(results[0]["loss"], results[1]["loss"])
    for index, result in enumerate(results):
        rank = index % WORLD
        # ... their mean is the global-batch loss,
        torch.testing.assert_close(result["mean_loss"], loss.detach(), rtol=1e-12, atol=0)
        # each weight shard gets exactly its rows of the unsharded gradient,
        start, stop = result["rows"]
        torch.testing.assert_close(result["weight_grad"], weight.grad[start:stop], rtol=1e-10, atol=1e-14)
        # the bias gets the full gradient on every process,
        torch.testing.assert_close(result["bias_grad"], bias_t.grad, rtol=1e-10, atol=1e-14)
        # and the embeddings N x theirs (DDP's averaging of the encoder gradient divides by N).
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        torch.testing.assert_close(result["x_grad"] / WORLD, emb.grad[rows], rtol=1e-10, atol=1e-14)


def _checkpoint_worker(rank, out_dir):
    torch.manual_seed(123)
    head = ShardedSphereFace2Head(DIM, CLASSES).double()
    # Make the rows rank-specific so that a wrong slice would show.
    with torch.no_grad():
        head.weight.copy_(torch.arange(head.start, head.stop, dtype=torch.float64)[:, None] + torch.zeros(DIM))
    head._save(os.path.join(out_dir, "head.ckpt"))  # Checkpointer hook: every rank calls it
    dist.barrier()
    fresh = ShardedSphereFace2Head(DIM, CLASSES).double()
    fresh._load(os.path.join(out_dir, "unsharded.ckpt"), end_of_epoch=True)
    torch.save({"rows": fresh.weight.detach(), "span": (fresh.start, fresh.stop)},
               os.path.join(out_dir, f"loaded{rank}.pt"))


@pytest.mark.slow
def test_checkpoint_full_head_across_world_sizes(tmp_path):
    # An unsharded checkpoint for the sharded processes to load.
    unsharded = SphereFace2Head(DIM, CLASSES).double()
    torch.save(unsharded.state_dict(), tmp_path / "unsharded.ckpt")
    _spawn(_checkpoint_worker, str(tmp_path))
    # Saved with 2 processes: the full matrix, rows in class order.
    state = torch.load(tmp_path / "head.ckpt")
    assert list(state) == ["weight"]
    expected = torch.arange(CLASSES, dtype=torch.float64)[:, None].expand(CLASSES, DIM)
    torch.testing.assert_close(state["weight"], expected)
    # ... loads into an unsharded head, and into a one-process sharded head.
    plain = SphereFace2Head(DIM, CLASSES).double()
    plain.load_state_dict(state)
    torch.testing.assert_close(plain.weight.detach(), expected)
    single = ShardedSphereFace2Head(DIM, CLASSES).double()
    single.load_state_dict(state)
    torch.testing.assert_close(single.weight.detach(), expected)
    # An unsharded checkpoint loaded by 2 processes: each keeps its rows.
    for rank in range(WORLD):
        loaded = torch.load(tmp_path / f"loaded{rank}.pt")
        start, stop = loaded["span"]
        assert (start, stop) == shard_range(CLASSES, rank, WORLD)
        torch.testing.assert_close(loaded["rows"], unsharded.weight.detach()[start:stop])


def test_one_process_is_the_unsharded_head_and_loss():
    from sb_sphereface2.losses.sphereface2 import SphereFace2Loss

    emb, weight, labels, bias = _problem()
    sharded, plain = ShardedSphereFace2Head(DIM, CLASSES).double(), SphereFace2Head(DIM, CLASSES).double()
    sharded.load_state_dict({"weight": weight})
    plain.load_state_dict({"weight": weight})
    assert (sharded.start, sharded.stop) == (0, CLASSES)
    loss_a = ShardedSphereFace2Loss(CLASSES, **LOSS_ARGS).double()
    loss_b = SphereFace2Loss(CLASSES, **LOSS_ARGS).double()
    assert loss_a.bias.item() == loss_b.bias.item()  # closed form with the global C
    xa, xb = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    la, lb = loss_a(sharded(xa), labels), loss_b(plain(xb), labels)
    (la + lb).backward()
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=0)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(sharded.weight.grad, plain.weight.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(loss_a.bias.grad, loss_b.bias.grad, rtol=1e-10, atol=1e-14)


def test_bad_input():
    head = ShardedSphereFace2Head(DIM, CLASSES)
    with pytest.raises(ValueError, match="full head weight"):
        head.load_state_dict({"weight": torch.zeros(CLASSES - 1, DIM)})
    loss_fn = ShardedSphereFace2Loss(CLASSES)
    with pytest.raises(ValueError, match="labels must be in"):
        loss_fn(torch.zeros(2, 1, CLASSES), torch.tensor([0, CLASSES]))
    with pytest.raises(ValueError, match="expected cosines"):
        loss_fn(torch.zeros(2, 1, CLASSES + 1), torch.tensor([0, 1]))
    assert math.isfinite(loss_fn(torch.zeros(2, 1, CLASSES), torch.tensor([0, 1])).item())


STEPS = 4


def _encoder():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, DIM)).double()


def _training_data():
    gen = torch.Generator().manual_seed(11)
    feats = torch.randn(STEPS, WORLD * BATCH, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (STEPS, WORLD * BATCH), generator=gen)
    return feats, labels


def _initial_head_weight():
    return torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(13), dtype=torch.float64)


def _train_steps(encoder, head, loss_fn, feats, labels):
    """SGD with momentum over the given batches; per-step losses."""
    params = list(encoder.parameters()) + list(head.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = loss_fn(head(encoder(feats[step])), labels[step])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().clone())
    return torch.stack(losses)


def _ddp_training_worker(rank, out_dir, sharded):
    from torch.nn.parallel import DistributedDataParallel

    from sb_sphereface2.losses.sphereface2 import SphereFace2Loss

    feats, labels = _training_data()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)  # this process's part of every global batch
    encoder = DistributedDataParallel(_encoder())
    if sharded:  # head left out of DDP, as the recipe does
        head = ShardedSphereFace2Head(DIM, CLASSES).double()
        loss_fn = DistributedDataParallel(ShardedSphereFace2Loss(CLASSES, **LOSS_ARGS).double())
    else:  # replicated head, ordinary DDP
        head = DistributedDataParallel(SphereFace2Head(DIM, CLASSES).double())
        loss_fn = DistributedDataParallel(SphereFace2Loss(CLASSES, **LOSS_ARGS).double())
    (head.module if not sharded else head).load_state_dict({"weight": _initial_head_weight()})
    losses = _train_steps(encoder, head, loss_fn, feats[:, rows], labels[:, rows])
    dist.all_reduce(losses)
    full_head = (head if sharded else head.module).state_dict()  # collective when sharded
    torch.save(
        {"losses": losses / WORLD, "encoder": encoder.module.state_dict(), "head": full_head,
         "bias": loss_fn.module.bias.detach()},
        os.path.join(out_dir, f"train{rank}.pt"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded_head", "replicated_head"])
def test_ddp_training_equals_one_process_with_the_global_batch(tmp_path, sharded):
    from sb_sphereface2.losses.sphereface2 import SphereFace2Loss

    _spawn(_ddp_training_worker, str(tmp_path), sharded)
    # One process, batches of WORLD x BATCH, the unsharded head and loss.
    feats, labels = _training_data()
    encoder, head = _encoder(), SphereFace2Head(DIM, CLASSES).double()
    head.load_state_dict({"weight": _initial_head_weight()})
    loss_fn = SphereFace2Loss(CLASSES, **LOSS_ARGS).double()
    losses = _train_steps(encoder, head, loss_fn, feats, labels)
    assert losses[-1] < losses[0]  # it learns: the comparison is not between frozen models
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"train{rank}.pt")
        torch.testing.assert_close(result["losses"], losses, rtol=1e-9, atol=0)
        for name, value in encoder.state_dict().items():
            torch.testing.assert_close(result["encoder"][name], value, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(result["head"]["weight"], head.weight.detach(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(result["bias"], loss_fn.bias.detach(), rtol=1e-9, atol=1e-12)
