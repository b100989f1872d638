"""Tests of class-wise label-noise injection."""

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sb_sphereface2.labels.noise import inject_class_noise, main, report_path

FIELDS = ["ID", "duration", "wav", "start", "stop", "spk_id", "speed"]
REPO = Path(__file__).resolve().parents[1]


def make_csv(path, num_speakers=20, seed=0):
    """A training CSV with unequal speaker sizes (3..8 utterances), rows interleaved."""
    rows = []
    for s in range(num_speakers):
        for u in range(3 + (s * 7 + seed) % 6):
            rows.append(
                {
                    "ID": f"spk{s:02d}/ch1/{u:03d}",
                    "duration": f"{1.5 + 0.1 * u:.2f}",
                    "wav": f"/data/spk{s:02d}/ch1/{u:03d}.wav",
                    "start": "0",
                    "stop": str(16000 + 160 * u),
                    "spk_id": f"spk{s:02d}",
                    "speed": "1.0" if u % 2 else "0.9",
                }
            )
    rows.sort(key=lambda r: (r["ID"].split("/")[-1], r["ID"]))  # not grouped by speaker
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def train_csv(tmp_path):
    path = tmp_path / "train.csv"
    rows = make_csv(path)
    return path, rows


def check_only_spk_id_changed(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert list(b.keys()) == FIELDS
        for column in FIELDS:
            if column != "spk_id":
                assert a[column] == b[column]


@pytest.mark.parametrize("mode", ["merge", "split", "mixed"])
@pytest.mark.parametrize("fraction,expected", [(0.0, 0), (0.1, 2), (0.25, 5), (0.33, 7), (0.5, 10)])
def test_exactly_the_requested_speakers_are_corrupted(train_csv, tmp_path, mode, fraction, expected):
    path, before = train_csv
    out = tmp_path / "noisy.csv"
    report = inject_class_noise(str(path), str(out), fraction, mode=mode, seed=3)
    after = read_rows(out)
    check_only_spk_id_changed(before, after)
    assert report["num_corrupted"] == expected
    assert len(report["corrupted"]) == expected
    corrupted = {e["speaker"] for e in report["corrupted"]}
    # Utterances of every clean speaker keep their label; every corrupted speaker's
    # utterances all lose theirs.
    changed_speakers = {a["spk_id"] for a, b in zip(before, after) if a["spk_id"] != b["spk_id"]}
    assert changed_speakers == corrupted
    sizes = Counter(r["spk_id"] for r in before)
    for a, b in zip(before, after):
        assert (a["spk_id"] in corrupted) == (a["spk_id"] != b["spk_id"])
    assert report["num_relabelled"] == sum(sizes[s] for s in corrupted)
    # The report says exactly what happened to each corrupted speaker.
    ids_after = {b["ID"]: b["spk_id"] for b in after}
    for entry in report["corrupted"]:
        ids = [a["ID"] for a in before if a["spk_id"] == entry["speaker"]]
        assert entry["utterances"] == len(ids)
        if entry["action"] == "merge":
            assert entry["into"] not in corrupted
            assert all(ids_after[i] == entry["into"] for i in ids)
        else:
            assert len(entry["into"]) == 2
            reported = {i: part["speaker"] for part in entry["into"] for i in part["ids"]}
            assert sorted(reported) == sorted(ids)
            assert all(ids_after[i] == reported[i] for i in ids)
            counts = sorted(part["utterances"] for part in entry["into"])
            assert counts[-1] - counts[0] <= 1 and counts[0] >= 1
            assert not {p["speaker"] for p in entry["into"]} & set(sizes)  # new names
    actions = Counter(e["action"] for e in report["corrupted"])
    if mode == "merge":
        assert actions["split"] == 0
    elif mode == "split":
        assert actions["merge"] == 0
    else:
        assert actions["merge"] == (expected + 1) // 2
    assert report["num_speakers_after"] == len({b["spk_id"] for b in after})
    assert json.loads(Path(report_path(str(out))).read_text()) == report


def test_same_seed_same_output_other_seed_other_output(train_csv, tmp_path):
    path, _ = train_csv
    outputs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / f"{name}.csv"
        inject_class_noise(str(path), str(out), 0.3, mode="mixed", seed=seed)
        outputs[name] = (out.read_bytes(), Path(report_path(str(out))).read_text().replace(f"{name}.csv", ""))
    assert outputs["a"] == outputs["b"]
    assert outputs["a"][0] != outputs["c"][0]


def test_choice_does_not_depend_on_row_order(train_csv, tmp_path):
    path, rows = train_csv
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["wav"], reverse=True))
    a = inject_class_noise(str(path), str(tmp_path / "a.csv"), 0.2, mode="merge", seed=1)
    b = inject_class_noise(str(shuffled), str(tmp_path / "b.csv"), 0.2, mode="merge", seed=1)
    assert a["corrupted"] == b["corrupted"]


def test_cli_and_one_line_errors(train_csv, tmp_path, capsys):
    path, _ = train_csv
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "sb_sphereface2.labels.noise"]
    ok = subprocess.run(
        command + [str(path), str(tmp_path / "cli.csv"), "--fraction", "0.2", "--mode", "split"],
        capture_output=True, text=True, env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert "corrupted 4 of 20 speakers" in ok.stdout
    status = main([str(path), str(tmp_path / "bad.csv"), "--fraction", "1.5"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().count("\n") == 0 and "fraction" in err
    assert not (tmp_path / "bad.csv").exists()


def test_bad_inputs(train_csv, tmp_path):
    path, _ = train_csv
    out = str(tmp_path / "out.csv")
    for fraction in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            inject_class_noise(str(path), out, fraction)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        inject_class_noise(str(tmp_path / "missing.csv"), out, 0.1)
    no_spk = tmp_path / "no_spk.csv"
    no_spk.write_text("ID,duration,wav\nu1,1.0,a.wav\n")
    with pytest.raises(ValueError, match="spk_id"):
        inject_class_noise(str(no_spk), out, 0.1)
    empty_label = tmp_path / "empty_label.csv"
    empty_label.write_text("ID,spk_id\nu1,s1\nu2,\n")
    with pytest.raises(ValueError, match="line 3"):
        inject_class_noise(str(empty_label), out, 0.1)
    with pytest.raises(ValueError, match="clean speaker"):
        inject_class_noise(str(path), out, 1.0, mode="merge")
    with pytest.raises(ValueError, match="mode"):
        inject_class_noise(str(path), out, 0.1, mode="swap")
    with pytest.raises(ValueError, match="utterances"):
        inject_class_noise(str(path), out, 0.5, mode="split", split_into=8)
    assert not os.path.exists(out)
    assert sorted(os.listdir(tmp_path)) == ["empty_label.csv", "no_spk.csv", "train.csv"]


def test_full_split_is_allowed(train_csv, tmp_path):
    path, before = train_csv
    report = inject_class_noise(str(path), str(tmp_path / "all.csv"), 1.0, mode="split", split_into=3)
    assert report["num_corrupted"] == 20 and report["num_speakers_after"] == 60


def test_exact_changes_for_a_fixed_seed(tmp_path):
    """Known answer for seed 2 on six speakers (sizes 4, 2, 3, 5, 1, 3): the rows that
    change and their new labels. erin (one utterance) can never be split in two."""
    sizes = {"alice": 4, "bob": 2, "carol": 3, "dave": 5, "erin": 1, "frank": 3}
    rows = [(f"{s}_{u}", s) for s, n in sizes.items() for u in range(n)]
    path = tmp_path / "train.csv"
    path.write_text("ID,duration,spk_id\n" + "".join(f"{i},1.0,{s}\n" for i, s in rows))
    expected = {
        "merge": {  # 3 speakers merged into clean ones
            **{f"alice_{u}": "frank" for u in range(4)},
            **{f"bob_{u}": "erin" for u in range(2)},
            **{f"dave_{u}": "carol" for u in range(5)},
        },
        "split": {  # 3 speakers split in two halves (sizes differ by at most one)
            "alice_0": "alice_split0", "alice_1": "alice_split1", "alice_2": "alice_split0",
            "alice_3": "alice_split1", "bob_0": "bob_split0", "bob_1": "bob_split1",
            "carol_0": "carol_split0", "carol_1": "carol_split1", "carol_2": "carol_split0",
        },
        "mixed": {  # round(1.5) = 2 merged, 1 split
            **{f"alice_{u}": "dave" for u in range(4)},
            "bob_0": "erin", "bob_1": "erin",
            "frank_0": "frank_split0", "frank_1": "frank_split1", "frank_2": "frank_split0",
        },
    }
    for mode, changes in expected.items():
        out = tmp_path / f"{mode}.csv"
        report = inject_class_noise(str(path), str(out), 0.5, mode=mode, seed=2)
        after = read_rows(out)
        assert [a["ID"] for a in after] == [i for i, _ in rows]
        changed = {a["ID"]: a["spk_id"] for a, (_, s) in zip(after, rows) if a["spk_id"] != s}
        assert changed == changes, mode
        assert report["num_relabelled"] == len(changes)
