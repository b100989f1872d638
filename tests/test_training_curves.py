"""Training you can watch: the log reader, the figure's data, SphereFace2's diagnostics
against values recomputed from the batches, the overlay command and TensorBoard's events.
(The resumed run's series equal the uninterrupted run's: tests/test_faults_training.py;
a recipe run's folder: tests/test_recipe_voxceleb.py.)"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from speechbrain.utils.train_logger import FileTrainLogger

from sb_sphereface2 import SphereFace2Loss
from sb_sphereface2.losses.aam import AAMLoss
from sb_sphereface2.training.cosine_statistics import raw_cosine_statistics
from sb_sphereface2.training.curves import curve_panels, draw_curves, read_run, read_train_log
from sb_sphereface2.training.diagnostics import HISTOGRAM_BINS
from sb_sphereface2.training.watch import RunWatch

ROOT = Path(__file__).resolve().parents[1]


def test_read_train_log_gives_the_logged_values(tmp_path):
    logger = FileTrainLogger(str(tmp_path / "train_log.txt"))
    lines = [
        ({"epoch": 1, "iterations": 40, "lr": 0.0123456, "margin": 0.05},
         {"loss": 12.3456, "error": 0.875, "bias": -8.4321, "negative_active": 0.000123}, {"EER": 31.25, "minDCF": 0.99}),
        ({"epoch": 2, "iterations": 80, "lr": 0.01, "margin": 0.2}, {"loss": 9.5, "error": 0.5, "bias": -8.1,
                                                                    "negative_active": 0.0002}, None),
    ]
    for meta, train, valid in lines:
        logger.log_stats(meta, train_stats=train, valid_stats=valid, verbose=False)
    rows = read_train_log(tmp_path / "train_log.txt")
    assert rows[0] == {"epoch": 1, "iterations": 40, "lr": 1.23e-2, "margin": 5.0e-2, "train loss": 12.35,
                       "train error": 8.75e-1, "train bias": -8.43, "train negative_active": 1.23e-4,
                       "valid EER": 31.25, "valid minDCF": 9.9e-1}
    assert rows[1]["epoch"] == 2 and "valid EER" not in rows[1] and rows[1]["train bias"] == -8.1


def _records(count, sphereface2=True, epoch_length=4):
    records = []
    for i in range(1, count + 1):
        record = {"iteration": i, "epoch": (i - 1) // epoch_length + 1, "lr": 0.1 * i, "margin": 0.01 * i,
                  "loss": 10.0 - i, "error": 0.9, "cos_own": 0.1 * i, "cos_other": -0.01 * i}
        if sphereface2:
            record.update(bias=-8.0 + 0.1 * i, positive_term=1.0, negative_term=9.0 - i, negative_active=0.5 / i)
        records.append(record)
    return records


def _histogram(epoch, iteration):
    edges = np.linspace(-1, 1, HISTOGRAM_BINS + 1).tolist()
    return {"epoch": epoch, "iteration": iteration, "edges": edges, "own": [1.0] * HISTOGRAM_BINS,
            "other": [float(i) for i in range(HISTOGRAM_BINS)]}


def _write_run(folder, loss, seed, records, epochs, histograms):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(f"loss: {loss}\nseed: {seed}\nmodules: !new:dict\n")
    (folder / "train_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "train_histograms.jsonl").write_text("".join(json.dumps(h) + "\n" for h in histograms))
    logger = FileTrainLogger(str(folder / "train_log.txt"))
    for epoch, eer in epochs:
        logger.log_stats({"epoch": epoch, "iterations": 4 * epoch}, train_stats={"loss": 1.5},
                         valid_stats={"EER": eer, "minDCF": 0.5}, verbose=False)
    return folder


def _titled(figure):
    return [axes for axes in figure.axes if axes.get_title()]


@pytest.mark.parametrize("sphereface2, panels", [(True, 9), (False, 6)])
def test_figure_has_a_panel_per_series_with_every_value(sphereface2, panels, tmp_path):
    folder = _write_run(tmp_path / "run", "sphereface2_c" if sphereface2 else "aam", 3, _records(12, sphereface2),
                        [(1, 40.0), (2, 30.0), (3, 25.0)], [_histogram(1, 4), _histogram(2, 8), _histogram(3, 12)])
    run = read_run(folder)
    assert run["label"] == ("sphereface2_c" if sphereface2 else "aam") + " seed 3"
    data = curve_panels([run])
    assert len(data) == panels
    by_title = {panel["title"]: panel for panel in data}
    assert by_title["loss"]["lines"][0]["y"] == [10.0 - i for i in range(1, 13)]
    assert by_title["raw-cosine training error"]["lines"][0]["y"] == pytest.approx([90.0] * 12)
    validation = by_title["validation"]["lines"]
    assert [(line["label"], line["x"], line["y"]) for line in validation] == [
        ("EER", [4, 8, 12], [40.0, 30.0, 25.0]), ("minDCF", [4, 8, 12], [0.5, 0.5, 0.5])]
    histograms = by_title["training cosines"]["lines"]
    assert [line["label"] for line in histograms] == ["own, epoch 1", "other, epoch 1", "own, epoch 3", "other, epoch 3"]
    width = 2.0 / HISTOGRAM_BINS
    assert sum(histograms[1]["y"]) * width == pytest.approx(1.0)  # a density
    if sphereface2:
        assert by_title["active negatives"]["lines"][0]["y"] == pytest.approx([50.0 / i for i in range(1, 13)])
    figure = draw_curves([run], tmp_path / "curves.png")
    titled = _titled(figure)
    assert [axes.get_title() for axes in titled] == [panel["title"] for panel in data]
    loss_line = titled[0].get_lines()[0]
    assert list(loss_line.get_xdata()) == list(range(1, 13)) and len(loss_line.get_ydata()) == 12
    epoch_ends = [line for line in titled[0].get_lines() if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in epoch_ends] == [4, 8, 12]
    # lr on the left and the margin on the panel's twin axis, every record
    twin = next(a for a in figure.axes if not a.get_title() and a.bbox.bounds == titled[1].bbox.bounds)
    assert len(titled[1].get_lines()[0].get_xdata()) == 12 and len(twin.get_lines()[0].get_ydata()) == 12
    assert (tmp_path / "curves.png").stat().st_size > 0


def _fake_brain(loss_fn, folder, iterations_per_epoch):
    """What ``TrainingDiagnostics`` reads from a ``SpeakerBrain``."""
    hparams = SimpleNamespace(compute_cost=loss_fn, classifier=torch.nn.Identity(),
                              train_logger=SimpleNamespace(save_file=str(folder / "train_log.txt")),
                              tensorboard=True)
    return SimpleNamespace(hparams=hparams, device="cpu", distributed_launch=False, step=0, optimizer_step=0,
                           iterations_per_epoch=iterations_per_epoch, _reduced=lambda totals: totals,
                           optimizer=SimpleNamespace(param_groups=[{"lr": 0.25}]),
                           train_totals=torch.zeros(4, dtype=torch.float64))


def _run_batches(watch, brain, batches):
    for cos, labels in batches:
        loss = brain.hparams.compute_cost(cos, labels)
        brain.train_totals += raw_cosine_statistics(cos, labels).double()
        brain.step += 1
        brain.optimizer_step += 1
        watch.batch_end(SimpleNamespace(spk_id_encoded=(labels, None)), cos, loss)


def _recomputed_terms(loss_fn, cos, labels):
    """SphereFace2's terms of a batch, written out from the loss's definition."""
    settings, bias = loss_fn.settings, loss_fn.bias.detach()
    cos = cos.reshape(cos.shape[0], -1)
    own = cos.gather(1, labels[:, None]).squeeze(1)
    pos, neg = settings.similarities(own, cos, loss_fn.margin)
    negative = ~F.one_hot(labels, cos.shape[1]).bool()
    neg_logits = (settings.scale * neg + bias)[negative]
    return {
        "bias": bias.item(),
        "positive_term": (settings.lambda_ * F.softplus(-(settings.scale * pos + bias))).mean().item(),
        "negative_term": ((1 - settings.lambda_) * F.softplus(neg_logits)).sum().item() / cos.shape[0],
        "negative_active": (neg_logits > 0).double().mean().item(),
    }


def test_diagnostics_are_the_loss_terms_of_the_batches(tmp_path):
    torch.manual_seed(0)
    loss_fn = SphereFace2Loss(num_classes=7, margin=0.2)  # the lean kernel, as in training
    brain = _fake_brain(loss_fn, tmp_path, iterations_per_epoch=2)
    watch = RunWatch(brain)
    watch.train_start(1)
    batches = [(torch.rand(6, 1, 7) * 2 - 1, torch.randint(0, 7, (6,))) for _ in range(2)]
    _run_batches(watch, brain, batches)
    epoch_means = watch.train_end()
    records = read_run(tmp_path)["records"]
    expected = [_recomputed_terms(loss_fn, cos, labels) for cos, labels in batches]
    assert len(records) == 2  # 2 iterations an epoch: a record each
    for record, terms, (cos, labels) in zip(records, expected, batches):
        assert {k: record[k] for k in terms} == pytest.approx(terms, rel=1e-5)
        assert record["loss"] == pytest.approx(terms["positive_term"] + terms["negative_term"], rel=1e-5)
        own = cos.reshape(6, 7).gather(1, labels[:, None]).squeeze(1)
        assert record["cos_own"] == pytest.approx(own.mean().item(), rel=1e-5)
        assert (record["lr"], record["margin"], record["epoch"]) == (0.25, 0.2, 1)
    for name in expected[0]:
        assert epoch_means[name] == pytest.approx((expected[0][name] + expected[1][name]) / 2, rel=1e-5)
    # the histograms: every cosine of the batches, own and other classes apart
    (histogram,) = read_run(tmp_path)["histograms"]
    cos = torch.cat([c.reshape(6, 7) for c, _ in batches])
    own_mask = F.one_hot(torch.cat([labels for _, labels in batches]), 7).bool()
    edges = np.linspace(-1, 1, HISTOGRAM_BINS + 1)
    assert histogram["own"] == np.histogram(cos[own_mask].numpy(), edges)[0].tolist()
    assert histogram["other"] == np.histogram(cos[~own_mask].numpy(), edges)[0].tolist()


def test_aam_runs_get_the_cosine_histograms_and_no_sphereface2_terms(tmp_path):
    brain = _fake_brain(AAMLoss(num_classes=5, margin=0.2), tmp_path, iterations_per_epoch=3)
    watch = RunWatch(brain)
    watch.train_start(1)
    _run_batches(watch, brain, [(torch.rand(4, 1, 5) * 2 - 1, torch.randint(0, 5, (4,))) for _ in range(3)])
    assert watch.train_end() == {}
    run = read_run(tmp_path)
    assert len(run["records"]) == 3 and "bias" not in run["records"][0]
    assert sum(run["histograms"][0]["own"]) == 12 and sum(run["histograms"][0]["other"]) == 48


def test_tensorboard_events_hold_the_records_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loss_fn = SphereFace2Loss(num_classes=5, margin=0.1)
    brain = _fake_brain(loss_fn, tmp_path, iterations_per_epoch=3)
    watch = RunWatch(brain)
    for epoch in (1, 2):
        watch.train_start(epoch)
        _run_batches(watch, brain, [(torch.rand(4, 1, 5) * 2 - 1, torch.randint(0, 5, (4,))) for _ in range(3)])
        stats = watch.train_end()
        FileTrainLogger(str(tmp_path / "train_log.txt")).log_stats(
            {"epoch": epoch, "iterations": brain.optimizer_step}, train_stats=stats,
            valid_stats={"EER": 20.0 / epoch, "minDCF": 0.5}, verbose=False)
        watch.epoch_done(epoch)
        brain.step = 0
    watch.tensorboard_logger.writer.close()
    assert (tmp_path / "training_curves.png").is_file()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})  # keep all
    events.Reload()
    records = read_run(tmp_path)["records"]
    bias = events.Scalars("sphereface2/bias")
    assert [e.step for e in bias] == [r["iteration"] for r in records]
    assert [e.value for e in bias] == pytest.approx([r["bias"] for r in records])  # (TensorBoard keeps float32)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [(e.step, e.value) for e in events.Scalars("valid/EER")] == [(3, 20.0), (6, 10.0)]
    histograms = events.Histograms("cosines/own")
    assert [h.step for h in histograms] == [3, 6] and histograms[0].histogram_value.num == 12


@pytest.mark.slow
def test_overlay_command_draws_runs_in_one_picture(tmp_path, capsys):
    a = _write_run(tmp_path / "a", "sphereface2_c", 1, _records(8), [(1, 30.0), (2, 20.0)], [_histogram(1, 4)])
    b = _write_run(tmp_path / "b", "aam", 2, _records(8, sphereface2=False), [(1, 35.0), (2, 25.0)], [])
    out = tmp_path / "overlay.svg"
    result = subprocess.run([sys.executable, "-m", "sb_sphereface2.curves", str(a), str(b), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "sphereface2_c seed 1: EER" in text and "aam seed 2: EER" in text  # the legend names both runs
    figure = draw_curves([read_run(a), read_run(b)])
    validation = next(axes for axes in _titled(figure) if axes.get_title() == "validation")
    assert [list(line.get_ydata()) for line in validation.get_lines() if line.get_linestyle() == "-"] == [
        [30.0, 20.0], [35.0, 25.0]]
    from sb_sphereface2.curves import main

    assert main([str(a), str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.startswith("error: no train_log.txt") and not (tmp_path / "x.png").exists()
