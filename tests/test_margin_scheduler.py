"""Margin schedule values per iteration (wespeaker's MarginScheduler, epochs from 1)."""

import math

import pytest

from sb_sphereface2 import MarginScheduler, SphereFace2Loss


def test_exp_ramp_values_at_epoch_boundaries():
    s = MarginScheduler(final_margin=0.2, initial_margin=0.0, start_epoch=20, fix_epoch=40)
    e = 100  # iterations per epoch
    assert s(0, e) == 0.0
    assert s(19 * e - 1, e) == 0.0            # last iteration of epoch 19
    assert s(19 * e, e) == 0.0                # first iteration of epoch 20: p = 0
    assert s(19 * e + 1, e) == pytest.approx(0.2 * (1 - 10 ** (-3 / 2000)), abs=1e-15)
    assert s(29 * e, e) == pytest.approx(0.2 * (1 - 10 ** -1.5), abs=1e-15)  # p = 0.5
    assert s(39 * e - 1, e) == pytest.approx(0.2 * (1 - 10 ** (-3 * 1999 / 2000)), abs=1e-15)
    assert s(39 * e, e) == 0.2                # first iteration of epoch 40
    assert s(150 * e, e) == 0.2


def test_linear_ramp_monotone_and_fractional_epochs():
    s = MarginScheduler(final_margin=0.3, initial_margin=0.1, start_epoch=2, fix_epoch=6, ramp="linear")
    assert s(30, 10) == pytest.approx(0.2)   # half-way: iteration 10 + 20
    values = [s(i, 10) for i in range(80)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    half = MarginScheduler(final_margin=0.2, start_epoch=1.5, fix_epoch=2.5, ramp="linear")
    assert (half(4, 10), half(10, 10), half(15, 10)) == (0.0, pytest.approx(0.1), 0.2)


def test_fixed_margin_from_the_first_iteration():
    s = MarginScheduler(final_margin=0.3, initial_margin=0.0, start_epoch=1, fix_epoch=1)
    assert [s(i, 7) for i in (0, 1, 100)] == [0.3, 0.3, 0.3]


def test_step_sets_the_loss_margin():
    s = MarginScheduler(final_margin=0.2, start_epoch=2, fix_epoch=3, ramp="linear")
    loss = SphereFace2Loss(5, margin=0.0)
    assert s.step(loss, 150, 100) == pytest.approx(0.1)
    assert loss.margin == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(ramp="cosine"), "ramp"),
        (dict(start_epoch=5, fix_epoch=2), "start_epoch"),
        (dict(final_margin="wide"), "could not convert"),
    ],
)
def test_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MarginScheduler(**kwargs)


def test_the_loss_given_the_schedule_checks_its_margins():
    """Which margins are valid is the loss's rule, checked when the loss gets the schedule."""
    with pytest.raises(ValueError, match="final_margin: margin must be finite"):
        SphereFace2Loss(5, margin_scheduler=MarginScheduler(final_margin=math.inf))
