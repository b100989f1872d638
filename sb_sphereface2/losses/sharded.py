"""SphereFace2 for a head whose classes are split across DDP processes.

``sb_sphereface2.models.sharded_head.ShardedSphereFace2Head`` gives each process the
cosines of the global batch (all processes' embeddings) with its block of classes;
``ShardedSphereFace2Loss`` computes the loss terms of that block with the same kernel
as the unsharded loss (``sphereface2.class_block_loss``, lean by default: one
[N * B, C / N] gradient buffer). A sample's target class lives on exactly one process,
which computes its positive term.

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
* the weight shard receives exactly dL/dW[start:stop] (the head divides its gradient
  by N). The sharded head must NOT be wrapped in DDP (its rows differ between
  processes; see ``is_sharded``).

With one process (or no process group) everything reduces to ``SphereFace2Head`` and
``SphereFace2Loss``.

The head, ``shard_range`` and the DDP helpers (``world_and_rank``, ``all_gather_rows``,
``save_optimizer_per_process``, ``load_optimizer_per_process``) are importable from
here too, where version 0.1.0 had them.
"""

import torch

from sb_sphereface2.losses.base import margin_logits
from sb_sphereface2.losses.sphereface2 import SphereFace2Loss
from sb_sphereface2.models.sharded_head import ShardedSphereFace2Head, shard_range
from sb_sphereface2.training.distributed import (
    all_gather_rows,
    gather_with_gradient,
    load_optimizer_per_process,
    save_optimizer_per_process,
    world_and_rank,
)

__all__ = [
    "ShardedSphereFace2Head",
    "ShardedSphereFace2Loss",
    "all_gather_rows",
    "load_optimizer_per_process",
    "save_optimizer_per_process",
    "shard_range",
    "world_and_rank",
]


class ShardedSphereFace2Loss(SphereFace2Loss):
    """SphereFace2 loss for ``ShardedSphereFace2Head``: this process's class block over
    the global batch.

    Same arguments as ``SphereFace2Loss`` (``num_classes`` is the total C; the
    closed-form bias uses it). ``forward(outputs, targets)`` takes the head's cosines
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

    def _flatten(self, outputs, targets):
        world, rank = world_and_rank()
        start, stop = shard_range(self.num_classes, rank, world)
        if outputs.dim() == 3 and outputs.shape[1] == 1:
            outputs = outputs.squeeze(1)
        if targets.dim() == 2 and targets.shape[1] == 1:
            targets = targets.squeeze(1)
        if targets.dim() != 1 or targets.dtype.is_floating_point:
            raise ValueError(
                f"expected integer labels [B] or [B, 1], got {tuple(targets.shape)} {targets.dtype}"
            )
        if outputs.dim() != 2 or outputs.shape != (world * targets.shape[0], stop - start):
            raise ValueError(
                f"expected cosines [{world * targets.shape[0]}, 1, {stop - start}] "
                f"(global batch x classes {start}..{stop - 1}), got {tuple(outputs.shape)}"
            )
        all_targets = all_gather_rows(targets.long())
        if bool((all_targets < 0).any() or (all_targets >= self.num_classes).any()):
            raise ValueError(
                f"labels must be in [0, {self.num_classes - 1}], got {all_targets.tolist()}"
            )
        cos = outputs if outputs.dtype == torch.float64 else outputs.float()
        return cos, all_targets, world, rank, start

    def forward(self, outputs, targets, length=None):
        """N x (this block's share of the loss) for the head's cosines and local labels."""
        cos, all_targets, world, _, start = self._flatten(outputs, targets)
        # The average over processes is the bias itself; its gradient is the average of
        # the processes' gradients (the gather's backward sums them).
        bias = self.bias if world == 1 else gather_with_gradient(self.bias).mean()
        return self.block_loss(cos, all_targets, start, bias, normaliser=cos.shape[0] / world)

    def training_logits(self, outputs, targets):
        """Logits for the accuracy meter of this process's samples, [B, 1, C]: the
        winning logit s * (c - m * onehot) over all classes at its class, -inf elsewhere
        (the full logits with one process)."""
        cos, all_targets, world, rank, start = self._flatten(outputs, targets)
        if world == 1:
            return super().training_logits(outputs, targets)
        logits = margin_logits(cos, all_targets, self.scale, self.margin, start)
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
