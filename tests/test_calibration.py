"""Logistic-regression calibration: optimum, consistency, transfer between lists."""

import numpy as np
import pytest
from scipy.optimize import minimize

from sb_sphereface2.scoring.calibration import LogisticCalibration
from sb_sphereface2.scoring.metrics import compute_actual_dcf, compute_cllr, compute_min_dcf


def gaussian_trials(rng, n_target, n_nontarget, mu1=0.6, mu0=0.1, sigma=0.1):
    scores = np.r_[rng.normal(mu1, sigma, n_target), rng.normal(mu0, sigma, n_nontarget)]
    labels = np.r_[np.ones(n_target), np.zeros(n_nontarget)]
    return scores, labels


def test_fit_is_the_optimum_of_the_weighted_logistic_loss():
    rng = np.random.default_rng(0)
    scores, labels = gaussian_trials(rng, 300, 3000, sigma=0.15)
    prior = 0.2
    target, non = scores[labels == 1], scores[labels == 0]
    log_odds = np.log(prior / (1 - prior))

    def loss(params):  # in raw-score space, independent of the implementation's scaling
        a, b = params
        return (prior * np.mean(np.logaddexp(0, -(a * target + b + log_odds)))
                + (1 - prior) * np.mean(np.logaddexp(0, a * non + b + log_odds)))

    reference = minimize(loss, x0=[1.0, 0.0], method="Nelder-Mead",
                         options={"xatol": 1e-9, "fatol": 1e-14, "maxiter": 20000}).x
    fitted = LogisticCalibration(prior=prior, ridge=0.0).fit(scores, labels)
    assert loss([fitted.scale, fitted.offset]) <= loss(reference) + 1e-9
    assert fitted.scale == pytest.approx(reference[0], rel=1e-3)
    assert fitted.offset == pytest.approx(reference[1], rel=1e-3, abs=1e-3)


def test_recovers_the_true_llr_of_gaussian_scores():
    rng = np.random.default_rng(1)
    mu1, mu0, sigma = 0.6, 0.1, 0.1
    scores, labels = gaussian_trials(rng, 100_000, 100_000, mu1, mu0, sigma)
    fitted = LogisticCalibration().fit(scores, labels)
    true_scale = (mu1 - mu0) / sigma**2
    true_offset = -(mu1**2 - mu0**2) / (2 * sigma**2)
    assert fitted.scale == pytest.approx(true_scale, rel=0.02)
    assert fitted.offset == pytest.approx(true_offset, rel=0.02)


def test_fitted_on_one_list_calibrates_another():
    rng = np.random.default_rng(2)
    train_scores, train_labels = gaussian_trials(rng, 2000, 20000)
    test_scores, test_labels = gaussian_trials(rng, 1500, 30000)
    calibration = LogisticCalibration().fit(train_scores, train_labels)
    llrs = calibration(test_scores)
    assert compute_cllr(llrs, test_labels) < 0.2
    # Raw cosines used as LLRs are badly calibrated; calibrated LLRs are nearly optimal.
    assert compute_cllr(test_scores, test_labels) > 0.5
    for p in (0.01, 0.05):
        min_dcf = compute_min_dcf(llrs, test_labels, p)[0]
        assert min_dcf <= compute_actual_dcf(llrs, test_labels, p) < min_dcf + 0.1


def test_separable_scores_give_finite_parameters_and_roundtrip(tmp_path):
    calibration = LogisticCalibration().fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert np.isfinite([calibration.scale, calibration.offset]).all()
    assert calibration.scale > 0
    path = tmp_path / "calibration.json"
    calibration.save(path)
    again = LogisticCalibration.load(path)
    np.testing.assert_allclose(again([0.3, 0.7]), calibration([0.3, 0.7]))


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        LogisticCalibration()([0.1])
    with pytest.raises(ValueError, match="prior"):
        LogisticCalibration(prior=0.0)
    with pytest.raises(ValueError, match="0 target"):
        LogisticCalibration().fit([0.1, 0.2], [0, 0])
