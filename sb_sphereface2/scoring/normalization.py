"""Score normalisation (z-norm, t-norm, s-norm, adaptive s-norm) on matrices.

Every utterance is scored against the cohort once, in chunks of utterances so that
memory stays ``chunk_size × cohort_size`` floats, and only the mean and standard
deviation of its (top-N) cohort scores are kept. Normalising a trial is then a gather
of two cached statistics, not a cohort pass per trial.

With ``s`` the raw score of trial (e, t) and ``μ, σ`` the statistics of an utterance
against the cohort (its ``top_n`` highest cohort scores for the adaptive variant):

- z-norm: ``(s − μ_e) / σ_e``
- t-norm: ``(s − μ_t) / σ_t``
- s-norm and AS-norm: ``½·[(s − μ_e) / σ_e + (s − μ_t) / σ_t]``

Standard deviations are unbiased (``N − 1``), as in SpeechBrain's recipe.
"""

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = [
    "NORM_METHODS",
    "CohortStatistics",
    "l2_normalize",
    "speaker_mean_cohort",
    "cohort_statistics",
    "unit_cohort_statistics",
    "normalize_scores",
]

NORM_METHODS = ("znorm", "tnorm", "snorm", "asnorm")


def l2_normalize(embeddings, mean=None, dtype=torch.float32):
    """Subtract an optional mean embedding and scale rows to unit length (in ``dtype``).

    Arguments
    ---------
    embeddings : numpy.ndarray or torch.Tensor
        Embeddings [N, D].
    mean : numpy.ndarray or torch.Tensor, optional
        Mean embedding [D] subtracted first.
    dtype : torch.dtype
        Precision of the result (scoring: float32; clustering: float64).

    Returns
    -------
    torch.Tensor
        Unit-length rows [N, D]. A zero row is a ValueError naming it.

    Example
    -------
    >>> l2_normalize(np.array([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    if torch.is_tensor(embeddings):
        tensor = embeddings.detach().to(dtype)
    else:
        tensor = torch.as_tensor(np.asarray(embeddings), dtype=dtype)
    if tensor.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(tensor.shape)}")
    if mean is not None:
        tensor = tensor - torch.as_tensor(np.asarray(mean), dtype=dtype)
    norms = tensor.norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError(f"embedding row {int(torch.argmin(norms))} has zero norm")
    return tensor / norms[:, None]


def speaker_mean_cohort(embeddings, speakers, mean=None):
    """Cohort of per-speaker mean embeddings (of mean-subtracted, unit-length rows).

    Arguments
    ---------
    embeddings : numpy.ndarray or torch.Tensor
        Training embeddings [N, D].
    speakers : sequence of str
        Speaker of each row [N].
    mean : numpy.ndarray, optional
        Mean embedding subtracted before normalising each row.

    Returns
    -------
    cohort : numpy.ndarray
        One unit-length mean embedding per speaker, float32 [S, D], sorted by speaker.
    names : list of str
        The speakers, in the order of ``cohort``.

    Example
    -------
    >>> emb = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> cohort, names = speaker_mean_cohort(emb, ["a", "a", "b"])
    >>> names, cohort.astype(float).round(3).tolist()
    (['a', 'b'], [[0.707, 0.707], [-1.0, 0.0]])
    """
    if len(speakers) != len(embeddings):
        raise ValueError(
            f"{len(embeddings)} embeddings but {len(speakers)} speaker labels"
        )
    names, inverse = np.unique(np.asarray(speakers, dtype=str), return_inverse=True)
    rows = l2_normalize(embeddings, mean)
    sums = torch.zeros(len(names), rows.shape[1], dtype=torch.float32)
    sums.index_add_(0, torch.as_tensor(inverse.ravel(), dtype=torch.long), rows)
    cohort = torch.nn.functional.normalize(sums, dim=1)
    return cohort.numpy(), names.tolist()


@dataclass
class CohortStatistics:
    """Mean and standard deviation of each utterance's (top-N) cohort scores.

    Arguments
    ---------
    mean : numpy.ndarray
        float64 [U].
    std : numpy.ndarray
        float64 [U].
    """

    mean: np.ndarray
    std: np.ndarray


def cohort_statistics(embeddings, cohort, top_n=None, chunk_size=4096, progress=False):
    """Cohort-score statistics of every utterance, computed once, in bounded memory.

    Arguments
    ---------
    embeddings : numpy.ndarray or torch.Tensor
        Unit-length utterance embeddings [U, D] (see :func:`l2_normalize`).
    cohort : numpy.ndarray or torch.Tensor
        Unit-length cohort embeddings [K, D].
    top_n : int, optional
        Keep only the ``top_n`` highest cohort scores of each utterance (adaptive
        normalisation); None uses the whole cohort.
    chunk_size : int
        Utterances scored against the cohort at a time (memory ``chunk_size × K``).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    CohortStatistics
        Per-utterance mean and unbiased standard deviation.

    Example
    -------
    >>> emb = l2_normalize(np.array([[1.0, 0.0]]))
    >>> cohort = l2_normalize(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    >>> stats = cohort_statistics(emb, cohort, top_n=2)
    >>> stats.mean.tolist(), stats.std.round(4).tolist()
    ([0.5], [0.7071])
    """
    return unit_cohort_statistics(l2_normalize(embeddings), l2_normalize(cohort), top_n, chunk_size, progress)


def unit_cohort_statistics(embeddings, cohort, top_n=None, chunk_size=4096, progress=False):
    """:func:`cohort_statistics` of rows that are already unit-length float32 tensors (not
    normalised again: the caller's guarantee).

    Example
    -------
    >>> stats = unit_cohort_statistics(torch.eye(2), torch.eye(2))
    >>> stats.mean.tolist(), stats.std.round(4).tolist()
    ([0.5, 0.5], [0.7071, 0.7071])
    """
    n_cohort = cohort.shape[0]
    if top_n is not None:
        if top_n < 2:
            raise ValueError(f"top_n must be at least 2, got {top_n}")
        top_n = min(int(top_n), n_cohort)
    if n_cohort < 2:
        raise ValueError(f"the cohort needs at least 2 embeddings, got {n_cohort}")
    means = torch.empty(embeddings.shape[0], dtype=torch.float32)
    stds = torch.empty(embeddings.shape[0], dtype=torch.float32)
    starts = range(0, embeddings.shape[0], chunk_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="cohort statistics", disable=not progress, unit="chunk"):
            scores = torch.mm(embeddings[start : start + chunk_size], cohort.T)
            if top_n is not None and top_n < n_cohort:
                scores = torch.topk(scores, top_n, dim=1, sorted=False).values
            # float32 (the floor's type): cosines lie in [-1, 1], and torch's one-pass
            # (Welford) statistics of a few thousand of them keep about six significant digits.
            stds[start : start + chunk_size], means[start : start + chunk_size] = torch.std_mean(scores, dim=1)
    return CohortStatistics(means.numpy().astype(np.float64), stds.numpy().astype(np.float64))


def normalize_scores(scores, enrol_stats, test_stats, method):
    """Normalise raw scores with cached per-trial cohort statistics.

    Arguments
    ---------
    scores : numpy.ndarray
        Raw scores [N].
    enrol_stats : CohortStatistics
        Statistics of the enrolment side of each trial ([N] each; gather them from
        the per-utterance statistics first). Unused by t-norm.
    test_stats : CohortStatistics
        Statistics of the test side of each trial [N]. Unused by z-norm.
    method : str
        One of ``znorm``, ``tnorm``, ``snorm``, ``asnorm`` (s-norm and AS-norm share
        the formula; they differ in the statistics: whole cohort vs top-N).

    Returns
    -------
    numpy.ndarray
        Normalised scores, float64 [N].

    Example
    -------
    >>> e = CohortStatistics(np.array([0.1]), np.array([0.2]))
    >>> t = CohortStatistics(np.array([0.3]), np.array([0.1]))
    >>> normalize_scores(np.array([0.5]), e, t, "snorm").round(6).tolist()
    [2.0]
    """
    if method not in NORM_METHODS:
        raise ValueError(f"unknown score normalisation {method!r}; choose from {NORM_METHODS}")
    scores = np.asarray(scores, dtype=np.float64)
    for stats in (enrol_stats, test_stats):
        if stats is not None and np.any(stats.std <= 0):
            raise ValueError("cohort statistics contain a zero standard deviation")
    if method == "znorm":
        return (scores - enrol_stats.mean) / enrol_stats.std
    if method == "tnorm":
        return (scores - test_stats.mean) / test_stats.std
    return 0.5 * (
        (scores - enrol_stats.mean) / enrol_stats.std
        + (scores - test_stats.mean) / test_stats.std
    )
