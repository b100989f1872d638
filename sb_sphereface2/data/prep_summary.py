"""What data preparation made: the counts of ``prepare_summary.json`` and the lines it
prints (the segments, the split, a warning when the validation set is too small for a
meaningful EER)."""

import logging

import numpy as np

from sb_sphereface2.data.heldout import validation_is_meaningful

logger = logging.getLogger("sb_sphereface2.data.prepare")


def _summary_of(items, trials=None):
    """Speakers, items and hours of a set (and its trials and targets)."""
    out = {
        "speakers": len({i.speaker for i in items}),
        "items": len(items),
        "hours": round(sum(i.duration for i in items) / 3600, 3),
    }
    if trials is not None:
        out.update(trials=len(trials), targets=int(trials.labels.sum()))
    return out


def build_summary(num_files, dropped, items, cut, train, dev, heldout, num_lists, listed):
    """The counts of ``prepare_summary.json``.

    Arguments
    ---------
    num_files, dropped : int
        Audio files found, and dropped as bad.
    items : list of Item
        Every item (whole file or segment) of the good files.
    cut : int
        Recordings cut into segments.
    train : list of Item
        The training items.
    dev, heldout : (list of Item, TrialList or None)
        Held-out items and their trials (None: no such set).
    num_lists : int
        User trial lists.
    listed : list of Item
        The utterances they name.

    Returns
    -------
    dict

    Example
    -------
    >>> from sb_sphereface2.data.segments import Item
    >>> items = [Item(f"s{k}/r@001", "/r", 0, 48000, 16000, f"s{k}/r@a", f"s{k}/r") for k in range(3)]
    >>> summary = build_summary(3, 0, items, 3, items, ([], None), ([], None), 0, [])
    >>> summary["segments"]["segments"], summary["train"]
    (3, {'speakers': 3, 'items': 3, 'hours': 0.003})
    """
    lengths = np.array([i.duration for i in items if i.id != i.recording])
    summary = {
        "files": num_files,
        "bad_files": dropped,
        "segments": {
            "recordings_cut": cut,
            "segments": len(lengths),
            "whole_files": len(items) - len(lengths),
            "min_seconds": round(float(lengths.min()), 3) if cut else 0.0,
            "max_seconds": round(float(lengths.max()), 3) if cut else 0.0,
            "mean_seconds": round(float(lengths.mean()), 3) if cut else 0.0,
        },
        "train": _summary_of(train),
        "trial_lists": {"count": num_lists, "utterances": len(listed)},
    }
    for key, (held, trials) in (("dev", dev), ("heldout", heldout)):
        if trials is not None:
            summary[key] = _summary_of(held, trials)
    if "dev" in summary:
        summary["dev"]["meaningful"] = validation_is_meaningful(summary["dev"]["speakers"], summary["dev"]["trials"])
    return summary


def log_summary(summary, save_folder):
    """Print (log) the segments and the split, and warn about a small validation set."""
    segs = summary["segments"]
    if segs["recordings_cut"]:
        logger.info(
            "Segments: %d recordings cut into %d segments of %.1f-%.1f s (mean %.1f s); %d files used whole",
            segs["recordings_cut"], segs["segments"], segs["min_seconds"], segs["max_seconds"],
            segs["mean_seconds"], segs["whole_files"],
        )
    parts = [f"training {summary['train']['speakers']} speakers, {summary['train']['items']} items "
             f"({summary['train']['hours']:.2f} h)"]
    for key, label in (("dev", "validation"), ("heldout", "held-out test")):
        part = summary.get(key)
        if part:
            parts.append(
                f"{label} {part['speakers']} speakers, {part['items']} items, "
                f"{part['trials']} trials ({part['targets']} targets)"
            )
    lists = summary["trial_lists"]
    parts.append(f"trial lists {lists['count']} ({lists['utterances']} utterances)" if lists["count"] else "no trial lists")
    logger.info("Split in %s: %s", save_folder, "; ".join(parts))
    dev = summary.get("dev")
    if dev and not dev["meaningful"]:
        logger.warning(
            "Validation set of %d speakers and %d trials is too small for a meaningful EER "
            "(needs 20 speakers or 1,000 trials): hold out more speakers, or turn validation off",
            dev["speakers"], dev["trials"],
        )
