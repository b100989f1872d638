"""Fault injection: damaged inputs, typos, full or read-only folders and ``kill -9``, each
driven through the recipe command lines (subprocess) on a tiny corpus. Every case ends in
a one-line error naming the file, folder or key (exit code, no traceback), with earlier
results and checkpoints intact, or in a correct result. ``docs/reliability.md`` lists
the faults and the tests below that show what the project does."""

# --- training: hyperparameters, checkpoints, kill -9 -------------------------------------

# Every training case runs recipes/VoxCeleb/train.py (subprocess) on 6 librispeech-mini
# speakers with a tiny ResNet, batch 2 (about 10 iterations an epoch) and a mid-epoch
# checkpoint every 3 iterations; the cases that need an earlier run copy one uninterrupted
# reference run. The schedules at every step are checked in process (SpeakerBrain).

import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

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



# --- data preparation: damaged audio, bad folders -----------------------------------------

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402

_REPO = Path(__file__).resolve().parents[1]


def _prep_corpus(root, speakers=5):
    """speakers x 2 sessions x 2 one-second WAV files of noise."""
    rng = np.random.default_rng(0)
    for s in range(speakers):
        for k in range(2):
            for u in range(2):
                path = root / f"id{s:05d}" / f"sess{k}" / f"{u:05d}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    return root


def _prep_damage(root, damage, speaker="id00001"):
    """Damage one file as a user's corpus gets damaged; returns its path and the reason."""
    victim = root / speaker / "sess0" / "00000.wav"
    if damage == "truncated_flac":  # a FLAC cut in half (an interrupted copy)
        victim.unlink()
        victim = victim.with_suffix(".flac")
        soundfile.write(victim, np.random.default_rng(1).standard_normal(160000).astype(np.float32) * 0.1, 16000)
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        return victim, "cannot decode (Error : flac decoder lost sync.)"
    if damage == "nan_samples":
        audio = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
        audio[5000:5050] = np.nan
        soundfile.write(victim, audio, 16000, subtype="FLOAT")
        return victim, "50 NaN/inf samples"
    if damage == "sample_rate":
        soundfile.write(victim, np.zeros(8000, np.float32) + 0.01, 8000)
        return victim, "sample rate 8000 Hz, expected 16000 Hz"
    if damage == "too_short":
        soundfile.write(victim, np.zeros(1600, np.float32) + 0.01, 16000)
        return victim, "0.10 s long, shorter than the 0.5 s minimum"
    raise ValueError(damage)


def _prep_run(*args, script="prepare.py"):
    env = dict(os.environ, PYTHONPATH=str(_REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, str(_REPO / "recipes" / "VoxCeleb" / script), *map(str, args)]
    return subprocess.run(command, cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)


def _prep_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _prep_assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in last, last
    return last


@pytest.mark.slow  # subprocesses that import torch: several seconds each
@pytest.mark.parametrize("damage", ["truncated_flac", "nan_samples", "sample_rate", "too_short"])
def test_prepare_stops_on_damaged_audio_naming_the_file(tmp_path, damage):
    root = _prep_corpus(tmp_path / "data")
    victim, reason = _prep_damage(root, damage)
    save = tmp_path / "prep"
    proc = _prep_run(save, root, "--dev-speakers", "0")
    _prep_assert_one_line_error(proc, f"1 bad audio file(s), first {victim}: {reason}", str(save / "bad_audio.txt"))
    # nothing half-written: no CSV, no temporary file; the list of bad files and the cache
    files = _prep_files(save)
    assert "bad_audio.txt" in files and not [f for f in files if f.endswith(".csv") and "/" not in f]
    assert not [f for f in files if ".tmp" in f]
    assert (save / "bad_audio.txt").read_text() == f"{victim}\t{reason}\n"


@pytest.mark.slow  # a subprocess that imports torch: several seconds each
def test_prepare_drop_option_leaves_bad_files_out(tmp_path):
    root = _prep_corpus(tmp_path / "data", speakers=6)
    damaged = [_prep_damage(root, d, f"id{s:05d}")[0] for s, d in enumerate(["truncated_flac", "nan_samples", "sample_rate", "too_short"])]
    save = tmp_path / "prep"
    proc = _prep_run(save, root, "--dev-speakers", "0", "--drop-bad-audio")
    assert proc.returncode == 0, proc.stderr
    assert "Dropped 4 bad audio files" in proc.stderr and "Traceback" not in proc.stderr
    train = (save / "train.csv").read_text()
    assert train.count("\n") == 1 + 6 * 4 - 4 and not any(str(p) in train for p in damaged)
    listed = [line.split("\t")[0] for line in (save / "bad_audio.txt").read_text().splitlines()]
    assert listed == sorted(str(p) for p in damaged)


@contextlib.contextmanager
def _read_only(folder):
    """Make a folder unwritable, for root too (root ignores permission bits: chattr +i)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


@pytest.mark.slow  # a subprocess that imports torch: several seconds each
def test_prepare_read_only_prep_folder_one_line(tmp_path):
    root = _prep_corpus(tmp_path / "data")
    save = tmp_path / "prep"
    assert _prep_run(save, root, "--dev-speakers", "2").returncode == 0
    before = {name: (save / name).read_bytes() for name in _prep_files(save)}
    soundfile.write(root / "id00000" / "sess0" / "00009.wav", np.zeros(16000, np.float32) + 0.01, 16000)  # new input
    with _read_only(save):
        proc = _prep_run(save, root, "--dev-speakers", "2")
    _prep_assert_one_line_error(proc, f"cannot write to the data-prep folder {save}: ")
    assert {name: (save / name).read_bytes() for name in _prep_files(save)} == before
    # with intact outputs and unchanged inputs a read-only folder is fine (nothing to write)
    (root / "id00000" / "sess0" / "00009.wav").unlink()
    with _read_only(save):
        proc = _prep_run(save, root, "--dev-speakers", "2")
    assert proc.returncode == 0 and "up to date" in proc.stderr, proc.stderr


@pytest.mark.slow  # a subprocess that imports torch: several seconds each
def test_train_stops_on_damaged_audio_naming_the_file(tmp_path):
    root = _prep_corpus(tmp_path / "data")
    victim, reason = _prep_damage(root, "truncated_flac")
    proc = _prep_run(
        "hparams/train.yaml", f"--data_folder={root}", f"--output_folder={tmp_path / 'run'}",
        f"--data_prep_folder={tmp_path / 'prep'}", "--augment=False", "--dev_speakers=0", "--device=cpu",
        script="train.py",
    )
    _prep_assert_one_line_error(proc, f"first {victim}: {reason}", "--drop_bad_audio=True")
    assert not (tmp_path / "prep" / "train.csv").exists()



# --- pretrained models: strict loading, damaged checkpoints --------------------------------

# Every model folder this package writes names a strict loading hook in its pretrainer, so
# a wrong file (classifier.ckpt copied over embedding_model.ckpt), a truncated or an empty
# checkpoint stops the export, SpeechBrain's from_hparams and stage 2 with one line naming
# the file, instead of loading a random encoder with warnings.

import os as _os
import shutil as _shutil
import subprocess as _subprocess
import sys as _sys
from pathlib import Path as _Path

import pytest as _pytest

_REPO = _Path(__file__).resolve().parents[1]
_FIXTURE_MODEL = _REPO / "tests" / "fixtures" / "model_folder_v0_1"  # 0.1.0: 12 speakers, tiny ResNet
_FIXTURE_SIZES = ["--n_mels=24", "--emb_dim=32", "--resnet_channels=[4,4,8,8]", "--resnet_blocks=[1,1,1,1]"]
_DAMAGES = ("classifier_as_embedding", "truncated", "empty")
_FROM_HPARAMS = (
    "import sys\n"
    "from speechbrain.inference.speaker import SpeakerRecognition\n"
    "try:\n"
    "    SpeakerRecognition.from_hparams(source=sys.argv[1], savedir=sys.argv[2])\n"
    "except Exception as error:\n"
    "    sys.exit(f'error: {error}')\n"
    "print('loaded')\n"
)


def _run_python(args, cwd=_REPO):
    env = dict(_os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = _os.pathsep.join([str(_REPO), env.get("PYTHONPATH", "")])
    return _subprocess.run([_sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)


def _damage(folder, damage):
    """Damage ``folder/embedding_model.ckpt``; return its path."""
    target = folder / "embedding_model.ckpt"
    if damage == "classifier_as_embedding":
        _shutil.copyfile(folder / "classifier.ckpt", target)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(b"")
    return target


def _assert_one_line_error(result, path, whole_stderr=True):
    """Exit code != 0, no traceback, no SpeechBrain warning per key, and one line
    ``error: ...`` naming the file (the whole of stderr when ``whole_stderr``)."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "did not have parameters" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr[-3000:]
    if whole_stderr:
        assert lines == errors, result.stderr[-3000:]
    return errors[0]


_EXPECTED = {
    "classifier_as_embedding": "does not fit the ResNet it is loaded into: missing 62 keys (conv1.weight, "
                               "bn1.weight, bn1.bias, ...); unexpected 1 key (weight)",
    "truncated": "is not a readable checkpoint (truncated or damaged?)",
    "empty": "is empty (0 bytes)",
}


@_pytest.fixture(scope="module")
def exported_for_faults(tmp_path_factory):
    """A folder exported by recipes/VoxCeleb/export.py from the 0.1.0 model folder."""
    out = tmp_path_factory.mktemp("pretrained_faults") / "exported"
    result = _run_python(["recipes/VoxCeleb/export.py", _FIXTURE_MODEL, out, "--name", "fault-tests"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@_pytest.mark.slow
@_pytest.mark.parametrize("damage", _DAMAGES)
def test_export_of_a_damaged_model_folder_keeps_the_earlier_export(damage, exported_for_faults, tmp_path):
    source = tmp_path / "model"
    _shutil.copytree(_FIXTURE_MODEL, source)
    path = _damage(source, damage)
    destination = tmp_path / "exported"
    _shutil.copytree(exported_for_faults, destination)
    before = {name: (destination / name).read_bytes() for name in _os.listdir(destination)}
    result = _run_python(["recipes/VoxCeleb/export.py", source, destination])
    assert _EXPECTED[damage] in _assert_one_line_error(result, path)
    assert {name: (destination / name).read_bytes() for name in _os.listdir(destination)} == before
    assert sorted(_os.listdir(tmp_path)) == ["exported", "model"], "no temporaries left"


@_pytest.mark.slow
@_pytest.mark.parametrize("damage", _DAMAGES)
def test_speechbrain_from_hparams_refuses_a_damaged_export(damage, exported_for_faults, tmp_path):
    folder = tmp_path / "exported"
    _shutil.copytree(exported_for_faults, folder)
    path = _damage(folder, damage)
    result = _run_python(["-c", _FROM_HPARAMS, folder, tmp_path / "savedir"])
    assert _EXPECTED[damage] in _assert_one_line_error(result, path)


@_pytest.mark.slow
def test_speechbrain_from_hparams_loads_the_intact_export(exported_for_faults, tmp_path):
    result = _run_python(["-c", _FROM_HPARAMS, exported_for_faults, tmp_path / "savedir"])
    assert result.returncode == 0 and result.stdout.strip().endswith("loaded"), result.stderr[-3000:]


@_pytest.mark.slow
@_pytest.mark.parametrize("damage", _DAMAGES)
def test_stage_two_from_a_damaged_stage_one_folder(damage, librispeech_voxceleb_tree, tmp_path):
    """train.py hparams/finetune.yaml --pretrained_model=<damaged folder>: one line, nothing trained."""
    tree = librispeech_voxceleb_tree
    speakers = [s for s in (_FIXTURE_MODEL / "label_encoder.txt").read_text().split("'")[1::2]
                if (tree.root / s).is_dir()]
    assert len(speakers) >= 8
    data = tmp_path / "data"
    for speaker in speakers:
        _shutil.copytree(tree.root / speaker, data / speaker)
    folder = tmp_path / "stage1_model"
    _shutil.copytree(_FIXTURE_MODEL, folder)
    path = _damage(folder, damage)
    out = tmp_path / "lmf"
    result = _run_python(["recipes/VoxCeleb/train.py", "hparams/finetune.yaml", f"--data_folder={data}",
                          f"--output_folder={out}", f"--pretrained_model={folder}", "--device=cpu",
                          "--num_workers=0", "--augment=False", "--dev_speakers=0", "--trial_lists=[]",
                          "--batch_size=4", "--number_of_epochs=1", *_FIXTURE_SIZES])
    message = _assert_one_line_error(result, path, whole_stderr=False)
    assert _EXPECTED[damage] in message
    assert not (out / "model").exists()
    assert not list((out / "save").glob("CKPT*")), "nothing trained"



# --- scoring: one scoring per folder, all-or-nothing output, trial checks -----------------
# Every case runs recipes/VoxCeleb/score.py as a user would, on a tiny model trained once
# with recipes/VoxCeleb/train.py (10 librispeech-mini speakers, 1 epoch) and a copy of it
# with perturbed weights (model B).

import hashlib as _scoring_hashlib
import json as _scoring_json
import os as _scoring_os
import shutil as _scoring_shutil
import signal as _scoring_signal
import subprocess as _scoring_subprocess
import sys as _scoring_sys
import tempfile as _scoring_tempfile
import time as _scoring_time
from pathlib import Path as _ScoringPath

import pytest as _scoring_pytest

_SCORING_REPO = _ScoringPath(__file__).resolve().parents[1]
_SCORING_TRAIN = _SCORING_REPO / "recipes" / "VoxCeleb" / "train.py"
_SCORING_SCORE = _SCORING_REPO / "recipes" / "VoxCeleb" / "score.py"
_SCORING_TINY = ["--device=cpu", "--num_workers=0", "--augment=False", "--speed_perturb=False",
                 "--n_mels=24", "--resnet_channels=[4,4,8,8]", "--resnet_blocks=[1,1,1,1]",
                 "--emb_dim=32", "--batch_size=16", "--dev_speakers=0", "--warmup_epochs=0",
                 "--number_of_epochs=1", "--average_last=1", "--margin_start_epoch=0",
                 "--margin_fix_epoch=1"]
_SCORING_FAST = ["--device=cpu", "--cohort_utterances_per_speaker=2", "--top_n=4"]


def _scoring_sha256(path):
    return _scoring_hashlib.sha256(_ScoringPath(path).read_bytes()).hexdigest()


def _scoring_env():
    return dict(_scoring_os.environ, PYTHONPATH=str(_SCORING_REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _scoring_command(model, prep, out, *extra):
    return [_scoring_sys.executable, str(_SCORING_SCORE), "hparams/verification.yaml",
            f"--model_folder={model}", f"--data_prep_folder={prep}", f"--output_folder={out}",
            *_SCORING_FAST, *extra]


def _scoring_run(model, prep, out, *extra, preexec_fn=None, timeout=300):
    return _scoring_subprocess.run(_scoring_command(model, prep, out, *extra), cwd=_SCORING_REPO,
                                   env=_scoring_env(), capture_output=True, text=True,
                                   timeout=timeout, preexec_fn=preexec_fn)


def _scoring_one_line_error(result, *fragments):
    """Exit status 1, no traceback, one ``error:`` line holding every fragment."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in errors[0], errors[0]
    return errors[0]


def _scoring_snapshot(folder):
    """{relative path: sha256} of every file under ``folder``."""
    folder = _ScoringPath(folder)
    return {str(p.relative_to(folder)): _scoring_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _scoring_trial_lines(speakers, seed):
    """Cross-session targets and as many cross-speaker non-targets, VoxCeleb format."""
    import numpy as np

    lines = [f"1 {s}/s1/{a:05d}.flac {s}/s2/{b:05d}.flac" for s in speakers for a in (1, 2) for b in (3, 4)]
    rng = np.random.default_rng(seed)
    utts = [f"{s}/s{1 + k // 2}/{k + 1:05d}" for s in speakers for k in range(4)]
    while len(lines) < 32:
        i, j = rng.choice(len(utts), 2, replace=False)
        if utts[i].split("/")[0] != utts[j].split("/")[0]:
            lines.append(f"0 {utts[i]}.flac {utts[j]}.flac")
    return lines


@_scoring_pytest.fixture(scope="module")
def scoring_setup(librispeech_voxceleb_tree):
    """A workspace with the corpus, trained model A, perturbed model B, the prepared data
    and a first complete scoring of A."""
    import torch

    tree = librispeech_voxceleb_tree
    base = _ScoringPath(_scoring_tempfile.mkdtemp(prefix="sb_faults_scoring_"))
    corpus = base / "corpus"
    trial_speakers, train_speakers = tree.trial_speakers[:4], tree.train_speakers[:6]
    for speaker in trial_speakers + train_speakers:
        _scoring_shutil.copytree(tree.root / speaker, corpus / speaker)
    lines = _scoring_trial_lines(trial_speakers, seed=3)
    # One duplicate (the first trial again, sides swapped) and one self-trial: warned, kept.
    label, enrol, test = lines[0].split()
    lines += [f"{label} {test} {enrol}", f"1 {enrol} {enrol}"]
    trial_list = base / "vox_tiny.txt"
    trial_list.write_text("\n".join(lines) + "\n")
    run_folder = base / "run"
    trained = _scoring_subprocess.run(
        [_scoring_sys.executable, str(_SCORING_TRAIN), "hparams/train.yaml", *_SCORING_TINY,
         f"--data_folder={corpus}", f"--trial_lists=[{trial_list}]", f"--output_folder={run_folder}"],
        cwd=_SCORING_REPO, env=_scoring_env(), capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    model_a = run_folder / "model"
    model_b = base / "model_b"
    _scoring_shutil.copytree(model_a, model_b)
    state = torch.load(model_b / "embedding_model.ckpt", map_location="cpu")
    generator = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = value + 0.05 * torch.randn(value.shape, generator=generator)
    torch.save(state, model_b / "embedding_model.ckpt")
    # The first scoring also calibrates (QMF: durations and imposter means) on a list of
    # training speakers' utterances, found in train.csv.
    calibration_list = base / "calibration.txt"
    calibration_list.write_text("\n".join(_scoring_trial_lines(train_speakers, seed=4)) + "\n")
    out = base / "scores"
    first = _scoring_run(model_a, run_folder / "data", out, f"--calibration_trials={calibration_list}")
    assert first.returncode == 0, first.stderr[-3000:]
    yield {"base": base, "model_a": model_a, "model_b": model_b, "prep": run_folder / "data", "out": out,
           "first": first, "trial_list": trial_list, "calibration_list": calibration_list}
    _scoring_shutil.rmtree(base, ignore_errors=True)


def _scoring_model_of(results_json):
    document = _scoring_json.loads(_ScoringPath(results_json).read_text())
    return document["model"], document["results"]


@_scoring_pytest.mark.slow
def test_scoring_results_name_the_model_and_the_trial_lists(scoring_setup):
    setup = scoring_setup
    out, prep = setup["out"], setup["prep"]
    assert "Traceback" not in setup["first"].stderr
    assert "warning: trial list 'vox_tiny': 1 duplicate trial" in setup["first"].stderr
    assert "warning: trial list 'vox_tiny': 1 self-trial" in setup["first"].stderr
    expected_model = {"folder": str(setup["model_a"]),
                      "embedding_model_sha256": _scoring_sha256(setup["model_a"] / "embedding_model.ckpt")}
    list_sha = _scoring_sha256(prep / "trials" / "vox_tiny.txt")
    for results_json in (out / "results.json", out / "cosine" / "results.json", out / "asnorm" / "results.json"):
        model, results = _scoring_model_of(results_json)
        assert model == expected_model, results_json
        for metrics in results.values():
            assert metrics["trial_list_sha256"] == list_sha
            assert (metrics["duplicate_trials"], metrics["self_trials"]) == (1, 1)
            assert metrics["trials"] == 34
    for sub in ("cosine", "asnorm"):  # QMF calibration, fitted on the calibration list
        calibration = _scoring_json.loads((out / sub / "calibration.json").read_text())
        assert calibration["feature_names"] == ["min_duration", "max_duration", "min_imposter_mean",
                                                "max_imposter_mean"]
        settings = _scoring_json.loads((out / sub / "results.json").read_text())["settings"]
        assert str(setup["calibration_list"]) in settings["calibration"]
        assert _scoring_sha256(setup["calibration_list"]) in settings["calibration"]
        for metrics in _scoring_model_of(out / sub / "results.json")[1].values():
            assert {"raw_cllr", "cllr", "raw_act_dcf_0.01", "act_dcf_0.01", "calibrated_eer_percent"} <= set(metrics)
    markdown = (out / "results.md").read_text()
    assert "Calibration (before: the raw scores" in markdown
    assert f"Model: {setup['model_a']} (embedding_model.ckpt sha256 {expected_model['embedding_model_sha256']})" in markdown
    assert "1 duplicate trial (kept), 1 self-trial (kept)" in markdown
    assert not [p.name for p in out.parent.iterdir() if ".tmp" in p.name or ".old" in p.name]


@_scoring_pytest.mark.slow
def test_scoring_kill_9_then_a_busy_folder_then_the_next_run_completes(scoring_setup):
    """1. A scoring of model A killed with ``kill -9`` in the middle leaves the previous
    results as they were (its temporary folder stays). 2. The next run (model B) removes
    that temporary folder; while B holds the output folder (stopped with SIGSTOP once it has
    the lock) another run refuses at once with one line naming the folder and B's PID.
    3. B finishes and every results file names model B."""
    setup = scoring_setup
    out = setup["out"]
    before = _scoring_snapshot(out)
    killed = _scoring_subprocess.Popen(_scoring_command(setup["model_a"], setup["prep"], out), cwd=_SCORING_REPO,
                                       env=_scoring_env(), stdout=_scoring_subprocess.DEVNULL,
                                       stderr=_scoring_subprocess.DEVNULL)
    partial = out.parent / f".scores.tmp{killed.pid}"
    deadline = _scoring_time.time() + 120
    while not (partial / "embeddings_test.npz").is_file():  # killed in the middle of the run
        assert killed.poll() is None and _scoring_time.time() < deadline, "the run never wrote embeddings"
        _scoring_time.sleep(0.02)
    killed.send_signal(_scoring_signal.SIGKILL)
    killed.wait(timeout=60)
    assert _scoring_snapshot(out) == before  # the previous results, untouched and complete
    assert partial.is_dir()  # the dead run's temporary folder, for the next run to remove

    holder = _scoring_subprocess.Popen(_scoring_command(setup["model_b"], setup["prep"], out), cwd=_SCORING_REPO,
                                       env=_scoring_env(), stdout=_scoring_subprocess.PIPE,
                                       stderr=_scoring_subprocess.PIPE, text=True)
    pid_file = out.parent / ".scores.lock.pid"
    try:
        deadline = _scoring_time.time() + 120
        while not (pid_file.is_file() and pid_file.read_text().strip() == str(holder.pid)):
            assert holder.poll() is None and _scoring_time.time() < deadline, "run B never took the lock"
            _scoring_time.sleep(0.02)
        _scoring_os.kill(holder.pid, _scoring_signal.SIGSTOP)
        refused = _scoring_run(setup["model_a"], setup["prep"], out)
        _scoring_one_line_error(refused, f"output folder {out} is in use by another scoring run (PID {holder.pid})")
        assert "test utterances" not in refused.stderr  # refused before embedding anything
    finally:
        _scoring_os.kill(holder.pid, _scoring_signal.SIGCONT)
        _, stderr = holder.communicate(timeout=300)
    assert holder.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert not partial.exists()
    model, results = _scoring_model_of(out / "results.json")
    assert model == {"folder": str(setup["model_b"]),
                     "embedding_model_sha256": _scoring_sha256(setup["model_b"] / "embedding_model.ckpt")}
    assert set(results) == {"vox_tiny (cosine)", "vox_tiny (asnorm)"}
    for sub in ("cosine", "asnorm"):
        assert _scoring_model_of(out / sub / "results.json")[0] == model
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".scores.tmp")]


def _scoring_prep_copy(setup, name):
    prep = setup["base"] / name
    _scoring_shutil.copytree(setup["prep"], prep)
    return prep


@_scoring_pytest.mark.slow
def test_scoring_bad_trial_lists_fail_before_anything_is_embedded(scoring_setup):
    setup = scoring_setup
    out = setup["out"]
    before = _scoring_snapshot(out)
    # A list with targets only.
    prep = _scoring_prep_copy(setup, "prep_all_targets")
    targets = [line for line in (prep / "trials" / "vox_tiny.txt").read_text().splitlines() if line.startswith("1")]
    (prep / "trials" / "all_targets.txt").write_text("\n".join(targets) + "\n")
    result = _scoring_run(setup["model_a"], prep, out)
    _scoring_one_line_error(result, "trial list 'all_targets'", "0 non-target trials")
    # A 0.05 s test clip.
    import soundfile

    prep = _scoring_prep_copy(setup, "prep_short_clip")
    speaker = (prep / "test.csv").read_text().splitlines()[1].split(",")[5]
    clip = setup["base"] / "corpus" / speaker / "s2" / "00099.flac"
    soundfile.write(clip, [0.01] * 800, 16000)
    with open(prep / "test.csv", "a", encoding="utf-8") as handle:
        handle.write(f"{speaker}/s2/00099,0.05,{clip},0,800,{speaker},1.0\n")
    with open(prep / "trials" / "vox_tiny.txt", "a", encoding="utf-8") as handle:
        handle.write(f"1 {speaker}/s1/00001.flac {speaker}/s2/00099.flac\n")
    result = _scoring_run(setup["model_a"], prep, out)
    _scoring_one_line_error(result, str(clip), "0.05 s", "min_utterance_seconds")
    assert _scoring_snapshot(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".scores.tmp")]


def _scoring_unprivileged():
    """Make permission bits apply to the child when the tests run as root: drop the
    capabilities that let root ignore them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
    CAP_FOWNER) from the bounding set before ``exec``. Fails loudly if that is refused."""
    if _scoring_os.geteuid() != 0:
        return None

    def drop():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2, 3):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")

    return drop


@_scoring_pytest.mark.slow
def test_scoring_unwritable_output_folder_is_one_line(scoring_setup):
    setup = scoring_setup
    parent = setup["base"] / "read_only"
    _scoring_shutil.copytree(setup["out"], parent / "scores")
    before = _scoring_snapshot(parent / "scores")
    parent.chmod(0o555)
    try:
        result = _scoring_run(setup["model_a"], setup["prep"], parent / "scores", preexec_fn=_scoring_unprivileged())
    finally:
        parent.chmod(0o755)
    _scoring_one_line_error(result, f"cannot write the output folder {parent / 'scores'}", "Permission denied")
    assert _scoring_snapshot(parent / "scores") == before


@_scoring_pytest.mark.slow
def test_scoring_full_file_system_is_one_line_and_keeps_the_previous_results(scoring_setup):
    """A file-size limit (RLIMIT_FSIZE: every write past it fails, as on a full disk) hits
    the run when it writes its first file larger than 24 kB (a PNG figure)."""
    import resource

    setup = scoring_setup
    out = setup["out"]
    before = _scoring_snapshot(out)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))

    result = _scoring_run(setup["model_a"], setup["prep"], out, preexec_fn=limit_file_size)
    _scoring_one_line_error(result, f"cannot write the output folder {out}: File too large")
    assert _scoring_snapshot(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".scores.tmp")]


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
