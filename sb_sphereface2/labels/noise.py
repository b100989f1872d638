"""Class-wise label noise for a training CSV: corrupt a chosen fraction of speakers.

Two corruptions of a whole speaker (class-wise, as when a data set's identities are
wrongly merged or split):

- ``merge``: every utterance of the speaker is relabelled to another, clean speaker
  (two identities become one class);
- ``split``: the speaker's utterances are shuffled and split into ``split_into`` fake
  speakers of (near) equal size (one identity becomes several classes).

``mixed`` merges a share ``merge_share`` of the corrupted speakers and splits the rest.
Exactly round(fraction x number of speakers) speakers are corrupted (halves round
up), chosen with a seeded generator from the sorted speaker list, so the same CSV,
fraction, mode and seed always give the same output whatever the row order. Only
``spk_id`` changes; every other column and the row order stay as they were.

Run ``python -m sb_sphereface2.labels.noise IN.csv OUT.csv --fraction 0.1 --mode mixed``;
the report of what changed goes to ``OUT.noise.json`` (and is returned by
``inject_class_noise``).
"""

import argparse
import math
import os
import sys
from collections import defaultdict

import numpy as np

from sb_sphereface2.data.training_csv import read_training_csv, write_training_csv
from sb_sphereface2.errors import fail
from sb_sphereface2.files import sidecar_path, write_json_atomic

MODES = ("merge", "split", "mixed")


def report_path(out_csv):
    """Path of the JSON report written beside ``out_csv``: ``<name>.noise.json``."""
    return sidecar_path(out_csv, "noise")


def _round_half_up(value):
    return int(math.floor(value + 0.5))


def _fake_names(speaker, count, taken):
    """``count`` new speaker names derived from ``speaker`` that are not in ``taken``."""
    names = []
    for part in range(count):
        name = f"{speaker}_split{part}"
        while name in taken:
            name += "x"
        taken.add(name)
        names.append(name)
    return names


def inject_class_noise(
    in_csv,
    out_csv,
    fraction,
    mode="merge",
    seed=0,
    split_into=2,
    merge_share=0.5,
    speaker_column="spk_id",
):
    """Write a copy of a training CSV in which a fraction of the speakers is corrupted
    class-wise, and a report of exactly what changed.

    Arguments
    ---------
    in_csv : str
        Training CSV (``ID,duration,wav,start,stop,spk_id``, other columns kept).
    out_csv : str
        Output CSV; the report goes to ``report_path(out_csv)``. Both written atomically.
    fraction : float
        Fraction of speakers to corrupt, in [0, 1].
    mode : str
        "merge", "split" or "mixed".
    seed : int
        Seed of the random choices.
    split_into : int
        Number of fake speakers a split speaker becomes (>= 2; only speakers with at
        least that many utterances are split).
    merge_share : float
        In "mixed" mode, the share of corrupted speakers that are merged
        (round(merge_share x corrupted), halves up); the rest are split.
    speaker_column : str
        Column holding the speaker label.

    Returns
    -------
    dict
        The report: settings, counts (``num_speakers``, ``num_corrupted``,
        ``num_utterances``, ``num_relabelled``, ``num_speakers_after``) and
        ``corrupted``, one entry per corrupted speaker, in sorted order:
        ``{"speaker", "action": "merge", "into", "utterances"}`` or
        ``{"speaker", "action": "split", "utterances", "into": [{"speaker",
        "utterances", "ids"}, ...]}``.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> rows = "".join(f"u{i},1.0,s{i % 4}\\n" for i in range(12))
    >>> _ = open(os.path.join(folder, "train.csv"), "w").write("ID,duration,spk_id\\n" + rows)
    >>> report = inject_class_noise(os.path.join(folder, "train.csv"),
    ...                             os.path.join(folder, "noisy.csv"), fraction=0.5, mode="merge")
    >>> report["num_corrupted"], report["num_relabelled"], report["num_speakers_after"]
    (2, 6, 2)
    >>> os.path.exists(os.path.join(folder, "noisy.noise.json"))
    True
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}") from None
    if not 0.0 <= fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if int(split_into) != split_into or split_into < 2:
        raise ValueError(f"split_into must be an integer >= 2, got {split_into}")
    split_into = int(split_into)
    if not 0.0 <= float(merge_share) <= 1.0:
        raise ValueError(f"merge_share must be in [0, 1], got {merge_share}")
    if os.path.abspath(in_csv) == os.path.abspath(out_csv):
        raise ValueError(f"out_csv must differ from in_csv ({in_csv})")

    fieldnames, rows = read_training_csv(in_csv, required=("ID", speaker_column))
    rows_of = defaultdict(list)
    for index, row in enumerate(rows):
        rows_of[row[speaker_column]].append(index)
    speakers = sorted(rows_of)
    num_corrupted = _round_half_up(fraction * len(speakers))

    if mode == "merge":
        num_merge = num_corrupted
    elif mode == "split":
        num_merge = 0
    else:
        num_merge = _round_half_up(float(merge_share) * num_corrupted)
    num_split = num_corrupted - num_merge
    if num_merge > 0 and num_corrupted >= len(speakers):
        raise ValueError(
            f"merging needs at least one clean speaker to merge into, but fraction {fraction} "
            f"corrupts all {len(speakers)} speakers of {in_csv}"
        )

    rng = np.random.default_rng(seed)
    # Split speakers are drawn among those with enough utterances, merged ones among the rest.
    splittable = [s for s in speakers if len(rows_of[s]) >= split_into]
    if num_split > len(splittable):
        raise ValueError(
            f"{in_csv}: {num_split} speakers to split into {split_into} but only "
            f"{len(splittable)} speakers have >= {split_into} utterances"
        )
    split_speakers = sorted(rng.choice(splittable, size=num_split, replace=False).tolist()) if num_split else []
    remaining = [s for s in speakers if s not in set(split_speakers)]
    merge_speakers = sorted(rng.choice(remaining, size=num_merge, replace=False).tolist()) if num_merge else []
    corrupted = set(split_speakers) | set(merge_speakers)
    clean = [s for s in speakers if s not in corrupted]

    new_label = [row[speaker_column] for row in rows]
    taken = set(speakers)
    entries = {}
    for speaker in merge_speakers:
        target = clean[int(rng.integers(len(clean)))]
        for index in rows_of[speaker]:
            new_label[index] = target
        entries[speaker] = {
            "speaker": speaker,
            "action": "merge",
            "into": target,
            "utterances": len(rows_of[speaker]),
        }
    for speaker in split_speakers:
        indices = np.asarray(rows_of[speaker])[rng.permutation(len(rows_of[speaker]))]
        parts = np.array_split(indices, split_into)
        names = _fake_names(speaker, split_into, taken)
        into = []
        for name, part in zip(names, parts):
            part = sorted(part.tolist())
            for index in part:
                new_label[index] = name
            into.append({"speaker": name, "utterances": len(part), "ids": [rows[i]["ID"] for i in part]})
        entries[speaker] = {
            "speaker": speaker,
            "action": "split",
            "utterances": len(rows_of[speaker]),
            "into": into,
        }

    out_rows = []
    for row, label in zip(rows, new_label):
        row = dict(row)
        row[speaker_column] = label
        out_rows.append(row)
    report = {
        "in_csv": os.path.abspath(in_csv),
        "out_csv": os.path.abspath(out_csv),
        "fraction": fraction,
        "mode": mode,
        "seed": seed,
        "split_into": split_into,
        "merge_share": float(merge_share),
        "num_speakers": len(speakers),
        "num_corrupted": num_corrupted,
        "num_merged": num_merge,
        "num_split": num_split,
        "num_utterances": len(rows),
        "num_relabelled": sum(len(rows_of[s]) for s in corrupted),
        "num_speakers_after": len(set(new_label)),
        "corrupted": [entries[s] for s in sorted(entries)],
    }
    write_training_csv(out_csv, fieldnames, out_rows)
    write_json_atomic(report_path(out_csv), report)
    return report


def main(argv=None):
    """Command line: ``python -m sb_sphereface2.labels.noise IN.csv OUT.csv --fraction F``."""
    parser = argparse.ArgumentParser(
        prog="python -m sb_sphereface2.labels.noise",
        description="Corrupt a fraction of the speakers of a training CSV class-wise "
        "(merge into another speaker or split into fake speakers). Writes OUT.csv and "
        "OUT.noise.json (what changed).",
    )
    parser.add_argument("in_csv", help="training CSV with an spk_id column")
    parser.add_argument("out_csv", help="noisy CSV to write")
    parser.add_argument("--fraction", type=float, required=True, help="fraction of speakers to corrupt, in [0, 1]")
    parser.add_argument("--mode", choices=MODES, default="merge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-into", type=int, default=2, help="fake speakers per split speaker")
    parser.add_argument("--merge-share", type=float, default=0.5, help="share merged in mixed mode")
    args = parser.parse_args(argv)
    try:
        report = inject_class_noise(
            args.in_csv,
            args.out_csv,
            args.fraction,
            mode=args.mode,
            seed=args.seed,
            split_into=args.split_into,
            merge_share=args.merge_share,
        )
    except (ValueError, FileNotFoundError) as error:
        return fail(error, 2)
    print(
        f"corrupted {report['num_corrupted']} of {report['num_speakers']} speakers "
        f"({report['num_merged']} merged, {report['num_split']} split), relabelled "
        f"{report['num_relabelled']} of {report['num_utterances']} utterances; "
        f"{report['num_speakers_after']} speakers after. Report: {report_path(args.out_csv)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
