"""Exact verification metrics in O(N log N): EER, minDCF, actual DCF, Cllr, DET points.

Definitions (shared by every function here):

- There is one operating point per distinct score value ``t``: a trial is accepted
  when its score is at or above ``t``. A last operating point, threshold ``+inf``,
  accepts nothing. Tied scores therefore always move together.
- ``P_miss(t)`` is the fraction of target trials rejected, ``P_fa(t)`` the fraction of
  non-target trials accepted.
- EER is where the two curves cross, linearly interpolated between the two operating
  points that bracket the crossing.
- minDCF is the minimum over the operating points of
  ``c_miss·p·P_miss + c_fa·(1−p)·P_fa``, divided by ``min(c_miss·p, c_fa·(1−p))``.

One sort of the scores gives every operating point, so 5 M trials take a second or so
and memory stays a few arrays of N (SpeechBrain's ``EER`` loops over thresholds in
Python and its ``minDCF`` allocates thresholds × scores).
"""

import numpy as np

__all__ = [
    "check_scores",
    "operating_points",
    "compute_eer",
    "compute_min_dcf",
    "compute_actual_dcf",
    "compute_cllr",
    "det_curve",
]


def _to_numpy(values, name):
    if hasattr(values, "detach"):  # torch.Tensor without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def check_scores(scores, labels):
    """Validate scores and labels and return them as numpy arrays.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        One score per trial [N]; higher means "same speaker".
    labels : array-like or torch.Tensor
        1 for target, 0 for non-target trials [N] (booleans accepted).

    Returns
    -------
    scores : numpy.ndarray
        float64 [N].
    labels : numpy.ndarray
        bool [N], True for targets.

    Raises
    ------
    ValueError
        On shape mismatch, NaN/inf scores (with their count and first index), labels
        other than 0/1, or a list without target or without non-target trials.

    Example
    -------
    >>> s, l = check_scores([0.2, 0.9], [0, 1])
    >>> s.dtype, l.tolist()
    (dtype('float64'), [False, True])
    >>> check_scores([0.2, float("nan")], [0, 1])
    Traceback (most recent call last):
    ...
    ValueError: 1 of 2 scores are not finite (first at index 1)
    """
    scores = _to_numpy(scores, "scores").astype(np.float64, copy=False)
    labels = _to_numpy(labels, "labels")
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels differ in length: {scores.shape[0]} vs {labels.shape[0]}"
        )
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {scores.size} scores are not finite "
            f"(first at index {int(np.argmax(bad))})"
        )
    if labels.dtype != np.bool_:
        invalid = (labels != 0) & (labels != 1)
        if invalid.any():
            first = int(np.argmax(invalid))
            raise ValueError(
                f"labels must be 0 or 1; index {first} holds {labels[first].item()!r}"
            )
        labels = labels == 1
    n_target = int(labels.sum())
    n_nontarget = labels.size - n_target
    if n_target == 0 or n_nontarget == 0:
        raise ValueError(
            f"need both target and non-target trials, got {n_target} target and "
            f"{n_nontarget} non-target trials"
        )
    return scores, labels


def operating_points(scores, labels, weights=None):
    """Every operating point of a trial list, in order of increasing threshold.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Scores [N].
    labels : array-like or torch.Tensor
        1/0 (or True/False) target labels [N].
    weights : array-like, optional
        Non-negative weights of the trials, [N] or one row per weighting [R, N] (a
        trial of weight 2 counts as two; a speaker-level bootstrap resamples this way).

    Returns
    -------
    thresholds : numpy.ndarray
        The distinct scores in increasing order followed by ``+inf`` [K + 1]; at
        threshold ``t`` a trial is accepted when its score is ``>= t``.
    p_miss : numpy.ndarray
        Fraction of targets rejected at each threshold [K + 1] (0 first, 1 last);
        [R, K + 1] for weights [R, N].
    p_fa : numpy.ndarray
        Fraction of non-targets accepted at each threshold, shaped as ``p_miss``.

    Example
    -------
    >>> t, p_miss, p_fa = operating_points([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1])
    >>> t.tolist(), p_miss.tolist(), p_fa.tolist()
    ([0.1, 0.5, 0.9, inf], [0.0, 0.0, 0.5, 1.0], [1.0, 0.5, 0.0, 0.0])
    >>> operating_points([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1], weights=[1, 1, 3, 1])[2].tolist()
    [1.0, 0.75, 0.0, 0.0]
    """
    scores, labels = check_scores(scores, labels)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Index of the first trial of each group of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    thresholds = np.r_[sorted_scores[starts], np.inf]
    if weights is None:
        target_weight = labels[order].astype(np.float64)[None]
        nontarget_weight = 1.0 - target_weight
    else:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape[-1] != scores.size or weights.ndim not in (1, 2) or (weights < 0).any():
            raise ValueError(f"weights must be non-negative, [{scores.size}] or [R, {scores.size}], "
                             f"got shape {weights.shape}")
        sorted_weights = np.atleast_2d(weights)[:, order]
        target_weight = sorted_weights * labels[order]
        nontarget_weight = sorted_weights - target_weight
    # Weight of the targets / non-targets strictly below each threshold.
    zero = np.zeros((target_weight.shape[0], 1))
    tar_below = np.concatenate([zero, np.cumsum(target_weight, axis=1)], axis=1)
    non_below = np.concatenate([zero, np.cumsum(nontarget_weight, axis=1)], axis=1)
    n_target, n_nontarget = tar_below[:, -1:], non_below[:, -1:]
    if (n_target <= 0).any() or (n_nontarget <= 0).any():
        raise ValueError("every weighting needs target and non-target trials of positive weight")
    at = np.r_[starts, scores.size]
    p_miss = tar_below[:, at] / n_target
    p_fa = (n_nontarget - non_below[:, at]) / n_nontarget
    if weights is None or weights.ndim == 1:
        p_miss, p_fa = p_miss[0], p_fa[0]
    return thresholds, p_miss, p_fa


def compute_eer(scores, labels, weights=None):
    """Equal error rate and its threshold, exact and O(N log N).

    The EER is the crossing of the miss and false-alarm curves, linearly interpolated
    between the two operating points that bracket it; the threshold is interpolated
    the same way (the lower one when the upper point is the accept-nothing point).

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Scores [N].
    labels : array-like or torch.Tensor
        1 for target, 0 for non-target [N].
    weights : array-like, optional
        Trial weights [N] or [R, N] (``operating_points``).

    Returns
    -------
    eer : float
        Equal error rate as a fraction (multiply by 100 for %); an array [R] for
        weights [R, N].
    threshold : float
        Score threshold at the crossing (an array [R] for weights [R, N]).

    Example
    -------
    >>> compute_eer([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    (0.0, 0.3)
    >>> eer, _ = compute_eer([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1]); round(eer, 6)
    0.5
    >>> compute_eer([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1], weights=[[1, 1, 1, 1], [1, 0, 1, 1]])[0].tolist()
    [0.5, 0.0]
    """
    thresholds, p_miss, p_fa = operating_points(scores, labels, weights)
    batched = p_miss.ndim == 2
    p_miss, p_fa = np.atleast_2d(p_miss), np.atleast_2d(p_fa)
    difference = p_miss - p_fa  # -1 at the first point, +1 at the last, non-decreasing
    upper = np.argmax(difference >= 0, axis=1)[:, None]
    lower = np.maximum(upper - 1, 0)

    def at(values, index):
        return np.take_along_axis(values, index, axis=1)[:, 0]

    d_upper, d_lower = at(difference, upper), at(difference, lower)
    exact = d_upper == 0
    weight = np.where(exact, 0.0, -d_lower / np.where(exact, 1.0, d_upper - d_lower))
    eer = np.where(exact, at(p_miss, upper), at(p_miss, lower) + weight * (at(p_miss, upper) - at(p_miss, lower)))
    t_upper, t_lower = thresholds[upper[:, 0]], thresholds[lower[:, 0]]
    finite = np.isfinite(t_upper)
    interpolated = t_lower + weight * (np.where(finite, t_upper, t_lower) - t_lower)
    threshold = np.where(exact, t_upper, np.where(finite, interpolated, t_lower))
    if batched:
        return eer, threshold
    return float(eer[0]), float(threshold[0])


def _check_costs(p_target, c_miss, c_fa):
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")


def compute_min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0, weights=None):
    """Normalised minimum detection cost and the threshold that reaches it.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Scores [N].
    labels : array-like or torch.Tensor
        1 for target, 0 for non-target [N].
    p_target : float
        Prior probability of a target trial.
    c_miss : float
        Cost of a miss.
    c_fa : float
        Cost of a false alarm.
    weights : array-like, optional
        Trial weights [N] or [R, N] (``operating_points``).

    Returns
    -------
    min_dcf : float
        ``min_t c_miss·p·P_miss(t) + c_fa·(1−p)·P_fa(t)`` divided by
        ``min(c_miss·p, c_fa·(1−p))`` (1.0 is the cost of a system that always
        answers the same); an array [R] for weights [R, N].
    threshold : float
        Threshold of the best operating point (``inf`` if rejecting everything is best).

    Example
    -------
    >>> compute_min_dcf([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    (0.0, 0.3)
    >>> round(compute_min_dcf([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1], p_target=0.5)[0], 6)
    0.5
    """
    _check_costs(p_target, c_miss, c_fa)
    thresholds, p_miss, p_fa = operating_points(scores, labels, weights)
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    best = np.argmin(cost, axis=-1)
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    if cost.ndim == 2:
        return cost[np.arange(cost.shape[0]), best] / norm, thresholds[best]
    return float(cost[best] / norm), float(thresholds[best])


def compute_actual_dcf(llrs, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Normalised actual detection cost of calibrated log-likelihood-ratio scores.

    Trials are accepted at the Bayes threshold ``log(c_fa·(1−p) / (c_miss·p))``
    (accepted when the LLR is at or above it).

    Arguments
    ---------
    llrs : array-like or torch.Tensor
        Natural-log likelihood ratios [N].
    labels : array-like or torch.Tensor
        1 for target, 0 for non-target [N].
    p_target, c_miss, c_fa : float
        Operating point, as in :func:`compute_min_dcf`.

    Returns
    -------
    float
        Normalised actual DCF (never below minDCF on the same trials).

    Example
    -------
    >>> compute_actual_dcf([-6.0, -5.0, 5.0, 6.0], [0, 0, 1, 1])
    0.0
    >>> round(compute_actual_dcf([-6.0, -5.0, 3.0, 6.0], [0, 0, 1, 1]), 6)
    0.5
    """
    _check_costs(p_target, c_miss, c_fa)
    llrs, labels = check_scores(llrs, labels)
    threshold = np.log(c_fa * (1.0 - p_target) / (c_miss * p_target))
    accepted = llrs >= threshold
    p_miss = np.count_nonzero(~accepted & labels) / np.count_nonzero(labels)
    p_fa = np.count_nonzero(accepted & ~labels) / np.count_nonzero(~labels)
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return float(cost / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def compute_cllr(llrs, labels):
    """Log-likelihood-ratio cost (bits) of calibrated scores.

    ``Cllr = ½·[mean_tar log2(1 + e^−llr) + mean_non log2(1 + e^llr)]``; 1.0 is the
    cost of always answering LLR = 0, 0 a perfect and perfectly calibrated system.

    Arguments
    ---------
    llrs : array-like or torch.Tensor
        Natural-log likelihood ratios [N].
    labels : array-like or torch.Tensor
        1 for target, 0 for non-target [N].

    Returns
    -------
    float
        Cllr in bits.

    Example
    -------
    >>> compute_cllr([0.0, 0.0], [0, 1])
    1.0
    >>> compute_cllr([-50.0, 50.0], [0, 1]) < 1e-6
    True
    """
    llrs, labels = check_scores(llrs, labels)
    target_cost = np.logaddexp(0.0, -llrs[labels]).mean()
    nontarget_cost = np.logaddexp(0.0, llrs[~labels]).mean()
    return float((target_cost + nontarget_cost) / (2.0 * np.log(2.0)))


def det_curve(scores, labels):
    """Points of the detection-error trade-off curve (all operating points).

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Scores [N].
    labels : array-like or torch.Tensor
        1 for target, 0 for non-target [N].

    Returns
    -------
    p_fa : numpy.ndarray
        False-alarm rate per operating point, decreasing.
    p_miss : numpy.ndarray
        Miss rate per operating point, increasing.
    thresholds : numpy.ndarray
        Thresholds (last is ``+inf``).

    Example
    -------
    >>> p_fa, p_miss, _ = det_curve([0.1, 0.9], [0, 1])
    >>> p_fa.tolist(), p_miss.tolist()
    ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    """
    thresholds, p_miss, p_fa = operating_points(scores, labels)
    return p_fa, p_miss, thresholds


def evaluate(scores, labels, p_targets=(0.01, 0.05), llrs=None):
    """EER, minDCF at each target prior and counts (plus actual DCF and Cllr of LLRs).

    Arguments
    ---------
    scores : array-like
        Scores [N].
    labels : array-like
        1 for target, 0 for non-target [N].
    p_targets : sequence of float
        Priors for minDCF (C_miss = C_fa = 1, normalised).
    llrs : array-like, optional
        Calibrated log-likelihood ratios of the same trials: adds their actual DCF
        (``act_dcf_<p>``), ``cllr``, EER and minDCF (``calibrated_eer_percent``,
        ``calibrated_min_dcf_<p>``: quality-aware calibration reorders trials), and the
        actual DCF and Cllr of the raw scores taken as LLRs (``raw_act_dcf_<p>``,
        ``raw_cllr``: before calibration).

    Returns
    -------
    dict
        ``trials``, ``targets``, ``nontargets``, ``eer_percent``, ``eer_threshold`` and,
        for each prior p, ``min_dcf_<p>`` and ``min_dcf_<p>_threshold`` (p as ``%g``).

    Example
    -------
    >>> r = evaluate([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1], p_targets=(0.01,))
    >>> r["eer_percent"], r["min_dcf_0.01"], r["targets"]
    (50.0, 0.5, 2)
    """
    scores, labels = check_scores(scores, labels)
    eer, eer_threshold = compute_eer(scores, labels)
    results = {
        "trials": int(labels.size),
        "targets": int(labels.sum()),
        "nontargets": int((~labels).sum()),
        "eer_percent": 100.0 * eer,
        "eer_threshold": eer_threshold,
    }
    for p in p_targets:
        value, threshold = compute_min_dcf(scores, labels, p_target=p)
        results[f"min_dcf_{p:g}"] = value
        results[f"min_dcf_{p:g}_threshold"] = threshold
    if llrs is not None:
        llrs, _ = check_scores(llrs, labels)
        for p in p_targets:
            results[f"raw_act_dcf_{p:g}"] = compute_actual_dcf(scores, labels, p_target=p)
        results["raw_cllr"] = compute_cllr(scores, labels)
        for p in p_targets:
            results[f"act_dcf_{p:g}"] = compute_actual_dcf(llrs, labels, p_target=p)
        results["cllr"] = compute_cllr(llrs, labels)
        results["calibrated_eer_percent"] = 100.0 * compute_eer(llrs, labels)[0]
        for p in p_targets:
            results[f"calibrated_min_dcf_{p:g}"] = compute_min_dcf(llrs, labels, p_target=p)[0]
    return results
