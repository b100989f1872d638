"""Agreement between true speakers and clusters, with scikit-learn's clustering metrics."""

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


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
        ``nmi``: mutual information over the arithmetic mean of the two entropies
        (``sklearn.metrics.normalized_mutual_info_score``; 1.0 when both labellings are
        one group); ``purity``: share of items that belong to their cluster's majority
        speaker; ``inverse_purity``: share of items in their speaker's majority cluster;
        ``ari``: adjusted Rand index (``sklearn.metrics.adjusted_rand_score``);
        ``num_speakers``, ``num_clusters``, ``num_items``.

    Example
    -------
    >>> scores = clustering_scores(["a", "a", "b", "b"], [0, 0, 0, 1])
    >>> scores["purity"], scores["inverse_purity"], scores["num_clusters"]
    (0.75, 0.75, 2)
    >>> clustering_scores([1, 1, 2], [5, 5, 7])["nmi"]
    1.0
    """
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError(f"need two non-empty label lists of equal length, got {true.shape} and {pred.shape}")
    table = contingency_matrix(true, pred)  # rows: speakers, columns: clusters
    n = int(table.sum())
    return {
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "purity": float(table.max(axis=0).sum() / n),
        "inverse_purity": float(table.max(axis=1).sum() / n),
        "ari": float(adjusted_rand_score(true, pred)),
        "num_speakers": int(table.shape[0]),
        "num_clusters": int(table.shape[1]),
        "num_items": n,
    }
