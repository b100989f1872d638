"""Margin ramp values and save/restore through SpeechBrain's Checkpointer."""

import math

import pytest
from speechbrain.utils.checkpoints import Checkpointer

from sb_sphereface2 import MarginScheduler, SphereFace2Loss


def test_exp_ramp_values():
    s = MarginScheduler(final_margin=0.2, initial_margin=0.0, start_epoch=20, fix_epoch=40)
    assert s(0.0) == 0.0
    assert s(20.0) == 0.0
    # p = 0.5 of the ramp: 0.2 * (1 - 10^-1.5)
    assert s(30.0) == pytest.approx(0.2 * (1 - 10 ** -1.5))
    assert s(25.0) == pytest.approx(0.2 * (1 - 10 ** -0.75))
    assert s(40.0) == 0.2
    assert s(150.0) == 0.2


def test_linear_ramp_and_monotone():
    s = MarginScheduler(final_margin=0.3, initial_margin=0.1, start_epoch=2, fix_epoch=6, ramp="linear")
    assert s(4.0) == pytest.approx(0.2)
    values = [s(e / 10) for e in range(0, 80)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_step_is_per_iteration():
    s = MarginScheduler(final_margin=0.2, start_epoch=1, fix_epoch=2, ramp="linear")
    loss = SphereFace2Loss(5, margin=0.0)
    # SpeechBrain epoch 2 (one epoch done), batch 50 of 100: half-way through the ramp.
    assert s.step(loss, epoch=2, batch_index=50, batches_per_epoch=100) == pytest.approx(0.1)
    assert loss.margin == pytest.approx(0.1)
    assert s.step(loss, epoch=2, batch_index=75, batches_per_epoch=100) == pytest.approx(0.15)


def test_checkpointer_save_and_restore(tmp_path):
    s = MarginScheduler(final_margin=0.2, start_epoch=1, fix_epoch=3)
    loss = SphereFace2Loss(5, margin=0.0)
    ckpt = Checkpointer(tmp_path, recoverables={"margin_scheduler": s, "loss": loss})
    s.step(loss, epoch=2, batch_index=30, batches_per_epoch=60)
    saved = s.current_margin
    assert 0 < saved < 0.2
    ckpt.save_checkpoint()

    fresh = MarginScheduler(final_margin=0.2, start_epoch=1, fix_epoch=3)
    fresh_loss = SphereFace2Loss(5, margin=0.0)
    Checkpointer(tmp_path, recoverables={"margin_scheduler": fresh, "loss": fresh_loss}).recover_if_possible()
    assert fresh.current_margin == pytest.approx(saved)
    assert fresh.progress == pytest.approx(1.5)
    fresh.apply(fresh_loss)
    assert fresh_loss.margin == pytest.approx(saved)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(ramp="cosine"), "ramp"),
        (dict(start_epoch=5, fix_epoch=2), "start_epoch"),
        (dict(final_margin=math.inf), "final_margin"),
    ],
)
def test_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MarginScheduler(**kwargs)
