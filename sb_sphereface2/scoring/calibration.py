"""Logistic-regression score calibration: raw scores to log-likelihood ratios.

An affine map ``llr = a·score + b`` is fitted on one trial list by prior-weighted
logistic regression (targets and non-targets weighted to the effective prior
``prior``, whose log-odds are added to the LLR inside the logistic, so that ``a·s + b``
comes out as a likelihood ratio, not a posterior), then applied to another list. Two
parameters and a convex objective: Newton's method converges in a few steps on
millions of trials.
"""

import json
import os

import numpy as np

from sb_sphereface2.scoring.metrics import check_scores

__all__ = ["LogisticCalibration"]


def _objective(params, x, targets, weights, offset, ridge):
    """Weighted logistic loss, gradient and Hessian in (a, b) on standardised scores."""
    a, b = params
    z = a * x + b + offset
    signed = np.where(targets, -z, z)
    loss = np.sum(weights * np.logaddexp(0.0, signed)) + 0.5 * ridge * (a * a + b * b)
    posterior = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    residual = weights * (posterior - targets)
    curvature = weights * posterior * (1.0 - posterior)
    gradient = np.array([np.dot(residual, x) + ridge * a, residual.sum() + ridge * b])
    hessian = np.array(
        [
            [np.dot(curvature, x * x) + ridge, np.dot(curvature, x)],
            [np.dot(curvature, x), curvature.sum() + ridge],
        ]
    )
    return loss, gradient, hessian


class LogisticCalibration:
    """Affine score-to-LLR calibration fitted by prior-weighted logistic regression.

    Arguments
    ---------
    prior : float
        Effective target prior the fit is weighted for (0.5 weights both classes
        equally; use the p_target of the DCF you care most about to tune for it).
    ridge : float
        Small L2 penalty on the (standardised) parameters, so that perfectly
        separable training scores still give finite parameters.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> labels = np.r_[np.ones(500), np.zeros(500)]
    >>> scores = np.r_[rng.normal(0.6, 0.1, 500), rng.normal(0.1, 0.1, 500)]
    >>> calibration = LogisticCalibration().fit(scores, labels)
    >>> llr = calibration(scores)
    >>> bool(llr[:500].mean() > 0 > llr[500:].mean())
    True
    """

    def __init__(self, prior=0.5, ridge=1e-6):
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie in (0, 1), got {prior}")
        self.prior = float(prior)
        self.ridge = float(ridge)
        self.scale = None
        self.offset = None

    def fit(self, scores, labels, max_iterations=100, tolerance=1e-10):
        """Fit the scale and offset on a trial list.

        Arguments
        ---------
        scores : array-like or torch.Tensor
            Raw scores [N].
        labels : array-like or torch.Tensor
            1 for target, 0 for non-target [N].
        max_iterations : int
            Newton steps at most.
        tolerance : float
            Stop when the step is smaller than this.

        Returns
        -------
        LogisticCalibration
            ``self``, fitted.
        """
        scores, labels = check_scores(scores, labels)
        center, spread = scores.mean(), scores.std()
        spread = spread if spread > 0 else 1.0
        x = (scores - center) / spread
        targets = labels.astype(np.float64)
        n_target = targets.sum()
        weights = np.where(labels, self.prior / n_target, (1.0 - self.prior) / (labels.size - n_target))
        log_odds = np.log(self.prior / (1.0 - self.prior))
        params = np.zeros(2)
        loss, gradient, hessian = _objective(params, x, targets, weights, log_odds, self.ridge)
        for _ in range(max_iterations):
            step = np.linalg.solve(hessian, gradient)
            length = 1.0
            while True:  # backtracking keeps every step a descent step
                candidate = params - length * step
                new = _objective(candidate, x, targets, weights, log_odds, self.ridge)
                if new[0] <= loss or length < 1e-8:
                    break
                length *= 0.5
            params = candidate
            loss, gradient, hessian = new
            if np.max(np.abs(length * step)) < tolerance:
                break
        a, b = params
        self.scale = float(a / spread)
        self.offset = float(b - a * center / spread)
        return self

    def __call__(self, scores):
        """Log-likelihood ratios of raw scores: ``scale·score + offset`` (float64)."""
        if self.scale is None:
            raise RuntimeError("LogisticCalibration is not fitted; call fit() first")
        if hasattr(scores, "detach"):
            scores = scores.detach().cpu().numpy()
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def to_dict(self):
        """Parameters as a JSON-ready dict."""
        return {"prior": self.prior, "ridge": self.ridge, "scale": self.scale, "offset": self.offset}

    @classmethod
    def from_dict(cls, values):
        """Rebuild a fitted calibration from :meth:`to_dict` output.

        Example
        -------
        >>> c = LogisticCalibration.from_dict({"prior": 0.5, "scale": 2.0, "offset": -1.0})
        >>> c([0.5, 1.0]).tolist()
        [0.0, 1.0]
        """
        calibration = cls(prior=values["prior"], ridge=values.get("ridge", 1e-6))
        calibration.scale = float(values["scale"])
        calibration.offset = float(values["offset"])
        return calibration

    def save(self, path):
        """Write the parameters to a JSON file atomically."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        """Read parameters written by :meth:`save`."""
        with open(os.fspath(path), encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
