"""The cosine head with its class weights split across the DDP processes.

SphereFace2 has no softmax normaliser: each class's binary classifier sees the
embeddings and its own weight only. A head whose C classes are split across N processes
is therefore exact with no communication beyond the embeddings (and the labels): each
process holds rows [start, stop) of the weight matrix, all-gathers the embeddings of
the global batch, and returns their cosines with its classes, for
``sb_sphereface2.losses.sharded.ShardedSphereFace2Loss`` (whose module docstring gives
the gradient convention).

Checkpoints hold the FULL weight matrix: ``state_dict`` gathers the rows of every
process (a collective: call it on every process), ``load_state_dict`` takes a full
[C, D] matrix and keeps this process's rows. A checkpoint saved with N processes
therefore loads with M processes or into a ``SphereFace2Head``, and back. The
SpeechBrain ``Checkpointer`` save hook of the head runs on every process and writes
on the main one.
"""

import torch
import torch.nn.functional as F
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process

from sb_sphereface2.files import torch_save_atomic
from sb_sphereface2.models.head import flatten_embeddings
from sb_sphereface2.distributed import (
    all_gather_rows,
    check_equal_batches,
    gather_with_gradient,
    world_and_rank,
)


def shard_range(num_classes, rank, world_size):
    """Rows [start, stop) of the class weights held by process ``rank``: C split as
    evenly as possible, the first C mod N processes holding one row more.

    Arguments
    ---------
    num_classes : int
        Number of classes C.
    rank : int
        Process rank in [0, world_size).
    world_size : int
        Number of processes N (<= C).

    Returns
    -------
    tuple of int
        (start, stop).

    Example
    -------
    >>> [shard_range(7, r, 3) for r in range(3)]
    [(0, 3), (3, 5), (5, 7)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if num_classes < world_size:
        raise ValueError(f"cannot split {num_classes} classes over {world_size} processes")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedSphereFace2Head(torch.nn.Module):
    """Cosine head whose class weights are split across the DDP processes.

    Process r holds rows [start, stop) of the [C, D] weight matrix (``shard_range``).
    ``forward`` all-gathers the embeddings of every process (with gradient) and
    returns their cosines with the local classes, [N * B, 1, stop - start]; feed them to
    ``ShardedSphereFace2Loss``. Every process must call it with the same batch size.
    Do not wrap it in DDP (``is_sharded`` tells the recipe to leave it out).

    The gradient of the weight shard is divided by N: it comes from this process's loss
    only, which is N times its share of the global-batch loss (see
    ``ShardedSphereFace2Loss``), so the shard gets exactly its rows of the gradient of
    the global-batch loss.

    Arguments
    ---------
    input_size : int
        Embedding dimension D.
    out_neurons : int
        Number of classes C (all processes together).

    Returns
    -------
    torch.Tensor
        From ``forward``: cosines [N * B, 1, C_local] of the global batch (process order).

    Example
    -------
    >>> head = ShardedSphereFace2Head(input_size=16, out_neurons=10)  # one process: whole head
    >>> head(torch.randn(4, 1, 16)).shape
    torch.Size([4, 1, 10])
    >>> sorted(head.state_dict()), tuple(head.state_dict()["weight"].shape)
    (['weight'], (10, 16))
    """

    is_sharded = True

    def __init__(self, input_size, out_neurons):
        super().__init__()
        if int(input_size) < 1 or int(out_neurons) < 2:
            raise ValueError(
                f"need input_size >= 1 and out_neurons >= 2, got {input_size} and {out_neurons}"
            )
        self.num_classes = int(out_neurons)
        self.world_size, self.rank = world_and_rank()
        self.start, self.stop = shard_range(self.num_classes, self.rank, self.world_size)
        # The full matrix is drawn with the same seed on every process, then sliced, so a
        # sharded head starts as the unsharded one would.
        full = torch.empty(self.num_classes, int(input_size))
        torch.nn.init.xavier_uniform_(full)
        self.weight = torch.nn.Parameter(full[self.start : self.stop].clone())
        self._register_state_dict_hook(ShardedSphereFace2Head._full_state_dict)
        self._register_load_state_dict_pre_hook(self._keep_local_rows)

    def forward(self, x):
        """Cosines [N * B, 1, C_local] for this process's embeddings ``x`` [B, D] or [B, 1, D]."""
        x = flatten_embeddings(x, self.weight.shape[1])
        weight = self.weight
        world = check_equal_batches(x.shape[0], x.device)
        if world > 1:
            x = gather_with_gradient(x).flatten(0, 1)
            if weight.requires_grad and torch.is_grad_enabled():
                weight = weight.view_as(weight)
                weight.register_hook(lambda grad: grad / world)
        return F.linear(F.normalize(x, dim=-1), F.normalize(weight, dim=-1)).unsqueeze(1)

    @staticmethod
    def _full_state_dict(module, state_dict, prefix, local_metadata):
        key = prefix + "weight"
        if key in state_dict and module.world_size > 1:
            state_dict[key] = all_gather_rows(state_dict[key].detach())
        return state_dict

    def _keep_local_rows(self, state_dict, prefix, *args):
        key = prefix + "weight"
        if key not in state_dict:
            return
        weight = state_dict[key]
        expected = (self.num_classes, self.weight.shape[1])
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"expected the full head weight {list(expected)} in the state dict, "
                f"got {list(weight.shape)}"
            )
        state_dict[key] = weight[self.start : self.stop]

    @mark_as_saver
    def _save(self, path):
        state = self.state_dict()  # collective: every process takes part
        if if_main_process():
            torch_save_atomic(state, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        del end_of_epoch
        self.load_state_dict(torch.load(path, map_location="cpu"))

    def extra_repr(self):
        return (
            f"input_size={self.weight.shape[1]}, out_neurons={self.num_classes}, "
            f"rows=[{self.start}, {self.stop}) of process {self.rank}/{self.world_size}"
        )


register_checkpoint_hooks(ShardedSphereFace2Head, save_on_main_only=False)
