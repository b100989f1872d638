"""The VoxCeleb recipe end to end on librispeech-mini cut into a VoxCeleb-shaped tree:
prepare -> train -> large-margin fine-tune -> score, with a tiny model; resume after a kill;
one-line errors for bad input. (LibriSpeech, CC BY 4.0.)"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "VoxCeleb" / "train.py"
SCORE = ROOT / "recipes" / "VoxCeleb" / "score.py"

# A tiny ResNet and a short schedule: the recipe's real defaults stay the paper's.
TINY_SETTINGS = {
    "device": "cpu", "num_workers": 0, "augment": False, "speed_perturb": False,
    "n_mels": 40, "resnet_channels": "[8,8,16,16]", "resnet_blocks": "[1,1,1,1]", "emb_dim": 64,
    "batch_size": 32, "dev_speakers": 20, "dev_trials": 400, "warmup_epochs": 0,
    "lr": 0.05, "final_lr": 0.01, "margin_start_epoch": 1, "margin_fix_epoch": 2,
}


def tiny(**changes):
    """Command-line overrides: the tiny settings with ``changes`` (None drops a key)."""
    settings = {**TINY_SETTINGS, **changes}
    return [f"--{key}={value}" for key, value in settings.items() if value is not None]


TINY = tiny()


def run(script, *args, check=True, timeout=900):
    result = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script.name} failed:\n{result.stderr[-4000:]}")
    return result


def log_fields(output_folder):
    """The train log as one dict per epoch line: {"epoch": 1.0, "margin": 0.1, ...}."""
    rows = []
    for line in (Path(output_folder) / "train_log.txt").read_text().splitlines():
        fields = {}
        for part in line.replace(" - ", ", ").split(", "):
            key, value = part.rsplit(": ", 1)
            fields[key] = float(value)
        rows.append(fields)
    return rows


def epochs_logged(output_folder):
    log = Path(output_folder) / "train_log.txt"
    if not log.exists():
        return []
    return [int(line.split(",")[0].split(":")[1]) for line in log.read_text().splitlines() if line.startswith("epoch:")]


@pytest.fixture(scope="module")
def stage1(librispeech_voxceleb_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    tree = librispeech_voxceleb_tree
    trials = "[" + ",".join(str(p) for p in tree.trial_lists) + "]"
    run(TRAIN, "hparams/train.yaml", *TINY, f"--data_folder={tree.root}", f"--trial_lists={trials}",
        f"--output_folder={out}", "--number_of_epochs=2", "--average_last=2", "--tensorboard=True")
    return out


@pytest.mark.slow
def test_training_run_folder_holds_its_curves_and_tensorboard_events(stage1):
    """The picture and its files beside the log, SphereFace2's terms in the log line and
    the same values in TensorBoard's event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sb_sphereface2.training.curves import read_run

    run = read_run(stage1)
    rows = log_fields(stage1)
    assert run["label"] == "sphereface2_c seed 1986" and (stage1 / "training_curves.png").is_file()
    iterations = [r["iteration"] for r in run["records"]]
    assert {int(row["iterations"]) for row in rows} <= set(iterations) and iterations[-1] == rows[-1]["iterations"]
    for row in rows:
        assert {"train bias", "train positive_term", "train negative_term", "train negative_active"} <= set(row)
        assert row["train loss"] == pytest.approx(row["train positive_term"] + row["train negative_term"], rel=0.02)
    assert [h["epoch"] for h in run["histograms"]] == [1, 2]
    events = EventAccumulator(str(stage1 / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("valid/EER")] == [
        (int(row["iterations"]), pytest.approx(row["valid EER"], abs=0.006)) for row in rows]
    assert [e.step for e in events.Scalars("sphereface2/negative_active")] == [r["iteration"] for r in run["records"]]
    assert len(events.Histograms("cosines/other")) == 2


def test_training_writes_an_averaged_model_folder(stage1):
    model = stage1 / "model"
    for name in ("hyperparams.yaml", "embedding_model.ckpt", "classifier.ckpt", "compute_cost.ckpt",
                 "label_encoder.ckpt", "label_encoder.txt", "train_hparams.yaml"):
        assert (model / name).is_file(), name
    assert epochs_logged(stage1) == [1, 2]
    rows = log_fields(stage1)
    for row in rows:
        # validation EER on held-out speakers, raw-cosine error and the mean cosines
        assert {"valid EER", "valid minDCF", "train error", "train cos_own", "train cos_other",
                "iterations", "utt_per_s"} <= set(row), row
    assert "averaged epochs: [1, 2]" in (model / "train_hparams.yaml").read_text()
    # the run folder holds the composed hyperparameters it ran with, overrides and the
    # number of classes written in: plain hyperpyyaml loads them
    from hyperpyyaml import load_hyperpyyaml

    with open(stage1 / "hyperparams.yaml") as handle:
        ran = load_hyperpyyaml(handle)
    classes = len((model / "label_encoder.txt").read_text().split("=> ")) - 2
    assert (ran["num_classes"], ran["emb_dim"], ran["output_folder"]) == (classes, 64, str(stage1))
    assert ran["classifier"].weight.shape == (classes, 64)
    # trial speakers were removed from training
    train_csv = (stage1 / "data" / "train.csv").read_text()
    test_csv = (stage1 / "data" / "test.csv").read_text().splitlines()[1:]
    test_speakers = {row.split(",")[5] for row in test_csv}
    assert test_speakers and not any(f",{spk}," in train_csv for spk in test_speakers)


@pytest.mark.slow
def test_finetune_and_score(stage1, librispeech_voxceleb_tree, tmp_path):
    tree = librispeech_voxceleb_tree
    trials = "[" + ",".join(str(p) for p in tree.trial_lists) + "]"
    lmf = tmp_path / "lmf"
    run(TRAIN, "hparams/finetune.yaml", *TINY, f"--data_folder={tree.root}", f"--trial_lists={trials}",
        f"--output_folder={lmf}", f"--pretrained_model={stage1 / 'model'}", "--number_of_epochs=1",
        "--crop_seconds=2.5")
    assert [row["margin"] for row in log_fields(lmf)] == [0.3]  # the fixed large margin of SphereFace2-C
    assert (lmf / "model" / "embedding_model.ckpt").is_file()
    # the head kept the classes of stage 1
    assert (lmf / "model" / "label_encoder.txt").read_text() == (stage1 / "model" / "label_encoder.txt").read_text()

    scores = tmp_path / "scores"
    run(SCORE, "hparams/verification.yaml", "--device=cpu", f"--model_folder={lmf / 'model'}",
        f"--data_prep_folder={stage1 / 'data'}", f"--output_folder={scores}",
        "--cohort_utterances_per_speaker=2", "--top_n=50")
    results = json.loads((scores / "results.json").read_text())["results"]
    names = {p.stem for p in tree.trial_lists}
    assert set(results) == {f"{n} ({kind})" for n in names for kind in ("cosine", "asnorm")}
    from sb_sphereface2.data.trials import read_trials
    from sb_sphereface2.scoring.metrics import compute_eer

    for trial_list in tree.trial_lists:
        expected = read_trials(trial_list)
        for kind in ("cosine", "asnorm"):
            # one score line per trial, in the list's order; the reported EER is theirs
            lines = [line.split() for line in (scores / kind / "scores" / f"{trial_list.stem}.txt").read_text().splitlines()]
            assert [(int(a), b, c) for a, b, c, _ in lines] == list(zip(expected.labels.tolist(), expected.enrol, expected.test))
            metrics = results[f"{trial_list.stem} ({kind})"]
            assert (metrics["trials"], metrics["targets"]) == (len(expected), int(expected.labels.sum()))
            eer, _ = compute_eer(np.array([float(x[3]) for x in lines]), expected.labels)
            assert metrics["eer_percent"] == pytest.approx(100 * eer, abs=0.05)  # scores written to 6 digits
    assert (scores / "asnorm" / "det.png").stat().st_size > 1000


@pytest.mark.slow
def test_kill_and_rerun_resumes(librispeech_voxceleb_tree, tmp_path):
    """SIGKILL during epoch 2 of 3; the same command again continues from epoch 1's
    checkpoint and finishes, the margin and lr schedules where they stopped."""
    from sb_sphereface2 import MarginScheduler, WarmupExponentialLR

    tree = librispeech_voxceleb_tree
    out = tmp_path / "resume"
    args = [sys.executable, str(TRAIN), "hparams/train.yaml", *tiny(margin_fix_epoch=3, dev_speakers=0),
            f"--data_folder={tree.root}", f"--output_folder={out}", "--number_of_epochs=3", "--average_last=1"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while epochs_logged(out) != [1] and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert epochs_logged(out) == [1], "training did not reach the end of epoch 1 in time"
    assert not (out / "model").exists()

    subprocess.run(args, cwd=ROOT, check=True, capture_output=True, timeout=900)
    assert epochs_logged(out) == [1, 2, 3]
    rows = log_fields(out)
    per_epoch = rows[0]["iterations"]
    assert [row["iterations"] for row in rows] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    # the values in force at each epoch's last iteration are the uninterrupted schedules'
    margin = MarginScheduler(final_margin=0.2, start_epoch=1, fix_epoch=3)
    lr = WarmupExponentialLR(0.05, 0.01, warmup_epochs=0, total_epochs=3, total_batch=32)
    for row in rows:
        last = int(row["iterations"]) - 1
        assert row["margin"] == pytest.approx(margin(last, per_epoch), rel=1e-2)  # the log keeps 3 digits
        assert row["lr"] == pytest.approx(lr(last, per_epoch), rel=1e-2)
    assert 0 < rows[0]["margin"] < rows[2]["margin"] == 0.2
    assert (out / "model" / "embedding_model.ckpt").is_file()
    # the curves' records: every iteration once (the killed epoch's recorded again), 3 epochs' histograms
    from sb_sphereface2.training.curves import read_json_lines

    records = read_json_lines(out / "train_records.jsonl", "iteration")
    lines = (out / "train_records.jsonl").read_text().splitlines()
    per_epoch_records = [[r["iteration"] for r in records if r["epoch"] == epoch] for epoch in (1, 2, 3)]
    assert [its[-1] for its in per_epoch_records] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert per_epoch_records[1] == [i + per_epoch for i in per_epoch_records[0]] and len(lines) == len(records)
    assert [h["epoch"] for h in read_json_lines(out / "train_histograms.jsonl", "epoch")] == [1, 2, 3]


@pytest.mark.parametrize("case", ["missing_folder", "unknown_trial_id", "bad_trial_line", "augment_without_data"])
def test_bad_input_is_a_one_line_error(case, librispeech_voxceleb_tree, tmp_path):
    tree = librispeech_voxceleb_tree
    data = tree.root
    trials = tmp_path / "trials.txt"
    extra = []
    settings = {}
    if case == "missing_folder":
        data = tmp_path / "nowhere"
    elif case == "unknown_trial_id":
        trials.write_text(f"1 {tree.trial_speakers[0]}/s1/00001.wav nobody/s1/00001.wav\n")
        extra = [f"--trial_lists=[{trials}]"]
    elif case == "bad_trial_line":
        trials.write_text("1 only_two_fields.wav\n")
        extra = [f"--trial_lists=[{trials}]"]
    else:
        settings = {"augment": True}
    out = tmp_path / "out"
    result = run(TRAIN, "hparams/train.yaml", *tiny(**settings), f"--data_folder={data}",
                 f"--output_folder={out}", *extra, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-2000:]
    expected = {"missing_folder": "nowhere", "unknown_trial_id": "nobody",
                "bad_trial_line": "trials.txt:1", "augment_without_data": "musan_folder"}[case]
    assert expected in last
    assert "Traceback" not in result.stderr
    assert not (out / "model").exists() and not (out / "data" / "train.csv").exists()
