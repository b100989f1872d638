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
``SphereFace2Loss``. The loss's settings come from the loss block
(``hparams/train_sharded.yaml`` refers to the block's ``loss_settings``), so
``--loss=sphereface2_a`` switches the sharded loss too.
"""


from sb_sphereface2.distributed import all_gather_rows, gather_with_gradient, world_and_rank
from sb_sphereface2.losses.base import as_cosines, as_labels, check_values
from sb_sphereface2.losses.sphereface2 import SphereFace2Loss
from sb_sphereface2.models.sharded_head import shard_range


class ShardedSphereFace2Loss(SphereFace2Loss):
    """SphereFace2 loss for ``ShardedSphereFace2Head``: this process's class block over
    the global batch.

    Same arguments as ``SphereFace2Loss`` (``num_classes`` is the total C; the
    closed-form bias uses it). ``forward(outputs, targets)`` takes the head's cosines
    [N * B, 1, C_local] and this process's labels [B] or [B, 1], all-gathers the labels,
    and returns N times this block's share of the global-batch loss (see the module
    docstring: the mean over processes is the loss, and gradients follow DDP's
    convention). With one process it equals ``SphereFace2Loss``. ``last_terms`` are this
    block's shares times N, like the loss (their mean over processes is the global value).

    Example
    -------
    >>> import torch
    >>> from sb_sphereface2.models.sharded_head import ShardedSphereFace2Head
    >>> head = ShardedSphereFace2Head(input_size=8, out_neurons=5)
    >>> loss_fn = ShardedSphereFace2Loss(num_classes=5)
    >>> cos, y = head(torch.randn(3, 8)), torch.tensor([[0], [3], [4]])
    >>> torch.allclose(loss_fn(cos, y), SphereFace2Loss(5, implementation="plain")(cos, y))
    True
    """

    def forward(self, outputs, targets, length=None):
        """N x (this block's share of the loss) for the head's cosines and local labels."""
        world, rank = world_and_rank()
        start, stop = shard_range(self.num_classes, rank, world)
        labels = as_labels(targets)
        cos = as_cosines(outputs, world * labels.shape[0], stop - start,
                         where=f" (global batch x classes {start}..{stop - 1})")
        all_targets = all_gather_rows(labels)
        check_values(cos, all_targets, self.num_classes)
        # The average over processes is the bias itself; its gradient is the average of
        # the processes' gradients (the gather's backward sums them).
        bias = self.bias if world == 1 else gather_with_gradient(self.bias).mean()
        return self.block_loss(cos, all_targets, start, bias, normaliser=cos.shape[0] / world,
                               negatives=cos.shape[0] * (self.num_classes - 1) / world)
