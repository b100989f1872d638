"""Score files and result tables: ``scores/<list>.txt``, ``results.md`` and ``results.json``.

``results.json`` holds ``{"results": {list: metrics}, "settings": {...}, "model": {...},
"written": ...}``. ``model`` names the model that made the scores (its folder and the
sha256 of its ``embedding_model.ckpt``, from the embeddings file); each list's metrics name
the trial-list file and its sha256, so a results file can always be traced to its inputs.
"""

import datetime
import json
import os

import numpy as np

from sb_sphereface2.files import plain_value, write_text_atomic

__all__ = ["write_scores", "write_results", "describe_model"]


def write_scores(path, trials, scores, llrs=None):
    """Write ``label enrol test score [llr]`` lines (IDs without extension), atomically.

    Example
    -------
    >>> import tempfile
    >>> from sb_sphereface2.data.trials import TrialList
    >>> t = TrialList("toy", np.array([1], dtype=np.int8), ["a/1"], ["a/2"])
    >>> path = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> write_scores(path, t, np.array([0.5]))
    >>> open(path).read()
    '1 a/1 a/2 0.500000\\n'
    """
    columns = [trials.labels.astype(str), np.asarray(trials.enrol), np.asarray(trials.test),
               np.char.mod("%.6f", np.asarray(scores, dtype=np.float64))]
    if llrs is not None:
        columns.append(np.char.mod("%.6f", np.asarray(llrs, dtype=np.float64)))
    lines = [" ".join(fields) for fields in zip(*(c.tolist() for c in columns))]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _prior_keys(keys, prefix):
    return sorted((k for k in keys if k.startswith(prefix) and not k.endswith("_threshold")),
                  key=lambda k: float(k[len(prefix):]))


def _columns(results, calibration):
    """(key, heading, format) of the main table, or of the calibration table."""
    keys = set().union(*(r.keys() for r in results.values()))
    if not calibration:
        columns = [("trials", "trials", "{:,}"), ("targets", "targets", "{:,}"),
                   ("eer_percent", "EER (%)", "{:.3f}")]
        columns += [(k, f"minDCF (p={k[8:]})", "{:.4f}") for k in _prior_keys(keys, "min_dcf_")]
        return columns + [("eer_threshold", "EER threshold", "{:.4f}")]
    columns = [(k, f"actDCF before (p={k[12:]})", "{:.4f}") for k in _prior_keys(keys, "raw_act_dcf_")]
    columns.append(("raw_cllr", "Cllr before", "{:.4f}"))
    columns += [(k, f"actDCF (p={k[8:]})", "{:.4f}") for k in _prior_keys(keys, "act_dcf_")]
    columns.append(("cllr", "Cllr", "{:.4f}"))
    columns.append(("calibrated_eer_percent", "EER of LLRs (%)", "{:.3f}"))
    columns += [(k, f"minDCF of LLRs (p={k[19:]})", "{:.4f}")
                for k in _prior_keys(keys, "calibrated_min_dcf_")]
    return columns


def _table(results, columns):
    header = "| list | " + " | ".join(name for _, name, _ in columns) + " |"
    rule = "|---|" + "|".join("---:" for _ in columns) + "|"
    rows = []
    for list_name, values in results.items():
        cells = [fmt.format(values[key]) if values.get(key) is not None else "" for key, _, fmt in columns]
        rows.append(f"| {list_name} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def describe_model(model):
    """One line naming a model record (``{"folder", "embedding_model_sha256"}``).

    Example
    -------
    >>> describe_model({"folder": "/runs/a/model", "embedding_model_sha256": "ab" * 32})
    '/runs/a/model (embedding_model.ckpt sha256 abababababababababababababababababababababababababababababababab)'
    >>> describe_model(None)
    'unknown (the embeddings file names no model)'
    """
    if not model:
        return "unknown (the embeddings file names no model)"
    return f"{model['folder']} (embedding_model.ckpt sha256 {model['embedding_model_sha256']})"


def _trial_list_lines(results):
    lines = []
    for name, values in results.items():
        if "trial_list" not in values:
            continue
        notes = []
        for key, what in (("duplicate_trials", "duplicate trial"), ("self_trials", "self-trial")):
            count = values.get(key) or 0
            if count:
                notes.append(f"{count:,} {what}{'s' if count > 1 else ''} (kept)")
        if values.get("calibration_list"):
            notes.append("the calibration list: its calibrated figures are on training data")
        suffix = f"; {', '.join(notes)}" if notes else ""
        lines.append(f"- {name}: {values['trial_list']} (sha256 {values.get('trial_list_sha256')}){suffix}")
    return lines


def write_results(out_dir, results, settings=None, title="Verification results", model=None):
    """Write ``results.md`` (tables) and ``results.json`` atomically.

    Arguments
    ---------
    out_dir : str or os.PathLike
        Output folder (created).
    results : dict
        ``{list_name: metrics}`` (:func:`sb_sphereface2.scoring.trial_scores.evaluate`
        output, optionally with ``trial_list``, ``trial_list_sha256``, ``duplicate_trials``,
        ``self_trials``).
    settings : dict, optional
        How the scores were made (normalisation, cohort, files...), stored in both files.
    title : str
        Heading of the markdown file.
    model : dict, optional
        ``{"folder", "embedding_model_sha256"}`` of the model that made the embeddings.

    Returns
    -------
    str
        The main markdown table.

    Example
    -------
    >>> import tempfile
    >>> from sb_sphereface2.scoring.metrics import evaluate
    >>> out = tempfile.mkdtemp()
    >>> table = write_results(out, {"toy": evaluate([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1])})
    >>> print(table.splitlines()[0])
    | list | trials | targets | EER (%) | minDCF (p=0.01) | minDCF (p=0.05) | EER threshold |
    >>> sorted(os.listdir(out))
    ['results.json', 'results.md']
    """
    out_dir = os.fspath(out_dir)
    table = _table(results, _columns(results, calibration=False))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    markdown = [f"# {title}", ""]
    if model is not None or any("trial_list" in v for v in results.values()):
        markdown += [f"Model: {describe_model(model)}", ""]
    markdown += [table, ""]
    if any("cllr" in values for values in results.values()):
        markdown += ["Calibration (before: the raw scores taken as LLRs; after: the calibrated "
                     "LLRs, whose EER and minDCF change when quality measures reorder the trials):",
                     "", _table(results, _columns(results, calibration=True)), ""]
    trial_lines = _trial_list_lines(results)
    if trial_lines:
        markdown += ["Trial lists:", ""] + trial_lines + [""]
    if settings:
        markdown += ["Settings:", ""] + [f"- {key}: {value}" for key, value in settings.items()] + [""]
    markdown.append(f"Written {stamp}. minDCF uses C_miss = C_fa = 1, normalised.")
    write_text_atomic(os.path.join(out_dir, "results.md"), "\n".join(markdown) + "\n")
    document = {"results": plain_value(results, strict_json=True),
                "settings": plain_value(settings or {}, strict_json=True),
                "model": plain_value(model, strict_json=True), "written": stamp}
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(document, indent=2) + "\n")
    return table
