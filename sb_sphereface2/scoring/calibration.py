"""Logistic-regression score calibration: raw scores (and quality measures) to log-likelihood ratios.

``llr = w·x + b`` with ``x`` the raw score, optionally followed by quality features of the
trial (quality-measure functions, QMF: see :mod:`sb_sphereface2.scoring.quality`), is fitted
on one trial list by prior-weighted logistic regression and applied to others. The targets
and non-targets are weighted to the effective prior ``prior`` and its log-odds are added
inside the logistic, so that ``w·x + b`` comes out as a likelihood ratio, not a posterior;
at ``prior = 0.5`` the objective is Cllr, which is what wespeaker's calibration minimises.

The fit is ``scipy.optimize.minimize`` (trust-region Newton with the exact gradient and
Hessian) on standardised features, with a small L2 penalty so that perfectly separable
training scores still give finite parameters.
"""

import json
import os

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from sb_sphereface2.files import write_json_atomic
from sb_sphereface2.scoring.metrics import check_scores

__all__ = ["LogisticCalibration"]


def _as_features(scores, quality):
    """Design matrix [N, 1 + Q]: the score, then the quality features."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    columns = [np.asarray(scores, dtype=np.float64).reshape(-1, 1)]
    if quality is not None:
        quality = np.asarray(quality, dtype=np.float64)
        if quality.ndim == 1:
            quality = quality[:, None]
        if quality.ndim != 2 or quality.shape[0] != columns[0].shape[0]:
            raise ValueError(
                f"quality features must be [N, Q] with N = {columns[0].shape[0]} trials, "
                f"got shape {quality.shape}"
            )
        if not np.isfinite(quality).all():
            raise ValueError("quality features contain NaN or inf")
        columns.append(quality)
    return np.hstack(columns)


class LogisticCalibration:
    """Affine score-to-LLR calibration, optionally quality-aware, fitted by prior-weighted
    logistic regression.

    Arguments
    ---------
    prior : float
        Effective target prior the fit is weighted for (0.5 weights both classes equally
        and minimises Cllr; use the p_target of the DCF you care most about to tune for it).
    ridge : float
        L2 penalty on the parameters of the standardised features.
    feature_names : sequence of str, optional
        Names of the quality features (stored with the parameters).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> labels = np.r_[np.ones(5000), np.zeros(5000)]
    >>> scores = np.r_[rng.normal(0.4, 0.15, 5000), rng.normal(0.1, 0.15, 5000)]
    >>> calibration = LogisticCalibration().fit(scores, labels)
    >>> calibration.describe()  # the true LLR of these Gaussians: 13.33·score − 3.333
    'llr = 13.58·score − 3.407'
    """

    def __init__(self, prior=0.5, ridge=1e-6, feature_names=()):
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie in (0, 1), got {prior}")
        self.prior = float(prior)
        self.ridge = float(ridge)
        self.feature_names = list(feature_names)
        self.weights = None
        self.offset = None

    @property
    def scale(self):
        """Weight of the raw score."""
        return None if self.weights is None else float(self.weights[0])

    def fit(self, scores, labels, quality=None):
        """Fit the weights and the offset on a trial list.

        Arguments
        ---------
        scores : array-like or torch.Tensor
            Raw scores [N].
        labels : array-like or torch.Tensor
            1 for target, 0 for non-target [N].
        quality : array-like, optional
            Quality features of each trial [N, Q] (see
            :func:`sb_sphereface2.scoring.quality.quality_features`).

        Returns
        -------
        LogisticCalibration
            ``self``, fitted.
        """
        scores, labels = check_scores(scores, labels)
        x = _as_features(scores, quality)
        if self.feature_names and len(self.feature_names) != x.shape[1] - 1:
            raise ValueError(f"{len(self.feature_names)} feature names for {x.shape[1] - 1} quality features")
        center = x.mean(axis=0)
        spread = x.std(axis=0)
        spread[spread == 0] = 1.0
        design = np.hstack([(x - center) / spread, np.ones((len(x), 1))])
        targets = labels.astype(np.float64)
        n_target = targets.sum()
        weights = np.where(labels, self.prior / n_target, (1.0 - self.prior) / (labels.size - n_target))
        log_odds = np.log(self.prior / (1.0 - self.prior))
        sign = np.where(labels, -1.0, 1.0)

        def loss_and_gradient(params):
            z = design @ params + log_odds
            loss = weights @ np.logaddexp(0.0, sign * z) + 0.5 * self.ridge * params @ params
            residual = weights * (expit(z) - targets)
            return loss, design.T @ residual + self.ridge * params

        def hessian(params):
            posterior = expit(design @ params + log_odds)
            curvature = weights * posterior * (1.0 - posterior)
            return (design * curvature[:, None]).T @ design + self.ridge * np.eye(len(params))

        result = minimize(loss_and_gradient, np.zeros(design.shape[1]), jac=True, hess=hessian,
                          method="trust-exact", options={"gtol": 1e-10, "maxiter": 200})
        if not np.all(np.isfinite(result.x)):
            raise ValueError(f"calibration fit failed: {result.message}")
        standardised, intercept = result.x[:-1], result.x[-1]
        self.weights = standardised / spread
        self.offset = float(intercept - self.weights @ center)
        return self

    def __call__(self, scores, quality=None):
        """Log-likelihood ratios (float64 [N]) of raw scores and their quality features."""
        if self.weights is None:
            raise RuntimeError("LogisticCalibration is not fitted; call fit() first")
        x = _as_features(scores, quality)
        if x.shape[1] != len(self.weights):
            raise ValueError(
                f"calibration was fitted with {len(self.weights) - 1} quality features, "
                f"got {x.shape[1] - 1}"
            )
        return x @ self.weights + self.offset

    def describe(self):
        """One line: the fitted formula.

        Example
        -------
        >>> LogisticCalibration.from_dict({"prior": 0.5, "weights": [2.0, -0.5], "offset": 1.0,
        ...                                "feature_names": ["min_duration"]}).describe()
        'llr = 2·score − 0.5·min_duration + 1'
        """
        terms = [f"{self.weights[0]:.4g}·score"]
        for weight, name in zip(self.weights[1:], self.feature_names or
                                [f"q{i}" for i in range(len(self.weights) - 1)]):
            terms.append(f"{'−' if weight < 0 else '+'} {abs(weight):.4g}·{name}")
        terms.append(f"{'−' if self.offset < 0 else '+'} {abs(self.offset):.4g}")
        return "llr = " + " ".join(terms)

    def to_dict(self):
        """Parameters as a JSON-ready dict."""
        return {
            "prior": self.prior,
            "ridge": self.ridge,
            "feature_names": self.feature_names,
            "weights": None if self.weights is None else [float(w) for w in self.weights],
            "offset": self.offset,
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, values):
        """Rebuild a fitted calibration from :meth:`to_dict` output.

        Example
        -------
        >>> c = LogisticCalibration.from_dict({"prior": 0.5, "weights": [2.0], "offset": -1.0})
        >>> c([0.5, 1.0]).tolist()
        [0.0, 1.0]
        """
        calibration = cls(prior=values["prior"], ridge=values.get("ridge", 1e-6),
                          feature_names=values.get("feature_names") or ())
        weights = values["weights"]
        calibration.weights = np.asarray(weights, dtype=np.float64)
        calibration.offset = float(values["offset"])
        return calibration

    def save(self, path):
        """Write the parameters to a JSON file atomically."""
        write_json_atomic(os.fspath(path), self.to_dict())

    @classmethod
    def load(cls, path):
        """Read parameters written by :meth:`save`."""
        with open(os.fspath(path), encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
