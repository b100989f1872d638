"""Fault injection, training: bad hyperparameters, damaged or foreign checkpoints, read-only or
full folders and ``kill -9`` during training. Each fault is driven through the recipe
command lines (subprocess) on a tiny corpus and ends in a one-line error naming the file,
folder or key (exit code, no traceback), with earlier results and checkpoints intact, or in
a correct result. ``docs/reliability.md`` lists the faults and the tests that show what the
project does."""

# Every training case runs recipes/VoxCeleb/train.py (subprocess) on 6 librispeech-mini
# speakers with a tiny ResNet, batch 2 (about 10 iterations an epoch) and a mid-epoch
# checkpoint every 3 iterations; the cases that need an earlier run copy one uninterrupted
# reference run. The schedules at every step are checked in process (SpeakerBrain).

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

_TRAIN_REPO = Path(__file__).resolve().parents[1]
_TRAIN_SCRIPT = _TRAIN_REPO / "recipes" / "VoxCeleb" / "train.py"
_TRAIN_TINY = [
    "--device=cpu", "--num_workers=0", "--augment=False", "--speed_perturb=False", "--n_mels=40",
    "--resnet_channels=[8,8,16,16]", "--resnet_blocks=[1,1,1,1]", "--emb_dim=64", "--batch_size=2",
    "--dev_speakers=0", "--warmup_epochs=1", "--lr=0.05", "--final_lr=0.01", "--margin_start_epoch=1",
    "--margin_fix_epoch=3", "--average_last=2", "--number_of_epochs=4",
    "--ckpt_interval_steps=3", "--ckpt_interval_minutes=0",
]
_TRAIN_LEFTOVER_PID = 999999999  # above any pid_max: a dead process


def _train_command(out, corpus, *extra):
    """The recipe's command line: the tiny settings, ``extra`` replacing those it names."""
    named = {arg.split("=", 1)[0] for arg in extra}
    tiny = [arg for arg in _TRAIN_TINY if arg.split("=", 1)[0] not in named]
    return [sys.executable, str(_TRAIN_SCRIPT), "hparams/train.yaml", *tiny,
            f"--data_folder={corpus}", f"--output_folder={out}", *map(str, extra)]


def _train_env():
    return dict(os.environ, PYTHONPATH=str(_TRAIN_REPO), OMP_NUM_THREADS="1")


def _train_run(out, corpus, *extra, prefix=(), preexec_fn=None):
    return subprocess.run([*prefix, *_train_command(out, corpus, *extra)], cwd=_TRAIN_REPO, env=_train_env(),
                          capture_output=True, text=True, timeout=600, preexec_fn=preexec_fn)


def _train_one_line_error(result, code, *fragments):
    """The run failed with ``code`` and one line naming every fragment, no traceback."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


_TRAIN_TIMINGS = {"epoch_s", "utt_per_s", "step_utt_per_s", "wait_share", "loader_utt_per_s_per_core"}


def _train_log(out):
    """The train log, one dict per epoch (values as logged), without the timings."""
    rows = []
    for line in (Path(out) / "train_log.txt").read_text().splitlines():
        fields = dict(part.rsplit(": ", 1) for part in line.replace(" - ", ", ").split(", "))
        rows.append({k: v for k, v in fields.items() if k not in _TRAIN_TIMINGS})
    assert rows and {"epoch", "iterations", "lr", "margin", "train loss"} <= set(rows[0]), rows
    return rows


def _train_model(out):
    return {name: torch.load(Path(out) / "model" / f"{name}.ckpt")
            for name in ("embedding_model", "classifier", "compute_cost")}


def _train_same_states(first, second):
    return all(first[n].keys() == second[n].keys() and all(torch.equal(first[n][k], second[n][k]) for k in first[n])
               for n in first)


def _train_checkpoints(out):
    save = Path(out) / "save"
    return sorted(p for p in save.glob("CKPT+*") if (p / "CKPT.yaml").is_file()) if save.is_dir() else []


def _train_fingerprints(out, *names):
    """sha256 of every file under ``names`` (files or folders) of a run folder."""
    from sb_sphereface2.files import file_sha256

    prints = {}
    for name in names:
        target = Path(out) / name
        for path in ([target] if target.is_file() else sorted(target.rglob("*"))):
            if path.is_file():
                prints[str(path.relative_to(out))] = file_sha256(path)
    return prints


@pytest.fixture(scope="module")
def _train_corpus(librispeech_voxceleb_tree, tmp_path_factory):
    """6 training speakers of the shared tree (``corpus``), and the same plus a 7th (``plus``)."""
    base = tmp_path_factory.mktemp("train_faults")
    speakers = librispeech_voxceleb_tree.train_speakers[:7]
    for name, chosen in (("corpus", speakers[:6]), ("plus", speakers)):
        for speaker in chosen:
            shutil.copytree(librispeech_voxceleb_tree.root / speaker, base / name / speaker)
    return base


@pytest.fixture(scope="module")
def _train_reference(_train_corpus):
    """An uninterrupted run of 4 epochs."""
    out = _train_corpus / "reference"
    result = _train_run(out, _train_corpus / "corpus")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["epoch"] for row in _train_log(out)] == ["1", "2", "3", "4"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("extra, fragments", [
    (["--number_of_epocs=2"], ["unknown hyperparameter 'number_of_epocs'", "did you mean number_of_epochs"]),
    (["--number_of_epochs=abc"], ["number_of_epochs must be an integer", "'abc'"]),
    (["--margin=-0.5"], ["margin must be", ">= 0", "type C", "-0.5"]),
])
def test_train_bad_hyperparameters_stop_before_any_work(extra, fragments, _train_corpus, tmp_path):
    out = tmp_path / "run"
    result = _train_run(out, _train_corpus / "corpus", *extra)
    _train_one_line_error(result, 2, *fragments)
    assert not out.exists()  # before data preparation: nothing was written


@pytest.mark.slow
def test_train_batch_larger_than_the_data_is_one_line(_train_corpus, tmp_path):
    result = _train_run(tmp_path / "run", _train_corpus / "corpus", "--batch_size=4096")
    _train_one_line_error(result, 1, "the training set gives no batch", "batch_size")
    assert not _train_checkpoints(tmp_path / "run")


@pytest.mark.slow
def test_train_kill_9_at_random_moments_then_rerun_is_the_uninterrupted_run(_train_reference, _train_corpus, tmp_path):
    """SIGKILL three times (first right after the first mid-epoch checkpoint, then at
    seeded random moments after new progress); the rerun finishes with the reference's
    epochs, iterations, lr, margin and training statistics, and bit-identical parameters."""
    out = tmp_path / "run"
    command = _train_command(out, _train_corpus / "corpus")
    rng = random.Random(20260)
    resumed_mid_epoch = 0
    for kill in range(3):
        before = set(_train_checkpoints(out))
        process = subprocess.Popen(command, cwd=_TRAIN_REPO, env=_train_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while process.poll() is None and time.time() < deadline:
            new = set(_train_checkpoints(out)) - before
            if kill == 0 and any("brain_intra_epoch_ckpt" in (p / "CKPT.yaml").read_text() for p in new):
                break
            if kill > 0 and new:
                time.sleep(rng.uniform(0.0, 0.25))
                break
            time.sleep(0.02)
        assert process.poll() is None, f"run {kill + 1} ended before it was killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        newest = _train_checkpoints(out)[-1] if _train_checkpoints(out) else None
        resumed_mid_epoch += bool(newest and "brain_intra_epoch_ckpt" in (newest / "CKPT.yaml").read_text())
    assert resumed_mid_epoch >= 1
    assert not (out / "model").exists()
    # what killed runs leave: temporary folders of dead processes
    (out / f".model.tmp{_TRAIN_LEFTOVER_PID}").mkdir()
    staged = out / "save" / f".CKPT+2000-01-01+00-00-00+00.tmp{_TRAIN_LEFTOVER_PID}" / "CKPT+2000-01-01+00-00-00+00"
    staged.mkdir(parents=True)
    (staged / "embedding_model.ckpt").write_bytes(b"PK\x03\x04 cut")

    final = subprocess.run(command, cwd=_TRAIN_REPO, env=_train_env(), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert _train_log(out) == _train_log(_train_reference)
    assert _train_same_states(_train_model(out), _train_model(_train_reference))
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not (out / "save" / "broken").exists()  # kills leave no damaged checkpoint


@pytest.mark.slow
def test_train_truncated_newest_checkpoint_is_moved_aside(_train_reference, _train_corpus, tmp_path):
    """A half-written embedding_model.ckpt in the newest checkpoint (an older writer killed
    during the save): reported in one line, moved to save/broken/, the run resumes from the
    checkpoint before and ends with the uninterrupted run's model."""
    out = tmp_path / "run"
    shutil.copytree(_train_reference, out)
    shutil.rmtree(out / "model")
    newest = _train_checkpoints(out)[-1]
    half = (newest / "embedding_model.ckpt").read_bytes()
    half = half[: len(half) // 2]
    (newest / "embedding_model.ckpt").write_bytes(half)
    result = _train_run(out, _train_corpus / "corpus")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    reports = [line for line in output.splitlines() if "is damaged" in line]
    assert len(reports) == 1 and str(newest) in reports[0] and "embedding_model.ckpt" in reports[0], reports
    assert (out / "save" / "broken" / newest.name / "embedding_model.ckpt").read_bytes() == half  # kept
    assert _train_log(out) == _train_log(_train_reference)
    assert _train_same_states(_train_model(out), _train_model(_train_reference))


@pytest.mark.slow
def test_train_run_folder_of_other_speakers_is_refused(_train_reference, _train_corpus, tmp_path):
    """The same output folder with one more speaker: one line naming the checkpoint and the
    new speaker, suggesting a new --output_folder; checkpoints, model and logs untouched."""
    out = tmp_path / "run"
    shutil.copytree(_train_reference, out)
    kept = ("save", "model", "hyperparams.yaml", "train_log.txt")
    before = _train_fingerprints(out, *kept)
    result = _train_run(out, _train_corpus / "plus")
    extra_speaker = sorted(p.name for p in (_train_corpus / "plus").iterdir())
    new = (set(extra_speaker) - {p.name for p in (_train_corpus / "corpus").iterdir()}).pop()
    _train_one_line_error(result, 2, "does not fit this run", "6 classes", "7", new, "--output_folder",
                          str(_train_checkpoints(out)[-1]))
    assert _train_fingerprints(out, *kept) == before


def _train_read_only(folder):
    """(command prefix, preexec_fn, undo) under which ``folder`` cannot be written: a
    read-only bind mount in a user and mount namespace (``unshare -rm``), else permission
    bits, which root ignores unless it drops CAP_DAC_OVERRIDE and CAP_FOWNER first."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        return ("unshare", "-rm", "sh", "-c", script, str(folder)), None, lambda: None
    paths = [folder, *folder.rglob("*")]
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o222)

    def drop_capabilities():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 3):  # CAP_DAC_OVERRIDE, CAP_FOWNER
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")

    def undo():
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)

    return (), drop_capabilities if os.geteuid() == 0 else None, undo


@pytest.mark.slow
def test_train_read_only_output_folder_is_one_line(_train_reference, _train_corpus, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(_train_reference, out)
    before = _train_fingerprints(out, ".")
    prefix, preexec_fn, undo = _train_read_only(out)
    try:
        result = _train_run(out, _train_corpus / "corpus", "--number_of_epochs=5", prefix=prefix,
                            preexec_fn=preexec_fn)
    finally:
        undo()
    line = _train_one_line_error(result, 1, f"cannot write the output folder {out}")
    assert "Read-only file system" in line or "Permission denied" in line, line
    assert _train_fingerprints(out, ".") == before


def _train_file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_train_failed_checkpoint_write_keeps_earlier_checkpoints(_train_reference, _train_corpus, tmp_path):
    """Writes of more than 40 kB fail (the file-size limit stands in for a full disk: the
    same OSError in the middle of the checkpoint): one line naming the save folder and the
    cause; the earlier checkpoints and the log are untouched, no partial checkpoint left."""
    out = tmp_path / "run"
    shutil.copytree(_train_reference, out)
    before = _train_fingerprints(out, "save", "train_log.txt")
    result = _train_run(out, _train_corpus / "corpus", "--number_of_epochs=5",
                        preexec_fn=_train_file_size_limit(40_000))
    _train_one_line_error(result, 1, f"cannot save a checkpoint in {out / 'save'}", "File too large")
    assert _train_fingerprints(out, "save", "train_log.txt") == before
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def _train_checkpointer(folder):
    """A SafeCheckpointer of a linear layer and a text recoverable, with two checkpoints."""
    from speechbrain.utils.epoch_loop import EpochCounter

    from sb_sphereface2.training.checkpoints import SafeCheckpointer

    layer, counter = torch.nn.Linear(3, 2), EpochCounter(5)
    checkpointer = SafeCheckpointer(folder / "save", {"layer": layer, "counter": counter})
    for epoch in (1, 2):
        counter.current = epoch
        checkpointer.save_checkpoint(meta={"epoch": epoch})
    return checkpointer, layer, counter


@pytest.mark.parametrize("damage, reported", [
    ("truncated", "layer.ckpt does not load"),
    ("empty", "layer.ckpt is empty"),
    ("missing", "has no layer.ckpt"),
    ("meta_missing", "has no CKPT.yaml"),
    ("meta_cut", "CKPT.yaml is damaged"),
])
def test_train_damaged_checkpoint_is_moved_aside_and_the_previous_loads(damage, reported, tmp_path, caplog):
    checkpointer, layer, counter = _train_checkpointer(tmp_path)
    newest = _train_checkpoints(tmp_path)[-1]
    target = newest / ("CKPT.yaml" if damage.startswith("meta") else "layer.ckpt")
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:200])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage in ("missing", "meta_missing"):
        target.unlink()
    else:
        target.write_text("# yamllint disable\nend-of-epoch: tr")
    counter.current = 0
    with caplog.at_level("WARNING"):
        recovered = checkpointer.recover_if_possible()
    assert recovered.meta["epoch"] == 1 and counter.current == 1
    assert [p.name for p in (tmp_path / "save" / "broken").iterdir()] == [newest.name]
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(newest) in warnings[0] and reported in warnings[0], warnings


def test_train_failed_save_leaves_nothing_and_names_the_folder(tmp_path):
    import errno

    from sb_sphereface2.training.checkpoints import CheckpointWriteError

    checkpointer, layer, counter = _train_checkpointer(tmp_path)
    before = _train_fingerprints(tmp_path, ".")

    def full_disk(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    checkpointer.add_recoverable("layer", layer, custom_save_hook=full_disk)
    with pytest.raises(CheckpointWriteError, match=f"cannot save a checkpoint in {tmp_path / 'save'}: No space left"):
        checkpointer.save_checkpoint(meta={"epoch": 3})
    assert _train_fingerprints(tmp_path, ".") == before  # no CKPT+ folder, no temporary folder


def test_train_checkpoint_of_other_classes_is_refused_before_loading(tmp_path):
    from sb_sphereface2.training.checkpoints import CheckpointMismatchError, SafeCheckpointer
    from sb_sphereface2.training.run_state import ClassLabels

    save = tmp_path / "save"
    SafeCheckpointer(save, {"layer": torch.nn.Linear(3, 2), "classes": ClassLabels(["a", "b"])}).save_checkpoint()
    layer = torch.nn.Linear(3, 3)
    weight = layer.weight.detach().clone()
    checkpointer = SafeCheckpointer(save, {"layer": layer, "classes": ClassLabels(["a", "b", "c"])})
    with pytest.raises(CheckpointMismatchError,
                       match="the checkpoint has 2 classes, this run 3 \\(this run also has c\\)"):
        checkpointer.recover_if_possible()
    checkpointer = SafeCheckpointer(save, {"layer": layer})  # an old checkpoint: no classes, the shape tells
    with pytest.raises(CheckpointMismatchError,
                       match=r"layer.weight is \[2, 3\] in the checkpoint, \[3, 3\] in this run"):
        checkpointer.recover_if_possible()
    assert torch.equal(layer.weight, weight) and len(_train_checkpoints(tmp_path)) == 1


class _TrainKilled(Exception):
    pass


def _train_in_process(folder, stop_at=None, interval=3, model="resnet34"):
    """Train (or resume) 3 epochs of 4 iterations in process, a mid-epoch checkpoint every
    ``interval`` iterations; stop as if killed after iteration ``stop_at`` (an int), or at
    the start of the first validation stage (``"validation"``). ``model``: resnet34 (SGD,
    the stateless WarmupExponentialLR) or ecapa_tdnn (Adam, SpeechBrain's CyclicLRScheduler,
    which keeps a state). Returns [(step, lr, margin)] of the iterations run and the
    parameters at the end."""
    import speechbrain as sb
    from speechbrain.dataio.dataset import DynamicItemDataset

    from sb_sphereface2.hparams import load_recipe_hparams
    from sb_sphereface2.training.brain import SpeakerBrain

    overrides = {
        "output_folder": str(folder), "data_folder": str(folder), "num_workers": 0, "augment": False,
        "n_mels": 40, "resnet_channels": [8, 8, 16, 16], "resnet_blocks": [1, 1, 1, 1], "emb_dim": 64,
        "batch_size": 4, "number_of_epochs": 3, "warmup_epochs": 1, "lr": 0.05, "final_lr": 0.01,
        "margin_start_epoch": 1, "margin_fix_epoch": 3, "average_last": 2, "ckpt_interval_minutes": 0,
    }
    if model == "ecapa_tdnn":
        for key in ("resnet_channels", "resnet_blocks", "warmup_epochs", "final_lr"):
            del overrides[key]
        overrides.update(model="ecapa_tdnn", ecapa_channels=16, cyclic_step_size=5, lr=0.01)
    hparams = load_recipe_hparams(str(_TRAIN_REPO / "hparams" / "train.yaml"), overrides, num_classes=4)

    def signal_of(index):  # a random offset from torch's global generator, as the random crop
        offset = int(torch.randint(0, 8000, (1,)))
        return torch.randn(24000, generator=torch.Generator().manual_seed(int(index)))[offset:offset + 16000]

    data = DynamicItemDataset({f"u{i}": {"index": i, "label": i % 4} for i in range(16)})
    data.add_dynamic_item(signal_of, takes="index", provides="sig")
    data.add_dynamic_item(lambda label: torch.LongTensor([label]), takes="label", provides="spk_id_encoded")
    data.set_output_keys(["id", "sig", "spk_id_encoded"])
    steps = []

    class Recording(SpeakerBrain):
        def on_fit_batch_end(self, batch, outputs, loss, should_step):
            super().on_fit_batch_end(batch, outputs, loss, should_step)
            steps.append((self.optimizer_step, self.optimizer.param_groups[0]["lr"], self.hparams.compute_cost.margin))
            if self.optimizer_step == stop_at:
                raise _TrainKilled

        def on_stage_start(self, stage, epoch=None):
            if stage == sb.Stage.VALID and stop_at == "validation":
                raise _TrainKilled
            super().on_stage_start(stage, epoch)

    brain = Recording(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                      run_opts={"device": "cpu", "ckpt_interval_steps": interval, "noprogressbar": True},
                      checkpointer=hparams["checkpointer"])
    try:
        brain.fit(hparams["epoch_counter"], data, [],
                  train_loader_kwargs={**hparams["dataloader_options"], "batch_size": 4},
                  valid_loader_kwargs={"batch_size": 1})
    except _TrainKilled:
        pass
    states = {name: {k: v.clone() for k, v in hparams[name].state_dict().items()}
              for name in ("embedding_model", "classifier", "compute_cost")}
    return steps, states


@pytest.fixture(scope="module")
def _train_in_process_reference(tmp_path_factory):
    """The uninterrupted in-process run of a model: (folder, steps, parameters)."""
    runs = {}

    def reference(model="resnet34"):
        if model not in runs:
            folder = tmp_path_factory.mktemp(f"in_process_{model}")
            steps, states = _train_in_process(folder, model=model)
            assert [step for step, _, _ in steps] == list(range(1, 13))
            runs[model] = folder, steps, states
        return runs[model]
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("model, stop_at, interval, resumes_from", [
    ("resnet34", 5, 3, 4),  # from the epoch-1 checkpoint
    ("resnet34", 8, 3, 7),  # from a mid-epoch checkpoint of epoch 2
    ("resnet34", "validation", 2, 4),  # from the mid-epoch checkpoint after the last iteration of epoch 1
    ("ecapa_tdnn", 8, 3, 7),  # the cyclic lr schedule's state, mid-epoch 2
])
def test_train_resumed_run_has_the_uninterrupted_schedules_at_every_step(model, stop_at, interval, resumes_from,
                                                                         tmp_path, _train_in_process_reference):
    reference_folder, reference, reference_states = _train_in_process_reference(model)
    first, _ = _train_in_process(tmp_path, stop_at=stop_at, interval=interval, model=model)
    rest, states = _train_in_process(tmp_path, model=model)
    assert rest[0][0] == resumes_from + 1
    assert first[:resumes_from] + rest == reference  # step, lr and margin of every iteration
    assert _train_same_states(states, reference_states)
    assert _train_log(tmp_path) == _train_log(reference_folder)
    # the curves' series (records, cosine histograms, log lines) are the uninterrupted run's
    assert _train_series(tmp_path) == _train_series(reference_folder)
    assert (tmp_path / "training_curves.png").is_file()


def _train_series(folder):
    """What a run's picture draws, without the timings."""
    from sb_sphereface2.training.curves import read_run

    run = read_run(folder)
    epochs = [{k: v for k, v in row.items() if k not in _TRAIN_TIMINGS} for row in run["epochs"]]
    assert len(run["records"]) == 12 and len(run["histograms"]) == len(epochs) == 3, run
    return epochs, run["records"], run["histograms"]


@pytest.mark.slow
def test_train_log_is_repaired_from_the_checkpoint(tmp_path, _train_in_process_reference):
    """A kill after the epoch's checkpoint but before (or while) its log line was written:
    the rerun finds the last epoch done, writes its line from the checkpoint's meta and
    drops the cut one."""
    reference_folder, _, reference_states = _train_in_process_reference()
    shutil.copytree(reference_folder, tmp_path / "run")
    log = tmp_path / "run" / "train_log.txt"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][:30])  # the last line cut short
    steps, states = _train_in_process(tmp_path / "run")
    assert steps == []  # every epoch was done
    assert log.read_text() == (reference_folder / "train_log.txt").read_text()
    assert _train_same_states(states, reference_states)
    assert _train_series(tmp_path / "run") == _train_series(reference_folder)
