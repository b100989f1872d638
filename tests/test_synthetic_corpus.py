"""espeak-ng synthetic corpus: layout, audio format, distinct speakers, trials, idempotence."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tools import synthetic_corpus
from sb_sphereface2.data.prepare import prepare_voxceleb
from tools.synthetic_corpus import draw_speakers, main, make_espeak_corpus
from sb_sphereface2.data.trials import read_trials


def wav_files(root):
    return sorted(Path(root).glob("*/*/*.wav"))


def test_layout_and_audio_format(espeak_corpus):
    files = wav_files(espeak_corpus.root)
    assert len(files) == 8 * 2 * 2
    assert sorted({f.parts[-3] for f in files}) == [f"spk{i:03d}" for i in range(1, 9)]
    assert sorted({f.parts[-2] for f in files}) == ["s1", "s2"]
    for f in files:
        info = soundfile.info(f)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 3.0 <= info.duration <= 6.0
        audio, _ = soundfile.read(f)
        assert 0.01 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() <= 1.0


def test_trials_cover_held_out_speakers(espeak_corpus):
    trials = read_trials(espeak_corpus.trials)
    assert trials.speakers() == ["spk006", "spk007", "spk008"] == espeak_corpus.trial_speakers
    assert int(trials.labels.sum()) == len(trials) - int(trials.labels.sum()) == 3 * 4
    for label, enrol, test in zip(trials.labels, trials.enrol, trials.test):
        assert os.path.isfile(os.path.join(espeak_corpus.root, enrol + ".wav"))
        assert (enrol.split("/")[0] == test.split("/")[0]) == bool(label)
        if label:
            assert enrol.split("/")[1] != test.split("/")[1]


def log_spectrum(path):
    audio, rate = soundfile.read(path)
    frames = np.lib.stride_tricks.sliding_window_view(audio, 512)[::256] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    loud = power.sum(axis=1) > np.percentile(power.sum(axis=1), 50)
    bands = np.add.reduceat(power[loud], np.geomspace(2, 257, 25).astype(int)[:-1], axis=1)
    return np.log(bands.mean(axis=0) + 1e-10)


def test_speakers_are_distinct(espeak_corpus):
    voices = [(s.voice, s.pitch, s.rate) for s in espeak_corpus.speakers]
    assert len(set(v[0] for v in voices)) == len(voices)
    files = wav_files(espeak_corpus.root)
    features = np.stack([log_spectrum(f) for f in files])
    features -= features.mean(axis=0)
    speaker = np.array([f.parts[-3] for f in files])
    distance = np.linalg.norm(features[:, None] - features[None], axis=2)
    same = speaker[:, None] == speaker[None]
    off_diagonal = ~np.eye(len(files), dtype=bool)
    within = distance[same & off_diagonal].mean()
    between = distance[~same].mean()
    assert within < 0.7 * between, (within, between)


def test_speaker_draw_is_deterministic_and_distinct():
    variants = [f"m{i}" for i in range(1, 8)]
    a = draw_speakers(30, seed=5, variants=variants)
    assert a == draw_speakers(30, seed=5, variants=variants)
    assert a != draw_speakers(30, seed=6, variants=variants)
    assert len({s.voice for s in a}) == 30
    with pytest.raises(ValueError, match="at most 56 distinct"):
        draw_speakers(57, seed=5, variants=variants)


def test_idempotent_rebuild_and_refusal(tmp_path):
    out = tmp_path / "corpus"
    make_espeak_corpus(out, num_speakers=2, sessions_per_speaker=1, utts_per_session=2, num_workers=1)
    stamps = {f: f.stat().st_mtime_ns for f in wav_files(out)}
    make_espeak_corpus(out, num_speakers=2, sessions_per_speaker=1, utts_per_session=2, num_workers=1)
    assert {f: f.stat().st_mtime_ns for f in wav_files(out)} == stamps
    make_espeak_corpus(out, num_speakers=3, sessions_per_speaker=1, utts_per_session=2, num_workers=1)
    assert len(wav_files(out)) == 6
    assert not [p for p in os.listdir(tmp_path) if p != "corpus"]  # no partial/old folders left
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a synthetic corpus"):
        make_espeak_corpus(foreign, num_speakers=2, sessions_per_speaker=1, utts_per_session=2)
    assert os.listdir(foreign) == ["keep.txt"]


def test_same_seed_same_audio(tmp_path):
    a = make_espeak_corpus(tmp_path / "a", 2, 1, 2, seed=3, num_workers=1)
    b = make_espeak_corpus(tmp_path / "b", 2, 1, 2, seed=3, num_workers=2)
    for fa, fb in zip(wav_files(a.root), wav_files(b.root)):
        assert fa.read_bytes() == fb.read_bytes()


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_corpus.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng"):
        make_espeak_corpus(tmp_path / "c", 2, 1, 2)
    assert not (tmp_path / "c").exists()


def test_command_line_and_preparation(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(out), "--speakers", "6", "--sessions", "2", "--utterances", "1", "--trial-speakers", "2"]) == 0
    assert "6 speakers" in capsys.readouterr().out
    result = prepare_voxceleb(out, tmp_path / "save", trial_lists=[out / "trials.txt"], dev_speakers=2)
    assert Path(result["test_csv"]).read_text().count("\n") == 1 + 2 * 2
    assert main([str(out), "--speakers", "1"]) == 1
    assert "need at least 2 speakers" in capsys.readouterr().err
