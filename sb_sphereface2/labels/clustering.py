"""Clustering speaker embeddings into pseudo speakers (scikit-learn), and estimating the
number of speakers with the eigengap of a tuned nearest-neighbour graph.

Embeddings are L2-normalised and, by default, centred (the mean of the normalised
embeddings removed, then normalised again). Methods:

- ``ahc``: ``sklearn.cluster.AgglomerativeClustering``, average linkage on cosine
  distance, cut into ``num_speakers`` clusters or where the average cosine similarity
  between the two closest clusters is no longer above ``threshold``;
- ``spectral``: ``sklearn.cluster.SpectralClustering`` on a precomputed k-nearest-neighbour
  cosine affinity graph (the graph the eigengap estimate tunes);
- ``kmeans``: ``sklearn.cluster.KMeans`` (k-means++, best of 5 runs) on the unit rows.
  scikit-learn has no spherical k-means; Euclidean k-means on unit vectors is the usual
  stand-in, since for unit rows ``|x - c|^2 = 1 + |c|^2 - 2 x.c`` ranks the centres by
  cosine up to the centre norms, which are close to 1 for tight clusters.

The speaker-count estimate is not in scikit-learn: the neighbour count k of the graph is
tuned as in auto-tuning spectral clustering (Park et al., IEEE SPL 2019), with
``sklearn.neighbors.kneighbors_graph`` for the graph, ``scipy.sparse.csgraph.laplacian``
and ``scipy.linalg.eigh`` for the spectrum. ``ahc``, ``spectral`` and the estimate hold
N x N matrices and the estimate runs several partial eigendecompositions of one: meant
for thousands of utterances, not millions.
"""

import math
import warnings

import numpy as np
from scipy.linalg import eigh
from scipy.sparse import issparse
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.neighbors import kneighbors_graph
import torch
from tqdm import tqdm

from sb_sphereface2.scoring.normalization import l2_normalize

METHODS = ("ahc", "spectral", "kmeans")
AUTO_PRUNE_STEPS = 8  # neighbour counts tried when tuning the affinity graph
KMEANS_RUNS = 5  # k-means++ initialisations; the one with the lowest inertia wins


def unit_rows(embeddings, center=True):
    """L2-normalised rows, optionally centred and normalised again.

    Arguments
    ---------
    embeddings : array-like
        Embeddings [N, D], N >= 2, finite.
    center : bool
        Subtract the mean of the normalised rows and normalise again (removes the
        direction all embeddings share, as cosine scoring does with the training mean).

    Returns
    -------
    numpy.ndarray
        Unit rows [N, D], float64.

    Example
    -------
    >>> unit_rows([[3.0, 4.0], [0.0, 2.0]], center=False).tolist()
    [[0.6, 0.8], [0.0, 1.0]]
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected embeddings [N, D] with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    x = l2_normalize(x, dtype=torch.float64)
    if center:
        x = l2_normalize(x, mean=x.mean(dim=0), dtype=torch.float64)
    return x.numpy()


def neighbour_affinity(unit, neighbours):
    """Cosine affinity of each row to its ``neighbours`` most similar other rows
    (negative cosines count as 0), symmetrised: ``(A + A.T) / 2``, sparse.

    Example
    -------
    >>> unit = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    >>> neighbour_affinity(unit, 1).toarray().round(2).tolist()
    [[0.0, 0.8, 0.0], [0.8, 0.0, 0.3], [0.0, 0.3, 0.0]]
    """
    graph = kneighbors_graph(unit, int(neighbours), mode="distance", metric="cosine")
    graph.data = np.clip(1.0 - graph.data, 0.0, None)
    return 0.5 * (graph + graph.T)


def eigengap_count(affinity, max_speakers):
    """Where the ascending eigenvalues of the normalised Laplacian of ``affinity`` jump
    the most: a graph of k well-separated groups has k eigenvalues near 0, then a gap.

    Arguments
    ---------
    affinity : numpy.ndarray or scipy.sparse matrix
        Symmetric non-negative affinity [N, N].
    max_speakers : int
        Largest count considered (at most N - 1).

    Returns
    -------
    tuple of (int, float)
        The count k (1 <= k <= max_speakers) and the gap between eigenvalues k and k + 1.

    Example
    -------
    >>> blocks = np.kron(np.eye(3), np.ones((4, 4)))  # three groups of four, no links
    >>> count, gap = eigengap_count(blocks, max_speakers=6)
    >>> count, round(gap, 6)
    (3, 1.333333)
    """
    dense = laplacian(affinity, normed=True)
    dense = dense.toarray() if issparse(dense) else np.asarray(dense, dtype=np.float64)
    top = min(int(max_speakers), len(dense) - 1)
    eigenvalues = eigh(dense, eigvals_only=True, subset_by_index=[0, top])
    gaps = np.diff(eigenvalues)
    k = int(np.argmax(gaps))
    return k + 1, float(gaps[k])


def tuned_affinity(unit, max_speakers, prune=None):
    """The nearest-neighbour affinity graph and its eigengap count.

    ``prune`` None tunes the neighbour count k over a geometric grid from 3 to N/2 and
    keeps the k that minimises (k / N) / gap (Park et al., 2019): the sparsest graph that
    still shows a clear gap. A ``prune`` in (0, 1] keeps ceil(prune x N) neighbours.

    Returns
    -------
    tuple of (scipy.sparse matrix, int, float)
        Affinity [N, N], speaker count, eigengap.
    """
    n = len(unit)
    if prune is not None:
        if not 0.0 < prune <= 1.0:
            raise ValueError(f"prune must be in (0, 1], got {prune}")
        affinity = neighbour_affinity(unit, min(n - 1, max(1, math.ceil(prune * n))))
        return (affinity,) + eigengap_count(affinity, max_speakers)
    best = None
    grid = np.unique(np.round(np.geomspace(3, max(3, n // 2), AUTO_PRUNE_STEPS)).astype(int))
    for neighbours in tqdm(grid, desc="tuning the affinity graph", disable=n < 1000):
        affinity = neighbour_affinity(unit, min(n - 1, int(neighbours)))
        count, gap = eigengap_count(affinity, max_speakers)
        ratio = neighbours / n / max(gap, 1e-12)
        if best is None or ratio < best[0]:
            best = (ratio, affinity, count, gap)
    return best[1:]


def _default_max_speakers(n, max_speakers):
    return min(n - 1, 200) if max_speakers is None else int(max_speakers)


def estimate_num_speakers(embeddings, max_speakers=None, center=True, prune=None):
    """Number of speakers: the eigengap count of the tuned nearest-neighbour cosine graph.

    Arguments
    ---------
    embeddings : array-like
        Embeddings [N, D].
    max_speakers : int or None
        Largest count considered (default: min(N - 1, 200)).
    center : bool
        See ``unit_rows``.
    prune : float or None
        Keep each row's ``prune`` fraction of most similar rows; None tunes it.

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
    unit = unit_rows(embeddings, center)
    return tuned_affinity(unit, _default_max_speakers(len(unit), max_speakers), prune)[1]


def relabel_by_size(labels):
    """Renumber clusters 0..K-1 by decreasing size (ties: first appearance).

    Example
    -------
    >>> relabel_by_size([7, 3, 3, 9, 7, 3]).tolist()
    [1, 0, 0, 2, 1, 0]
    """
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
        Number of clusters, if known; else estimated (``estimate_num_speakers``) unless
        ``threshold`` is given.
    method : str
        "ahc", "spectral" or "kmeans" (see the module docstring).
    threshold : float or None
        "ahc" only, when ``num_speakers`` is None: two clusters merge only while their
        average cosine similarity is above ``threshold``.
    max_speakers : int or None
        Largest count the estimate considers (default: min(N - 1, 200)).
    center : bool
        See ``unit_rows``.
    prune : float or None
        Spectral clustering and the estimate: keep each row's ``prune`` fraction of most
        similar rows in the affinity graph; None tunes it.
    seed : int
        Seed of k-means and of the spectral embedding.

    Returns
    -------
    numpy.ndarray
        Cluster per embedding [N], int64, numbered 0..K-1 by decreasing cluster size.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.standard_normal((4, 32))
    >>> x = np.repeat(centres, [6, 5, 4, 3], axis=0) + 0.05 * rng.standard_normal((18, 32))
    >>> cluster_embeddings(x).tolist()  # count estimated by the eigengap
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    unit = unit_rows(embeddings, center)
    n = len(unit)
    if num_speakers is not None:
        if int(num_speakers) != num_speakers or not 1 <= num_speakers <= n:
            raise ValueError(f"num_speakers must be an integer in [1, {n}], got {num_speakers}")
        num_speakers = int(num_speakers)
    if threshold is not None and method != "ahc":
        raise ValueError(f"threshold applies to method 'ahc' only, not {method!r}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    max_speakers = _default_max_speakers(n, max_speakers)

    if method == "spectral":
        affinity, estimate, _ = tuned_affinity(unit, max_speakers, prune)
        model = SpectralClustering(
            n_clusters=num_speakers or estimate, affinity="precomputed", random_state=seed
        )
        with warnings.catch_warnings():  # separate speakers make a disconnected graph
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            labels = model.fit_predict(affinity)
        return relabel_by_size(labels)
    if num_speakers is None and not (method == "ahc" and threshold is not None):
        num_speakers = tuned_affinity(unit, max_speakers, prune)[1]
    if method == "ahc":
        if num_speakers is None:
            model = AgglomerativeClustering(
                n_clusters=None, distance_threshold=1.0 - threshold, metric="cosine", linkage="average"
            )
        else:
            model = AgglomerativeClustering(n_clusters=num_speakers, metric="cosine", linkage="average")
    else:
        model = KMeans(n_clusters=num_speakers, n_init=KMEANS_RUNS, random_state=seed)
    return relabel_by_size(model.fit_predict(unit))
