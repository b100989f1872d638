"""Fault injection, scoring: one scoring per folder, all-or-nothing output and trial-list
checks. Each fault is driven through the recipe command lines (subprocess) on a tiny corpus
and ends in a one-line error naming the file, folder or key (exit code, no traceback), with
earlier results and checkpoints intact, or in a correct result. ``docs/reliability.md``
lists the faults and the tests that show what the project does."""

# Every case runs recipes/VoxCeleb/score.py as a user would, on a tiny model trained once
# with recipes/VoxCeleb/train.py (10 librispeech-mini speakers, 1 epoch) and a copy of it
# with perturbed weights (model B).

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

_SCORING_REPO = Path(__file__).resolve().parents[1]
_SCORING_TRAIN = _SCORING_REPO / "recipes" / "VoxCeleb" / "train.py"
_SCORING_SCORE = _SCORING_REPO / "recipes" / "VoxCeleb" / "score.py"
_SCORING_TINY = ["--device=cpu", "--num_workers=0", "--augment=False", "--speed_perturb=False",
                 "--n_mels=24", "--resnet_channels=[4,4,8,8]", "--resnet_blocks=[1,1,1,1]",
                 "--emb_dim=32", "--batch_size=16", "--dev_speakers=0", "--warmup_epochs=0",
                 "--number_of_epochs=1", "--average_last=1", "--margin_start_epoch=0",
                 "--margin_fix_epoch=1"]
_SCORING_FAST = ["--device=cpu", "--cohort_utterances_per_speaker=2", "--top_n=4"]


def _scoring_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _scoring_env():
    return dict(os.environ, PYTHONPATH=str(_SCORING_REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _scoring_command(model, prep, out, *extra):
    return [sys.executable, str(_SCORING_SCORE), "hparams/verification.yaml",
            f"--model_folder={model}", f"--data_prep_folder={prep}", f"--output_folder={out}",
            *_SCORING_FAST, *extra]


def _scoring_run(model, prep, out, *extra, preexec_fn=None, timeout=300):
    return subprocess.run(_scoring_command(model, prep, out, *extra), cwd=_SCORING_REPO,
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
    folder = Path(folder)
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


@pytest.fixture(scope="module")
def scoring_setup(librispeech_voxceleb_tree):
    """A workspace with the corpus, trained model A, perturbed model B, the prepared data
    and a first complete scoring of A."""
    import torch

    tree = librispeech_voxceleb_tree
    base = Path(tempfile.mkdtemp(prefix="sb_faults_scoring_"))
    corpus = base / "corpus"
    trial_speakers, train_speakers = tree.trial_speakers[:4], tree.train_speakers[:6]
    for speaker in trial_speakers + train_speakers:
        shutil.copytree(tree.root / speaker, corpus / speaker)
    lines = _scoring_trial_lines(trial_speakers, seed=3)
    # One duplicate (the first trial again, sides swapped) and one self-trial: warned, kept.
    label, enrol, test = lines[0].split()
    lines += [f"{label} {test} {enrol}", f"1 {enrol} {enrol}"]
    trial_list = base / "vox_tiny.txt"
    trial_list.write_text("\n".join(lines) + "\n")
    run_folder = base / "run"
    trained = subprocess.run(
        [sys.executable, str(_SCORING_TRAIN), "hparams/train.yaml", *_SCORING_TINY,
         f"--data_folder={corpus}", f"--trial_lists=[{trial_list}]", f"--output_folder={run_folder}"],
        cwd=_SCORING_REPO, env=_scoring_env(), capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    model_a = run_folder / "model"
    model_b = base / "model_b"
    shutil.copytree(model_a, model_b)
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
    shutil.rmtree(base, ignore_errors=True)


def _scoring_model_of(results_json):
    document = json.loads(Path(results_json).read_text())
    return document["model"], document["results"]


@pytest.mark.slow
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
        calibration = json.loads((out / sub / "calibration.json").read_text())
        assert calibration["feature_names"] == ["min_duration", "max_duration", "min_imposter_mean",
                                                "max_imposter_mean"]
        settings = json.loads((out / sub / "results.json").read_text())["settings"]
        assert str(setup["calibration_list"]) in settings["calibration"]
        assert _scoring_sha256(setup["calibration_list"]) in settings["calibration"]
        for metrics in _scoring_model_of(out / sub / "results.json")[1].values():
            assert {"raw_cllr", "cllr", "raw_act_dcf_0.01", "act_dcf_0.01", "calibrated_eer_percent"} <= set(metrics)
    markdown = (out / "results.md").read_text()
    assert "Calibration (before: the raw scores" in markdown
    assert f"Model: {setup['model_a']} (embedding_model.ckpt sha256 {expected_model['embedding_model_sha256']})" in markdown
    assert "1 duplicate trial (kept), 1 self-trial (kept)" in markdown
    assert not [p.name for p in out.parent.iterdir() if ".tmp" in p.name or ".old" in p.name]


@pytest.mark.slow
def test_scoring_kill_9_then_a_busy_folder_then_the_next_run_completes(scoring_setup):
    """1. A scoring of model A killed with ``kill -9`` in the middle leaves the previous
    results as they were (its temporary folder stays). 2. The next run (model B) removes
    that temporary folder; while B holds the output folder (stopped with SIGSTOP once it has
    the lock) another run refuses at once with one line naming the folder and B's PID.
    3. B finishes and every results file names model B."""
    setup = scoring_setup
    out = setup["out"]
    before = _scoring_snapshot(out)
    killed = subprocess.Popen(_scoring_command(setup["model_a"], setup["prep"], out), cwd=_SCORING_REPO,
                                       env=_scoring_env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
    partial = out.parent / f".scores.tmp{killed.pid}"
    deadline = time.time() + 120
    while not (partial / "embeddings_test.npz").is_file():  # killed in the middle of the run
        assert killed.poll() is None and time.time() < deadline, "the run never wrote embeddings"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert _scoring_snapshot(out) == before  # the previous results, untouched and complete
    assert partial.is_dir()  # the dead run's temporary folder, for the next run to remove

    holder = subprocess.Popen(_scoring_command(setup["model_b"], setup["prep"], out), cwd=_SCORING_REPO,
                                       env=_scoring_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    pid_file = out.parent / ".scores.lock.pid"
    try:
        deadline = time.time() + 120
        while not (pid_file.is_file() and pid_file.read_text().strip() == str(holder.pid)):
            assert holder.poll() is None and time.time() < deadline, "run B never took the lock"
            time.sleep(0.02)
        os.kill(holder.pid, signal.SIGSTOP)
        refused = _scoring_run(setup["model_a"], setup["prep"], out)
        _scoring_one_line_error(refused, f"output folder {out} is in use by another scoring run (PID {holder.pid})")
        assert "test utterances" not in refused.stderr  # refused before embedding anything
    finally:
        os.kill(holder.pid, signal.SIGCONT)
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
    shutil.copytree(setup["prep"], prep)
    return prep


@pytest.mark.slow
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
    if os.geteuid() != 0:
        return None

    def drop():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2, 3):
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")

    return drop


@pytest.mark.slow
def test_scoring_unwritable_output_folder_is_one_line(scoring_setup):
    setup = scoring_setup
    parent = setup["base"] / "read_only"
    shutil.copytree(setup["out"], parent / "scores")
    before = _scoring_snapshot(parent / "scores")
    parent.chmod(0o555)
    try:
        result = _scoring_run(setup["model_a"], setup["prep"], parent / "scores", preexec_fn=_scoring_unprivileged())
    finally:
        parent.chmod(0o755)
    _scoring_one_line_error(result, f"cannot write the output folder {parent / 'scores'}", "Permission denied")
    assert _scoring_snapshot(parent / "scores") == before


@pytest.mark.slow
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
