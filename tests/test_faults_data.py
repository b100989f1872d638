"""Fault injection, data preparation: damaged audio and unwritable folders. Each fault is
driven through the recipe command lines (subprocess) on a tiny corpus and ends in a one-line
error naming the file, folder or key (exit code, no traceback), with earlier results and
checkpoints intact, or in a correct result. ``docs/reliability.md`` lists the faults and the
tests that show what the project does."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

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
