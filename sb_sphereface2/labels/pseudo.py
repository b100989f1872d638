"""Pseudo speaker labels for unlabelled audio by clustering its embeddings.

Embeddings (from a trained model) are L2-normalised, optionally centred (mean of the
normalised embeddings removed, then normalised again) and clustered:

- ``ahc``: agglomerative clustering, average linkage on cosine distance (scipy);
  cut into ``num_speakers`` clusters, or where the average cosine similarity between
  clusters falls below ``threshold``;
- ``spectral``: spectral clustering of a k-nearest-neighbour cosine affinity graph
  (normalised Laplacian, eigenvectors row-normalised, then spherical k-means);
- ``kmeans``: spherical k-means with k-means++ seeding.

When neither ``num_speakers`` nor (for ``ahc``) ``threshold`` is given, the count is
estimated with the eigengap of the normalised Laplacian of a k-nearest-neighbour cosine
affinity graph whose k is tuned automatically (``estimate_num_speakers``).
``ahc``, ``spectral`` and the estimate hold N x N float64 matrices, and the estimate
runs several partial eigendecompositions of one: meant for thousands of utterances,
not millions.

``clustering_scores`` measures the result against true labels (NMI, purity, inverse
purity, adjusted Rand index); ``write_pseudo_label_csv`` writes a training CSV whose
``spk_id`` is the pseudo-label. Command line:
``python -m sb_sphereface2.labels.pseudo --embeddings E.npz --csv unlabelled.csv --out pseudo.csv``
with an .npz holding ``ids`` [N], ``embeddings`` [N, D] and optionally ``speakers`` [N].
"""

import argparse
import math
import os
import sys

import numpy as np
from tqdm import tqdm
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.linalg import eigh

from sb_sphereface2.scoring.embeddings_io import load_embeddings
from sb_sphereface2.data.training_csv import read_training_csv, write_training_csv
from sb_sphereface2.files import write_json_atomic

METHODS = ("ahc", "spectral", "kmeans")
AUTO_PRUNE_STEPS = 8  # neighbour counts tried when tuning the affinity graph


def _unit_rows(embeddings, center):
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected embeddings [N, D] with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    x = _normalise_rows(x, "")
    if center:
        x = _normalise_rows(x - x.mean(axis=0, keepdims=True), " after centring")
    return x


def _normalise_rows(x, when):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"embedding row {int(np.argmin(norms[:, 0]))} has zero norm{when}")
    return x / norms


def _cosine_affinity(unit):
    affinity = np.clip(unit @ unit.T, 0.0, None)
    np.fill_diagonal(affinity, 0.0)
    return affinity


def _prune(affinity, keep):
    """Keep each row's ``keep`` largest affinities (a k-nearest-neighbour graph), symmetrised."""
    if keep >= len(affinity) - 1:
        return affinity
    kth = np.partition(affinity, -keep, axis=1)[:, -keep][:, None]
    pruned = np.where(affinity >= kth, affinity, 0.0)
    return 0.5 * (pruned + pruned.T)


def _laplacian(affinity):
    degree = affinity.sum(axis=1)
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    return np.eye(len(affinity)) - scale[:, None] * affinity * scale[None, :]


def _eigengap(affinity, max_speakers):
    """(count, gap): the k <= max_speakers after which the ascending eigenvalues of the
    normalised Laplacian jump the most, and that jump."""
    top = min(int(max_speakers), len(affinity) - 1)
    eigenvalues = eigh(_laplacian(affinity), eigvals_only=True, subset_by_index=[0, top])
    gaps = np.diff(eigenvalues)
    k = int(np.argmax(gaps))
    return k + 1, float(gaps[k])


def _pruned_affinity(unit, prune, max_speakers):
    """Pruned cosine affinity and eigengap count. ``prune`` None tunes the neighbour count
    k over a geometric grid from 3 to N/2, choosing the k that minimises (k / N) / gap,
    as in auto-tuning spectral clustering (Park et al., 2019): the sparsest graph that
    still shows a clear gap."""
    affinity = _cosine_affinity(unit)
    n = len(affinity)
    if prune is not None:
        if not 0.0 < prune <= 1.0:
            raise ValueError(f"prune must be in (0, 1], got {prune}")
        pruned = _prune(affinity, max(1, math.ceil(prune * n)))
        return (pruned,) + _eigengap(pruned, max_speakers)
    best = None
    grid = np.unique(np.round(np.geomspace(3, max(3, n // 2), AUTO_PRUNE_STEPS)).astype(int))
    for keep in tqdm(grid, desc="tuning the affinity graph", disable=n < 1000):
        pruned = _prune(affinity, int(keep))
        count, gap = _eigengap(pruned, max_speakers)
        ratio = keep / n / max(gap, 1e-12)
        if best is None or ratio < best[0]:
            best = (ratio, pruned, count, gap)
    return best[1:]


def estimate_num_speakers(embeddings, max_speakers=None, center=True, prune=None):
    """Number of speakers estimated by the eigengap of the normalised Laplacian of a
    k-nearest-neighbour cosine affinity graph: the k (1 <= k <= max_speakers) after which
    the ascending eigenvalues jump the most. By default the neighbour count is tuned
    automatically (``prune`` None).

    Arguments
    ---------
    embeddings : array-like
        Embeddings [N, D].
    max_speakers : int or None
        Largest count considered (default: min(N - 1, 200)).
    center : bool
        Normalise, subtract the mean, normalise again (see ``cluster_embeddings``).
    prune : float or None
        Keep only each row's largest ``prune`` fraction of affinities; None tunes it.

    Returns
    -------
    int
        Estimated number of speakers.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((3, 16))
    >>> x = np.repeat(centres, 10, axis=0) + 0.05 * rng.standard_normal((30, 16))
    >>> estimate_num_speakers(x)
    3
    """
    unit = _unit_rows(embeddings, center)
    if max_speakers is None:
        max_speakers = min(len(unit) - 1, 200)
    return _pruned_affinity(unit, prune, max_speakers)[1]


def spherical_kmeans(unit, num_clusters, seed=0, restarts=5, iterations=100):
    """k-means on the unit sphere (cosine), k-means++ seeding, best of ``restarts``.

    Arguments
    ---------
    unit : numpy.ndarray
        L2-normalised rows [N, D].
    num_clusters : int
        Number of clusters k.
    seed : int
        Seed of the seeding.
    restarts : int
        Independent runs; the one with the highest total cosine to its centre wins.
    iterations : int
        Maximum assignment/update rounds per run.

    Returns
    -------
    numpy.ndarray
        Cluster index per row [N], int64.

    Example
    -------
    >>> x = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]])
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> labels = spherical_kmeans(x, 2)
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
    """
    rng = np.random.default_rng(seed)
    n = len(unit)
    best_labels, best_score = None, -np.inf
    for _ in range(int(restarts)):
        centres = np.empty((num_clusters, unit.shape[1]))
        centres[0] = unit[rng.integers(n)]
        distance = 1.0 - unit @ centres[0]
        for c in range(1, num_clusters):
            weights = np.clip(distance, 0.0, None) ** 2
            total = weights.sum()
            pick = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
            centres[c] = unit[pick]
            distance = np.minimum(distance, 1.0 - unit @ centres[c])
        labels = None
        for _ in range(int(iterations)):
            similarity = unit @ centres.T
            new_labels = similarity.argmax(axis=1)
            if labels is not None and np.array_equal(new_labels, labels):
                break
            labels = new_labels
            sums = np.zeros_like(centres)
            np.add.at(sums, labels, unit)
            norms = np.linalg.norm(sums, axis=1)
            empty = norms == 0
            if empty.any():  # re-seed empty clusters at the worst-fitting points
                worst = np.argsort(similarity[np.arange(n), labels])[: int(empty.sum())]
                sums[empty] = unit[worst]
                norms[empty] = 1.0
            centres = sums / norms[:, None]
        score = (unit @ centres.T)[np.arange(n), labels].sum()
        if score > best_score:
            best_labels, best_score = labels, score
    return best_labels.astype(np.int64)


def _relabel_by_size(labels):
    """Renumber clusters 0..K-1 by decreasing size (ties: first appearance)."""
    _, first, inverse, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)].astype(np.int64)


def cluster_embeddings(
    embeddings,
    num_speakers=None,
    method="ahc",
    threshold=None,
    max_speakers=None,
    center=True,
    prune=None,
    seed=0,
):
    """Cluster speaker embeddings into pseudo speakers.

    Arguments
    ---------
    embeddings : array-like
        Embeddings [N, D] (any scale; rows are L2-normalised here).
    num_speakers : int or None
        Number of clusters, if known.
    method : str
        "ahc" (average-linkage agglomerative on cosine distance), "spectral" or "kmeans"
        (spherical k-means++).
    threshold : float or None
        "ahc" only, when ``num_speakers`` is None: stop merging when the average cosine
        similarity between the two closest clusters is below ``threshold``.
    max_speakers : int or None
        Largest count the eigengap estimate considers (default: min(N - 1, 200)).
    center : bool
        L2-normalise, subtract the mean of the normalised embeddings, and normalise
        again (removes the direction all embeddings share, as cosine scoring does with
        the training mean).
    prune : float or None
        Spectral clustering and the eigengap estimate: keep each row's largest ``prune``
        fraction of cosine affinities; None tunes it (see ``estimate_num_speakers``).
    seed : int
        Seed of k-means.

    Returns
    -------
    numpy.ndarray
        Cluster per embedding [N], int64, numbered 0..K-1 by decreasing cluster size.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((4, 32))
    >>> x = np.repeat(centres, 5, axis=0) + 0.05 * rng.standard_normal((20, 32))
    >>> labels = cluster_embeddings(x)  # count estimated by the eigengap
    >>> len(set(labels.tolist())), labels[:5].tolist() == [labels[0]] * 5
    (4, True)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    unit = _unit_rows(embeddings, center)
    n = len(unit)
    if num_speakers is not None:
        if int(num_speakers) != num_speakers or not 1 <= num_speakers <= n:
            raise ValueError(f"num_speakers must be an integer in [1, {n}], got {num_speakers}")
        num_speakers = int(num_speakers)
    if threshold is not None and method != "ahc":
        raise ValueError(f"threshold applies to method 'ahc' only, not {method!r}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if max_speakers is None:
        max_speakers = min(n - 1, 200)

    if method == "ahc":
        tree = linkage(unit, method="average", metric="cosine")
        if num_speakers is None and threshold is not None:
            labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
        else:
            if num_speakers is None:
                num_speakers = estimate_num_speakers(unit, max_speakers, center=False, prune=prune)
            labels = fcluster(tree, t=num_speakers, criterion="maxclust")
    elif method == "spectral":
        affinity, estimate, _ = _pruned_affinity(unit, prune, max_speakers)
        if num_speakers is None:
            num_speakers = estimate
        _, eigenvectors = eigh(_laplacian(affinity), subset_by_index=[0, num_speakers - 1])
        spectral = eigenvectors / np.maximum(np.linalg.norm(eigenvectors, axis=1, keepdims=True), 1e-12)
        labels = spherical_kmeans(spectral, num_speakers, seed=seed)
    else:
        if num_speakers is None:
            num_speakers = estimate_num_speakers(unit, max_speakers, center=False, prune=prune)
        labels = spherical_kmeans(unit, num_speakers, seed=seed)
    return _relabel_by_size(labels)


def _contingency(true, pred):
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError(f"need two non-empty label lists of equal length, got {true.shape} and {pred.shape}")
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(table, (t.reshape(-1), p.reshape(-1)), 1)
    return table


def _entropy(counts):
    prob = counts[counts > 0] / counts.sum()
    return float(-(prob * np.log(prob)).sum())


def clustering_scores(true, pred):
    """Agreement between true speakers and clusters.

    Arguments
    ---------
    true : sequence
        True speaker of each item (any hashable labels).
    pred : sequence
        Cluster of each item.

    Returns
    -------
    dict
        ``nmi``: mutual information over the arithmetic mean of the two entropies (1.0
        when both labellings are a single group); ``purity``: share of items that belong
        to their cluster's majority speaker; ``inverse_purity``: share of items in their
        speaker's majority cluster; ``ari``: adjusted Rand index; ``num_speakers``,
        ``num_clusters``, ``num_items``.

    Example
    -------
    >>> scores = clustering_scores(["a", "a", "b", "b"], [0, 0, 0, 1])
    >>> scores["purity"], scores["inverse_purity"], scores["num_clusters"]
    (0.75, 0.75, 2)
    >>> clustering_scores([1, 1, 2], [5, 5, 7])["nmi"]
    1.0
    """
    table = _contingency(true, pred)
    n = table.sum()
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    h_true, h_pred = _entropy(rows), _entropy(cols)
    nonzero = table > 0
    joint = table[nonzero] / n
    expected = (rows[:, None] * cols[None, :])[nonzero] / n**2
    mutual = float((joint * np.log(joint / expected)).sum())
    if h_true == 0 and h_pred == 0:
        nmi = 1.0
    else:
        nmi = mutual / (0.5 * (h_true + h_pred))

    def pairs(counts):
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    index, pairs_true, pairs_pred = pairs(table), pairs(rows), pairs(cols)
    total = n * (n - 1) / 2
    expected_index = pairs_true * pairs_pred / total if total else 0.0
    max_index = 0.5 * (pairs_true + pairs_pred)
    ari = 1.0 if max_index == expected_index else (index - expected_index) / (max_index - expected_index)
    return {
        "nmi": float(min(max(nmi, 0.0), 1.0)),
        "purity": float(table.max(axis=0).sum() / n),
        "inverse_purity": float(table.max(axis=1).sum() / n),
        "ari": float(ari),
        "num_speakers": int(table.shape[0]),
        "num_clusters": int(table.shape[1]),
        "num_items": int(n),
    }


def write_pseudo_label_csv(in_csv, ids, labels, out_csv, prefix="pseudo", speaker_column="spk_id"):
    """Write ``in_csv`` with ``spk_id`` set to each row's pseudo-label (added as the last
    column if absent); every other column is kept.

    Arguments
    ---------
    in_csv : str
        CSV of the unlabelled audio (needs an ``ID`` column).
    ids : sequence of str
        Utterance IDs that ``labels`` belong to; every row's ID must be among them.
    labels : sequence of int
        Cluster of each ID.
    out_csv : str
        Output training CSV (written atomically).
    prefix : str
        Pseudo speaker names are ``prefix`` + zero-padded cluster number.
    speaker_column : str
        Column that receives the pseudo-label.

    Returns
    -------
    list of str
        Pseudo speaker of each row of ``in_csv``, in row order.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "u.csv"), "w").write("ID,wav\\nb,b.wav\\na,a.wav\\n")
    >>> write_pseudo_label_csv(os.path.join(folder, "u.csv"), ["a", "b"], [1, 0],
    ...                        os.path.join(folder, "p.csv"))
    ['pseudo0', 'pseudo1']
    >>> open(os.path.join(folder, "p.csv")).read()
    'ID,wav,spk_id\\nb,b.wav,pseudo0\\na,a.wav,pseudo1\\n'
    """
    ids = [str(i) for i in ids]
    labels = np.asarray(labels).reshape(-1)
    if len(ids) != len(labels):
        raise ValueError(f"got {len(ids)} ids but {len(labels)} labels")
    if len(set(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    fieldnames, rows = read_training_csv(in_csv, required=("ID",))
    width = len(str(int(labels.max()))) if len(labels) else 1
    label_of = {i: f"{prefix}{int(label):0{width}d}" for i, label in zip(ids, labels)}
    missing = [row["ID"] for row in rows if row["ID"] not in label_of]
    if missing:
        raise ValueError(
            f"{in_csv}: {len(missing)} row(s) have no embedding, first ID {missing[0]!r}"
        )
    if speaker_column not in fieldnames:
        fieldnames = fieldnames + [speaker_column]
    out_rows = [dict(row, **{speaker_column: label_of[row["ID"]]}) for row in rows]
    write_training_csv(out_csv, fieldnames, out_rows)
    return [row[speaker_column] for row in out_rows]


def report_path(out_csv):
    """Path of the JSON report written beside ``out_csv``.

    Example
    -------
    >>> report_path("data/pseudo.csv")
    'data/pseudo.clusters.json'
    """
    return os.path.splitext(out_csv)[0] + ".clusters.json"


def pseudo_label(
    embeddings_path,
    in_csv,
    out_csv,
    num_speakers=None,
    method="ahc",
    threshold=None,
    max_speakers=None,
    center=True,
    prune=None,
    seed=0,
):
    """Cluster the embeddings of the rows of ``in_csv`` and write the pseudo-labelled CSV
    and a JSON report (``report_path(out_csv)``): settings, cluster sizes and, where true
    speakers are known (``speakers`` in the .npz, else ``spk_id`` of ``in_csv``),
    ``clustering_scores``.

    Arguments
    ---------
    embeddings_path : str
        .npz with ``ids``, ``embeddings`` and optionally ``speakers``.
    in_csv : str
        CSV of the unlabelled audio; only its rows are clustered.
    out_csv : str
        Output training CSV.
    num_speakers, method, threshold, max_speakers, center, prune, seed
        As in ``cluster_embeddings``.

    Returns
    -------
    dict
        The report.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> x = np.repeat(rng.standard_normal((2, 8)), 4, axis=0) + 0.01 * rng.standard_normal((8, 8))
    >>> ids = np.array([f"u{i}" for i in range(8)])
    >>> np.savez(os.path.join(folder, "e.npz"), ids=ids, embeddings=x, speakers=np.repeat(["a", "b"], 4))
    >>> _ = open(os.path.join(folder, "u.csv"), "w").write("ID\\n" + "\\n".join(ids) + "\\n")
    >>> report = pseudo_label(os.path.join(folder, "e.npz"), os.path.join(folder, "u.csv"),
    ...                       os.path.join(folder, "p.csv"), num_speakers=2)
    >>> report["scores"]["nmi"], report["cluster_sizes"]
    (1.0, [4, 4])
    """
    ids, embeddings, speakers = load_embeddings(embeddings_path)
    fieldnames, rows = read_training_csv(in_csv, required=("ID",))
    position = {utt: i for i, utt in enumerate(ids)}
    if len(position) != len(ids):
        raise ValueError(f"{embeddings_path}: duplicate ids")
    missing = [row["ID"] for row in rows if row["ID"] not in position]
    if missing:
        raise ValueError(
            f"{in_csv}: {len(missing)} row(s) have no embedding in {embeddings_path}, "
            f"first ID {missing[0]!r}"
        )
    row_ids = [row["ID"] for row in rows]
    if len(set(row_ids)) != len(row_ids):
        raise ValueError(f"{in_csv}: duplicate IDs")
    selected = np.array([position[i] for i in row_ids])
    labels = cluster_embeddings(
        embeddings[selected],
        num_speakers=num_speakers,
        method=method,
        threshold=threshold,
        max_speakers=max_speakers,
        center=center,
        prune=prune,
        seed=seed,
    )
    if speakers is not None:
        true, source = [speakers[i] for i in selected], "embeddings file"
    elif "spk_id" in fieldnames and all(row["spk_id"] for row in rows):
        true, source = [row["spk_id"] for row in rows], "spk_id column of the CSV"
    else:
        true, source = None, None
    report = {
        "embeddings": os.path.abspath(embeddings_path),
        "in_csv": os.path.abspath(in_csv),
        "out_csv": os.path.abspath(out_csv),
        "method": method,
        "num_speakers_given": num_speakers,
        "threshold": threshold,
        "center": center,
        "prune": prune,
        "seed": seed,
        "num_utterances": len(rows),
        "num_clusters": int(labels.max()) + 1,
        "cluster_sizes": np.bincount(labels).tolist(),
        "true_labels_from": source,
        "scores": clustering_scores(true, labels) if true is not None else None,
    }
    write_pseudo_label_csv(in_csv, row_ids, labels, out_csv)
    write_json_atomic(report_path(out_csv), report)
    return report


def main(argv=None):
    """Command line: ``python -m sb_sphereface2.labels.pseudo --embeddings E.npz --csv IN.csv --out OUT.csv``."""
    parser = argparse.ArgumentParser(
        prog="python -m sb_sphereface2.labels.pseudo",
        description="Cluster utterance embeddings into pseudo speakers and write a training "
        "CSV whose spk_id is the cluster, plus OUT.clusters.json (cluster sizes; NMI and "
        "purity when true speakers are known).",
    )
    parser.add_argument("--embeddings", required=True, help=".npz with ids, embeddings[, speakers]")
    parser.add_argument("--csv", required=True, help="CSV of the unlabelled utterances (ID column)")
    parser.add_argument("--out", required=True, help="pseudo-labelled training CSV to write")
    parser.add_argument("--num-speakers", type=int, default=None, help="known speaker count")
    parser.add_argument("--method", choices=METHODS, default="ahc")
    parser.add_argument("--threshold", type=float, default=None,
                        help="ahc: cosine similarity below which clusters stay apart")
    parser.add_argument("--max-speakers", type=int, default=None, help="upper bound for the estimate")
    parser.add_argument("--prune", type=float, default=None, help="keep this fraction of affinities per row")
    parser.add_argument("--no-center", action="store_true", help="do not subtract the mean embedding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        report = pseudo_label(
            args.embeddings,
            args.csv,
            args.out,
            num_speakers=args.num_speakers,
            method=args.method,
            threshold=args.threshold,
            max_speakers=args.max_speakers,
            center=not args.no_center,
            prune=args.prune,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"pseudo_labels: error: {error}", file=sys.stderr)
        return 2
    line = f"{report['num_utterances']} utterances -> {report['num_clusters']} pseudo speakers"
    if report["scores"] is not None:
        s = report["scores"]
        line += (
            f"; against {s['num_speakers']} true speakers: NMI {s['nmi']:.4f}, purity "
            f"{s['purity']:.4f}, inverse purity {s['inverse_purity']:.4f}, ARI {s['ari']:.4f}"
        )
    print(line + f". Report: {report_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
