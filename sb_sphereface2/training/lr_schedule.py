"""Learning-rate schedule of the SphereFace2 speaker paper: linear warm-up, then exponential decay."""

import math

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)


@register_checkpoint_hooks
class WarmupExponentialLR:
    """Per-iteration learning rate: linear warm-up from 0 to ``initial_lr`` over
    ``warmup_epochs``, then exponential decay to ``final_lr`` at ``total_epochs``.

    Progress is counted in epochs (fractional), as in ``MarginScheduler``, so the
    schedule does not depend on the dataset size. The paper: 0.1 -> 5e-5 over 150
    epochs with 6 warm-up epochs; large-margin fine-tuning: 1e-4 -> 2.5e-5 over 5.

    Arguments
    ---------
    initial_lr : float
        Learning rate at the end of the warm-up.
    final_lr : float
        Learning rate at ``total_epochs``.
    warmup_epochs : float
        Length of the linear warm-up (0 for none).
    total_epochs : float
        Length of the whole schedule.

    Returns
    -------
    float
        From ``__call__`` and ``step``: the learning rate at that progress.

    Example
    -------
    >>> schedule = WarmupExponentialLR(0.1, 1e-3, warmup_epochs=1, total_epochs=3)
    >>> schedule(0.5), schedule(1.0), round(schedule(2.0), 6), round(schedule(3.0), 6)
    (0.05, 0.1, 0.01, 0.001)
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> schedule.step(optimizer, epoch=2, batch_index=0, batches_per_epoch=10)
    0.1
    >>> optimizer.param_groups[0]["lr"]
    0.1
    """

    def __init__(self, initial_lr, final_lr, warmup_epochs, total_epochs):
        if not (initial_lr > 0 and final_lr > 0):
            raise ValueError(f"learning rates must be > 0, got {initial_lr} and {final_lr}")
        if not 0 <= warmup_epochs < total_epochs:
            raise ValueError(
                f"need 0 <= warmup_epochs < total_epochs, got {warmup_epochs} and {total_epochs}"
            )
        self.initial_lr = float(initial_lr)
        self.final_lr = float(final_lr)
        self.warmup_epochs = float(warmup_epochs)
        self.total_epochs = float(total_epochs)
        self.progress = 0.0

    def __call__(self, progress):
        """Learning rate after ``progress`` epochs."""
        if progress < self.warmup_epochs:
            return self.initial_lr * progress / self.warmup_epochs
        p = min(1.0, (progress - self.warmup_epochs) / (self.total_epochs - self.warmup_epochs))
        return self.initial_lr * math.exp(p * math.log(self.final_lr / self.initial_lr))

    def step(self, optimizer, epoch, batch_index, batches_per_epoch):
        """Set the learning rate of ``optimizer`` for batch ``batch_index`` (0-based) of
        SpeechBrain epoch ``epoch`` (1-based); return it."""
        self.progress = (epoch - 1) + batch_index / max(1, batches_per_epoch)
        lr = self(self.progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    @mark_as_saver
    def _save(self, path):
        torch.save({"progress": self.progress}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        self.progress = float(torch.load(path)["progress"])
