"""Training curves of one or several run folders, read from their files.

A run folder's ``train_log.txt`` (one line per epoch: lr, margin, loss, raw-cosine error,
mean cosines, validation EER and minDCF, SphereFace2's terms), its
``train_records.jsonl`` (a record every few iterations) and ``train_histograms.jsonl``
(the epoch's own- and other-class cosine histograms), both written by
:mod:`sb_sphereface2.training.diagnostics`, are read into series (``read_run``);
``curve_panels`` turns runs into the figure's panels (titles, axis labels, lines), and
``draw_curves`` draws them (one run, or several overlaid, one colour each). The Brain
redraws ``training_curves.png`` in the run folder after every epoch from the files, so
that a resumed run's picture is whole; ``python -m sb_sphereface2.curves`` overlays runs.
"""

import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sb_sphereface2.files import atomic_write
from sb_sphereface2.hparams import ruamel_yaml
from sb_sphereface2.training.diagnostics import HISTOGRAMS_NAME, RECORDS_NAME

LOG_NAME = "train_log.txt"
PICTURE_NAME = "training_curves.png"
DPI = 80


def _number(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_train_log(path):
    """The epoch lines of a ``train_log.txt`` (SpeechBrain's ``FileTrainLogger``), one dict
    per line with the values as logged: ``{"epoch": 1, "lr": 0.04, "train loss": 2.68,
    "valid EER": 12.5, ...}``. Other lines and a line cut by a kill are left out.

    Arguments
    ---------
    path : str
        The log file.

    Returns
    -------
    list of dict

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> _ = open(path, "w").write("epoch: 1, iterations: 4, lr: 4.00e-02 - train loss: 2.68, "
    ...                           "train bias: -8.51e+00 - valid EER: 12.50, valid minDCF: 9.20e-01\\nepoch: 2, it")
    >>> read_train_log(path)
    [{'epoch': 1, 'iterations': 4, 'lr': 0.04, 'train loss': 2.68, 'train bias': -8.51, 'valid EER': 12.5, 'valid minDCF': 0.92}]
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines(keepends=True)
    for line in lines:
        if not line.startswith("epoch:") or not line.endswith("\n"):
            continue
        row = {}
        for item in line.strip().replace(" - ", ", ").split(", "):
            key, _, value = item.rpartition(": ")
            row[key] = _number(value)
        rows.append(row)
    return rows


def read_json_lines(path, key):
    """The records of a JSON-lines file, one per value of ``key`` (the last written wins,
    in the order of that key); a line cut by a kill is left out; [] when it is absent.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
    >>> _ = open(path, "w").write('{"iteration": 2, "v": 1}\\n{"iteration": 2, "v": 3}\\n{"iteration": 1}\\n{"it')
    >>> read_json_lines(path, "iteration")
    [{'iteration': 1}, {'iteration': 2, 'v': 3}]
    """
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines(keepends=True)
    records = {}
    for line in lines:
        if line.endswith("\n"):
            record = json.loads(line)
            records[record[key]] = record
    return [records[k] for k in sorted(records)]


def run_label(folder):
    """``"<loss> seed <seed>"`` from the run folder's composed ``hyperparams.yaml`` (the
    folder's name when it has none).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "hyperparams.yaml"), "w").write("loss: aam\\nseed: 7\\nx: !new:dict\\n")
    >>> run_label(folder)
    'aam seed 7'
    """
    path = os.path.join(folder, "hyperparams.yaml")
    if not os.path.isfile(path):
        return os.path.basename(os.path.normpath(folder))
    with open(path, encoding="utf-8") as handle:
        tree = ruamel_yaml().load(handle) or {}
    return f"{tree.get('loss', '?')} seed {tree.get('seed', '?')}"


def read_run(folder):
    """A run folder's series: ``{"label", "epochs" (the log's lines), "records",
    "histograms"}``.

    Example
    -------
    >>> import tempfile
    >>> run = read_run(tempfile.mkdtemp())
    >>> run["epochs"], run["records"], run["histograms"]
    ([], [], [])
    """
    log = os.path.join(folder, LOG_NAME)
    return {
        "label": run_label(folder),
        "epochs": read_train_log(log) if os.path.isfile(log) else [],
        "records": read_json_lines(os.path.join(folder, RECORDS_NAME), "iteration"),
        "histograms": read_json_lines(os.path.join(folder, HISTOGRAMS_NAME), "epoch"),
    }


def _series(rows, x_key, y_key, scale=1.0):
    pairs = [(row[x_key], row[y_key]) for row in rows
             if isinstance(row.get(y_key), (int, float)) and row.get(x_key) is not None]
    return [x for x, _ in pairs], [scale * y for _, y in pairs]


def _density(histogram, name):
    edges = np.asarray(histogram["edges"])
    counts = np.asarray(histogram[name], dtype=np.float64)
    total = counts.sum() * (edges[1] - edges[0])
    return list((edges[:-1] + edges[1:]) / 2), list(counts / total if total else counts)


def curve_panels(runs):
    """The figure's panels for runs read by ``read_run``: a list of ``{"title", "xlabel",
    "ylabel", "ylabel_right", "log_y", "lines"}``, each line ``{"run", "label", "x", "y",
    "right", "dashed", "steps"}``. Six panels (loss; lr and margin; raw-cosine error;
    mean cosines; validation EER and minDCF; cosine histograms of the first and last
    epochs), and three more when a run has SphereFace2 terms (bias; positive and
    negative terms; share of active negative logits).

    Example
    -------
    >>> run = {"label": "r", "epochs": [{"epoch": 1, "iterations": 2, "valid EER": 9.5}], "histograms": [],
    ...        "records": [{"iteration": i, "epoch": 1, "lr": 0.1, "margin": 0.2, "loss": 3.0, "error": 0.5,
    ...                     "cos_own": 0.1, "cos_other": 0.0, "bias": -8.0, "positive_term": 0.5,
    ...                     "negative_term": 2.5, "negative_active": 0.01} for i in (1, 2)]}
    >>> panels = curve_panels([run])
    >>> len(panels), [len(line["x"]) for line in panels[0]["lines"]], panels[4]["lines"][0]["y"]
    (9, [2], [9.5])
    """
    it = "iteration (optimizer steps)"
    panels = [
        dict(title="loss", xlabel=it, ylabel="training loss (batch mean)",
             lines=[("loss", "loss", 1.0, False, False)]),
        dict(title="learning rate and margin", xlabel=it, ylabel="learning rate", ylabel_right="margin (dashed)",
             lines=[("lr", "lr", 1.0, False, False), ("margin", "margin", 1.0, True, True)]),
        dict(title="raw-cosine training error", xlabel=it, ylabel="error (%)",
             lines=[("error", "error", 100.0, False, False)]),
        dict(title="mean cosines", xlabel=it, ylabel="cosine",
             lines=[("own class", "cos_own", 1.0, False, False), ("other classes", "cos_other", 1.0, False, True)]),
    ]
    if any("bias" in record for run in runs for record in run["records"]):
        panels += [
            dict(title="SphereFace2 bias b", xlabel=it, ylabel="b", lines=[("bias", "bias", 1.0, False, False)]),
            dict(title="SphereFace2 loss terms", xlabel=it, ylabel="term (batch mean)",
                 lines=[("positive", "positive_term", 1.0, False, False),
                        ("negative", "negative_term", 1.0, False, True)]),
            dict(title="active negatives", xlabel=it, ylabel="negative logits > 0 (%)", log_y=True,
                 lines=[("active", "negative_active", 100.0, False, False)]),
        ]
    for panel in panels:
        lines = []
        for index, run in enumerate(runs):
            for name, key, scale, right, dashed in panel["lines"]:
                x, y = _series(run["records"], "iteration", key, scale)
                lines.append(dict(run=index, label=name, x=x, y=y, right=right, dashed=dashed, steps=False))
        panel["lines"] = lines
    validation = dict(title="validation", xlabel=it, ylabel="EER (%)", ylabel_right="minDCF (dashed)", lines=[])
    histograms = dict(title="training cosines", xlabel="cosine", ylabel="density", lines=[])
    for index, run in enumerate(runs):
        for name, key, right, dashed in (("EER", "valid EER", False, False), ("minDCF", "valid minDCF", True, True)):
            x, y = _series(run["epochs"], "iterations", key)
            validation["lines"].append(dict(run=index, label=name, x=x, y=y, right=right, dashed=dashed, steps=False))
        chosen = run["histograms"][:1] + run["histograms"][1:][-1:]
        for histogram in chosen:
            for name, dashed in (("own", False), ("other", True)):
                x, y = _density(histogram, name)
                histograms["lines"].append(dict(run=index, label=f"{name}, epoch {histogram['epoch']}", x=x, y=y,
                                                right=False, dashed=dashed, steps=True, key=name,
                                                faint=histogram is not chosen[-1]))
    panels[4:4] = [validation, histograms]
    for panel in panels:
        panel.setdefault("ylabel_right", None)
        panel.setdefault("log_y", False)
    return panels


def draw_curves(runs, path=None):
    """Draw ``curve_panels(runs)`` (three panels a row; epoch ends dotted on the iteration
    axes; one colour per run when there are several) and save it to ``path`` (PNG, SVG or
    PDF by its extension, atomically) when given.

    Arguments
    ---------
    runs : list of dict
        Runs read by ``read_run``.
    path : str, optional
        The picture to write.

    Returns
    -------
    matplotlib.figure.Figure
        One titled axes per panel (a panel with a right-hand scale has an untitled twin).

    Example
    -------
    >>> run = {"label": "r", "epochs": [], "histograms": [], "records": [
    ...     {"iteration": 1, "epoch": 1, "lr": 0.1, "margin": 0.0, "loss": 3.0, "error": 0.5, "cos_own": 0.1,
    ...      "cos_other": 0.0}]}
    >>> figure = draw_curves([run])
    >>> [axes.get_title() for axes in figure.axes if axes.get_title()][:2]
    ['loss', 'learning rate and margin']
    """
    panels = curve_panels(runs)
    columns = 3
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(5.0 * columns, 3.4 * rows))
    several = len(runs) > 1
    for number, panel in enumerate(panels, 1):
        axes = figure.add_subplot(rows, columns, number)
        twin = axes.twinx() if panel["ylabel_right"] else None
        keys = list(dict.fromkeys(line.get("key", line["label"]) for line in panel["lines"]))
        for line in panel["lines"]:
            target = twin if line["right"] else axes
            color = f"C{line['run'] % 10}" if several else f"C{keys.index(line.get('key', line['label'])) % 10}"
            label = f"{runs[line['run']]['label']}: {line['label']}" if several else line["label"]
            target.plot(line["x"], line["y"], color=color, linestyle="--" if line["dashed"] else "-",
                        drawstyle="steps-mid" if line["steps"] else "default", linewidth=1.2,
                        alpha=0.45 if line.get("faint") else 1.0, label=label,
                        marker="o" if panel["title"] == "validation" else None, markersize=3)
        if panel["xlabel"].startswith("iteration"):
            for run in runs[:1]:
                for epoch in run["epochs"]:
                    if isinstance(epoch.get("iterations"), int):
                        axes.axvline(epoch["iterations"], color="gray", linestyle=":", linewidth=0.7)
        positive = [y for line in panel["lines"] for y in line["y"] if y > 0]
        if panel["log_y"] and positive and max(positive) > 10 * min(positive):  # more than a decade
            axes.set_yscale("log")
        else:
            axes.ticklabel_format(axis="y", useOffset=False)
        if not any(line["x"] for line in panel["lines"]):
            axes.text(0.5, 0.5, "no values (no validation)" if panel["title"] == "validation" else "no values",
                      transform=axes.transAxes, ha="center", va="center", color="gray")
        axes.set_title(panel["title"])
        axes.set_xlabel(panel["xlabel"])
        axes.set_ylabel(panel["ylabel"])
        if twin is not None:
            twin.set_ylabel(panel["ylabel_right"])
        axes.grid(True, linewidth=0.4, alpha=0.5)
        handles = [h for a in (axes, twin) if a is not None for h in a.get_legend_handles_labels()[0]]
        if handles and (several or len(panel["lines"]) > 1):
            axes.legend(handles=handles, fontsize=7, loc="best")
    figure.suptitle(" vs ".join(run["label"] for run in runs) + "  (dotted: epoch ends)", fontsize=10)
    figure.tight_layout()
    if path is not None:
        FigureCanvasAgg(figure)
        extension = os.path.splitext(os.fspath(path))[1].lower().lstrip(".") or "png"
        with atomic_write(os.fspath(path), "wb") as handle:
            figure.savefig(handle, format=extension, dpi=DPI)
    return figure


def write_run_curves(folder):
    """Redraw ``<folder>/training_curves.png`` from the run folder's files; returns its path.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.path.isfile(write_run_curves(folder))
    True
    """
    path = os.path.join(folder, PICTURE_NAME)
    draw_curves([read_run(folder)], path)
    return path
