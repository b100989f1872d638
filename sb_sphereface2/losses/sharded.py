"""SphereFace2 with the class weights split across DDP processes (a sharded head).

SphereFace2 has no softmax normaliser: each class's binary classifier sees the
embeddings and its own weight only. A head whose C classes are split across N
processes is therefore exact with no communication beyond the embeddings (and the
labels): each process holds rows [start, stop) of the weight matrix, all-gathers the
embeddings of the global batch, and computes the loss terms of its class block for
every sample of the global batch. A sample's target class lives on exactly one
process, which computes its positive term.

Gradient convention (the one DDP expects). Write L for the SphereFace2 loss of the
global batch (mean over the N x B samples) and L_r for the part of it that the class
block of process r contributes (sum over r of L_r = L). ``ShardedSphereFace2Loss``
returns N * L_r on process r, so that

* the mean over processes of the returned values is L (what DDP users expect of a
  per-process loss);
* the embeddings of process r receive N * dL/dx_r (the gather sums the contributions
  of all class blocks), which DDP's gradient averaging over processes turns into
  exactly dL/dtheta for the embedding model;
* the bias, shared by all classes, receives the average over processes of its
  per-process gradients, i.e. exactly dL/db on every process (with or without a
  DDP wrapper around the loss module);
* the weight shard receives exactly dL/dW[start:stop] (its gradient is scaled by 1/N,
  which is what DDP's averaging would do if the other processes, whose contribution
  to these rows is zero, took part). The sharded head must NOT be wrapped in DDP
  (its rows differ between processes; see ``is_sharded``).

With one process (or no process group) everything reduces to ``SphereFace2Head`` and
``SphereFace2Loss`` (plain implementation).

Checkpoints hold the FULL weight matrix: ``state_dict`` gathers the rows of every
process (a collective: call it on every process), ``load_state_dict`` takes a full
[C, D] matrix and keeps this process's rows. A checkpoint saved with N processes
therefore loads with M processes or into a ``SphereFace2Head``, and back. The
SpeechBrain ``Checkpointer`` save hook of the head runs on every process and writes
on the main one.
"""

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process

from sb_sphereface2.models.head import flatten_embeddings
from sb_sphereface2.losses.margins import MARGIN_TYPES
from sb_sphereface2.losses.sphereface2 import SphereFace2Loss


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
    longest = max(sizes)
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def _check_equal_batches(batch, device):
    """Raise ValueError unless every process has ``batch`` rows; return the world size."""
    world, _ = world_and_rank()
    if world > 1:
        sizes = all_gather_rows(torch.tensor([batch], device=device))
        if not bool((sizes == batch).all()):
            raise ValueError(
                f"the sharded head needs the same batch size on every process, got {sizes.tolist()} "
                "(use drop_last=True)"
            )
    return world


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (equal sizes); backward sums the gradients of all
    processes and returns this process's rows."""

    @staticmethod
    def forward(ctx, tensor):
        world, rank = world_and_rank()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class _AverageGradient(torch.autograd.Function):
    """Identity; backward averages the gradient over processes."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        world, _ = world_and_rank()
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad / world


class _ScaleGradient(torch.autograd.Function):
    """Identity; backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class ShardedSphereFace2Head(torch.nn.Module):
    """Cosine head whose class weights are split across the DDP processes.

    Process r holds rows [start, stop) of the [C, D] weight matrix (``shard_range``).
    ``forward`` all-gathers the embeddings of every process (autograd-aware) and
    returns their cosines with the local classes, [N * B, 1, stop - start]; feed them to
    ``ShardedSphereFace2Loss``. Every process must call it with the same batch size.
    Do not wrap it in DDP (``is_sharded`` tells the recipe to leave it out).

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
        if _check_equal_batches(x.shape[0], x.device) > 1:
            x = _GatherRows.apply(x)
            weight = _ScaleGradient.apply(weight, 1.0 / self.world_size)
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
            torch.save(state, path)

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


def class_block_loss(cos, targets, start, bias, margin, scale, lambda_, t, margin_type,
                     detach_adjustment, normaliser):
    """The SphereFace2 loss terms of one block of classes, summed over the batch and
    divided by ``normaliser``.

    Column k of ``cos`` is class ``start + k``. Samples whose target is in the block get
    their positive term and all other columns as negatives; the other samples get every
    column as a negative. With ``start`` = 0, all C columns and ``normaliser`` = B this
    is ``sphereface2.sphereface2_loss``; over the blocks of a partition of the classes
    the values add up to it. The margin maths is ``sphereface2.MARGIN_TYPES``.

    Arguments
    ---------
    cos : torch.Tensor
        Cosines [B, C_block].
    targets : torch.Tensor
        Global class labels [B] (long).
    start : int
        Class index of column 0.
    bias : torch.Tensor
        0-d bias.
    margin, scale, lambda_, t, margin_type, detach_adjustment
        As in ``SphereFace2Loss``.
    normaliser : float
        The sum is divided by it (B for the batch mean).

    Returns
    -------
    torch.Tensor
        Scalar.

    Example
    -------
    >>> from sb_sphereface2.losses.sphereface2 import sphereface2_loss
    >>> cos, y = torch.rand(3, 5) * 2 - 1, torch.tensor([0, 3, 4])
    >>> args = (torch.tensor(1.0), 0.2, 32.0, 0.7, 3.0, "C", False)
    >>> parts = class_block_loss(cos[:, :2], y, 0, *args, 3) + class_block_loss(cos[:, 2:], y, 2, *args, 3)
    >>> torch.allclose(parts, sphereface2_loss(cos, y, *args))
    True
    """
    local = targets - start
    here = (local >= 0) & (local < cos.shape[1])
    index = torch.where(here, local, 0).unsqueeze(1)
    cos_target = cos.gather(1, index).squeeze(1)
    pos, neg = MARGIN_TYPES[margin_type](cos_target, cos, margin, t)
    if detach_adjustment:
        pos = cos_target + (pos - cos_target).detach()
        neg = cos + (neg - cos).detach()
    pos_loss = torch.where(here, F.softplus(-(scale * pos + bias)), 0.0)
    is_target = here.unsqueeze(1) & (torch.arange(cos.shape[1], device=cos.device) == local.unsqueeze(1))
    neg_loss = F.softplus(scale * neg + bias).masked_fill(is_target, 0.0).sum(dim=1)
    return (lambda_ * pos_loss + (1 - lambda_) * neg_loss).sum() / normaliser


class ShardedSphereFace2Loss(SphereFace2Loss):
    """SphereFace2 loss for ``ShardedSphereFace2Head``: this process's class block over
    the global batch.

    Same arguments as ``SphereFace2Loss`` (``num_classes`` is the total C; the
    closed-form bias uses it; ``implementation`` is always "plain": the block loss is the
    eager form on [N * B, C / N]). ``forward(outputs, targets)`` takes the head's cosines
    [N * B, 1, C_local] and this process's labels [B] or [B, 1], all-gathers the labels,
    and returns N times this block's share of the global-batch loss (see the module
    docstring: the mean over processes is the loss, and gradients follow DDP's
    convention). With one process it equals ``SphereFace2Loss``.

    Example
    -------
    >>> head = ShardedSphereFace2Head(input_size=8, out_neurons=5)
    >>> loss_fn = ShardedSphereFace2Loss(num_classes=5)
    >>> cos, y = head(torch.randn(3, 8)), torch.tensor([[0], [3], [4]])
    >>> torch.allclose(loss_fn(cos, y), SphereFace2Loss(5, implementation="plain")(cos, y))
    True
    >>> loss_fn.training_logits(cos, y).shape
    torch.Size([3, 1, 5])
    """

    def __init__(self, num_classes, **settings):
        settings["implementation"] = "plain"  # what the class block loss is
        super().__init__(num_classes, **settings)

    def _flatten(self, outputs, targets):
        world, rank = world_and_rank()
        start, stop = shard_range(self.num_classes, rank, world)
        if outputs.dim() == 3 and outputs.shape[1] == 1:
            outputs = outputs.squeeze(1)
        if targets.dim() == 2 and targets.shape[1] == 1:
            targets = targets.squeeze(1)
        if targets.dim() != 1 or targets.dtype.is_floating_point:
            raise ValueError(f"expected integer labels [B] or [B, 1], got {tuple(targets.shape)} {targets.dtype}")
        if outputs.dim() != 2 or outputs.shape != (world * targets.shape[0], stop - start):
            raise ValueError(
                f"expected cosines [{world * targets.shape[0]}, 1, {stop - start}] "
                f"(global batch x classes {start}..{stop - 1}), got {tuple(outputs.shape)}"
            )
        all_targets = all_gather_rows(targets.long())
        if bool((all_targets < 0).any() or (all_targets >= self.num_classes).any()):
            raise ValueError(f"labels must be in [0, {self.num_classes - 1}], got {all_targets.tolist()}")
        cos = outputs if outputs.dtype == torch.float64 else outputs.float()
        return cos, all_targets, world, rank, start

    def forward(self, outputs, targets, length=None):
        """N x (this block's share of the loss) for the head's cosines and local labels."""
        cos, all_targets, world, _, start = self._flatten(outputs, targets)
        bias = self.bias if world == 1 else _AverageGradient.apply(self.bias)
        with torch.autocast(device_type=cos.device.type, enabled=False):
            return class_block_loss(
                cos, all_targets, start, bias.to(cos.dtype), self.margin, self.scale,
                self.lambda_, self.t, self.margin_type, self.detach_adjustment,
                normaliser=cos.shape[0] / world,
            )

    def training_logits(self, outputs, targets):
        """Logits for the accuracy meter of this process's samples, [B, 1, C]: the
        winning logit s * (c - m * onehot) over all classes at its class, -inf elsewhere
        (the full logits with one process)."""
        cos, all_targets, world, rank, start = self._flatten(outputs, targets)
        if world == 1:
            return super().training_logits(outputs, targets)
        onehot = torch.arange(cos.shape[1], device=cos.device) == (all_targets - start).unsqueeze(1)
        logits = self.scale * (cos - self.margin * onehot.to(cos.dtype))
        best, where = logits.max(dim=1)
        bests = all_gather_rows(best.unsqueeze(0))  # [N, N * B]
        wheres = all_gather_rows((where + start).unsqueeze(0))
        winner = bests.argmax(dim=0, keepdim=True)
        best = bests.gather(0, winner).squeeze(0)
        where = wheres.gather(0, winner).squeeze(0)
        batch = targets.shape[0]
        rows = slice(rank * batch, (rank + 1) * batch)
        out = cos.new_full((batch, self.num_classes), float("-inf"))
        out.scatter_(1, where[rows].unsqueeze(1), best[rows].unsqueeze(1))
        return out.unsqueeze(1)


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
    torch.save({"world_size": world, "state": optimizer.state_dict()}, _rank_path(path, rank))


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
