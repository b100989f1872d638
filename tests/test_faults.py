"""Fault injection: damaged inputs, typos, full or read-only folders and ``kill -9``, each
driven through the recipe command lines (subprocess) on a tiny corpus. Every case ends in
a one-line error naming the file, folder or key (exit code, no traceback), with earlier
results and checkpoints intact, or in a correct result. ``docs/reliability.md`` lists
the faults and the tests below that show what the project does."""

# --- training: hyperparameters, checkpoints, kill -9 -------------------------------------


# --- data preparation: damaged audio, bad folders -----------------------------------------

import contextlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
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
