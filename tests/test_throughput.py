"""ThroughputMeter: the split of an epoch's time into step and waiting, and the rates,
against hand-computed values on a scripted clock."""

from types import SimpleNamespace

import pytest
import torch

from sb_sphereface2.data.throughput import ThroughputMeter, show_on_progress_bar


class ScriptedClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def batch(size, load=None):
    return SimpleNamespace(id=[f"u{i}" for i in range(size)], **({} if load is None else {"load_seconds": load}))


def test_epoch_time_splits_into_waiting_and_steps():
    clock = ScriptedClock()
    meter = ThroughputMeter(clock)
    meter.start_epoch()
    # batch 1: waits 2 s for data, steps 1 s; batch 2: waits 0.5 s, steps 1.5 s (8 + 4 utterances)
    for wait, step, size in ((2.0, 1.0, 8), (0.5, 1.5, 4)):
        clock.now += wait
        meter.batch_start(batch(size, torch.full((size,), 0.25)))
        clock.now += step
        meter.batch_end()
    stats = meter.summary()
    assert stats["utterances"] == 12
    assert stats["epoch_s"] == pytest.approx(5.0)
    assert stats["utt_per_s"] == pytest.approx(12 / 5.0)
    assert stats["step_utt_per_s"] == pytest.approx(12 / 2.5)
    assert stats["wait_share"] == pytest.approx(2.5 / 5.0)
    assert stats["loader_utt_per_s_per_core"] == pytest.approx(12 / 3.0)  # 12 items x 0.25 s
    assert meter.text() == "2 utt/s (step 5, wait 50%, loader 4/core)"
    meter.start_epoch()  # a new epoch starts from zero
    clock.now += 1.0
    meter.batch_start(batch(2))
    clock.now += 1.0
    meter.batch_end()
    stats = meter.summary()
    assert stats["utterances"] == 2 and stats["epoch_s"] == pytest.approx(2.0)
    assert "loader_utt_per_s_per_core" not in stats  # batches without load_seconds


def test_progress_bar_description_shows_the_text():
    import io

    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    other = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    screen = io.StringIO()
    with tqdm(loader, file=screen) as bar, tqdm(other, file=io.StringIO()) as other_bar:
        for _ in bar:
            show_on_progress_bar("123 utt/s", loader)
        assert bar.desc == "123 utt/s" and other_bar.desc == ""
    assert "123 utt/s" in screen.getvalue()
