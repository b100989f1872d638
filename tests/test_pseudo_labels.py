"""Tests of embedding clustering, clustering scores and pseudo-label CSVs."""

import csv
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sb_sphereface2.labels.pseudo import (
    cluster_embeddings,
    clustering_scores,
    estimate_num_speakers,
    main,
    pseudo_label,
    write_pseudo_label_csv,
)

REPO = Path(__file__).resolve().parents[1]


def synthetic_speakers(num_speakers=12, dim=64, noise=0.04, seed=0):
    """Random unit-vector centres, unequal sizes (6..20 utterances), small isotropic noise,
    random scale per embedding and rows shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_speakers, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.integers(6, 21, size=num_speakers)
    truth = np.repeat(np.arange(num_speakers), sizes)
    x = centres[truth] + noise * rng.standard_normal((len(truth), dim))
    x *= rng.uniform(0.5, 20.0, size=(len(truth), 1))
    order = rng.permutation(len(truth))
    return x[order], truth[order]


@pytest.mark.parametrize("method", ["ahc", "spectral", "kmeans"])
@pytest.mark.parametrize("given", [True, False])
def test_well_separated_speakers_are_recovered(method, given):
    x, truth = synthetic_speakers(seed=3)
    labels = cluster_embeddings(x, num_speakers=12 if given else None, method=method, seed=1)
    scores = clustering_scores(truth, labels)
    assert scores["nmi"] > 0.95, scores
    assert scores["num_clusters"] == 12
    assert labels.min() == 0 and labels.max() == 11
    sizes = np.bincount(labels)
    assert (np.diff(sizes) <= 0).all()  # numbered by decreasing size


def test_eigengap_estimates_the_count():
    for k, seed in ((2, 0), (5, 1), (20, 2)):
        x, _ = synthetic_speakers(num_speakers=k, seed=seed)
        assert estimate_num_speakers(x) == k


def test_neighbour_graph_tuning_matters():
    """40 small speakers: summed over many speakers, the small positive cross-speaker
    cosines outweigh each speaker's own, so the dense affinity (prune=1.0) shows no
    block structure, while the tuned k-nearest-neighbour graph finds all 40."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(40), 8)
    x = centres[truth] + 0.04 * rng.standard_normal((len(truth), 64))
    assert estimate_num_speakers(x, prune=1.0) != 40
    assert estimate_num_speakers(x) == 40
    assert clustering_scores(truth, cluster_embeddings(x, method="spectral"))["nmi"] > 0.95


def test_ahc_threshold_cut():
    x, truth = synthetic_speakers(seed=4)
    labels = cluster_embeddings(x, method="ahc", threshold=0.5)
    assert clustering_scores(truth, labels)["nmi"] > 0.95
    # A threshold above every within-speaker similarity leaves (nearly) singletons.
    assert len(set(cluster_embeddings(x, method="ahc", threshold=0.9999).tolist())) > 0.9 * len(x)


def test_clustering_is_not_trivially_perfect():
    """Overlapping speakers are not recovered perfectly: the NMI test above can fail."""
    x, truth = synthetic_speakers(noise=0.5, dim=8, seed=5)
    labels = cluster_embeddings(x, num_speakers=12, method="kmeans")
    assert clustering_scores(truth, labels)["nmi"] < 0.9


def test_scores_equal_hand_computed_values():
    true = ["a", "a", "a", "b", "b", "b"]
    pred = [0, 0, 1, 1, 2, 2]
    scores = clustering_scores(true, pred)
    # Contingency: cluster 0 = {a: 2}, cluster 1 = {a: 1, b: 1}, cluster 2 = {b: 2}.
    # H(true) = ln 2, H(pred) = ln 3, MI = 2 * (1/3) ln(6*2 / (3*2)) = (2/3) ln 2.
    assert scores["nmi"] == pytest.approx((2 / 3) * math.log(2) / (0.5 * (math.log(2) + math.log(3))), abs=1e-12)
    assert scores["purity"] == pytest.approx(5 / 6)
    assert scores["inverse_purity"] == pytest.approx(4 / 6)
    assert (scores["num_speakers"], scores["num_clusters"], scores["num_items"]) == (2, 3, 6)
    # ARI by brute-force pair counting.
    pairs = list(itertools.combinations(range(6), 2))
    same_t = [true[i] == true[j] for i, j in pairs]
    same_p = [pred[i] == pred[j] for i, j in pairs]
    both = sum(t and p for t, p in zip(same_t, same_p))
    expected = sum(same_t) * sum(same_p) / len(pairs)
    ari = (both - expected) / (0.5 * (sum(same_t) + sum(same_p)) - expected)
    assert scores["ari"] == pytest.approx(ari, abs=1e-12)


def test_scores_edge_cases():
    perfect = clustering_scores([3, 3, 9, 9, 1], ["x", "x", "y", "y", "z"])
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["purity"] == 1.0 and perfect["ari"] == pytest.approx(1.0)
    one_cluster = clustering_scores([0, 0, 1, 1], [5, 5, 5, 5])
    assert one_cluster["nmi"] == 0.0 and one_cluster["purity"] == 0.5 and one_cluster["inverse_purity"] == 1.0
    assert clustering_scores([0, 0], [1, 1])["nmi"] == 1.0
    with pytest.raises(ValueError, match="equal length"):
        clustering_scores([0, 1], [0])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_pseudo_label_end_to_end_and_cli(tmp_path, capsys):
    x, truth = synthetic_speakers(num_speakers=6, seed=6)
    ids = np.array([f"utt{i:04d}" for i in range(len(x))])
    np.savez(tmp_path / "emb.npz", ids=ids, embeddings=x.astype(np.float32), speakers=np.array([f"s{t}" for t in truth]))
    # The CSV lists a subset of the embedded utterances, in another order, with extra columns.
    keep = np.random.default_rng(0).permutation(len(x))[: len(x) - 5]
    write_csv(tmp_path / "unlabelled.csv", ["ID", "duration", "wav"],
              [[ids[i], "2.5", f"/audio/{ids[i]}.wav"] for i in keep])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "sb_sphereface2.labels.pseudo", "--embeddings", str(tmp_path / "emb.npz"),
         "--csv", str(tmp_path / "unlabelled.csv"), "--out", str(tmp_path / "pseudo.csv")],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "-> 6 pseudo speakers" in result.stdout and "NMI 1.0000" in result.stdout
    with open(tmp_path / "pseudo.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["ID"] for r in rows] == [ids[i] for i in keep]
    assert all(r["wav"] == f"/audio/{r['ID']}.wav" and r["duration"] == "2.5" for r in rows)
    pseudo = [r["spk_id"] for r in rows]
    assert clustering_scores(truth[keep], pseudo)["nmi"] == pytest.approx(1.0)
    report = json.loads((tmp_path / "pseudo.clusters.json").read_text())
    assert report["num_clusters"] == 6 and sum(report["cluster_sizes"]) == len(keep)
    assert report["true_labels_from"] == "embeddings file"

    # Without speakers in the npz, a spk_id column of the CSV serves as the truth.
    np.savez(tmp_path / "nospk.npz", ids=ids, embeddings=x)
    write_csv(tmp_path / "labelled.csv", ["ID", "spk_id"], [[ids[i], f"s{truth[i]}"] for i in keep])
    report = pseudo_label(str(tmp_path / "nospk.npz"), str(tmp_path / "labelled.csv"),
                          str(tmp_path / "pseudo2.csv"), num_speakers=6, method="spectral")
    assert report["true_labels_from"] == "spk_id column of the CSV"
    assert report["scores"]["purity"] == 1.0

    # Errors are one line on stderr and exit status 2.
    status = main(["--embeddings", str(tmp_path / "none.npz"), "--csv", str(tmp_path / "unlabelled.csv"),
                   "--out", str(tmp_path / "bad.csv")])
    err = capsys.readouterr().err
    assert status == 2 and "none.npz" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "bad.csv").exists()


def test_bad_inputs(tmp_path):
    x, _ = synthetic_speakers(num_speakers=3, seed=7)
    with pytest.raises(ValueError, match="method"):
        cluster_embeddings(x, method="dbscan")
    with pytest.raises(ValueError, match="num_speakers"):
        cluster_embeddings(x, num_speakers=0)
    with pytest.raises(ValueError, match="threshold"):
        cluster_embeddings(x, method="kmeans", threshold=0.5)
    with pytest.raises(ValueError, match="NaN"):
        cluster_embeddings(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="N >= 2"):
        cluster_embeddings(np.ones(5))
    ids = [f"u{i}" for i in range(len(x))]
    np.savez(tmp_path / "e.npz", ids=np.array(ids), embeddings=x)
    write_csv(tmp_path / "no_id.csv", ["utt", "wav"], [["u0", "a.wav"]])
    with pytest.raises(ValueError, match="ID"):
        pseudo_label(str(tmp_path / "e.npz"), str(tmp_path / "no_id.csv"), str(tmp_path / "o.csv"))
    write_csv(tmp_path / "extra.csv", ["ID"], [["u0"], ["ghost"]])
    with pytest.raises(ValueError, match="ghost"):
        pseudo_label(str(tmp_path / "e.npz"), str(tmp_path / "extra.csv"), str(tmp_path / "o.csv"))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        write_pseudo_label_csv(str(tmp_path / "missing.csv"), ids, np.zeros(len(ids)), str(tmp_path / "o.csv"))
    np.savez(tmp_path / "no_emb.npz", ids=np.array(ids))
    with pytest.raises(ValueError, match="embeddings"):
        pseudo_label(str(tmp_path / "no_emb.npz"), str(tmp_path / "extra.csv"), str(tmp_path / "o.csv"))
    assert not (tmp_path / "o.csv").exists()
