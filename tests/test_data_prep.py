"""Data preparation: CSV content, segments of single recordings, splits and generated
trials, the audio check and its cache, idempotence, bad input."""

import csv
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sb_sphereface2.data import audio_check
from sb_sphereface2.data import prepare as data_prep
from sb_sphereface2.data.prepare import CSV_HEADER, MANIFEST_NAME, SUMMARY_NAME, prepare_voxceleb

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH_MINI = REPO / "data" / "librispeech-mini"
CACHE = audio_check.CACHE_FOLDER


def read_csv(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def read_trial_lines(path):
    """Independent parse of a VoxCeleb trial list: (label, enrol ID, test ID) per line."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            label, a, b = line.split()
            out.append((int(label), os.path.splitext(a)[0], os.path.splitext(b)[0]))
    return out


def trial_ids(path):
    return {u for _, a, b in read_trial_lines(path) for u in (a, b)}


def snapshot(folder, skip_cache=False):
    """{relative path: bytes} of every file under folder (the audio-check cache left out
    on request: it is a cache, written even when preparation stops)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (skip_cache and p.relative_to(folder).parts[0] == CACHE)
    }


def make_tree(root, speakers=4, sessions=2, utts=2, seconds=1.0, ext="wav"):
    rng = np.random.default_rng(0)
    for s in range(speakers):
        for k in range(sessions):
            folder = Path(root) / f"id{s:05d}" / f"sess{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for u in range(utts):
                audio = (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
                soundfile.write(folder / f"{u:05d}.{ext}", audio, 16000)
    return Path(root)


def write_recording(path, speech_seconds, silence_seconds=(0.0, 0.0), seed=0):
    """Noise 'speech' between two stretches of digital silence; returns (start, stop) of the noise."""
    rng = np.random.default_rng(seed)
    lead, tail = (int(s * 16000) for s in silence_seconds)
    speech = int(speech_seconds * 16000)
    audio = np.zeros(lead + speech + tail, np.float32)
    audio[lead : lead + speech] = rng.standard_normal(speech) * 0.1
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, 16000)
    return lead, lead + speech


@pytest.fixture(scope="module")
def prepared(librispeech_voxceleb_tree, tmp_path_factory):
    save = tmp_path_factory.mktemp("prepared")
    result = prepare_voxceleb(
        librispeech_voxceleb_tree.root, save, trial_lists=librispeech_voxceleb_tree.trial_lists, dev_speakers=5
    )
    return librispeech_voxceleb_tree, save, result


def test_train_csv_lists_whole_files_of_training_speakers(prepared):
    tree, save, result = prepared
    header, rows = read_csv(result["train_csv"])
    assert header == CSV_HEADER == ["ID", "duration", "wav", "start", "stop", "spk_id"]
    _, dev_rows = read_csv(result["dev_csv"])
    dev_speakers = {r["spk_id"] for r in dev_rows}
    train_speakers = {r["spk_id"] for r in rows}
    assert len(dev_speakers) == 5
    assert train_speakers == set(tree.train_speakers) - dev_speakers
    assert not train_speakers & set(tree.trial_speakers)
    assert len(rows) == 4 * len(train_speakers)  # several files per speaker: none is cut
    for row in rows[::37]:
        audio, rate = soundfile.read(row["wav"])
        assert row["ID"] == os.path.splitext(os.path.relpath(row["wav"], tree.root))[0]
        assert row["spk_id"] == row["ID"].split("/")[0]
        assert (int(row["start"]), int(row["stop"])) == (0, len(audio))
        assert float(row["duration"]) == pytest.approx(len(audio) / rate, abs=1e-4)


def test_test_csv_and_trial_copies(prepared):
    tree, save, result = prepared
    header, rows = read_csv(result["test_csv"])
    assert header == CSV_HEADER
    expected = trial_ids(tree.trial_lists[0]) | trial_ids(tree.trial_lists[1])
    assert {r["ID"] for r in rows} == expected
    assert len(rows) == len(expected) == 4 * len(tree.trial_speakers)
    assert set(result["trial_lists"]) == {"trials_a", "trials_b"}
    for source in tree.trial_lists:
        copy = Path(result["trial_lists"][source.stem])
        assert copy.read_bytes() == source.read_bytes()


def test_dev_trials_balanced_and_within_dev(prepared):
    tree, save, result = prepared
    _, dev_rows = read_csv(result["dev_csv"])
    dev_ids = {r["ID"] for r in dev_rows}
    lines = read_trial_lines(result["dev_trials"])
    labels = [label for label, _, _ in lines]
    assert labels.count(1) == labels.count(0) > 0
    for label, enrol, test in lines:
        assert enrol in dev_ids and test in dev_ids and enrol != test
        assert (enrol.split("/")[0] == test.split("/")[0]) == (label == 1)
    # 5 speakers x 2 sessions x 2 files: 4 cross-session pairs each, and 2 pairs of
    # different files of one session (all are needed: 1,000 trials were asked for)
    targets = [(e, t) for label, e, t in lines if label == 1]
    assert sum(e.split("/")[1] != t.split("/")[1] for e, t in targets) == 5 * 4
    assert len(targets) == 5 * 6 == len(set(targets))
    summary = result["summary"]["dev"]
    assert (summary["speakers"], summary["trials"], summary["targets"]) == (5, 60, 30)
    assert summary["meaningful"] is False  # 5 speakers, 60 trials


def test_dev_split_is_deterministic_given_seed(librispeech_voxceleb_tree, tmp_path):
    tree = librispeech_voxceleb_tree
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = prepare_voxceleb(tree.root, tmp_path / name, trial_lists=tree.trial_lists, dev_speakers=4, seed=seed)
        runs[name] = Path(out["dev_trials"]).read_text()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_one_row_per_item_the_loader_draws_the_speeds(tmp_path):
    root = make_tree(tmp_path / "data", speakers=5)
    plain = prepare_voxceleb(root, tmp_path / "plain", dev_speakers=2, num_workers=1)
    header, rows = read_csv(plain["train_csv"])
    assert "speed" not in header and len(rows) == 3 * 4


def check_segments(rows, audio_root):
    """Independent checks of segment rows: inside their file, 3-6 s, no overlap."""
    by_file = {}
    for row in rows:
        start, stop = int(row["start"]), int(row["stop"])
        assert 3.0 <= (stop - start) / 16000 < 6.0, row
        assert float(row["duration"]) == pytest.approx((stop - start) / 16000, abs=1e-4)
        assert 0 <= start < stop <= soundfile.info(row["wav"]).frames
        recording, _, number = row["ID"].partition("@")
        assert row["wav"] == os.path.join(audio_root, recording) + ".flac"
        by_file.setdefault(row["wav"], []).append((start, stop, int(number)))
    for spans in by_file.values():
        spans.sort()
        assert [n for _, _, n in spans] == list(range(1, len(spans) + 1))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    return by_file


def test_one_recording_per_speaker_librispeech_mini(tmp_path, caplog):
    """librispeech-mini: 251 speakers, one recording each. Recordings with 6 s of speech
    are cut; 20 validation and 24 held-out test speakers get segment-level trials whose
    targets pair segments of different halves of one recording."""
    if not LIBRISPEECH_MINI.is_dir():
        pytest.fail(f"test data missing: {LIBRISPEECH_MINI}")
    caplog.set_level(logging.INFO)
    out = prepare_voxceleb(LIBRISPEECH_MINI, tmp_path / "save", dev_speakers=20, test_speakers=24, num_workers=2)
    _, train = read_csv(out["train_csv"])
    _, dev = read_csv(out["dev_csv"])
    _, test = read_csv(out["test_csv"])
    segments = [r for r in train + dev + test if "@" in r["ID"]]
    check_segments(segments, str(LIBRISPEECH_MINI))
    speakers = [{r["spk_id"] for r in rows} for rows in (train, dev, test)]
    assert [len(s) for s in speakers] == [207, 20, 24]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    recordings = sorted(LIBRISPEECH_MINI.glob("*/*/*.flac"))
    long = [p for p in recordings if soundfile.info(p).duration >= 6.5]  # 6 s of speech after trimming
    cut = {r["ID"].partition("@")[0] for r in segments}
    assert len(cut) >= len(long) - 5  # a few long ones have under 6 s of speech between silences
    summary = out["summary"]
    assert summary["files"] == len(recordings) == 251 and summary["bad_files"] == 0
    assert summary["segments"]["segments"] == len(segments)  # no held-out speaker has over 20
    assert summary["dev"]["speakers"] == 20 and summary["dev"]["meaningful"] is True
    for name, rows in (("dev_trials", dev), ("heldout", test)):
        path = out["dev_trials"] if name == "dev_trials" else out["trial_lists"]["heldout"]
        spans = {r["ID"]: (int(r["start"]), int(r["stop"])) for r in rows}
        lines = read_trial_lines(path)
        assert sum(label for label, _, _ in lines) * 2 == len(lines) > 100
        for label, a, b in lines:
            assert a in spans and b in spans and a != b
            if label:
                assert a.partition("@")[0] == b.partition("@")[0]  # one recording per speaker
                assert spans[a][1] <= spans[b][0] or spans[b][1] <= spans[a][0]
            else:
                assert a.split("/")[0] != b.split("/")[0]
    text = caplog.text
    assert f"recordings cut into {summary['segments']['segments']} segments" in text
    assert "validation 20 speakers" in text and "held-out test 24 speakers" in text


def test_target_segments_come_from_different_halves(tmp_path):
    """Each recording gives 4 segments (halves: 1-2 and 3-4); targets never pair two
    segments of one half, so never neighbours."""
    root = tmp_path / "data"
    for s in range(8):
        write_recording(root / f"spk{s}" / f"rec{s}.wav", 13.0, seed=s)
    out = prepare_voxceleb(root, tmp_path / "save", dev_speakers=4, num_workers=1)
    pairs = {tuple(sorted((a[-1], b[-1]))) for label, a, b in read_trial_lines(out["dev_trials"]) if label}
    assert pairs == {("1", "3"), ("1", "4"), ("2", "3"), ("2", "4")}
    assert out["summary"]["dev"]["targets"] == 4 * 4


def test_silence_is_trimmed_before_cutting(tmp_path):
    root = tmp_path / "data"
    spans = {}
    for s in range(3):
        spans[f"spk{s}"] = write_recording(root / f"spk{s}" / "rec.wav", 9.0, silence_seconds=(1.0, 2.0), seed=s)
    out = prepare_voxceleb(root, tmp_path / "save", dev_speakers=0, num_workers=1)
    _, rows = read_csv(out["train_csv"])
    assert len(rows) == 3 * 3
    for speaker, (begin, end) in spans.items():
        mine = [r for r in rows if r["spk_id"] == speaker]
        frame = 320  # the silence detector's 20 ms frames
        assert abs(int(mine[0]["start"]) - begin) <= frame and abs(int(mine[-1]["stop"]) - end) <= frame


def test_any_mix_of_layouts_and_segmentation_modes(tmp_path):
    root = tmp_path / "data"
    make_tree(root, speakers=3, seconds=4.0)  # sessions: kept whole under "auto"
    for s in range(3):
        write_recording(root / f"single{s}" / "long.wav", 10.0, seed=s)  # <speaker>/<recording>
    ids = {}
    for mode in ("auto", "all", "none"):
        out = prepare_voxceleb(root, tmp_path / mode, dev_speakers=0, segmentation=mode, num_workers=1)
        ids[mode] = sorted(r["ID"] for r in read_csv(out["train_csv"])[1])
    singles = [f"single{s}/long@{k:03d}" for s in range(3) for k in (1, 2, 3)]
    sessions = [f"id{s:05d}/sess{k}/{u:05d}" for s in range(3) for k in range(2) for u in range(2)]
    assert ids["auto"] == sorted(sessions + singles)
    assert ids["none"] == sorted(sessions + [f"single{s}/long" for s in range(3)])
    assert ids["all"] == sorted(singles + sessions)  # 4 s files are shorter than two 3 s segments
    out = prepare_voxceleb(root, tmp_path / "all2", dev_speakers=0, segmentation="all", segment_seconds=2.0, num_workers=1)
    assert sum("id00000/sess0/00000@" in r["ID"] for r in read_csv(out["train_csv"])[1]) == 2


def test_heldout_test_speakers_get_a_scorable_list(tmp_path):
    root = make_tree(tmp_path / "data", speakers=8)
    out = prepare_voxceleb(root, tmp_path / "save", dev_speakers=2, test_speakers=3, num_workers=1)
    assert set(out["trial_lists"]) == {"heldout"}
    _, test = read_csv(out["test_csv"])
    ids = {r["ID"] for r in test}
    assert trial_ids(out["trial_lists"]["heldout"]) == ids
    assert len({r["spk_id"] for r in test}) == 3
    _, train = read_csv(out["train_csv"])
    assert not {r["spk_id"] for r in train} & {r["spk_id"] for r in test}
    summary = json.loads((tmp_path / "save" / SUMMARY_NAME).read_text())
    assert summary["heldout"] == {"speakers": 3, "items": 12, "hours": 0.003, "trials": 36, "targets": 18}


def count_decodes(monkeypatch):
    calls = []
    real = audio_check.inspect_audio
    monkeypatch.setattr(audio_check, "inspect_audio", lambda path: calls.append(path) or real(path))
    return calls


def test_second_call_skips_and_changed_input_redoes(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data", speakers=6)
    trials = tmp_path / "t.txt"
    trials.write_text("1 id00000/sess0/00000.wav id00000/sess1/00000.wav\n0 id00000/sess0/00000.wav id00001/sess0/00001.wav\n")
    calls = count_decodes(monkeypatch)
    save = tmp_path / "save"
    written = []
    real_write = data_prep._write_items
    monkeypatch.setattr(data_prep, "_write_items", lambda *a: written.append(a[0]) or real_write(*a))

    def run(**options):
        calls.clear()
        written.clear()
        prepare_voxceleb(root, save, trial_lists=[trials], dev_speakers=2, num_workers=1, **options)
        return len(calls), len(written)

    assert run() == (24, 3)
    first = snapshot(save, skip_cache=True)
    assert set(first) == {"train.csv", "dev.csv", "dev_trials.txt", "test.csv", "trials/t.txt", SUMMARY_NAME, MANIFEST_NAME}
    assert run() == (0, 0) and snapshot(save, skip_cache=True) == first  # nothing to do
    assert run(seed=99) == (0, 3)  # changed option: new split, audio from the cache
    assert run(seed=99) == (0, 0)
    os.remove(save / "train.csv")  # damaged output
    assert run(seed=99) == (0, 3)
    soundfile.write(root / "id00005" / "sess0" / "00009.wav", np.zeros(16000, np.float32), 16000)  # new file
    assert run(seed=99) == (1, 3)
    trials.write_text("1 id00000/sess0/00000.wav id00000/sess1/00001.wav\n")  # changed list
    assert run(seed=99) == (0, 3)
    assert "id00000/sess1/00001.wav" in (save / "trials" / "t.txt").read_text()
    shutil.rmtree(save / CACHE)  # lost cache: decoded again
    assert run(seed=5) == (25, 3)
    prepare_voxceleb(root, save, dev_speakers=0)  # fewer outputs: stale ones are removed
    assert set(snapshot(save, skip_cache=True)) == {"train.csv", SUMMARY_NAME, MANIFEST_NAME}
    assert len(list((save / CACHE).glob("part-*.csv"))) == 1


def test_interrupted_check_keeps_what_was_decoded(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data", speakers=6, sessions=2, utts=5)  # 60 files
    monkeypatch.setattr(audio_check, "FLUSH_EVERY_FILES", 10)
    calls = count_decodes(monkeypatch)
    real = audio_check.inspect_audio

    def dies_at_the_35th(path):
        if len(calls) == 35:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(audio_check, "inspect_audio", dies_at_the_35th)
    with pytest.raises(KeyboardInterrupt):
        prepare_voxceleb(root, tmp_path / "save", dev_speakers=0, num_workers=1)
    assert not (tmp_path / "save" / "train.csv").exists()
    monkeypatch.setattr(audio_check, "inspect_audio", real)
    calls = count_decodes(monkeypatch)
    prepare_voxceleb(root, tmp_path / "save", dev_speakers=0, num_workers=1)
    assert len(calls) == 60 - 32  # the first task of 32 files finished before the interruption


def test_worker_processes_match_a_single_process(tmp_path):
    """A few hundred files decoded by 2 worker processes give the reports of one process."""
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    for s in range(20):
        for u in range(15):
            path = root / f"s{s:02d}" / f"u{u:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, rng.standard_normal(8000 + 160 * u).astype(np.float32) * 0.1, 16000)
    soundfile.write(root / "s07" / "u03.wav", np.full(8000, np.inf, np.float32), 16000, subtype="FLOAT")
    keys = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*.wav"))]
    many, decoded = audio_check.check_audio(keys, str(tmp_path / "c2"), num_workers=2, progress=False)
    one, _ = audio_check.check_audio(keys, str(tmp_path / "c1"), num_workers=1, progress=False)
    assert decoded == 300 and many == one
    assert [k[0] for k, r in zip(keys, many) if r.nonfinite] == [str(root / "s07" / "u03.wav")]
    assert [r.frames for r in many[:3]] == [8000, 8160, 8320]


def test_a_dead_decoding_process_is_a_one_line_error(tmp_path, monkeypatch):
    """A file that kills its decoding process (a decoder crash) stops the check with one
    line naming how many files were unfinished and the first; the finished ones are cached."""
    root = tmp_path / "data"
    for u in range(100):
        path = root / "s" / f"u{u:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, np.full(800, 0.1, np.float32), 16000)
    keys = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*.wav"))]
    real = audio_check.inspect_audio
    monkeypatch.setattr(audio_check, "inspect_audio", lambda path: os._exit(1) if path.endswith("u070.wav") else real(path))
    with pytest.raises(ValueError) as excinfo:
        audio_check.check_audio(keys, str(tmp_path / "cache"), num_workers=2, progress=False)
    message = str(excinfo.value)
    assert "\n" not in message and "a decoding process died" in message
    count = int(message.split(" on one of ")[1].split()[0])
    first = [k[0] for k in keys].index(message.split("the first ")[1].split(";")[0])
    assert first % 32 == 0 and first <= 64 and 32 <= count <= 100 - 32  # tasks of 32 files
    cached = audio_check.AudioCheckCache(str(tmp_path / "cache")).load()
    assert len(cached) >= 32 and not [k for k in cached if k[0].endswith("u070.wav")]


def make_damaged(folder, damage):
    """Damage one file of a tree; returns its path and the expected reason fragment."""
    victim = folder / "id00001" / "sess0" / "00000.wav"
    if damage == "truncated_flac":
        victim = victim.with_suffix(".flac")
        os.remove(victim.with_suffix(".wav"))
        soundfile.write(victim, np.random.default_rng(0).standard_normal(160000).astype(np.float32) * 0.1, 16000)
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        return victim, "cannot decode (Error : flac decoder lost sync.)"
    if damage == "nan":
        audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
        audio[1000:1050] = np.nan
        soundfile.write(victim, audio, 16000, subtype="FLOAT")
        return victim, "50 NaN/inf samples"
    if damage == "sample_rate":
        soundfile.write(victim, np.zeros(8000, np.float32), 8000)
        return victim, "sample rate 8000 Hz, expected 16000 Hz"
    if damage == "too_short":
        soundfile.write(victim, np.zeros(800, np.float32), 16000)
        return victim, "0.05 s long, shorter than the 0.5 s minimum"
    if damage == "empty":
        victim.write_bytes(b"")
        return victim, "empty file (0 bytes)"
    if damage == "corrupt":
        victim.write_bytes(b"RIFF\x00\x01garbage" * 10)
        return victim, "cannot decode (Error opening"
    if damage == "no_samples":
        soundfile.write(victim, np.zeros(0, np.float32), 16000)
        return victim, "0.00 s long"
    raise ValueError(damage)


DAMAGES = ["truncated_flac", "nan", "sample_rate", "too_short", "empty", "corrupt", "no_samples"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_bad_audio_stops_with_one_line_and_a_list(tmp_path, damage):
    root = make_tree(tmp_path / "data")
    victim, reason = make_damaged(root, damage)
    save = tmp_path / "save"
    with pytest.raises(ValueError) as excinfo:
        prepare_voxceleb(root, save, dev_speakers=0)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"1 bad audio file(s), first {victim}: {reason}")
    assert "--drop_bad_audio=True" in message and str(save / "bad_audio.txt") in message
    written = snapshot(save, skip_cache=True)
    assert list(written) == ["bad_audio.txt"]  # the list, and no CSV
    lines = written["bad_audio.txt"].decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{victim}\t{reason}")


def test_drop_bad_audio_leaves_them_out_and_says_how_many(tmp_path, caplog):
    root = make_tree(tmp_path / "data", speakers=5)
    damaged = []
    for damage, spk in (("nan", "id00001"), ("too_short", "id00003")):
        victim, _ = make_damaged(root, damage)
        target = root / spk / "sess1" / victim.name
        shutil.move(victim, target)
        shutil.copy(root / "id00000" / "sess0" / "00001.wav", victim)  # restore the original place
        damaged.append(target)
    caplog.set_level(logging.INFO)
    out = prepare_voxceleb(root, tmp_path / "save", dev_speakers=0, drop_bad_audio=True)
    assert "Dropped 2 bad audio files" in caplog.text
    _, rows = read_csv(out["train_csv"])
    assert len(rows) == 5 * 4 - 2 and not {str(p) for p in damaged} & {r["wav"] for r in rows}
    lines = Path(out["bad_audio"]).read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == sorted(str(p) for p in damaged)
    assert out["summary"]["bad_files"] == 2
    # a trial list's file cannot be dropped
    trials = tmp_path / "t.txt"
    trials.write_text("1 id00001/sess1/00000.wav id00001/sess0/00001.wav\n0 id00001/sess1/00000.wav id00002/sess0/00000.wav\n")
    with pytest.raises(ValueError, match="is named by a trial list and is bad"):
        prepare_voxceleb(root, tmp_path / "save", trial_lists=[trials], dev_speakers=0, drop_bad_audio=True)


def test_interrupted_write_leaves_no_partial_files_and_is_redone(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data")
    save = tmp_path / "save"

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_prep, "write_trials", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare_voxceleb(root, save, dev_speakers=2)
    leftovers = set(snapshot(save))
    assert MANIFEST_NAME not in leftovers and not [p for p in leftovers if ".tmp" in p]
    monkeypatch.undo()
    prepare_voxceleb(root, save, dev_speakers=2)
    assert {"train.csv", "dev.csv", "dev_trials.txt", SUMMARY_NAME, MANIFEST_NAME} == set(snapshot(save, skip_cache=True))


def test_stale_temporaries_are_removed(tmp_path):
    root = make_tree(tmp_path / "data")
    save = tmp_path / "save"
    (save / "trials").mkdir(parents=True)
    dead = [save / ".train.csv.tmp999999999", save / "trials" / ".t.txt.tmp999999998"]
    for path in dead:
        path.write_text("half")
    prepare_voxceleb(root, save, dev_speakers=0)
    assert not any(p.exists() for p in dead)


def test_unusable_save_folder_one_line(tmp_path):
    root = make_tree(tmp_path / "data")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError) as excinfo:
        prepare_voxceleb(root, blocker / "save", dev_speakers=0)
    assert str(excinfo.value) == f"cannot write to the data-prep folder {blocker / 'save'}: Not a directory"


def test_several_roots_and_flac(tmp_path):
    a = make_tree(tmp_path / "a", speakers=3, ext="flac")
    b = tmp_path / "b"
    (b / "idB" / "x").mkdir(parents=True)
    soundfile.write(b / "idB" / "x" / "00001.wav", np.zeros(8000, np.float32), 16000)
    trials = tmp_path / "t.txt"
    trials.write_text("0 idB/x/00001.wav id00000/sess0/00000.wav\n")
    (b / "idB" / "x" / ".00002.wav.part1.wav").write_bytes(b"unfinished conversion")  # hidden: ignored
    out = prepare_voxceleb([a, b], tmp_path / "save", trial_lists=[trials], dev_speakers=0)
    _, rows = read_csv(out["test_csv"])
    assert {r["ID"]: r["wav"].endswith(".flac") for r in rows} == {"idB/x/00001": False, "id00000/sess0/00000": True}
    _, train = read_csv(out["train_csv"])
    assert {r["spk_id"] for r in train} == {"id00001", "id00002"}


@pytest.mark.parametrize(
    "damage, error, fragments",
    [
        ("unknown_trial", ValueError, ["t.txt:2", "id00009/sess0/00000.wav"]),
        ("bad_trial_line", ValueError, ["t.txt:2", "label enrol test"]),
        ("missing_trial_list", FileNotFoundError, ["nope.txt"]),
        ("missing_folder", FileNotFoundError, ["does_not_exist"]),
        ("wrong_depth", ValueError, ["point data_folder at the folder that holds the speaker folders"]),
        ("duplicate_id", ValueError, ["id00001/sess0/00000", "both"]),
        ("too_many_dev", ValueError, ["dev_speakers=9"]),
        ("reserved_name", ValueError, ["heldout", "reserved"]),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, damage, error, fragments):
    root = make_tree(tmp_path / "data")
    trials = tmp_path / "t.txt"
    trials.write_text("1 id00000/sess0/00000.wav id00000/sess1/00000.wav\n0 id00000/sess0/00000.wav id00002/sess0/00000.wav\n")
    victim = root / "id00001" / "sess0" / "00000.wav"
    kwargs = dict(trial_lists=[trials], dev_speakers=0)
    data_folder = root
    if damage == "unknown_trial":
        trials.write_text(trials.read_text().replace("id00002", "id00009"))
    elif damage == "bad_trial_line":
        trials.write_text(trials.read_text().replace("0 id00000", "x id00000"))
    elif damage == "missing_trial_list":
        kwargs["trial_lists"] = [tmp_path / "nope.txt"]
    elif damage == "missing_folder":
        data_folder = tmp_path / "does_not_exist"
    elif damage == "wrong_depth":
        (tmp_path / "wrap").mkdir()
        shutil.move(str(root), str(tmp_path / "wrap" / "data"))
        data_folder = tmp_path / "wrap"
        kwargs["trial_lists"] = []
    elif damage == "duplicate_id":
        soundfile.write(victim.with_suffix(".flac"), np.zeros(800, np.float32), 16000)
    elif damage == "too_many_dev":
        kwargs = dict(dev_speakers=9)
    elif damage == "reserved_name":
        kwargs["trial_lists"] = [shutil.copy(trials, tmp_path / "heldout.txt")]
    save = tmp_path / "save"
    with pytest.raises(error) as excinfo:
        prepare_voxceleb(data_folder, save, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(save, skip_cache=True) == {}


def test_bad_input_keeps_earlier_outputs_unchanged(tmp_path):
    root = make_tree(tmp_path / "data")
    save = tmp_path / "save"
    prepare_voxceleb(root, save, dev_speakers=2)
    before = snapshot(save, skip_cache=True)
    (root / "id00003" / "sess1" / "00001.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="1 bad audio file"):
        prepare_voxceleb(root, save, dev_speakers=2)
    after = snapshot(save, skip_cache=True)
    assert after.pop("bad_audio.txt").startswith(str(root / "id00003" / "sess1" / "00001.wav").encode())
    assert after == before


def load_recipe_prepare():
    spec = importlib.util.spec_from_file_location("recipe_prepare", REPO / "recipes" / "VoxCeleb" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_command_line(tmp_path, capsys):
    cli = load_recipe_prepare()
    root = make_tree(tmp_path / "data", speakers=6)
    assert cli.main([str(tmp_path / "save"), str(root), "--dev-speakers", "2", "--test-speakers", "2"]) == 0
    out = capsys.readouterr().out
    assert "train_csv:" in out and "heldout" in out
    _, rows = read_csv(tmp_path / "save" / "train.csv")
    assert len({r["spk_id"] for r in rows}) == 2
    assert cli.main([str(tmp_path / "save"), str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data folder not found") and "\n" not in err
