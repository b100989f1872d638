"""Data preparation: CSV content, splits, speed perturbation, idempotence, bad input."""

import csv
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sb_sphereface2.data import prepare as data_prep
from sb_sphereface2.data.prepare import CSV_HEADER, MANIFEST_NAME, prepare_voxceleb

REPO = Path(__file__).resolve().parents[1]


def read_csv(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def trial_ids(path):
    """Independent parse of a VoxCeleb trial list: set of utterance IDs (no extension)."""
    ids = set()
    for line in Path(path).read_text().splitlines():
        if line.strip():
            _, a, b = line.split()
            ids.update(os.path.splitext(x)[0] for x in (a, b))
    return ids


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    assert header == CSV_HEADER
    _, dev_rows = read_csv(result["dev_csv"])
    dev_speakers = {r["spk_id"] for r in dev_rows}
    train_speakers = {r["spk_id"] for r in rows}
    assert len(dev_speakers) == 5
    assert train_speakers == set(tree.train_speakers) - dev_speakers
    assert not train_speakers & set(tree.trial_speakers)
    assert len(rows) == 4 * len(train_speakers)
    for row in rows[::37]:
        audio, rate = soundfile.read(row["wav"])
        assert row["ID"] == os.path.splitext(os.path.relpath(row["wav"], tree.root))[0]
        assert row["spk_id"] == row["ID"].split("/")[0]
        assert (int(row["start"]), int(row["stop"])) == (0, len(audio))
        assert float(row["duration"]) == pytest.approx(len(audio) / rate, abs=1e-4)
        assert row["speed"] == "1.0"


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
    lines = [line.split() for line in Path(result["dev_trials"]).read_text().splitlines()]
    labels = [int(label) for label, _, _ in lines]
    assert labels.count(1) == labels.count(0) > 0
    for label, enrol, test in lines:
        enrol, test = os.path.splitext(enrol)[0], os.path.splitext(test)[0]
        assert enrol in dev_ids and test in dev_ids and enrol != test
        assert (enrol.split("/")[0] == test.split("/")[0]) == (label == "1")
    # 5 speakers x 4 utterances: 2x2 cross-session target pairs each come first
    targets = [(e, t) for label, e, t in lines if label == "1"]
    cross = [1 for e, t in targets if e.split("/")[1] != t.split("/")[1]]
    assert len(cross) == min(len(targets), 5 * 4)


def test_dev_split_is_deterministic_given_seed(librispeech_voxceleb_tree, tmp_path):
    tree = librispeech_voxceleb_tree
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = prepare_voxceleb(tree.root, tmp_path / name, trial_lists=tree.trial_lists, dev_speakers=4, seed=seed)
        runs[name] = Path(out["dev_trials"]).read_text()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_speed_perturbation_makes_three_times_the_classes(librispeech_voxceleb_tree, tmp_path):
    tree = librispeech_voxceleb_tree
    plain = prepare_voxceleb(tree.root, tmp_path / "plain", trial_lists=tree.trial_lists, dev_speakers=3)
    perturbed = prepare_voxceleb(
        tree.root, tmp_path / "sp", trial_lists=tree.trial_lists, dev_speakers=3, speed_perturb=True
    )
    _, plain_rows = read_csv(plain["train_csv"])
    _, rows = read_csv(perturbed["train_csv"])
    plain_speakers = {r["spk_id"] for r in plain_rows}
    assert len({r["spk_id"] for r in rows}) == 3 * len(plain_speakers)
    assert len(rows) == 3 * len(plain_rows)
    base = {r["ID"]: r for r in plain_rows}
    for row in rows:
        speed = float(row["speed"])
        utt, _, tag = row["ID"].partition("@")
        original = base[utt]
        if speed == 1.0:
            assert tag == "" and row == original
        else:
            assert tag == f"sp{speed:g}" and row["spk_id"] == f"{original['spk_id']}@sp{speed:g}"
            assert float(row["duration"]) == pytest.approx(float(original["duration"]) / speed, abs=1e-3)
            assert (row["wav"], row["start"], row["stop"]) == (original["wav"], original["start"], original["stop"])
    assert {r["speed"] for r in rows} == {"0.9", "1.0", "1.1"}
    # the dev and test sets are never perturbed
    _, dev_rows = read_csv(perturbed["dev_csv"])
    assert {r["speed"] for r in dev_rows} == {"1.0"}


def test_second_call_skips_and_changed_input_redoes(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data", speakers=6)
    trials = tmp_path / "t.txt"
    trials.write_text("1 id00000/sess0/00000.wav id00000/sess1/00000.wav\n0 id00000/sess0/00000.wav id00001/sess0/00001.wav\n")
    calls = []
    real = data_prep.read_audio_info
    monkeypatch.setattr(data_prep, "read_audio_info", lambda *a, **k: calls.append(a) or real(*a, **k))
    save = tmp_path / "save"

    def run(**options):
        calls.clear()
        prepare_voxceleb(root, save, trial_lists=[trials], dev_speakers=2, **options)
        return len(calls)

    assert run() == 24
    first = snapshot(save)
    assert set(first) == {"train.csv", "dev.csv", "dev_trials.txt", "test.csv", "trials/t.txt", MANIFEST_NAME}
    assert run() == 0 and snapshot(save) == first
    assert run(seed=99) == 24  # changed option
    assert run(seed=99) == 0
    os.remove(save / "train.csv")  # damaged output
    assert run(seed=99) == 24
    soundfile.write(root / "id00005" / "sess0" / "00009.wav", np.zeros(16000, np.float32), 16000)  # new file
    assert run(seed=99) == 25
    trials.write_text("1 id00000/sess0/00000.wav id00000/sess1/00001.wav\n")  # changed list
    assert run(seed=99) == 25
    assert "id00000/sess1/00001.wav" in (save / "trials" / "t.txt").read_text()
    assert run(seed=99) == 0
    prepare_voxceleb(root, save, dev_speakers=0)  # fewer outputs: stale ones are removed
    assert set(snapshot(save)) == {"train.csv", MANIFEST_NAME}


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
    assert {"train.csv", "dev.csv", "dev_trials.txt", MANIFEST_NAME} == set(snapshot(save))


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


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "damage, error, fragments",
    [
        ("corrupt", ValueError, ["id00001/sess0/00000.wav", "unreadable audio file"]),
        ("empty", ValueError, ["id00001/sess0/00000.wav", "empty audio file"]),
        ("no_samples", ValueError, ["id00001/sess0/00000.wav", "empty audio file"]),
        ("sample_rate", ValueError, ["id00001/sess0/00000.wav", "8000 Hz"]),
        ("unknown_trial", ValueError, ["t.txt:2", "id00009/sess0/00000.wav"]),
        ("bad_trial_line", ValueError, ["t.txt:2", "label enrol test"]),
        ("missing_trial_list", FileNotFoundError, ["nope.txt"]),
        ("missing_folder", FileNotFoundError, ["does_not_exist"]),
        ("wrong_depth", ValueError, ["point data_folder at the folder that holds the speaker folders"]),
        ("duplicate_id", ValueError, ["id00001/sess0/00000", "both"]),
        ("too_many_dev", ValueError, ["dev_speakers=9"]),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, damage, error, fragments):
    root = make_tree(tmp_path / "data")
    trials = tmp_path / "t.txt"
    trials.write_text("1 id00000/sess0/00000.wav id00000/sess1/00000.wav\n0 id00000/sess0/00000.wav id00002/sess0/00000.wav\n")
    victim = root / "id00001" / "sess0" / "00000.wav"
    kwargs = dict(trial_lists=[trials], dev_speakers=0)
    data_folder = root
    if damage == "corrupt":
        victim.write_bytes(b"RIFF\x00\x01garbage" * 10)
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "no_samples":
        soundfile.write(victim, np.zeros(0, np.float32), 16000)
    elif damage == "sample_rate":
        soundfile.write(victim, np.zeros(8000, np.float32), 8000)
    elif damage == "unknown_trial":
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
    save = tmp_path / "save"
    with pytest.raises(error) as excinfo:
        prepare_voxceleb(data_folder, save, **kwargs)
    assert_one_line_error(excinfo, *fragments)
    assert snapshot(save) == {}


def test_bad_input_keeps_earlier_outputs_unchanged(tmp_path):
    root = make_tree(tmp_path / "data")
    save = tmp_path / "save"
    prepare_voxceleb(root, save, dev_speakers=2)
    before = snapshot(save)
    (root / "id00003" / "sess1" / "00001.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="unreadable audio file"):
        prepare_voxceleb(root, save, dev_speakers=2)
    assert snapshot(save) == before


def load_recipe_prepare():
    spec = importlib.util.spec_from_file_location("recipe_prepare", REPO / "recipes" / "VoxCeleb" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_command_line(tmp_path, capsys):
    cli = load_recipe_prepare()
    root = make_tree(tmp_path / "data")
    assert cli.main([str(tmp_path / "save"), str(root), "--dev-speakers", "2", "--speed-perturb"]) == 0
    assert "train_csv:" in capsys.readouterr().out
    _, rows = read_csv(tmp_path / "save" / "train.csv")
    assert len({r["spk_id"] for r in rows}) == 6
    assert cli.main([str(tmp_path / "save"), str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data folder not found") and "\n" not in err
