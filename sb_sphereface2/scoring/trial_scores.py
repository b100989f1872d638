"""From embeddings and trial lists to scores, metrics and result tables.

The recipe-level API: :func:`score_trials` (cosine scoring after optional mean
subtraction, with optional z/t/s/AS-norm), :func:`build_cohort`, :func:`evaluate`,
:func:`write_scores` and :func:`write_results`. Every step works on whole matrices in
bounded chunks; per-utterance work happens once per utterance, per-trial work is a
gather and a dot product.
"""

import datetime
import json
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from sb_sphereface2.files import write_text_atomic
from sb_sphereface2.scoring.metrics import (
    check_scores,
    compute_actual_dcf,
    compute_cllr,
    compute_eer,
    compute_min_dcf,
)
from sb_sphereface2.scoring.normalization import (
    NORM_METHODS,
    cohort_statistics,
    l2_normalize,
    normalize_scores,
    speaker_mean_cohort,
)

__all__ = [
    "COHORT_KINDS",
    "index_trials",
    "build_cohort",
    "score_trials",
    "evaluate",
    "write_scores",
    "write_results",
]

COHORT_KINDS = ("speaker-mean", "utterance")


def _index_of(ids):
    if isinstance(ids, dict):
        return ids
    index = {}
    for row, utt in enumerate(ids):
        if utt in index:
            raise ValueError(f"duplicate utterance ID {utt!r} (rows {index[utt]} and {row})")
        index[utt] = row
    return index


def index_trials(ids, trials):
    """Embedding rows of both sides of every trial, with a clear error for unknown IDs.

    Arguments
    ---------
    ids : dict or sequence of str
        ``{utterance_id: row}`` or the list of IDs in row order.
    trials : sb_sphereface2.data.trials.TrialList
        The trials.

    Returns
    -------
    enrol_rows, test_rows : numpy.ndarray
        int64 [N] each.

    Raises
    ------
    ValueError
        Naming the list, the line of the first trial whose ID has no embedding, and
        how many trials are affected.

    Example
    -------
    >>> from sb_sphereface2.data.trials import TrialList
    >>> t = TrialList("toy", np.array([1, 0], dtype=np.int8), ["a/1", "a/1"], ["a/2", "b/1"])
    >>> [r.tolist() for r in index_trials(["a/1", "a/2", "b/1"], t)]
    [[0, 0], [1, 2]]
    >>> index_trials(["a/1", "a/2"], t)
    Traceback (most recent call last):
    ...
    ValueError: trial list 'toy', line 2: test utterance 'b/1' has no embedding (1 of 2 trials name an utterance with no embedding)
    """
    index = _index_of(ids)
    lookup = index.get
    enrol_rows = np.fromiter((lookup(u, -1) for u in trials.enrol), np.int64, len(trials))
    test_rows = np.fromiter((lookup(u, -1) for u in trials.test), np.int64, len(trials))
    missing = (enrol_rows < 0) | (test_rows < 0)
    if missing.any():
        first = int(np.argmax(missing))
        side, utt = (
            ("enrolment", trials.enrol[first]) if enrol_rows[first] < 0 else ("test", trials.test[first])
        )
        raise ValueError(
            f"trial list {trials.name!r}, line {trials.line_of(first)}: {side} utterance "
            f"{utt!r} has no embedding ({int(missing.sum())} of {len(trials)} trials name "
            f"an utterance with no embedding)"
        )
    return enrol_rows, test_rows


def build_cohort(embeddings, speakers=None, mean=None, kind="speaker-mean"):
    """Cohort for score normalisation, already in scoring space (mean-subtracted, unit rows).

    Arguments
    ---------
    embeddings : numpy.ndarray
        Training embeddings [N, D].
    speakers : sequence of str, optional
        Speaker of each row; required for ``kind="speaker-mean"``.
    mean : numpy.ndarray, optional
        Mean embedding [D] subtracted before normalising (pass the same mean to
        :func:`score_trials`).
    kind : str
        ``"speaker-mean"`` (one unit-length mean per speaker, the paper's cohort) or
        ``"utterance"`` (every training utterance).

    Returns
    -------
    numpy.ndarray
        Cohort embeddings, float32 [K, D], unit length.

    Example
    -------
    >>> emb = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> build_cohort(emb, ["a", "a", "b"]).shape, build_cohort(emb, kind="utterance").shape
    ((2, 2), (3, 2))
    """
    if kind == "speaker-mean":
        if speakers is None:
            raise ValueError("a speaker-mean cohort needs the speaker of each training embedding")
        return speaker_mean_cohort(embeddings, speakers, mean)[0]
    if kind == "utterance":
        return l2_normalize(embeddings, mean).numpy()
    raise ValueError(f"unknown cohort kind {kind!r}; choose from {COHORT_KINDS}")


def score_trials(
    ids,
    embeddings,
    trials,
    mean=None,
    cohort=None,
    top_n=300,
    norm=None,
    chunk_size=16384,
    cohort_chunk_size=4096,
    progress=False,
):
    """Cosine scores of a trial list, optionally normalised against a cohort.

    Only the utterances the list names are normalised and scored against the cohort,
    each once; trials are then scored in chunks of ``chunk_size``.

    Arguments
    ---------
    ids : dict or sequence of str
        ``{utterance_id: row}`` or the IDs of the embedding rows.
    embeddings : numpy.ndarray or torch.Tensor
        Embeddings [U, D].
    trials : sb_sphereface2.data.trials.TrialList
        The trials (IDs must be in ``ids``).
    mean : numpy.ndarray, optional
        Mean embedding [D] subtracted before the cosine (the training-set mean).
    cohort : numpy.ndarray, optional
        Cohort [K, D] in scoring space (see :func:`build_cohort`); needed by ``norm``.
    top_n : int
        Cohort scores kept per utterance for ``norm="asnorm"``.
    norm : str or None
        None, ``"znorm"``, ``"tnorm"``, ``"snorm"`` (whole cohort) or ``"asnorm"``
        (top-N cohort scores).
    chunk_size : int
        Trials scored at a time.
    cohort_chunk_size : int
        Utterances scored against the cohort at a time.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    numpy.ndarray
        Scores, float64 [N], in trial order.

    Example
    -------
    >>> from sb_sphereface2.data.trials import TrialList
    >>> t = TrialList("toy", np.array([1, 0], dtype=np.int8), ["a", "a"], ["b", "c"])
    >>> emb = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> score_trials(["a", "b", "c"], emb, t).round(4).tolist()
    [0.7071, 0.0]
    """
    if norm is not None and norm not in NORM_METHODS:
        raise ValueError(f"unknown score normalisation {norm!r}; choose from {NORM_METHODS} or None")
    if norm is not None and cohort is None:
        raise ValueError(f"score normalisation {norm!r} needs a cohort")
    enrol_rows, test_rows = index_trials(ids, trials)
    used, inverse = np.unique(np.r_[enrol_rows, test_rows], return_inverse=True)
    inverse = inverse.ravel()
    enrol_local = torch.from_numpy(inverse[: len(trials)])
    test_local = torch.from_numpy(inverse[len(trials) :])
    if torch.is_tensor(embeddings):
        embeddings = embeddings.detach().cpu().numpy()
    units = l2_normalize(np.asarray(embeddings)[used], mean)
    scores = np.empty(len(trials), dtype=np.float64)
    with torch.no_grad():
        for start in tqdm(
            range(0, len(trials), chunk_size), desc=f"scoring {trials.name}",
            disable=not progress, unit="chunk",
        ):
            stop = start + chunk_size
            enrol_units = units[enrol_local[start:stop]]
            test_units = units[test_local[start:stop]]
            scores[start:stop] = torch.einsum("ij,ij->i", enrol_units, test_units).numpy()
    if norm is None:
        return scores
    stats = cohort_statistics(
        units, cohort, top_n=top_n if norm == "asnorm" else None,
        chunk_size=cohort_chunk_size, progress=progress,
    )
    enrol_idx, test_idx = enrol_local.numpy(), test_local.numpy()
    enrol_stats = type(stats)(stats.mean[enrol_idx], stats.std[enrol_idx])
    test_stats = type(stats)(stats.mean[test_idx], stats.std[test_idx])
    return normalize_scores(scores, enrol_stats, test_stats, norm)


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
        Calibrated log-likelihood ratios of the same trials: adds ``act_dcf_<p>`` and
        ``cllr``.

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
        for p in p_targets:
            results[f"act_dcf_{p:g}"] = compute_actual_dcf(llrs, labels, p_target=p)
        results["cllr"] = compute_cllr(llrs, labels)
    return results


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


_COLUMNS = [
    ("trials", "trials", "{:,}"),
    ("targets", "targets", "{:,}"),
    ("eer_percent", "EER (%)", "{:.3f}"),
]


def _table_columns(results):
    keys = set().union(*(r.keys() for r in results.values()))
    columns = list(_COLUMNS)
    for key in sorted(k for k in keys if k.startswith("min_dcf_") and not k.endswith("_threshold")):
        columns.append((key, f"minDCF (p={key[len('min_dcf_'):]})", "{:.4f}"))
    for key in sorted(k for k in keys if k.startswith("act_dcf_")):
        columns.append((key, f"actDCF (p={key[len('act_dcf_'):]})", "{:.4f}"))
    if "cllr" in keys:
        columns.append(("cllr", "Cllr", "{:.4f}"))
    columns.append(("eer_threshold", "EER threshold", "{:.4f}"))
    return columns


def _json_safe(value):
    """Replace non-finite floats (an ``inf`` threshold) by None so the JSON stays strict."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_results(out_dir, results, settings=None, title="Verification results"):
    """Write ``results.md`` (a table) and ``results.json`` atomically.

    Arguments
    ---------
    out_dir : str or os.PathLike
        Output folder (created).
    results : dict
        ``{list_name: evaluate(...) dict}``.
    settings : dict, optional
        How the scores were made (normalisation, cohort, files...), stored in both files.
    title : str
        Heading of the markdown file.

    Returns
    -------
    str
        The markdown table.

    Example
    -------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> table = write_results(out, {"toy": evaluate([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1])})
    >>> print(table.splitlines()[0])
    | list | trials | targets | EER (%) | minDCF (p=0.01) | minDCF (p=0.05) | EER threshold |
    >>> sorted(os.listdir(out))
    ['results.json', 'results.md']
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    columns = _table_columns(results)
    header = "| list | " + " | ".join(name for _, name, _ in columns) + " |"
    rule = "|---|" + "|".join("---:" for _ in columns) + "|"
    rows = []
    for list_name, values in results.items():
        cells = [fmt.format(values[key]) if key in values else "" for key, _, fmt in columns]
        rows.append(f"| {list_name} | " + " | ".join(cells) + " |")
    table = "\n".join([header, rule, *rows])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    markdown = [f"# {title}", "", table, ""]
    if settings:
        markdown += ["Settings:", ""] + [f"- {key}: {value}" for key, value in settings.items()] + [""]
    markdown.append(f"Written {stamp}. minDCF uses C_miss = C_fa = 1, normalised.")
    write_text_atomic(os.path.join(out_dir, "results.md"), "\n".join(markdown) + "\n")
    document = {"results": _json_safe(results), "settings": _json_safe(settings or {}), "written": stamp}
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(document, indent=2) + "\n")
    return table
