"""The command-line scorer end to end: scores, tables, figures, calibration (plain and QMF),
provenance, trial-list checks, one run per folder, all-or-nothing output, embeddings files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from sb_sphereface2.data.trials import TrialList, read_trials
from sb_sphereface2.files import file_sha256
from sb_sphereface2.scoring import cli
from sb_sphereface2.scoring.calibration import LogisticCalibration
from sb_sphereface2.scoring.cli import main, run
from sb_sphereface2.scoring.embeddings_io import load_embeddings, read_embeddings, save_embeddings
from sb_sphereface2.scoring.metrics import compute_actual_dcf, compute_cllr, compute_eer, compute_min_dcf
from sb_sphereface2.scoring.output_folder import exclusive_output_folder
from sb_sphereface2.scoring.quality import quality_features
from sb_sphereface2.scoring.trial_checks import check_trial_list
from sb_sphereface2.scoring.trial_scores import build_cohort, score_trial_list

REPO = Path(__file__).resolve().parents[1]
MODEL = {"folder": "/runs/a/model", "embedding_model_sha256": "a" * 64}


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
    durations = rng.uniform(2.0, 30.0, len(ids))
    save_embeddings(tmp_path / "test.npz", ids, test, durations=durations, model=MODEL)
    save_embeddings(tmp_path / "train.npz", train_ids, train, train_speakers, model=MODEL)
    paths = []
    for name, seed in (("listA", 1), ("listB", 2)):
        pick = np.random.default_rng(seed)
        # 20 sure targets, then random pairs; each unordered pair once (no duplicate trials).
        pairs = {frozenset((5 * s, 5 * s + 1)): (5 * s, 5 * s + 1) for s in range(20)}
        while len(pairs) < 420:
            e, t = pick.choice(len(ids), 2, replace=False)
            pairs.setdefault(frozenset((e, t)), (e, t))
        lines = [f"{int(ids[e][:6] == ids[t][:6])} {ids[e]}.wav {ids[t]}.wav" for e, t in pairs.values()]
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
    assert sorted(os.listdir(out)) == ["calibration.json", "det.png", "hist_listA.png", "hist_listB.png",
                                       "results.json", "results.md", "scores"]
    # Figures: the size the code asks for (inches × 120 dpi), with something drawn on them.
    for png, shape in (("det.png", (660, 660)), ("hist_listA.png", (480, 780))):
        image = matplotlib.image.imread(out / png)
        assert image.shape[:2] == shape
        not_white = (image[..., :3] < 0.9).any(axis=2).mean()
        assert 0.03 < not_white < 0.6, not_white  # axes, curves, text: not blank, not filled
    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["normalisation"] == "asnorm" and document["model"] == MODEL
    calibration = LogisticCalibration.load(out / "calibration.json")
    for name, path in (("listA", list_a), ("listB", list_b)):
        fields, labels, scores = read_score_file(out / "scores" / f"{name}.txt")
        llrs = np.array([float(f[4]) for f in fields])
        np.testing.assert_allclose(llrs, calibration(scores), atol=2e-6)  # score file holds the LLRs
        recorded = document["results"][name]
        assert recorded["eer_percent"] == pytest.approx(100 * compute_eer(scores, labels)[0], abs=1e-3)
        assert recorded["min_dcf_0.01"] == pytest.approx(compute_min_dcf(scores, labels, 0.01)[0], abs=1e-3)
        assert recorded["trials"] == 420 and recorded["targets"] == labels.sum()
        # Before calibration: the raw AS-norm scores taken as LLRs; after: the LLRs.
        assert recorded["raw_cllr"] == pytest.approx(compute_cllr(scores, labels), abs=1e-4)
        assert recorded["cllr"] == pytest.approx(compute_cllr(llrs, labels), abs=1e-4)
        assert recorded["act_dcf_0.05"] == pytest.approx(compute_actual_dcf(llrs, labels, 0.05), abs=1e-4)
        assert recorded["raw_act_dcf_0.01"] == pytest.approx(compute_actual_dcf(scores, labels, 0.01), abs=1e-4)
        assert recorded["trial_list_sha256"] == file_sha256(path) and recorded["trial_list"] == path
        assert recorded == results[name]
    assert document["results"]["listA"]["calibration_list"] is True
    table = (out / "results.md").read_text()
    assert f"Model: {MODEL['folder']} (embedding_model.ckpt sha256 {MODEL['embedding_model_sha256']})" in table
    assert "| listA | 420 |" in table and "| list | actDCF before (p=0.01) |" in table


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


def test_cli_qmf_calibration_uses_durations_and_imposter_means(workspace):
    """The LLRs written are the fitted QMF model applied to the score, the two durations
    (capped at 20 s) and the two top-N imposter means, recomputed here from the library."""
    tmp, ids, test, train, (list_a, list_b) = workspace
    out = tmp / "qmf"
    main(["--embeddings", str(tmp / "test.npz"), "--trials", list_b, "--train-embeddings",
          str(tmp / "train.npz"), "--norm", "asnorm", "--top-n", "10", "--calibrate-on", list_a,
          "--quality-measures", "duration", "imposter_mean", "--output-dir", str(out), "--no-plots", "--quiet"])
    calibration = LogisticCalibration.load(out / "calibration.json")
    assert calibration.feature_names == ["min_duration", "max_duration", "min_imposter_mean", "max_imposter_mean"]
    embeddings = read_embeddings(tmp / "test.npz")
    _, train_emb, speakers = load_embeddings(tmp / "train.npz")
    mean = train_emb.astype(np.float64).mean(axis=0)
    cohort = build_cohort(train_emb, speakers, mean)
    trials = read_trials(list_b)
    scored = score_trial_list(embeddings.ids, embeddings.embeddings, trials, mean, cohort, top_n=10,
                              norm="asnorm", imposter_top_n=10)
    features, _ = quality_features(["duration", "imposter_mean"], scored, embeddings.durations)
    assert features[:, 1].max() == 20.0 and embeddings.durations.max() > 20.0
    fields, labels, scores = read_score_file(out / "scores" / "listB.txt")
    np.testing.assert_allclose(scores, scored.scores, atol=2e-6)
    np.testing.assert_allclose([float(f[4]) for f in fields], calibration(scored.scores, features), atol=1e-5)
    recorded = json.loads((out / "results.json").read_text())
    assert "quality-aware (QMF) logistic regression" in recorded["settings"]["calibration"]
    assert "calibration_list" not in recorded["results"]["listB"]


def test_cli_errors_name_line_and_count(workspace, capsys):
    tmp, ids, *_ = workspace
    bad = tmp / "bad.txt"
    bad.write_text(f"1 {ids[0]}.wav {ids[1]}.wav\n\n0 {ids[0]}.wav id777/x/00001.wav\n")
    with pytest.raises(ValueError, match=r"'bad', line 3: test utterance 'id777/x/00001'"):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(bad),
              "--output-dir", str(tmp / "o1"), "--quiet"])
    only_targets = tmp / "only_targets.txt"
    only_targets.write_text(f"1 {ids[0]}.wav {ids[1]}.wav\n1 {ids[2]}.wav {ids[3]}.wav\n")
    with pytest.raises(ValueError, match=r"'only_targets' \(.*only_targets.txt\): 2 target and 0 non-target"):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(only_targets),
              "--output-dir", str(tmp / "o2"), "--quiet"])
    assert not (tmp / "o2").exists() and not list(tmp.glob(".o2.tmp*"))
    both_ways = tmp / "both_ways.txt"
    both_ways.write_text(f"1 {ids[0]}.wav {ids[1]}.wav\n0 {ids[2]}.wav {ids[3]}.wav\n0 {ids[1]}.wav {ids[0]}.wav\n")
    with pytest.raises(ValueError, match=r"'both_ways' \(.*\), lines 1 and 3: the pair 'id1000/vid/00001' / "
                                         r"'id1000/vid/00000' is labelled both target and non-target"):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(both_ways), "--output-dir", str(tmp / "o5")])
    with pytest.raises(SystemExit):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(bad), "--norm", "asnorm",
              "--output-dir", str(tmp / "o4")])  # asnorm without training embeddings
    with pytest.raises(SystemExit):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(bad), "--quality-measures", "duration",
              "--output-dir", str(tmp / "o4")])  # quality measures without a calibration list
    other = tmp / "other_model.npz"
    save_embeddings(other, *load_embeddings(tmp / "train.npz"),
                    model={"folder": "/runs/b/model", "embedding_model_sha256": "b" * 64})
    with pytest.raises(ValueError, match=r"other_model.npz was made by /runs/b/model .* but .*test.npz by "
                                         r"/runs/a/model .*: score with one model"):
        main(["--embeddings", str(tmp / "test.npz"), "--trials", str(only_targets).replace("only_targets", "listA"),
              "--train-embeddings", str(other), "--output-dir", str(tmp / "o6"), "--quiet"])
    # As a program: a one-line error and exit status 1, no traceback.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.run(
        [sys.executable, "-m", "sb_sphereface2.scoring", "--embeddings", str(tmp / "test.npz"),
         "--trials", str(bad), "--output-dir", str(tmp / "o3"), "--quiet"],
        capture_output=True, text=True, env=env, cwd=tmp,
    )
    assert process.returncode == 1
    assert process.stderr.startswith("error: trial list 'bad', line 3") and "Traceback" not in process.stderr


def test_duplicates_and_self_trials_are_counted_and_warned(workspace, capsys):
    tmp, ids, *_ = workspace
    odd = tmp / "odd.txt"
    odd.write_text(f"1 {ids[0]}.wav {ids[1]}.wav\n0 {ids[0]}.wav {ids[5]}.wav\n1 {ids[1]}.wav {ids[0]}.wav\n"
                   f"1 {ids[0]}.wav {ids[1]}.wav\n1 {ids[2]}.wav {ids[2]}.wav\n")
    assert run(["--embeddings", str(tmp / "test.npz"), "--trials", str(odd), "--output-dir",
                str(tmp / "odd_out"), "--no-plots", "--quiet"]) == 0
    stderr = capsys.readouterr().err
    assert "warning: trial list 'odd': 2 duplicate trials (the same pair of utterances again, kept)" in stderr
    assert "warning: trial list 'odd': 1 self-trial (an utterance against itself, kept)" in stderr
    results = json.loads((tmp / "odd_out" / "results.json").read_text())["results"]["odd"]
    assert (results["trials"], results["duplicate_trials"], results["self_trials"]) == (5, 2, 1)
    assert "odd.txt (sha256 " in (tmp / "odd_out" / "results.md").read_text()
    assert "2 duplicate trials (kept), 1 self-trial (kept)" in (tmp / "odd_out" / "results.md").read_text()


def test_check_trial_list_counts_match_a_direct_count():
    rng = np.random.default_rng(5)
    utts = [f"s{i % 7}/v/{i}" for i in range(30)]
    pairs = [tuple(rng.choice(utts, 2)) for _ in range(500)]
    labels = np.array([int(a.split("/")[0] == b.split("/")[0]) for a, b in pairs], dtype=np.int8)
    check = check_trial_list(TrialList("r", labels, [a for a, _ in pairs], [b for _, b in pairs]))
    seen, duplicates = set(), 0
    for a, b in pairs:
        key = frozenset((a, b))
        duplicates += key in seen
        seen.add(key)
    assert (check.duplicates, check.self_trials) == (duplicates, sum(a == b for a, b in pairs))
    assert check.targets == labels.sum() and check.duplicates > 0 and check.self_trials > 0


def test_a_second_run_on_a_busy_folder_refuses_with_the_holders_pid(workspace, capsys):
    tmp, _, _, _, (list_a, _) = workspace
    out = tmp / "busy"
    argv = ["--embeddings", str(tmp / "test.npz"), "--trials", list_a, "--output-dir", str(out), "--no-plots", "--quiet"]
    with exclusive_output_folder(out):
        assert run(argv) == 1
    error = capsys.readouterr().err
    assert error == (f"error: output folder {out} is in use by another scoring run (PID {os.getpid()}); "
                     "wait for it to finish or choose another output folder\n")
    assert run(argv) == 0 and (out / "results.json").is_file()


def test_a_folder_of_other_files_is_not_replaced(workspace, capsys):
    tmp, _, _, _, (list_a, _) = workspace
    out = tmp / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    assert run(["--embeddings", str(tmp / "test.npz"), "--trials", list_a, "--output-dir", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err == (f"error: output folder {out} holds 1 entries that are not scoring results "
                                       "(e.g. 'notes.txt') and would be replaced as a whole: choose a new or empty folder\n")
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_a_failed_run_leaves_the_previous_results(workspace, monkeypatch, capsys):
    tmp, _, _, _, (list_a, list_b) = workspace
    out = tmp / "kept"
    main(["--embeddings", str(tmp / "test.npz"), "--trials", list_a, "--output-dir", str(out), "--no-plots", "--quiet"])
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "plot_score_histogram", disk_full)  # after scores and tables are written
    assert run(["--embeddings", str(tmp / "test.npz"), "--trials", list_a, list_b, "--output-dir", str(out),
                "--quiet"]) == 1
    assert capsys.readouterr().err == f"error: cannot write the output folder {out}: No space left on device [Errno 28]\n"
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".kept")) == [".kept.lock"]


def test_embeddings_file_roundtrip_and_errors(tmp_path):
    path = tmp_path / "e.npz"
    save_embeddings(path, ["a/1", "b/1"], np.ones((2, 1, 3)), speakers=["a", "b"], durations=[2.5, 3.0], model=MODEL)
    ids, emb, speakers = load_embeddings(path)
    assert ids == ["a/1", "b/1"] and emb.shape == (2, 3) and emb.dtype == np.float32
    assert speakers == ["a", "b"]
    content = read_embeddings(path)
    assert content.durations.tolist() == [2.5, 3.0] and content.model == MODEL
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]  # no temporary left behind
    with pytest.raises(ValueError, match="1 duplicate utterance IDs, e.g. 'a/1'"):
        save_embeddings(tmp_path / "d.npz", ["a/1", "a/1"], np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"1 embeddings contain NaN or inf, first is row 1 \('b/1'\)"):
        save_embeddings(tmp_path / "n.npz", ["a/1", "b/1"], np.array([[1.0, 2.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="durations must be 2 positive numbers"):
        save_embeddings(tmp_path / "t.npz", ["a/1", "b/1"], np.ones((2, 3)), durations=[1.0, 0.0])
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
