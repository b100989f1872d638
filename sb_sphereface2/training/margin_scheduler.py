"""Per-iteration margin schedule: hold, ramp, hold."""

import math

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

RAMPS = ("exp", "linear")


@register_checkpoint_hooks
class MarginScheduler:
    """Margin that holds ``initial_margin`` until ``start_epoch``, ramps to
    ``final_margin`` by ``fix_epoch`` and holds it afterwards; updated every iteration.

    Progress is counted in epochs done, fractional within an epoch: SpeechBrain's
    epoch 1 at batch 0 is progress 0.0. With p the fraction of the ramp done,
    the "exp" ramp is m0 + (m1 - m0)(1 - 10^(-3p)) and "linear" is m0 + (m1 - m0)p.
    The paper ramps 0 -> 0.2 over epochs 20-40.

    Add it to the Checkpointer's ``recoverables``: it saves the margin in force and the
    progress, and ``apply`` puts the restored margin back into the loss after a resume.

    Arguments
    ---------
    final_margin : float
        Margin m1 after the ramp.
    initial_margin : float
        Margin m0 before the ramp.
    start_epoch : float
        Epochs done when the ramp starts.
    fix_epoch : float
        Epochs done when the ramp ends (>= start_epoch).
    ramp : str
        "exp" or "linear".

    Returns
    -------
    float
        From ``__call__`` and ``step``: the margin at that progress.

    Example
    -------
    >>> scheduler = MarginScheduler(final_margin=0.2, start_epoch=20, fix_epoch=40, ramp="linear")
    >>> scheduler(10.0), scheduler(30.0), scheduler(50.0)
    (0.0, 0.1, 0.2)
    >>> MarginScheduler(final_margin=0.3, start_epoch=0, fix_epoch=0)(0.0)  # fixed margin
    0.3
    >>> class Loss: margin = 0.0
    >>> loss = Loss()
    >>> scheduler.step(loss, epoch=31, batch_index=0, batches_per_epoch=100)
    0.1
    >>> loss.margin
    0.1
    """

    def __init__(self, final_margin=0.2, initial_margin=0.0, start_epoch=20, fix_epoch=40, ramp="exp"):
        if ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {RAMPS}, got {ramp!r}")
        if not 0 <= start_epoch <= fix_epoch:
            raise ValueError(
                f"need 0 <= start_epoch <= fix_epoch, got start_epoch={start_epoch}, "
                f"fix_epoch={fix_epoch}"
            )
        for name, value in (("final_margin", final_margin), ("initial_margin", initial_margin)):
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be a finite number, got {value}")
        self.final_margin = float(final_margin)
        self.initial_margin = float(initial_margin)
        self.start_epoch = float(start_epoch)
        self.fix_epoch = float(fix_epoch)
        self.ramp = ramp
        self.progress = 0.0
        self.current_margin = self(0.0)

    def __call__(self, progress):
        """Margin after ``progress`` epochs (fractional)."""
        if progress >= self.fix_epoch:
            return self.final_margin
        if progress <= self.start_epoch:
            return self.initial_margin
        p = (progress - self.start_epoch) / (self.fix_epoch - self.start_epoch)
        if self.ramp == "exp":
            p = 1 - 10 ** (-3 * p)
        return self.initial_margin + (self.final_margin - self.initial_margin) * p

    def step(self, loss, epoch, batch_index, batches_per_epoch):
        """Set ``loss.margin`` for batch ``batch_index`` (0-based) of SpeechBrain epoch
        ``epoch`` (1-based) with ``batches_per_epoch`` batches; return the margin."""
        self.progress = (epoch - 1) + batch_index / max(1, batches_per_epoch)
        self.current_margin = self(self.progress)
        return self.apply(loss)

    def apply(self, loss):
        """Set ``loss.margin`` to the margin in force (after a checkpoint restore)."""
        loss.margin = self.current_margin
        return self.current_margin

    @mark_as_saver
    def _save(self, path):
        torch.save({"progress": self.progress, "current_margin": self.current_margin}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        state = torch.load(path)
        self.progress = float(state["progress"])
        self.current_margin = float(state["current_margin"])
