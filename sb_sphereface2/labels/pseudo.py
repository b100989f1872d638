"""Pseudo speaker labels for unlabelled audio: cluster its embeddings
(``sb_sphereface2.labels.clustering``), write a training CSV whose ``spk_id`` is the
cluster, and a report with cluster sizes and, where true speakers are known,
``sb_sphereface2.labels.scores.clustering_scores`` (NMI, purity, inverse purity, ARI).

Command line:
``python -m sb_sphereface2.labels.pseudo --embeddings E.npz --csv unlabelled.csv --out pseudo.csv``
with an .npz holding ``ids`` [N], ``embeddings`` [N, D] and optionally ``speakers`` [N].
"""

import argparse
import os
import sys

import numpy as np

from sb_sphereface2.data.training_csv import read_training_csv, write_training_csv
from sb_sphereface2.errors import fail
from sb_sphereface2.files import sidecar_path, write_json_atomic
from sb_sphereface2.labels.clustering import METHODS, cluster_embeddings, estimate_num_speakers
from sb_sphereface2.labels.scores import clustering_scores
from sb_sphereface2.scoring.embeddings_io import load_embeddings

__all__ = [
    "cluster_embeddings",
    "clustering_scores",
    "estimate_num_speakers",
    "main",
    "pseudo_label",
    "report_path",
    "split_labelled",
    "combine_training_lists",
    "write_pseudo_label_csv",
]


def write_pseudo_label_csv(in_csv, ids, labels, out_csv, prefix="pseudo", speaker_column="spk_id"):
    """Write ``in_csv`` with ``spk_id`` set to each row's pseudo-label (added as the last
    column if absent); every other column is kept.

    Arguments
    ---------
    in_csv : str
        CSV of the unlabelled audio (needs an ``ID`` column).
    ids : sequence of str
        Utterance IDs that ``labels`` belong to; every row's ID must be among them.
    labels : sequence of int
        Cluster of each ID.
    out_csv : str
        Output training CSV (written atomically).
    prefix : str
        Pseudo speaker names are ``prefix`` + zero-padded cluster number.
    speaker_column : str
        Column that receives the pseudo-label.

    Returns
    -------
    list of str
        Pseudo speaker of each row of ``in_csv``, in row order.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "u.csv"), "w").write("ID,wav\\nb,b.wav\\na,a.wav\\n")
    >>> write_pseudo_label_csv(os.path.join(folder, "u.csv"), ["a", "b"], [1, 0],
    ...                        os.path.join(folder, "p.csv"))
    ['pseudo0', 'pseudo1']
    >>> open(os.path.join(folder, "p.csv")).read()
    'ID,wav,spk_id\\nb,b.wav,pseudo0\\na,a.wav,pseudo1\\n'
    """
    ids = [str(i) for i in ids]
    labels = np.asarray(labels).reshape(-1)
    if len(ids) != len(labels):
        raise ValueError(f"got {len(ids)} ids but {len(labels)} labels")
    if len(set(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    fieldnames, rows = read_training_csv(in_csv, required=("ID",))
    width = len(str(int(labels.max()))) if len(labels) else 1
    label_of = {i: f"{prefix}{int(label):0{width}d}" for i, label in zip(ids, labels)}
    missing = [row["ID"] for row in rows if row["ID"] not in label_of]
    if missing:
        raise ValueError(
            f"{in_csv}: {len(missing)} row(s) have no embedding, first ID {missing[0]!r}"
        )
    if speaker_column not in fieldnames:
        fieldnames = fieldnames + [speaker_column]
    out_rows = [dict(row, **{speaker_column: label_of[row["ID"]]}) for row in rows]
    write_training_csv(out_csv, fieldnames, out_rows)
    return [row[speaker_column] for row in out_rows]


def split_labelled(train_csv, labelled_fraction, labelled_csv, unlabelled_csv, seed=0):
    """Split a training list by speaker into a labelled part and an unlabelled part (the
    pseudo-label setting: labels are known for some speakers only).

    Arguments
    ---------
    train_csv : str
        A training CSV with ``spk_id``.
    labelled_fraction : float
        Share of the speakers whose labels are kept, in (0, 1).
    labelled_csv, unlabelled_csv : str
        Output CSVs (written atomically); the unlabelled one keeps the true ``spk_id``
        for scoring the clustering only.
    seed : int
        Seed of the speaker draw.

    Returns
    -------
    tuple of list
        The labelled and the unlabelled speakers, sorted.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> rows = "".join(f"u{i},{s}\\n" for i, s in enumerate("aabbccdd"))
    >>> _ = open(os.path.join(folder, "t.csv"), "w").write("ID,spk_id\\n" + rows)
    >>> split_labelled(os.path.join(folder, "t.csv"), 0.5, os.path.join(folder, "l.csv"),
    ...                os.path.join(folder, "u.csv"), seed=1)
    (['b', 'c'], ['a', 'd'])
    """
    if not 0 < labelled_fraction < 1:
        raise ValueError(f"labelled_fraction must be in (0, 1), got {labelled_fraction}")
    fieldnames, rows = read_training_csv(train_csv, required=("ID", "spk_id"))
    speakers = sorted({row["spk_id"] for row in rows})
    count = int(round(labelled_fraction * len(speakers)))
    if not 1 <= count < len(speakers):
        raise ValueError(f"{train_csv}: {len(speakers)} speakers cannot be split {labelled_fraction:g} / "
                         f"{1 - labelled_fraction:g}")
    rng = np.random.default_rng(seed)
    labelled = sorted(rng.choice(speakers, size=count, replace=False).tolist())
    kept = set(labelled)
    write_training_csv(labelled_csv, fieldnames, [row for row in rows if row["spk_id"] in kept])
    write_training_csv(unlabelled_csv, fieldnames, [row for row in rows if row["spk_id"] not in kept])
    return labelled, sorted(set(speakers) - kept)


def combine_training_lists(csv_paths, out_csv):
    """One training list of the rows of several (e.g. the labelled part and the
    pseudo-labelled part); their columns must agree and IDs must not repeat.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> for name, text in (("a.csv", "ID,spk_id\\nu1,a\\n"), ("b.csv", "ID,spk_id\\nu2,pseudo1\\n")):
    ...     _ = open(os.path.join(folder, name), "w").write(text)
    >>> combine_training_lists([os.path.join(folder, "a.csv"), os.path.join(folder, "b.csv")],
    ...                        os.path.join(folder, "all.csv"))
    2
    """
    fieldnames, combined = None, []
    for path in csv_paths:
        names, rows = read_training_csv(path, required=("ID", "spk_id"))
        if fieldnames is not None and names != fieldnames:
            raise ValueError(f"{path}: columns {names} differ from {fieldnames}")
        fieldnames = names
        combined.extend(rows)
    ids = [row["ID"] for row in combined]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the lists {', '.join(map(str, csv_paths))} share utterance IDs")
    write_training_csv(out_csv, fieldnames, combined)
    return len(combined)


def report_path(out_csv):
    """Path of the JSON report written beside ``out_csv``: ``<name>.clusters.json``."""
    return sidecar_path(out_csv, "clusters")


def pseudo_label(
    embeddings_path,
    in_csv,
    out_csv,
    num_speakers=None,
    method="ahc",
    threshold=None,
    max_speakers=None,
    center=True,
    prune=None,
    seed=0,
):
    """Cluster the embeddings of the rows of ``in_csv`` and write the pseudo-labelled CSV
    and a JSON report (``report_path(out_csv)``): settings, cluster sizes and, where true
    speakers are known (``speakers`` in the .npz, else ``spk_id`` of ``in_csv``),
    ``clustering_scores``.

    Arguments
    ---------
    embeddings_path : str
        .npz with ``ids``, ``embeddings`` and optionally ``speakers``.
    in_csv : str
        CSV of the unlabelled audio; only its rows are clustered.
    out_csv : str
        Output training CSV.
    num_speakers, method, threshold, max_speakers, center, prune, seed
        As in ``cluster_embeddings``.

    Returns
    -------
    dict
        The report.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> x = np.repeat(rng.standard_normal((2, 8)), 4, axis=0) + 0.01 * rng.standard_normal((8, 8))
    >>> ids = np.array([f"u{i}" for i in range(8)])
    >>> np.savez(os.path.join(folder, "e.npz"), ids=ids, embeddings=x, speakers=np.repeat(["a", "b"], 4))
    >>> _ = open(os.path.join(folder, "u.csv"), "w").write("ID\\n" + "\\n".join(ids) + "\\n")
    >>> report = pseudo_label(os.path.join(folder, "e.npz"), os.path.join(folder, "u.csv"),
    ...                       os.path.join(folder, "p.csv"), num_speakers=2)
    >>> report["scores"]["nmi"], report["cluster_sizes"]
    (1.0, [4, 4])
    """
    ids, embeddings, speakers = load_embeddings(embeddings_path)
    fieldnames, rows = read_training_csv(in_csv, required=("ID",))
    position = {utt: i for i, utt in enumerate(ids)}
    if len(position) != len(ids):
        raise ValueError(f"{embeddings_path}: duplicate ids")
    missing = [row["ID"] for row in rows if row["ID"] not in position]
    if missing:
        raise ValueError(
            f"{in_csv}: {len(missing)} row(s) have no embedding in {embeddings_path}, "
            f"first ID {missing[0]!r}"
        )
    row_ids = [row["ID"] for row in rows]
    if len(set(row_ids)) != len(row_ids):
        raise ValueError(f"{in_csv}: duplicate IDs")
    selected = np.array([position[i] for i in row_ids])
    labels = cluster_embeddings(
        embeddings[selected],
        num_speakers=num_speakers,
        method=method,
        threshold=threshold,
        max_speakers=max_speakers,
        center=center,
        prune=prune,
        seed=seed,
    )
    if speakers is not None:
        true, source = [speakers[i] for i in selected], "embeddings file"
    elif "spk_id" in fieldnames and all(row["spk_id"] for row in rows):
        true, source = [row["spk_id"] for row in rows], "spk_id column of the CSV"
    else:
        true, source = None, None
    report = {
        "embeddings": os.path.abspath(embeddings_path),
        "in_csv": os.path.abspath(in_csv),
        "out_csv": os.path.abspath(out_csv),
        "method": method,
        "num_speakers_given": num_speakers,
        "threshold": threshold,
        "center": center,
        "prune": prune,
        "seed": seed,
        "num_utterances": len(rows),
        "num_clusters": int(labels.max()) + 1,
        "cluster_sizes": np.bincount(labels).tolist(),
        "true_labels_from": source,
        "scores": clustering_scores(true, labels) if true is not None else None,
    }
    write_pseudo_label_csv(in_csv, row_ids, labels, out_csv)
    write_json_atomic(report_path(out_csv), report)
    return report


def main(argv=None):
    """Command line: ``python -m sb_sphereface2.labels.pseudo --embeddings E.npz --csv IN.csv --out OUT.csv``."""
    parser = argparse.ArgumentParser(
        prog="python -m sb_sphereface2.labels.pseudo",
        description="Cluster utterance embeddings into pseudo speakers and write a training "
        "CSV whose spk_id is the cluster, plus OUT.clusters.json (cluster sizes; NMI and "
        "purity when true speakers are known).",
    )
    parser.add_argument("--embeddings", required=True, help=".npz with ids, embeddings[, speakers]")
    parser.add_argument("--csv", required=True, help="CSV of the unlabelled utterances (ID column)")
    parser.add_argument("--out", required=True, help="pseudo-labelled training CSV to write")
    parser.add_argument("--num-speakers", type=int, default=None, help="known speaker count")
    parser.add_argument("--method", choices=METHODS, default="ahc")
    parser.add_argument("--threshold", type=float, default=None,
                        help="ahc: cosine similarity below which clusters stay apart")
    parser.add_argument("--max-speakers", type=int, default=None, help="upper bound for the estimate")
    parser.add_argument("--prune", type=float, default=None, help="keep this fraction of affinities per row")
    parser.add_argument("--no-center", action="store_true", help="do not subtract the mean embedding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        report = pseudo_label(
            args.embeddings,
            args.csv,
            args.out,
            num_speakers=args.num_speakers,
            method=args.method,
            threshold=args.threshold,
            max_speakers=args.max_speakers,
            center=not args.no_center,
            prune=args.prune,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as error:
        return fail(error, 2)
    line = f"{report['num_utterances']} utterances -> {report['num_clusters']} pseudo speakers"
    if report["scores"] is not None:
        s = report["scores"]
        line += (
            f"; against {s['num_speakers']} true speakers: NMI {s['nmi']:.4f}, purity "
            f"{s['purity']:.4f}, inverse purity {s['inverse_purity']:.4f}, ARI {s['ari']:.4f}"
        )
    print(line + f". Report: {report_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
