"""DET-curve and score-histogram figures (matplotlib, Agg canvas, atomic PNG writes).

Figures are drawn on their own ``Figure`` + Agg canvas, so nothing depends on or
changes the global matplotlib backend. DET curves are thinned to the points that move
visibly on the probit axes, so 5 M trials plot as fast as 5 k.
"""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import ndtri as probit  # the inverse normal CDF (scipy.stats.norm.ppf)

from sb_sphereface2.files import atomic_write
from sb_sphereface2.scoring.metrics import check_scores, compute_eer, det_curve

__all__ = ["thin_det_points", "plot_det", "plot_score_histogram"]

_TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40]


DPI = 120  # a 5.5 × 5.5 inch DET figure is 660 × 660 pixels


def _save(figure, path):
    FigureCanvasAgg(figure)
    with atomic_write(os.fspath(path), "wb") as handle:
        figure.savefig(handle, format="png", dpi=DPI)


def thin_det_points(p_fa, p_miss, resolution=0.005, floor=1e-5):
    """Keep the DET points that move at least ``resolution`` on the probit axes.

    Arguments
    ---------
    p_fa, p_miss : numpy.ndarray
        Curve points (from :func:`sb_sphereface2.scoring.metrics.det_curve`).
    resolution : float
        Grid step in probit units; smaller keeps more points.
    floor : float
        Rates are clipped to ``[floor, 1 − floor]`` before the probit transform.

    Returns
    -------
    x, y : numpy.ndarray
        Probit-transformed false-alarm and miss rates of the kept points.

    Example
    -------
    >>> x, y = thin_det_points(np.linspace(1, 0, 100001), np.linspace(0, 1, 100001))
    >>> len(x)  # of 100,001 points on the line, those that move one probit cell
    1416
    """
    x = probit(np.clip(p_fa, floor, 1.0 - floor))
    y = probit(np.clip(p_miss, floor, 1.0 - floor))
    cells = np.stack([np.round(x / resolution), np.round(y / resolution)], axis=1)
    keep = np.r_[True, np.any(cells[1:] != cells[:-1], axis=1)]
    keep[-1] = True
    return x[keep], y[keep]


def plot_det(curves, path, title="DET curve"):
    """Draw DET curves of one or more trial lists and save a PNG.

    Arguments
    ---------
    curves : dict
        ``{label: (scores, labels)}``; each is scored by the exact operating points of
        :mod:`sb_sphereface2.scoring.metrics`, and its EER is marked and quoted in the legend.
    path : str or os.PathLike
        PNG file to write (atomically).
    title : str
        Figure title.

    Example
    -------
    >>> import tempfile
    >>> rng = np.random.default_rng(0)
    >>> s = np.r_[rng.normal(1, 1, 200), rng.normal(-1, 1, 800)]
    >>> l = np.r_[np.ones(200), np.zeros(800)]
    >>> path = os.path.join(tempfile.mkdtemp(), "det.png")
    >>> plot_det({"toy": (s, l)}, path)
    >>> import matplotlib.image
    >>> matplotlib.image.imread(path).shape
    (660, 660, 4)
    """
    figure = Figure(figsize=(5.5, 5.5))
    axes = figure.add_subplot(1, 1, 1)
    for name, (scores, labels) in curves.items():
        scores, labels = check_scores(scores, labels)
        p_fa, p_miss, _ = det_curve(scores, labels)
        x, y = thin_det_points(p_fa, p_miss)
        eer, _ = compute_eer(scores, labels)
        line = axes.plot(x, y, label=f"{name} (EER {100 * eer:.2f}%)")[0]
        point = probit(np.clip(eer, 1e-5, 1 - 1e-5))
        axes.plot([point], [point], "o", color=line.get_color(), markersize=4)
    ticks = probit(np.array(_TICKS) / 100.0)
    labels_text = [f"{t:g}" for t in _TICKS]
    axes.set_xticks(ticks, labels_text, rotation=45)
    axes.set_yticks(ticks, labels_text)
    limits = (probit(0.01 / 100), probit(0.5))
    axes.set_xlim(*limits)
    axes.set_ylim(*limits)
    axes.plot(limits, limits, ":", color="gray", linewidth=0.8)
    axes.set_xlabel("False-alarm rate (%)")
    axes.set_ylabel("Miss rate (%)")
    axes.set_title(title)
    axes.grid(True, linewidth=0.4, alpha=0.6)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def plot_score_histogram(scores, labels, path, thresholds=None, title="Score distribution", bins=200):
    """Histogram of target and non-target scores (densities), with optional thresholds.

    Arguments
    ---------
    scores : array-like or torch.Tensor
        Scores [N].
    labels : array-like or torch.Tensor
        1 for target, 0 for non-target [N].
    path : str or os.PathLike
        PNG file to write (atomically).
    thresholds : dict, optional
        ``{name: value}`` drawn as vertical lines (e.g. the EER and minDCF thresholds).
    title : str
        Figure title.
    bins : int
        Histogram bins over the whole score range.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "hist.png")
    >>> plot_score_histogram([0.1, 0.2, 0.7, 0.8], [0, 0, 1, 1], path, {"EER": 0.45})
    >>> import matplotlib.image
    >>> matplotlib.image.imread(path).shape  # 6.5 × 4 inches at 120 dpi
    (480, 780, 4)
    """
    scores, labels = check_scores(scores, labels)
    edges = np.linspace(scores.min(), scores.max(), bins + 1)
    figure = Figure(figsize=(6.5, 4))
    axes = figure.add_subplot(1, 1, 1)
    for mask, name, color in ((~labels, "non-target", "tab:red"), (labels, "target", "tab:blue")):
        counts, _ = np.histogram(scores[mask], bins=edges, density=True)
        axes.stairs(counts, edges, fill=True, alpha=0.45, color=color,
                    label=f"{name} ({int(mask.sum()):,})")
    for index, (name, value) in enumerate((thresholds or {}).items()):
        if np.isfinite(value):
            axes.axvline(value, color=f"C{index + 2}", linestyle="--", linewidth=1,
                         label=f"{name} = {value:.3f}")
    axes.set_xlabel("score")
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)
