"""Logistic-regression calibration, plain and quality-aware (QMF): known optima, known LLRs,
transfer between lists."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize

from sb_sphereface2.scoring.calibration import LogisticCalibration
from sb_sphereface2.scoring.metrics import compute_actual_dcf, compute_cllr, compute_eer, compute_min_dcf
from sb_sphereface2.scoring.quality import quality_features
from sb_sphereface2.scoring.trial_scores import ScoredTrials


def gaussian_trials(rng, n_target, n_nontarget, mu1=0.6, mu0=0.1, sigma=0.1):
    scores = np.r_[rng.normal(mu1, sigma, n_target), rng.normal(mu0, sigma, n_nontarget)]
    labels = np.r_[np.ones(n_target), np.zeros(n_nontarget)]
    return scores, labels


def quality_shifted_trials(rng, n, mu1=0.5, mu0=0.1, sigma=0.1, shift=-0.03):
    """Scores whose class means move with a quality measure q (2 to 12, e.g. the shorter
    side's duration): target ~ N(mu1 + shift·q, σ²), non-target ~ N(mu0 + shift·q, σ²).
    The true LLR is then linear in (score, q):
    a = (mu1 − mu0)/σ², c = −shift·a, b = −(mu1² − mu0²)/(2σ²)."""
    labels = (rng.random(n) < 0.5).astype(np.int64)
    q = rng.uniform(2.0, 12.0, n)
    scores = np.where(labels == 1, mu1, mu0) + shift * q + sigma * rng.standard_normal(n)
    a = (mu1 - mu0) / sigma**2
    truth = {"scale": a, "quality": -shift * a, "offset": -(mu1**2 - mu0**2) / (2 * sigma**2)}
    return scores, labels, q, truth


def test_fit_is_the_optimum_of_the_weighted_logistic_loss():
    """Against a derivative-free optimiser on the objective written out here, in raw units."""
    rng = np.random.default_rng(0)
    scores, labels, q, _ = quality_shifted_trials(rng, 3000, sigma=0.15)
    prior = 0.2
    is_target = labels == 1
    log_odds = np.log(prior / (1 - prior))

    def loss(params):
        a, c, b = params
        z = a * scores + c * q + b + log_odds
        return (prior * np.mean(np.logaddexp(0, -z[is_target]))
                + (1 - prior) * np.mean(np.logaddexp(0, z[~is_target])))

    reference = minimize(loss, x0=[1.0, 0.0, 0.0], method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-15, "maxiter": 40000, "maxfev": 40000}).x
    fitted = LogisticCalibration(prior=prior, ridge=0.0).fit(scores, labels, q)
    ours = [fitted.weights[0], fitted.weights[1], fitted.offset]
    assert loss(ours) <= loss(reference) + 1e-10
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3)


def test_recovers_the_true_llr_of_gaussian_scores():
    rng = np.random.default_rng(1)
    mu1, mu0, sigma = 0.6, 0.1, 0.1
    scores, labels = gaussian_trials(rng, 100_000, 100_000, mu1, mu0, sigma)
    fitted = LogisticCalibration().fit(scores, labels)
    assert fitted.scale == pytest.approx((mu1 - mu0) / sigma**2, rel=0.02)
    assert fitted.offset == pytest.approx(-(mu1**2 - mu0**2) / (2 * sigma**2), rel=0.02)


def test_qmf_recovers_the_true_quality_dependent_llr():
    """A case whose answer is known: the fitted weights are the true LLR's (within 2%), and
    the calibrated LLRs reach the Cllr of the true LLRs on new trials."""
    rng = np.random.default_rng(2)
    scores, labels, q, truth = quality_shifted_trials(rng, 200_000)
    fitted = LogisticCalibration(feature_names=["min_duration"]).fit(scores, labels, q)
    assert fitted.weights[0] == pytest.approx(truth["scale"], rel=0.02)
    assert fitted.weights[1] == pytest.approx(truth["quality"], rel=0.02)
    assert fitted.offset == pytest.approx(truth["offset"], rel=0.02)
    test_scores, test_labels, test_q, _ = quality_shifted_trials(rng, 50_000)
    true_llr = truth["scale"] * test_scores + truth["quality"] * test_q + truth["offset"]
    assert compute_cllr(fitted(test_scores, test_q), test_labels) == pytest.approx(
        compute_cllr(true_llr, test_labels), abs=2e-3)


def test_qmf_beats_score_only_calibration_when_quality_moves_the_scores():
    """The score-only LLR cannot follow the quality shift: QMF has lower Cllr, actual DCF,
    and (because it reorders trials) lower EER and minDCF."""
    rng = np.random.default_rng(3)
    train_scores, train_labels, train_q, _ = quality_shifted_trials(rng, 40_000)
    scores, labels, q, _ = quality_shifted_trials(rng, 40_000)
    plain = LogisticCalibration().fit(train_scores, train_labels)(scores)
    qmf = LogisticCalibration().fit(train_scores, train_labels, train_q)(scores, q)
    assert compute_cllr(qmf, labels) < compute_cllr(plain, labels) - 0.1  # measured 0.087 vs 0.227
    assert compute_actual_dcf(qmf, labels, 0.05) < compute_actual_dcf(plain, labels, 0.05)
    assert compute_eer(qmf, labels)[0] < compute_eer(plain, labels)[0] - 0.02  # 2.3% vs 6.5%
    assert compute_min_dcf(qmf, labels, 0.05)[0] < compute_min_dcf(plain, labels, 0.05)[0]


def test_quality_features_are_symmetric_and_capped():
    enrol_rows, test_rows = np.array([0, 1, 2]), np.array([1, 0, 3])
    scored = ScoredTrials(np.zeros(3), enrol_rows, test_rows, np.array([1.0, 2.0, 3.0]),
                          np.array([2.0, 1.0, 4.0]), np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.1, 0.5]))
    durations = np.array([4.0, 35.0, 6.0, 8.0])
    features, names = quality_features(["duration", "imposter_mean", "magnitude"], scored, durations)
    assert names == ["min_duration", "max_duration", "min_imposter_mean", "max_imposter_mean",
                     "min_magnitude", "max_magnitude"]
    np.testing.assert_allclose(features, [[4, 20, 0.1, 0.2, 1, 2], [4, 20, 0.1, 0.2, 1, 2], [6, 8, 0.3, 0.5, 3, 4]])
    with pytest.raises(ValueError, match="needs the duration"):
        quality_features(["duration"], scored)
    with pytest.raises(ValueError, match="unknown quality measure 'snr'"):
        quality_features(["snr"], scored)


def test_fitted_on_one_list_calibrates_another():
    rng = np.random.default_rng(4)
    train_scores, train_labels = gaussian_trials(rng, 2000, 20000)
    test_scores, test_labels = gaussian_trials(rng, 1500, 30000)
    calibration = LogisticCalibration().fit(train_scores, train_labels)
    llrs = calibration(test_scores)
    # The true LLR of these Gaussians, 50·s − 17.5, scores Cllr 0.022 here; raw cosines
    # used as LLRs are badly calibrated.
    true_cllr = compute_cllr(50 * test_scores - 17.5, test_labels)
    assert compute_cllr(llrs, test_labels) == pytest.approx(true_cllr, abs=0.01)
    assert compute_cllr(test_scores, test_labels) > 0.5
    for p in (0.01, 0.05):
        min_dcf = compute_min_dcf(llrs, test_labels, p)[0]
        assert min_dcf <= compute_actual_dcf(llrs, test_labels, p) < min_dcf + 0.1


def test_separable_scores_give_finite_parameters_and_roundtrip(tmp_path):
    calibration = LogisticCalibration(feature_names=["max_duration"]).fit(
        [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [[3.0], [5.0], [4.0], [6.0]])
    assert np.isfinite(calibration.weights).all() and np.isfinite(calibration.offset)
    assert calibration.scale > 0
    path = tmp_path / "calibration.json"
    calibration.save(path)
    assert json.loads(path.read_text())["feature_names"] == ["max_duration"]
    again = LogisticCalibration.load(path)
    np.testing.assert_allclose(again([0.3, 0.7], [[4.0], [5.0]]), calibration([0.3, 0.7], [[4.0], [5.0]]))


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        LogisticCalibration()([0.1])
    with pytest.raises(ValueError, match="prior"):
        LogisticCalibration(prior=0.0)
    with pytest.raises(ValueError, match="0 target"):
        LogisticCalibration().fit([0.1, 0.2], [0, 0])
    fitted = LogisticCalibration().fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [[1.0], [2.0], [1.0], [2.0]])
    with pytest.raises(ValueError, match="fitted with 1 quality features, got 0"):
        fitted([0.5])
    with pytest.raises(ValueError, match="NaN or inf"):
        LogisticCalibration().fit([0.1, 0.9], [0, 1], [[np.nan], [1.0]])
