"""The command-line scorer end to end, embeddings files, and its bad-input errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from sb_sphereface2.scoring.embeddings_io import load_embeddings, save_embeddings
from sb_sphereface2.scoring.metrics import compute_eer, compute_min_dcf
from sb_sphereface2.scoring.cli import main

REPO = Path(__file__).resolve().parents[1]


def synthetic_speakers(rng, n_speakers, per_speaker, dim, offset, prefix):
    centres = rng.normal(size=(n_speakers, dim))
    ids, rows, speakers = [], [], []
    for s in range(n_speakers):
        for u in range(per_speaker):
            speakers.append(f"{prefix}{s:03d}")
            ids.append(f"{prefix}{s:03d}/vid/{u:05d}")
            rows.append(centres[s] + 0.9 * rng.normal(size=dim) + offset)
    return ids, np.array(rows), speakers


@pytest.fixture
def workspace(tmp_path):
    rng = np.random.default_rng(0)
    dim = 24
    offset = rng.normal(size=dim)  # a shared bias that mean subtraction should remove
    ids, test, _ = synthetic_speakers(rng, 20, 5, dim, offset, "id1")
    train_ids, train, train_speakers = synthetic_speakers(rng, 40, 4, dim, offset, "id9")
    save_embeddings(tmp_path / "test.npz", ids, test)
    save_embeddings(tmp_path / "train.npz", train_ids, train, train_speakers)
    paths = []
    for name, seed in (("listA", 1), ("listB", 2)):
        pick = np.random.default_rng(seed)
        lines = []
        for _ in range(400):
            e, t = pick.choice(len(ids), 2, replace=False)
            lines.append(f"{int(ids[e][:6] == ids[t][:6])} {ids[e]}.wav {ids[t]}.wav")
        # Guarantee targets in a small list.
        lines += [f"1 {ids[5 * s]}.wav {ids[5 * s + 1]}.wav" for s in range(20)]
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return tmp_path, ids, test, train, paths


def read_score_file(path):
    fields = [line.split() for line in Path(path).read_text().splitlines()]
    labels = np.array([int(f[0]) for f in fields])
    return fields, labels, np.array([float(f[3]) for f in fields])


def test_cli_writes_scores_tables_and_plots(workspace):
    tmp, ids, test, train, (list_a, list_b) = workspace
    out = tmp / "out"
    results = main(["--embeddings", str(tmp / "test.npz"), "--trials", list_a, list_b,
                    "--train-embeddings", str(tmp / "train.npz"), "--norm", "asnorm",
                    "--top-n", "10", "--calibrate-on", list_a, "--output-dir", str(out), "--quiet"])
    for name in ("results.md", "results.json", "det.png", "hist_listA.png", "hist_listB.png",
                 "calibration.json", "scores/listA.txt", "scores/listB.txt"):
        assert (out / name).is_file(), name
    for png in ("det.png", "hist_listA.png"):
        image = matplotlib.image.imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # something was drawn
    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["normalisation"] == "asnorm"
    for name in ("listA", "listB"):
        fields, labels, scores = read_score_file(out / "scores" / f"{name}.txt")
        assert len(fields[0]) == 5  # label enrol test score llr
        recorded = document["results"][name]
        assert recorded["eer_percent"] == pytest.approx(100 * compute_eer(scores, labels)[0], abs=1e-3)
        assert recorded["min_dcf_0.01"] == pytest.approx(
            compute_min_dcf(scores, labels, 0.01)[0], abs=1e-3)
        assert recorded["trials"] == 420 and recorded["targets"] == labels.sum()
        assert 0 <= recorded["cllr"] < 1 and "act_dcf_0.05" in recorded
        assert recorded == results[name]
    table = (out / "results.md").read_text()
    assert "| listA |" in table and "actDCF (p=0.01)" in table and "Cllr" in table


def test_cli_without_normalisation_is_mean_subtracted_cosine(workspace):
    tmp, ids, test, train, (list_a, _) = workspace
    out = tmp / "plain"
    main(["--embeddings", str(tmp / "test.npz"), "--trials", list_a,
          "--train-embeddings", str(tmp / "train.npz"), "--output-dir", str(out),
          "--no-plots", "--quiet"])
    fields, labels, scores = read_score_file(out / "scores" / "listA.txt")
    row = {u: i for i, u in enumerate(ids)}
    centred = test.astype(np.float32) - train.astype(np.float32).mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    expected = [centred[row[f[1]]] @ centred[row[f[2]]] for f in fields]
    np.testing.assert_allclose(scores, expected, atol=2e-6)
    assert not (out / "det.png").exists()


def test_cli_errors_name_line_and_count(workspace):
    tmp, ids, *_ = workspace
    bad = tmp / "bad.txt"
    bad.write_text(f"1 {ids[0]}.wav {ids[1]}.wav\n\n0 {ids[0]}.wav id777/x/00001.wav\n")
    with pytest.raises(ValueError, match=r"'bad', line 3: test utterance 'id777/x/00001'"):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(bad),
              "--output-dir", str(tmp / "o1"), "--quiet"])
    only_targets = tmp / "only_targets.txt"
    only_targets.write_text(f"1 {ids[0]}.wav {ids[1]}.wav\n1 {ids[2]}.wav {ids[3]}.wav\n")
    with pytest.raises(ValueError, match=r"'only_targets' \(2 trials\).*2 target and 0 non-target"):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(only_targets),
              "--output-dir", str(tmp / "o2"), "--quiet"])
    assert not (tmp / "o2" / "results.json").exists()
    # As a program: a one-line error and exit status 1, no traceback.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.run(
        [sys.executable, "-m", "sb_sphereface2.scoring.cli", "--embeddings", str(tmp / "test.npz"),
         "--trials", str(bad), "--output-dir", str(tmp / "o3"), "--quiet"],
        capture_output=True, text=True, env=env, cwd=tmp,
    )
    assert process.returncode == 1
    assert process.stderr.startswith("error: trial list 'bad', line 3") and "Traceback" not in process.stderr
    with pytest.raises(SystemExit):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(bad), "--norm", "asnorm",
              "--output-dir", str(tmp / "o4")])  # asnorm without training embeddings


def test_embeddings_file_roundtrip_and_errors(tmp_path):
    path = tmp_path / "e.npz"
    save_embeddings(path, ["a/1", "b/1"], np.ones((2, 1, 3)), speakers=["a", "b"])
    ids, emb, speakers = load_embeddings(path)
    assert ids == ["a/1", "b/1"] and emb.shape == (2, 3) and emb.dtype == np.float32
    assert speakers == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]  # no temporary left behind
    with pytest.raises(ValueError, match="1 duplicate utterance IDs, e.g. 'a/1'"):
        save_embeddings(tmp_path / "d.npz", ["a/1", "a/1"], np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"1 embeddings contain NaN or inf, first is row 1 \('b/1'\)"):
        save_embeddings(tmp_path / "n.npz", ["a/1", "b/1"], np.array([[1.0, 2.0], [np.nan, 1.0]]))
    assert not (tmp_path / "n.npz").exists()
    # Files written by someone else are checked on reading too.
    np.savez(tmp_path / "dup.npz", ids=np.array(["x", "x"]), embeddings=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        load_embeddings(tmp_path / "dup.npz")
    np.savez(tmp_path / "other.npz", vectors=np.ones(3))
    with pytest.raises(ValueError, match=r"missing arrays \['embeddings', 'ids'\]"):
        load_embeddings(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        load_embeddings(tmp_path / "broken.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_embeddings(tmp_path / "missing.npz")
