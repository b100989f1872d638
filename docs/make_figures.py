"""Render the README's scoring figures from a synthetic, VoxCeleb-like score set.

The scores are synthetic (no model is involved): cosine-like target and non-target
scores whose separation gives EERs near those of a good ResNet34 on VoxCeleb1-O/E/H
(about 0.8 / 1.0 / 2.2 %), with the list sizes of the cleaned lists. Run from the
repository root::

    PYTHONPATH=$PWD python docs/make_figures.py

Writes ``docs/images/scoring_det.png`` and ``docs/images/scoring_histogram.png``.
"""

import os

import numpy as np

from sb_sphereface2.scoring.metrics import compute_min_dcf
from sb_sphereface2.scoring.plots import plot_det, plot_score_histogram
from sb_sphereface2.scoring.metrics import evaluate

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images")

# name, trials, target mean, target spread, non-target mean, non-target spread
LISTS = [
    ("Vox1-O (synthetic)", 37_611, 0.62, 0.120, 0.06, 0.085),
    ("Vox1-E (synthetic)", 579_818, 0.61, 0.120, 0.06, 0.087),
    ("Vox1-H (synthetic)", 550_894, 0.58, 0.125, 0.08, 0.092),
]


def synthetic_list(rng, n, target_mean, target_spread, non_mean, non_spread):
    """Half targets; targets slightly skewed towards low scores (hard, short or noisy
    recordings), as real cosine scores are."""
    labels = np.zeros(n, dtype=np.int8)
    labels[: n // 2] = 1
    targets = target_mean + target_spread * (rng.standard_normal(n // 2)
                                             - 0.35 * rng.exponential(1.0, n // 2))
    nontargets = rng.normal(non_mean, non_spread, n - n // 2)
    return np.clip(np.r_[targets, nontargets], -1, 1), labels


def main():
    rng = np.random.default_rng(2023)
    curves = {}
    for name, n, *params in LISTS:
        curves[name] = synthetic_list(rng, n, *params)
        result = evaluate(*curves[name])
        print(f"{name}: EER {result['eer_percent']:.3f}%, minDCF(0.01) {result['min_dcf_0.01']:.4f}")
    os.makedirs(OUT, exist_ok=True)
    plot_det(curves, os.path.join(OUT, "scoring_det.png"), title="DET curves (synthetic scores)")
    scores, labels = curves["Vox1-O (synthetic)"]
    result = evaluate(scores, labels)
    plot_score_histogram(
        scores, labels, os.path.join(OUT, "scoring_histogram.png"),
        thresholds={"EER threshold": result["eer_threshold"],
                    "minDCF (p=0.01) threshold": compute_min_dcf(scores, labels, 0.01)[1]},
        title="Vox1-O (synthetic): score distribution",
    )


if __name__ == "__main__":
    main()
