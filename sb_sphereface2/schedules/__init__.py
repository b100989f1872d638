"""Schedules as pure functions of the iteration: the margin (``margin``: hold, ramp,
hold) and the learning rate (``lr``: wespeaker's warm-up times exponential decay), so
that a resumed run follows the uninterrupted schedules exactly."""
