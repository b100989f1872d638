"""Metrics against brute-force implementations written here and against SpeechBrain."""

import numpy as np
import pytest
import torch

from sb_sphereface2.scoring.metrics import (
    check_scores,
    compute_actual_dcf,
    compute_cllr,
    compute_eer,
    compute_min_dcf,
    det_curve,
)


def brute_force_points(scores, labels):
    """Every operating point by direct counting: one per distinct score, plus accept-nothing."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    points = []
    for threshold in list(np.unique(scores)) + [np.inf]:
        accepted = scores >= threshold
        p_miss = np.sum(labels & ~accepted) / np.sum(labels)
        p_fa = np.sum(~labels & accepted) / np.sum(~labels)
        points.append((threshold, p_miss, p_fa))
    return points


def brute_force_eer(scores, labels):
    points = brute_force_points(scores, labels)
    for (t0, m0, f0), (t1, m1, f1) in zip(points, points[1:]):
        d0, d1 = m0 - f0, m1 - f1
        if d0 < 0 <= d1:
            if d1 == 0:
                return m1, t1
            w = -d0 / (d1 - d0)
            threshold = t0 + w * (t1 - t0) if np.isfinite(t1) else t0
            return m0 + w * (m1 - m0), threshold
    raise AssertionError("curves never cross")


def brute_force_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    best = min(
        brute_force_points(scores, labels),
        key=lambda point: c_miss * p * point[1] + c_fa * (1 - p) * point[2],
    )
    cost = c_miss * p * best[1] + c_fa * (1 - p) * best[2]
    return cost / min(c_miss * p, c_fa * (1 - p)), best[0]


def random_trials(rng, n, target_fraction=0.3, tie_decimals=None):
    labels = (rng.random(n) < target_fraction).astype(np.int64)
    labels[:2] = [0, 1]
    scores = rng.normal(0.0, 1.0, n) + 1.5 * labels
    if tie_decimals is not None:
        scores = np.round(scores, tie_decimals)
    return scores, labels


CASES = [
    ("continuous", None),
    ("ties_1_decimal", 1),
    ("ties_integers", 0),
]


@pytest.mark.parametrize("name,decimals", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_and_min_dcf_equal_brute_force(name, decimals, seed):
    rng = np.random.default_rng(seed)
    scores, labels = random_trials(rng, 400, tie_decimals=decimals)
    eer, threshold = compute_eer(scores, labels)
    expected_eer, expected_threshold = brute_force_eer(scores, labels)
    assert eer == pytest.approx(expected_eer, abs=1e-12)
    assert threshold == pytest.approx(expected_threshold, abs=1e-12)
    for p, c_miss, c_fa in [(0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.3, 2.0, 0.5)]:
        value, at = compute_min_dcf(scores, labels, p_target=p, c_miss=c_miss, c_fa=c_fa)
        expected_value, expected_at = brute_force_min_dcf(scores, labels, p, c_miss, c_fa)
        assert value == pytest.approx(expected_value, abs=1e-12)
        assert at == expected_at


@pytest.mark.parametrize(
    "scores,labels,eer",
    [
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # everything tied: no threshold separates
        ([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1], 0.0),  # perfect separation
        ([4.0, 3.0, 2.0, 1.0], [0, 0, 1, 1], 1.0),  # perfectly wrong
        ([0.1, 0.9, 0.9, 0.2], [0, 1, 0, 1], 0.5),
    ],
)
def test_edge_cases_equal_brute_force(scores, labels, eer):
    assert compute_eer(scores, labels)[0] == pytest.approx(eer)
    assert compute_eer(scores, labels) == pytest.approx(brute_force_eer(scores, labels))
    assert compute_min_dcf(scores, labels) == pytest.approx(brute_force_min_dcf(scores, labels, 0.01))


def test_torch_input_and_bool_labels_give_same_values():
    scores, labels = random_trials(np.random.default_rng(3), 300)
    numpy_values = (compute_eer(scores, labels), compute_min_dcf(scores, labels))
    torch_values = (
        compute_eer(torch.tensor(scores), torch.tensor(labels.astype(bool))),
        compute_min_dcf(torch.tensor(scores), torch.tensor(labels)),
    )
    assert np.ravel(torch_values).tolist() == pytest.approx(np.ravel(numpy_values).tolist())


def test_agrees_with_speechbrain_on_continuous_scores():
    from speechbrain.utils.metric_stats import EER, minDCF

    rng = np.random.default_rng(4)
    # EER: SpeechBrain returns (FAR + FRR)/2 at the nearest operating point, which is
    # within half a step (0.5 / 6000 = 0.0083 points of %) of the interpolated crossing.
    positives = rng.normal(1.0, 1.0, 6000).astype(np.float32)
    negatives = rng.normal(-1.5, 1.0, 6000).astype(np.float32)
    scores = np.r_[positives, negatives]
    labels = np.r_[np.ones(6000), np.zeros(6000)]
    ours, _ = compute_eer(scores, labels)
    theirs, _ = EER(torch.from_numpy(positives), torch.from_numpy(negatives))
    assert abs(100 * ours - 100 * theirs) < 0.01

    positives, negatives = positives[:600], negatives[:1400]
    scores = np.r_[positives, negatives]
    labels = np.r_[np.ones(600), np.zeros(1400)]
    for p in (0.01, 0.05):
        ours, _ = compute_min_dcf(scores, labels, p_target=p)
        theirs, _ = minDCF(torch.from_numpy(positives), torch.from_numpy(negatives), p_target=p)
        assert 100 * ours == pytest.approx(100 * theirs / min(p, 1 - p), abs=0.01)


def test_actual_dcf_and_cllr():
    rng = np.random.default_rng(5)
    scores, labels = random_trials(rng, 2000)
    # For these Gaussians (means 0 and 1.5, unit variance) the true LLR is linear.
    llrs = 1.5 * scores - 1.125
    for p in (0.01, 0.05, 0.5):
        assert compute_actual_dcf(llrs, labels, p) >= compute_min_dcf(llrs, labels, p)[0] - 1e-12
        threshold = np.log((1 - p) / p)
        accepted = llrs >= threshold
        p_miss = np.mean(~accepted[labels == 1])
        p_fa = np.mean(accepted[labels == 0])
        expected = (p * p_miss + (1 - p) * p_fa) / min(p, 1 - p)
        assert compute_actual_dcf(llrs, labels, p) == pytest.approx(expected)
    expected_cllr = 0.5 * (
        np.mean([np.log2(1 + np.exp(-x)) for x in llrs[labels == 1]])
        + np.mean([np.log2(1 + np.exp(x)) for x in llrs[labels == 0]])
    )
    assert compute_cllr(llrs, labels) == pytest.approx(expected_cllr)
    assert compute_cllr(llrs, labels) < 1.0
    assert compute_cllr(llrs * 20, labels) > compute_cllr(llrs, labels)  # over-confident costs more
    assert np.isfinite(compute_cllr(np.r_[1e4, -1e4], [0, 1]))  # no overflow


def test_det_curve_is_monotone_and_matches_points():
    scores, labels = random_trials(np.random.default_rng(6), 500, tie_decimals=1)
    p_fa, p_miss, thresholds = det_curve(scores, labels)
    assert np.all(np.diff(p_fa) <= 0) and np.all(np.diff(p_miss) >= 0)
    expected = brute_force_points(scores, labels)
    assert thresholds.tolist() == [t for t, _, _ in expected]
    np.testing.assert_allclose(p_miss, [m for _, m, _ in expected])
    np.testing.assert_allclose(p_fa, [f for _, _, f in expected])


def test_bad_input_errors_name_the_count():
    with pytest.raises(ValueError, match=r"2 of 4 scores are not finite \(first at index 1\)"):
        check_scores([0.1, np.nan, 0.3, np.inf], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="0 target and 3 non-target"):
        compute_eer([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="2 target and 0 non-target"):
        compute_min_dcf([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="index 1 holds 2"):
        compute_eer([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="differ in length"):
        compute_eer([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [0, 1], p_target=1.0)
