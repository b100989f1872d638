"""Comparing two systems the way their difference can show: paired by seed, and with the
test set's own uncertainty.

- ``paired_t_interval(differences)``: the mean of per-seed paired differences (system A
  minus system B, both trained with the same seed: the same data split, initial weights
  and batch order) with its Student-t confidence interval over the seeds, and how many
  seeds favour each side;
- ``speaker_bootstrap(...)``: a percentile interval of a metric, of the difference
  between two systems scored on the same trials, or of any contrast of systems, when the held-out *speakers* are
  resampled with their trials (trials share speakers, so resampling trials would
  overstate the certainty). A resample draws speakers with replacement; a target trial of
  a speaker drawn k times counts k times, a non-target trial of two speakers drawn k and
  l times counts k·l times (the trials the resampled speakers would give);
- ``error_rates(scores, labels, weights)``: EER (%) and minDCF of one or many weightings
  of a trial list (:mod:`sb_sphereface2.scoring.metrics`).
"""

import math

import numpy as np
from scipy import stats

from sb_sphereface2.scoring.metrics import compute_eer, compute_min_dcf

METRICS = ("eer_percent", "min_dcf_0.01")


def paired_t_interval(differences, confidence=0.95):
    """Mean paired difference over seeds with its t interval.

    Arguments
    ---------
    differences : sequence of float
        One difference (A minus B) per seed.
    confidence : float
        Coverage of the interval.

    Returns
    -------
    dict
        ``mean``, ``sd`` (of the differences), ``low``, ``high`` (the interval; NaN
        with one seed), ``seeds``, ``favour_a`` / ``favour_b`` (seeds where A's value is
        lower / higher: lower is better for error rates), ``ties``.

    Example
    -------
    >>> r = paired_t_interval([-0.41, -0.84, -0.41])
    >>> round(r["mean"], 4), round(r["low"], 3), round(r["high"], 3), r["favour_a"]
    (-0.5533, -1.17, 0.063, 3)
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"need finite paired differences, got {differences!r}")
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    return {"mean": mean, "sd": sd, "low": low, "high": high, "seeds": n,
            "favour_a": int((d < 0).sum()), "favour_b": int((d > 0).sum()), "ties": int((d == 0).sum())}


def error_rates(scores, labels, weights=None):
    """EER in percent and minDCF (p = 0.01) of a trial list, for one weighting or many.

    Example
    -------
    >>> error_rates([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1])
    {'eer_percent': 50.0, 'min_dcf_0.01': 0.5}
    """
    eer = compute_eer(scores, labels, weights)[0]
    dcf = compute_min_dcf(scores, labels, p_target=0.01, weights=weights)[0]
    return {METRICS[0]: 100.0 * eer, METRICS[1]: dcf}


def _speaker_codes(enrol_speakers, test_speakers):
    speakers = sorted(set(enrol_speakers) | set(test_speakers))
    code = {s: i for i, s in enumerate(speakers)}
    return len(speakers), np.array([code[s] for s in enrol_speakers]), np.array([code[s] for s in test_speakers])


def resample_weights(enrol_speakers, test_speakers, resamples, seed=0):
    """Trial weights of ``resamples`` speaker-level bootstrap draws, [R, N].

    Example
    -------
    >>> w = resample_weights(["a", "a", "b"], ["a", "b", "b"], resamples=2000, seed=1)
    >>> w.shape, sorted(set(w[:, 1].tolist()))  # the a-b trial: count(a) x count(b)
    ((2000, 3), [0.0, 1.0])
    """
    count, enrol, test = _speaker_codes(enrol_speakers, test_speakers)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(count, np.full(count, 1.0 / count), size=resamples).astype(np.float64)
    same = enrol == test
    return np.where(same, draws[:, enrol], draws[:, enrol] * draws[:, test])


def speaker_bootstrap(labels, enrol_speakers, test_speakers, systems, contrast=None, resamples=1000,
                      confidence=0.95, seed=0, chunk=100):
    """Speaker-level bootstrap intervals of EER (%) and minDCF (p = 0.01) of a contrast of
    systems scored on the same trials: one system, A minus B, or any weighted sum (e.g.
    the noise degradation of A minus that of B: +A_noisy - A_clean - B_noisy + B_clean).

    Arguments
    ---------
    labels : array-like
        1 target, 0 non-target [N].
    enrol_speakers, test_speakers : sequence of str
        The speaker of each trial's two sides.
    systems : sequence of array-like
        Scores [N] of each system.
    contrast : sequence of float, optional
        Coefficient of each system's metric (default: 1 for one system, (1, -1) for two).
    resamples : int
        Bootstrap draws (>= 1,000 for a 95 % interval).
    confidence : float
        Coverage of the percentile interval.
    seed : int
        Seed of the draws (the same draws for every system).
    chunk : int
        Draws evaluated at a time (memory: chunk x N weights).

    Returns
    -------
    dict
        For each metric: ``value`` (the contrast on the trials as they are), ``low``,
        ``high``.

    Example
    -------
    >>> labels = [1, 0, 1, 0, 1, 0]
    >>> enrol, test = ["a", "a", "b", "b", "c", "c"], ["a", "b", "b", "c", "c", "a"]
    >>> r = speaker_bootstrap(labels, enrol, test, [[0.9, 0.1, 0.8, 0.2, 0.7, 0.3]], resamples=200)
    >>> r["eer_percent"]
    {'value': 0.0, 'low': 0.0, 'high': 0.0}
    """
    labels = np.asarray(labels)
    systems = [np.asarray(s, dtype=np.float64) for s in systems]
    if contrast is None:
        contrast = (1.0,) if len(systems) == 1 else (1.0, -1.0)
    if len(contrast) != len(systems) or not systems:
        raise ValueError(f"need one contrast coefficient per system, got {len(contrast)} for {len(systems)}")
    if any(s.shape != labels.shape for s in systems) or len(enrol_speakers) != labels.size:
        raise ValueError("scores, labels and speakers must describe the same trials")

    def combined(weights=None):
        rates = [error_rates(s, labels, weights) for s in systems]
        return {m: sum(c * r[m] for c, r in zip(contrast, rates)) for m in METRICS}

    value = combined()
    weights = resample_weights(enrol_speakers, test_speakers, resamples, seed)
    # A draw whose speakers give no target or no non-target trial is left out (with tens
    # of speakers this does not happen).
    usable = ((weights * labels).sum(1) > 0) & ((weights * (1 - labels)).sum(1) > 0)
    weights = weights[usable]
    draws = {m: [] for m in METRICS}
    for first in range(0, len(weights), chunk):
        part = combined(weights[first:first + chunk])
        for m in METRICS:
            draws[m].append(np.atleast_1d(part[m]))
    tail = 100 * (1 - confidence) / 2
    result = {}
    for m in METRICS:
        low, high = np.percentile(np.concatenate(draws[m]), [tail, 100 - tail])
        result[m] = {"value": float(value[m]), "low": float(low), "high": float(high)}
    return result
