"""DDP helpers for the sharded head: world size and rank, a gather of rows without
gradient, and an optimizer state saved per process.

The gather *with* gradient is ``torch.distributed.nn.functional.all_gather``
(``gather_with_gradient``); the rest is what torch does not offer: rows of different
counts per process (a head split unevenly, checkpoints) and the checkpoint hooks of an
optimizer whose state differs between processes.
"""

import os
import warnings

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather

from sb_sphereface2.files import torch_save_atomic


def world_and_rank():
    """(world size, rank) of the default process group; (1, 0) without one.

    Example
    -------
    >>> world_and_rank()
    (1, 0)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_gradient(tensor):
    """The tensors of all processes (equal shapes), stacked along a new dim 0, in rank
    order; the backward pass sums each process's gradients of its own tensor. Without a
    process group, ``tensor[None]``.

    Example
    -------
    >>> gather_with_gradient(torch.tensor([1.0, 2.0])).tolist()
    [[1.0, 2.0]]
    """
    if world_and_rank()[0] == 1:
        return tensor.unsqueeze(0)
    with warnings.catch_warnings():
        # torch 2.14 points to a private module (_functional_collectives) instead.
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional", FutureWarning)
        return torch.stack(all_gather(tensor))


def all_gather_rows(tensor):
    """Concatenate along dim 0 the tensors of all processes (row counts may differ);
    no gradient. Without a process group, the tensor itself.

    Example
    -------
    >>> all_gather_rows(torch.arange(3)).tolist()
    [0, 1, 2]
    """
    world, _ = world_and_rank()
    if world == 1:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def check_equal_batches(batch, device):
    """Raise ValueError unless every process has ``batch`` rows; return the world size.

    Example
    -------
    >>> check_equal_batches(4, "cpu")
    1
    """
    world, _ = world_and_rank()
    if world > 1:
        sizes = all_gather_rows(torch.tensor([batch], device=device))
        if not bool((sizes == batch).all()):
            raise ValueError(
                f"the sharded head needs the same batch size on every process, got {sizes.tolist()} "
                "(use drop_last=True)"
            )
    return world


def _rank_path(path, rank):
    path = os.fspath(path)
    return path if rank == 0 else f"{path}.rank{rank}"


def save_optimizer_per_process(optimizer, path):
    """Checkpointer save hook for an optimizer that updates a sharded head: every process
    saves its own state (its shard's momentum differs from the others'); the main process
    writes ``path``, process r writes ``path.rank<r>``.

    Use as ``checkpointer.add_recoverable("optimizer", optimizer,
    custom_save_hook=save_optimizer_per_process, custom_load_hook=load_optimizer_per_process)``
    (custom hooks run on every process).

    Example
    -------
    >>> import tempfile
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "optimizer.ckpt")
    >>> save_optimizer_per_process(opt, path)
    >>> load_optimizer_per_process(opt, path, end_of_epoch=True)
    """
    world, rank = world_and_rank()
    torch_save_atomic({"world_size": world, "state": optimizer.state_dict()}, _rank_path(path, rank))


def load_optimizer_per_process(optimizer, path, end_of_epoch=False):
    """Checkpointer load hook matching ``save_optimizer_per_process`` (each process reads
    its own file). Also reads a plain optimizer checkpoint. ValueError if the checkpoint
    was saved with another number of processes (a shard's optimizer state cannot be
    re-split; resume with the same number, or start the optimizer afresh)."""
    del end_of_epoch
    world, rank = world_and_rank()
    saved = torch.load(path, map_location="cpu")
    if not (isinstance(saved, dict) and set(saved) == {"world_size", "state"}):
        optimizer.load_state_dict(saved)
        return
    if saved["world_size"] != world:
        raise ValueError(
            f"{path}: optimizer state saved with {saved['world_size']} processes, resuming "
            f"with {world}; the sharded head's optimizer state cannot be re-split: resume "
            f"with {saved['world_size']} processes"
        )
    if rank != 0:
        saved = torch.load(_rank_path(path, rank), map_location="cpu")
    optimizer.load_state_dict(saved["state"])
