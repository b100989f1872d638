"""Per-iteration margin schedule: hold, ramp, hold (wespeaker's ``MarginScheduler``).

Epochs count from 1, as in wespeaker and SpeechBrain: with E iterations per epoch, the
ramp starts at iteration (start_epoch - 1) E, the first iteration of epoch ``start_epoch``,
and the final margin holds from iteration (fix_epoch - 1) E. With p the fraction of the
ramp done, the "exp" ramp is m0 + (m1 - m0)(1 - 10^(-3p)) and "linear" is
m0 + (m1 - m0) p. The paper ramps 0 -> 0.2 over epochs 20-40 of 150. Fractional epochs
are allowed (a short run can tie the ramp to a fraction of training).
"""

RAMPS = ("exp", "linear")


class MarginScheduler:
    """Margin that holds ``initial_margin`` until epoch ``start_epoch`` starts, ramps to
    ``final_margin`` by the start of epoch ``fix_epoch`` and holds it afterwards.

    The value depends only on the iteration and the epoch length, so a resumed run
    follows the uninterrupted schedule exactly.

    Arguments
    ---------
    final_margin : float
        Margin m1 after the ramp.
    initial_margin : float
        Margin m0 before the ramp.
    start_epoch : float
        Epoch (from 1) at whose first iteration the ramp starts.
    fix_epoch : float
        Epoch at whose first iteration the final margin is reached (>= start_epoch);
        ``fix_epoch <= 1`` gives the final margin from the first iteration.
    ramp : str
        "exp" or "linear".

    Example
    -------
    >>> scheduler = MarginScheduler(final_margin=0.2, start_epoch=20, fix_epoch=40, ramp="linear")
    >>> [scheduler(i, iterations_per_epoch=10) for i in (189, 190, 290, 390)]
    [0.0, 0.0, 0.1, 0.2]
    >>> MarginScheduler(final_margin=0.3, start_epoch=1, fix_epoch=1)(0, 10)  # fixed margin
    0.3
    >>> class Loss: margin = 0.0
    >>> loss = Loss()
    >>> scheduler.step(loss, 290, iterations_per_epoch=10), loss.margin
    (0.1, 0.1)
    """

    def __init__(self, final_margin=0.2, initial_margin=0.0, start_epoch=20, fix_epoch=40, ramp="exp"):
        if ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {RAMPS}, got {ramp!r}")
        if not 0 <= start_epoch <= fix_epoch:
            raise ValueError(
                f"need 0 <= start_epoch <= fix_epoch, got start_epoch={start_epoch}, "
                f"fix_epoch={fix_epoch}"
            )
        # Which margins are valid is the loss's rule: the loss checks both when it is
        # given this schedule (``CosineMarginLoss``).
        self.final_margin = float(final_margin)
        self.initial_margin = float(initial_margin)
        self.start_epoch = float(start_epoch)
        self.fix_epoch = float(fix_epoch)
        self.ramp = ramp

    def __call__(self, iteration, iterations_per_epoch):
        """Margin at ``iteration`` (0-based, over the whole run)."""
        if iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
        start = max(0.0, self.start_epoch - 1) * iterations_per_epoch
        fix = max(0.0, self.fix_epoch - 1) * iterations_per_epoch
        if iteration >= fix:
            return self.final_margin
        if iteration < start:
            return self.initial_margin
        p = (iteration - start) / (fix - start)
        if self.ramp == "exp":
            p = 1 - 10 ** (-3 * p)
        return self.initial_margin + (self.final_margin - self.initial_margin) * p

    def step(self, loss, iteration, iterations_per_epoch):
        """Set ``loss.margin`` for ``iteration``; return the margin."""
        loss.margin = self(iteration, iterations_per_epoch)
        return loss.margin
