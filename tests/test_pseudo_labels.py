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

from scipy.linalg import block_diag

from sb_sphereface2.labels.clustering import (
    cluster_embeddings,
    eigengap_count,
    estimate_num_speakers,
    neighbour_affinity,
)
from sb_sphereface2.labels.pseudo import main, pseudo_label, write_pseudo_label_csv
from sb_sphereface2.labels.scores import clustering_scores

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


def same_partition(a, b):
    """True when two labellings group the items identically (names may differ)."""
    a, b = list(a), list(b)
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


def test_same_partition_helper():
    assert same_partition(["a", "a", "b"], [7, 7, 3])
    assert not same_partition(["a", "a", "b"], [7, 3, 3])
    assert not same_partition(["a", "a", "b"], [7, 7, 7])


@pytest.mark.parametrize("method", ["ahc", "spectral", "kmeans"])
@pytest.mark.parametrize("given", [True, False])
@pytest.mark.parametrize("seed", [3, 8])
def test_well_separated_speakers_are_recovered_exactly(method, given, seed):
    x, truth = synthetic_speakers(seed=seed)
    labels = cluster_embeddings(x, num_speakers=12 if given else None, method=method, seed=1)
    assert same_partition(truth, labels)
    # Numbered 0..11 by decreasing cluster size.
    assert np.array_equal(np.bincount(labels), np.sort(np.bincount(truth))[::-1])


def test_hand_built_configuration_all_methods():
    """Unit vectors at angles 0, 10, 20 degrees (group A), 100, 110 (B) and 200, 205, 210 (C):
    within-group cosines >= cos 20 = 0.94, between groups <= cos 80 = 0.17."""
    angles = np.radians([0, 10, 20, 100, 110, 200, 205, 210])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for method in ("ahc", "spectral", "kmeans"):
        labels = cluster_embeddings(x, num_speakers=3, method=method, center=False)
        assert labels.tolist() == [0, 0, 0, 2, 2, 1, 1, 1], method  # ties in size: first seen first


def test_ahc_threshold_cut_hand_computed():
    """Angles 0, 10 and 60 degrees: the first merge joins 0 and 10 (cosine cos 10 = 0.985);
    the average cosine of {0, 10} to 60 is (cos 60 + cos 50) / 2 = 0.5714."""
    angles = np.radians([0, 10, 60])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def cut(threshold):
        return cluster_embeddings(x, method="ahc", threshold=threshold, center=False).tolist()

    assert cut(0.99) == [0, 1, 2]  # above cos 10: nothing merges
    assert cut(0.98) == [0, 0, 1]
    assert cut(0.58) == [0, 0, 1]
    assert cut(0.56) == [0, 0, 0]  # below 0.5714: all merge


def test_ahc_threshold_on_synthetic_speakers():
    x, truth = synthetic_speakers(seed=4)
    assert same_partition(truth, cluster_embeddings(x, method="ahc", threshold=0.5))


def test_eigengap_of_hand_built_graphs():
    """The normalised Laplacian of a complete graph on m nodes has eigenvalues 0 and
    m / (m - 1) (m - 1 times); disjoint blocks add their spectra."""

    def complete(m):
        return np.ones((m, m)) - np.eye(m)

    assert eigengap_count(complete(6), max_speakers=5) == (1, pytest.approx(6 / 5))
    blocks = block_diag(complete(3), complete(4), complete(5))
    count, gap = eigengap_count(blocks, max_speakers=8)
    assert (count, gap) == (3, pytest.approx(5 / 4))  # the smallest nonzero is 5/4
    # Four groups of identical unit vectors, orthogonal across groups: with 5 neighbours
    # each group of <= 6 is a complete block and cross-group affinities are 0.
    sparse_blocks = neighbour_affinity(np.repeat(np.eye(4), [3, 4, 5, 6], axis=0), 5)
    assert eigengap_count(sparse_blocks, max_speakers=10) == (4, pytest.approx(6 / 5))


def test_eigengap_estimates_the_count():
    for k, seed in ((2, 0), (5, 1), (20, 2)):
        x, _ = synthetic_speakers(num_speakers=k, seed=seed)
        assert estimate_num_speakers(x) == k


def test_neighbour_graph_tuning_matters():
    """40 small speakers: summed over many speakers, the small positive cross-speaker
    cosines outweigh each speaker's own, so the dense affinity (prune=1.0) shows no
    block structure (its eigengap says 1), while the tuned k-nearest-neighbour graph
    finds all 40."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(40), 8)
    x = centres[truth] + 0.04 * rng.standard_normal((len(truth), 64))
    assert estimate_num_speakers(x, prune=1.0) == 1
    assert estimate_num_speakers(x) == 40
    assert same_partition(truth, cluster_embeddings(x, method="spectral"))


def test_scores_equal_hand_computed_values():
    true = ["a", "a", "a", "b", "b", "b"]
    pred = [0, 0, 1, 1, 2, 2]
    scores = clustering_scores(true, pred)
    # Contingency: cluster 0 = {a: 2}, cluster 1 = {a: 1, b: 1}, cluster 2 = {b: 2}.
    # H(true) = ln 2, H(pred) = ln 3, MI = 2 * (1/3) ln(6*2 / (3*2)) = (2/3) ln 2.
    assert scores["nmi"] == pytest.approx((2 / 3) * math.log(2) / (0.5 * (math.log(2) + math.log(3))), abs=1e-12)
    # Pairs: same in both 2 (one per pure cluster), same speaker 2 * C(3,2) = 6, same
    # cluster 3, all C(6,2) = 15: expected 6 * 3 / 15 = 1.2, max (6 + 3) / 2 = 4.5,
    # ARI = (2 - 1.2) / (4.5 - 1.2) = 8/33.
    assert scores["ari"] == pytest.approx(8 / 33, abs=1e-12)
    assert scores["purity"] == pytest.approx(5 / 6)
    assert scores["inverse_purity"] == pytest.approx(4 / 6)
    assert (scores["num_speakers"], scores["num_clusters"], scores["num_items"]) == (2, 3, 6)

    # Crossed labellings: no shared pair, so MI = 0 and ARI = (0 - 2/3) / (2 - 2/3) = -1/2.
    crossed = clustering_scores([0, 0, 1, 1], ["x", "y", "x", "y"])
    assert crossed["nmi"] == pytest.approx(0.0, abs=1e-12) and crossed["ari"] == pytest.approx(-0.5)
    assert crossed["purity"] == 0.5 and crossed["inverse_purity"] == 0.5

    # A split speaker: true {a: 4, b: 2}, clusters {a: 2}, {a: 2}, {b: 2}. H(true) =
    # ln 3 - (2/3) ln 2, H(pred) = ln 3, MI = H(pred) - H(pred | true) = ln 3 - (2/3) ln 2.
    split = clustering_scores(list("aaaabb"), [0, 0, 1, 1, 2, 2])
    h_true = math.log(3) - (2 / 3) * math.log(2)
    assert split["nmi"] == pytest.approx(h_true / (0.5 * (h_true + math.log(3))), abs=1e-12)
    # Pairs: both 3, speaker C(4,2) + 1 = 7, cluster 3: expected 21/15 = 1.4, max 5.
    assert split["ari"] == pytest.approx((3 - 1.4) / (5 - 1.4), abs=1e-12)
    assert split["purity"] == 1.0 and split["inverse_purity"] == pytest.approx(4 / 6)


def test_scores_against_brute_force_pair_counting():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, size=30)
    pred = rng.integers(0, 5, size=30)
    pairs = list(itertools.combinations(range(30), 2))
    same_t = [true[i] == true[j] for i, j in pairs]
    same_p = [pred[i] == pred[j] for i, j in pairs]
    both = sum(t and p for t, p in zip(same_t, same_p))
    expected = sum(same_t) * sum(same_p) / len(pairs)
    ari = (both - expected) / (0.5 * (sum(same_t) + sum(same_p)) - expected)
    assert clustering_scores(true, pred)["ari"] == pytest.approx(ari, abs=1e-12)


def test_scores_edge_cases():
    perfect = clustering_scores([3, 3, 9, 9, 1], ["x", "x", "y", "y", "z"])
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["purity"] == 1.0 and perfect["ari"] == pytest.approx(1.0)
    one_cluster = clustering_scores([0, 0, 1, 1], [5, 5, 5, 5])
    assert one_cluster["nmi"] == 0.0 and one_cluster["purity"] == 0.5 and one_cluster["inverse_purity"] == 1.0
    assert one_cluster["ari"] == 0.0
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
