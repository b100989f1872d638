"""From embeddings and trial lists to scores and metrics.

The recipe-level API: :func:`score_trial_list` (cosine scoring after optional mean
subtraction, with optional z/t/s/AS-norm, and the per-side measures quality-aware
calibration uses) and :func:`build_cohort`. Every step works on whole matrices in bounded
chunks; per-utterance work happens once per utterance, per-trial work is a gather and a
dot product. The metrics of the scores (``evaluate``) are in
:mod:`sb_sphereface2.scoring.metrics`; score files and result tables are written by
:mod:`sb_sphereface2.scoring.reports`.
"""

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from sb_sphereface2.scoring.normalization import (
    NORM_METHODS,
    CohortStatistics,
    l2_normalize,
    normalize_scores,
    speaker_mean_cohort,
    unit_cohort_statistics,
)

__all__ = [
    "COHORT_KINDS",
    "ScoredTrials",
    "index_trials",
    "build_cohort",
    "score_trial_list",
]

COHORT_KINDS = ("speaker-mean", "utterance")


def _index_of(ids):
    if isinstance(ids, dict):
        return ids
    index = {}
    for row, utt in enumerate(ids):
        if utt in index:
            raise ValueError(f"duplicate utterance ID {utt!r} (rows {index[utt]} and {row})")
        index[utt] = row
    return index


def index_trials(ids, trials):
    """Embedding rows of both sides of every trial, with a clear error for unknown IDs.

    Arguments
    ---------
    ids : dict or sequence of str
        ``{utterance_id: row}`` or the list of IDs in row order.
    trials : sb_sphereface2.data.trials.TrialList
        The trials.

    Returns
    -------
    enrol_rows, test_rows : numpy.ndarray
        int64 [N] each.

    Raises
    ------
    ValueError
        Naming the list, the line of the first trial whose ID has no embedding, and
        how many trials are affected.

    Example
    -------
    >>> from sb_sphereface2.data.trials import TrialList
    >>> t = TrialList("toy", np.array([1, 0], dtype=np.int8), ["a/1", "a/1"], ["a/2", "b/1"])
    >>> [r.tolist() for r in index_trials(["a/1", "a/2", "b/1"], t)]
    [[0, 0], [1, 2]]
    >>> index_trials(["a/1", "a/2"], t)
    Traceback (most recent call last):
    ...
    ValueError: trial list 'toy', line 2: test utterance 'b/1' has no embedding (1 of 2 trials name an utterance with no embedding)
    """
    index = _index_of(ids)
    missing_row = itertools.repeat(-1)
    enrol_rows = np.fromiter(map(index.get, trials.enrol, missing_row), np.int64, len(trials))
    test_rows = np.fromiter(map(index.get, trials.test, missing_row), np.int64, len(trials))
    missing = (enrol_rows < 0) | (test_rows < 0)
    if missing.any():
        first = int(np.argmax(missing))
        side, utt = (
            ("enrolment", trials.enrol[first]) if enrol_rows[first] < 0 else ("test", trials.test[first])
        )
        raise ValueError(
            f"trial list {trials.name!r}, line {trials.line_of(first)}: {side} utterance "
            f"{utt!r} has no embedding ({int(missing.sum())} of {len(trials)} trials name "
            f"an utterance with no embedding)"
        )
    return enrol_rows, test_rows


def build_cohort(embeddings, speakers=None, mean=None, kind="speaker-mean"):
    """Cohort for score normalisation, already in scoring space (mean-subtracted, unit rows).

    Arguments
    ---------
    embeddings : numpy.ndarray
        Training embeddings [N, D].
    speakers : sequence of str, optional
        Speaker of each row; required for ``kind="speaker-mean"``.
    mean : numpy.ndarray, optional
        Mean embedding [D] subtracted before normalising (pass the same mean to
        :func:`score_trials`).
    kind : str
        ``"speaker-mean"`` (one unit-length mean per speaker, the paper's cohort) or
        ``"utterance"`` (every training utterance).

    Returns
    -------
    numpy.ndarray
        Cohort embeddings, float32 [K, D], unit length.

    Example
    -------
    >>> emb = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> build_cohort(emb, ["a", "a", "b"]).shape, build_cohort(emb, kind="utterance").shape
    ((2, 2), (3, 2))
    """
    if kind == "speaker-mean":
        if speakers is None:
            raise ValueError("a speaker-mean cohort needs the speaker of each training embedding")
        return speaker_mean_cohort(embeddings, speakers, mean)[0]
    if kind == "utterance":
        return l2_normalize(embeddings, mean).numpy()
    raise ValueError(f"unknown cohort kind {kind!r}; choose from {COHORT_KINDS}")


@dataclass
class ScoredTrials:
    """Scores of a trial list and what quality measures need of each side.

    Arguments
    ---------
    scores : numpy.ndarray
        Final (normalised if asked) scores, float64 [N].
    enrol_rows, test_rows : numpy.ndarray
        Embedding row of each side of each trial, int64 [N].
    enrol_magnitude, test_magnitude : numpy.ndarray
        Length of each side's embedding after mean subtraction [N].
    enrol_imposter_mean, test_imposter_mean : numpy.ndarray or None
        Mean of each side's ``imposter_top_n`` highest cohort scores [N] (None without a
        cohort).
    """

    scores: np.ndarray
    enrol_rows: np.ndarray
    test_rows: np.ndarray
    enrol_magnitude: np.ndarray
    test_magnitude: np.ndarray
    enrol_imposter_mean: np.ndarray = None
    test_imposter_mean: np.ndarray = None


def score_trial_list(
    ids,
    embeddings,
    trials,
    mean=None,
    cohort=None,
    top_n=300,
    norm=None,
    chunk_size=16384,
    cohort_chunk_size=4096,
    progress=False,
    imposter_top_n=None,
):
    """Cosine scores of a trial list, optionally normalised against a cohort, with the
    per-side measures that quality-aware calibration uses.

    Only the utterances the list names are normalised and scored against the cohort,
    each once; trials are then scored in chunks of ``chunk_size``.

    Arguments
    ---------
    ids : dict or sequence of str
        ``{utterance_id: row}`` or the IDs of the embedding rows.
    embeddings : numpy.ndarray or torch.Tensor
        Embeddings [U, D].
    trials : sb_sphereface2.data.trials.TrialList
        The trials (IDs must be in ``ids``).
    mean : numpy.ndarray, optional
        Mean embedding [D] subtracted before the cosine (the training-set mean).
    cohort : numpy.ndarray, optional
        Cohort [K, D] in scoring space (see :func:`build_cohort`); needed by ``norm`` and
        ``imposter_top_n``.
    top_n : int
        Cohort scores kept per utterance for ``norm="asnorm"``.
    norm : str or None
        None, ``"znorm"``, ``"tnorm"``, ``"snorm"`` (whole cohort) or ``"asnorm"``
        (top-N cohort scores).
    chunk_size : int
        Trials scored at a time.
    cohort_chunk_size : int
        Utterances scored against the cohort at a time.
    progress : bool
        Show tqdm progress bars.
    imposter_top_n : int, optional
        Also return the mean of each side's ``imposter_top_n`` highest cohort scores
        (reused from AS-norm when the two agree).

    Returns
    -------
    ScoredTrials

    Example
    -------
    >>> from sb_sphereface2.data.trials import TrialList
    >>> t = TrialList("toy", np.array([1, 0], dtype=np.int8), ["a", "a"], ["b", "c"])
    >>> emb = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> scored = score_trial_list(["a", "b", "c"], emb, t)
    >>> scored.scores.round(4).tolist(), scored.test_rows.tolist(), scored.test_magnitude.round(4).tolist()
    ([0.7071, 0.0], [1, 2], [1.4142, 2.0])
    """
    if norm is not None and norm not in NORM_METHODS:
        raise ValueError(f"unknown score normalisation {norm!r}; choose from {NORM_METHODS} or None")
    if cohort is None and (norm is not None or imposter_top_n is not None):
        needs = f"score normalisation {norm!r}" if norm is not None else "the imposter mean"
        raise ValueError(f"{needs} needs a cohort")
    enrol_rows, test_rows = index_trials(ids, trials)
    used, inverse = np.unique(np.r_[enrol_rows, test_rows], return_inverse=True)
    inverse = inverse.ravel()
    enrol_local = torch.from_numpy(inverse[: len(trials)])
    test_local = torch.from_numpy(inverse[len(trials) :])
    if torch.is_tensor(embeddings):
        embeddings = embeddings.detach().cpu().numpy()
    embeddings = np.asarray(embeddings)
    if len(used) < len(embeddings):  # only the utterances the list names
        embeddings = embeddings[used]
    centred = torch.from_numpy(embeddings.astype(np.float32, copy=False))
    if mean is not None:
        centred = centred - torch.as_tensor(np.asarray(mean), dtype=torch.float32)
    magnitude_t = torch.linalg.vector_norm(centred, dim=1)
    units = centred / magnitude_t.clamp_min(1e-12)[:, None]  # what F.normalize computes
    magnitude = magnitude_t.numpy().astype(np.float64)
    scores = np.empty(len(trials), dtype=np.float64)
    with torch.no_grad():
        for start in tqdm(
            range(0, len(trials), chunk_size), desc=f"scoring {trials.name}",
            disable=not progress, unit="chunk",
        ):
            stop = start + chunk_size
            enrol_units = units[enrol_local[start:stop]]
            test_units = units[test_local[start:stop]]
            scores[start:stop] = torch.einsum("ij,ij->i", enrol_units, test_units).numpy()
    enrol_idx, test_idx = enrol_local.numpy(), test_local.numpy()
    result = ScoredTrials(scores, enrol_rows, test_rows, magnitude[enrol_idx], magnitude[test_idx])
    stats = None
    cohort_units = None if cohort is None else l2_normalize(cohort)
    if norm is not None:
        stats = unit_cohort_statistics(
            units, cohort_units, top_n=top_n if norm == "asnorm" else None,
            chunk_size=cohort_chunk_size, progress=progress,
        )
        enrol_stats = CohortStatistics(stats.mean[enrol_idx], stats.std[enrol_idx])
        test_stats = CohortStatistics(stats.mean[test_idx], stats.std[test_idx])
        result.scores = normalize_scores(scores, enrol_stats, test_stats, norm)
    if imposter_top_n is not None:
        if not (norm == "asnorm" and imposter_top_n == top_n):
            stats = unit_cohort_statistics(units, cohort_units, top_n=imposter_top_n,
                                           chunk_size=cohort_chunk_size, progress=progress)
        result.enrol_imposter_mean = stats.mean[enrol_idx]
        result.test_imposter_mean = stats.mean[test_idx]
    return result
