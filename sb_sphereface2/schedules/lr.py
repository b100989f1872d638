"""The learning-rate schedule of the paper's recipe (wespeaker's ``ExponentialDecrease``).

Per iteration i (counted from 0 over the whole run), with I = total_epochs x iterations
per epoch and W = warmup_epochs x iterations per epoch::

    lr(i) = coeff(i) * initial_lr * exp(i / I * ln(final_lr / initial_lr))

The multiplier ``coeff`` is wespeaker's batch-size scaling: ``scale_ratio = total batch /
64``; during the warm-up it rises linearly from 1 to ``scale_ratio`` (from 0 with
``warm_from_zero``), then stays at ``scale_ratio``. With the paper's total batch of 256,
lr goes 0.1 -> 0.4 over the first 6 of 150 epochs while the exponential decay runs from
iteration 0, and ends at 4 x 5e-5. SpeechBrain's schedulers have no such product of a
batch-scaling warm-up and a whole-run decay, hence this class.
"""

import math

REFERENCE_BATCH = 64  # wespeaker: scale_ratio = world_size * batch_per_process / 64


class WarmupExponentialLR:
    """Per-iteration learning rate: exponential decay over the whole run, times a
    batch-size scale that warms up linearly (wespeaker's ``ExponentialDecrease``).

    The value depends only on the iteration and the epoch length, so a resumed run
    follows the uninterrupted schedule exactly (SpeechBrain's ``Brain`` checkpoints its
    optimizer-step counter).

    Arguments
    ---------
    initial_lr : float
        Learning rate at iteration 0 for a total batch of 64 (0.1 in the paper).
    final_lr : float
        Learning rate at the end of the decay for a total batch of 64 (5e-5).
    warmup_epochs : float
        Length of the warm-up of the batch-size scale (6), >= 0.
    total_epochs : float
        Length of the decay (150).
    total_batch : int
        The total batch over all processes (256); scale_ratio = total_batch / 64.
    warm_from_zero : bool
        wespeaker's option: the scale rises from 0 instead of 1 during the warm-up.

    Example
    -------
    >>> schedule = WarmupExponentialLR(0.1, 5e-5, warmup_epochs=6, total_epochs=150, total_batch=256)
    >>> schedule(0, iterations_per_epoch=100)
    0.1
    >>> round(schedule(600, iterations_per_epoch=100), 4)   # epoch 7: 0.4 * exp(6/150 ln(5e-4))
    0.2951
    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> schedule.step(optimizer, 0, iterations_per_epoch=100), optimizer.param_groups[0]["lr"]
    (0.1, 0.1)
    """

    def __init__(self, initial_lr, final_lr, warmup_epochs, total_epochs, total_batch=REFERENCE_BATCH,
                 warm_from_zero=False):
        if not (initial_lr > 0 and final_lr > 0):
            raise ValueError(f"learning rates must be > 0, got {initial_lr} and {final_lr}")
        if not 0 <= warmup_epochs <= total_epochs or total_epochs <= 0:
            raise ValueError(
                f"need 0 <= warmup_epochs <= total_epochs and total_epochs > 0, got "
                f"{warmup_epochs} and {total_epochs}"
            )
        if not (isinstance(total_batch, int) and total_batch >= 1):
            raise ValueError(f"total_batch must be a positive integer, got {total_batch!r}")
        self.initial_lr = float(initial_lr)
        self.final_lr = float(final_lr)
        self.warmup_epochs = float(warmup_epochs)
        self.total_epochs = float(total_epochs)
        self.scale_ratio = total_batch / REFERENCE_BATCH
        self.warm_from_zero = bool(warm_from_zero)

    def scale(self, iteration, iterations_per_epoch):
        """The batch-size multiplier at ``iteration``."""
        warmup = self.warmup_epochs * iterations_per_epoch
        if iteration >= warmup:
            return self.scale_ratio
        if self.warm_from_zero:
            return self.scale_ratio * iteration / warmup
        if self.scale_ratio > 1:
            return 1.0 + (self.scale_ratio - 1.0) * iteration / warmup
        return self.scale_ratio

    def __call__(self, iteration, iterations_per_epoch):
        """Learning rate at ``iteration`` (0-based, over the whole run)."""
        if iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
        total = self.total_epochs * iterations_per_epoch
        decay = math.exp(iteration / total * math.log(self.final_lr / self.initial_lr))
        return self.scale(iteration, iterations_per_epoch) * self.initial_lr * decay

    def step(self, optimizer, iteration, iterations_per_epoch):
        """Set the learning rate of every parameter group for ``iteration``; return it."""
        lr = self(iteration, iterations_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
