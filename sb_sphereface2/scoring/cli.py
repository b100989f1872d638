"""Command-line scorer: embeddings + trial lists -> scores, results table, DET and histograms.

Example::

    python -m sb_sphereface2.scoring --embeddings test_emb.npz \\
        --trials veri_test2.txt list_test_all2.txt list_test_hard2.txt \\
        --train-embeddings train_emb.npz --norm asnorm --top-n 300 \\
        --calibrate-on veri_test2.txt --output-dir results/

Writes into the output folder: ``scores/<list>.txt`` (``label enrol test score [llr]``),
``results.md`` and ``results.json`` (EER, minDCF, with calibration actual DCF and Cllr),
``det.png`` (every list on one DET plot), ``hist_<list>.png`` and, with calibration,
``calibration.json``.
"""

import argparse
import os
import sys
import time

import numpy as np

from sb_sphereface2.scoring.calibration import LogisticCalibration
from sb_sphereface2.scoring.embeddings_io import load_embeddings
from sb_sphereface2.scoring.plots import plot_det, plot_score_histogram
from sb_sphereface2.scoring.normalization import NORM_METHODS
from sb_sphereface2.scoring.trial_scores import (
    COHORT_KINDS,
    build_cohort,
    evaluate,
    score_trials,
    write_results,
    write_scores,
)
from sb_sphereface2.data.trials import read_trials

__all__ = ["build_parser", "main"]


def build_parser():
    """The argument parser of ``python -m sb_sphereface2.scoring``.

    Example
    -------
    >>> args = build_parser().parse_args(["--embeddings", "e.npz", "--trials", "a.txt", "--output-dir", "out"])
    >>> args.norm, args.top_n, args.p_target
    ('none', 300, [0.01, 0.05])
    """
    parser = argparse.ArgumentParser(
        prog="python -m sb_sphereface2.scoring",
        description="Score speaker-verification trial lists with cosine similarity "
        "(optionally mean-subtracted and z/t/s/AS-normalised) and report EER, minDCF, "
        "calibrated actual DCF and Cllr, a DET curve and score histograms.",
    )
    parser.add_argument("--embeddings", required=True,
                        help="test embeddings .npz (ids, embeddings) from sb_sphereface2.scoring.embeddings_io")
    parser.add_argument("--trials", required=True, nargs="+",
                        help="one or more trial lists, lines 'label enrol test'")
    parser.add_argument("--output-dir", required=True, help="folder for scores, tables and plots")
    parser.add_argument("--train-embeddings",
                        help="training embeddings .npz (with speakers for a speaker-mean cohort): "
                        "gives the mean subtracted before scoring and the normalisation cohort")
    parser.add_argument("--no-mean-subtraction", action="store_true",
                        help="do not subtract the training mean embedding before the cosine")
    parser.add_argument("--norm", default="none", choices=("none",) + NORM_METHODS,
                        help="score normalisation (needs --train-embeddings); asnorm keeps the "
                        "top-N cohort scores, snorm/znorm/tnorm the whole cohort (default: none)")
    parser.add_argument("--top-n", type=int, default=300,
                        help="cohort scores kept per utterance for asnorm (default: 300)")
    parser.add_argument("--cohort", default="speaker-mean", choices=COHORT_KINDS,
                        help="cohort: per-speaker mean training embeddings or every training "
                        "utterance (default: speaker-mean)")
    parser.add_argument("--calibrate-on",
                        help="trial list to fit logistic-regression calibration on; LLRs, actual "
                        "DCF and Cllr are then reported for every list")
    parser.add_argument("--calibration-prior", type=float, default=0.5,
                        help="effective target prior of the calibration fit (default: 0.5)")
    parser.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05],
                        help="target priors for minDCF/actual DCF (default: 0.01 0.05)")
    parser.add_argument("--chunk-size", type=int, default=16384, help="trials scored at a time")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return parser


def _say(args, message):
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _same_file(a, b):
    return os.path.abspath(a) == os.path.abspath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    )


def main(argv=None):
    """Run the scorer; returns the results dict ``{list_name: metrics}``."""
    args = build_parser().parse_args(argv)
    parser_error = build_parser().error
    norm = None if args.norm == "none" else args.norm
    if norm is not None and not args.train_embeddings:
        parser_error(f"--norm {args.norm} needs --train-embeddings for its cohort")
    if args.top_n < 2:
        parser_error("--top-n must be at least 2")

    started = time.time()
    trial_lists = [read_trials(path) for path in args.trials]
    names = [t.name for t in trial_lists]
    if len(set(names)) != len(names):
        parser_error(f"trial lists must have distinct file names, got {names}")
    ids, embeddings, _ = load_embeddings(args.embeddings)
    index = {utt: row for row, utt in enumerate(ids)}
    _say(args, f"{len(ids):,} test embeddings of dimension {embeddings.shape[1]}")

    mean, cohort = None, None
    settings = {"embeddings": args.embeddings, "normalisation": args.norm}
    if args.train_embeddings:
        _, train, speakers = load_embeddings(args.train_embeddings)
        if train.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"{args.train_embeddings}: dimension {train.shape[1]} differs from "
                f"{args.embeddings}: {embeddings.shape[1]}"
            )
        settings["train_embeddings"] = args.train_embeddings
        if not args.no_mean_subtraction:
            mean = train.astype(np.float64).mean(axis=0)
        if norm is not None:
            if args.cohort == "speaker-mean" and speakers is None:
                raise ValueError(
                    f"{args.train_embeddings} has no 'speakers' array; a speaker-mean cohort "
                    "needs it (or use --cohort utterance)"
                )
            cohort = build_cohort(train, speakers, mean, kind=args.cohort)
            settings["cohort"] = f"{args.cohort}, {len(cohort):,} embeddings"
            if norm == "asnorm":
                settings["top_n"] = args.top_n
    settings["mean_subtraction"] = mean is not None

    def score(trials):
        return score_trials(
            index, embeddings, trials, mean=mean, cohort=cohort, top_n=args.top_n, norm=norm,
            chunk_size=args.chunk_size, progress=not args.quiet,
        )

    scores = {t.name: score(t) for t in trial_lists}

    calibration = None
    if args.calibrate_on:
        matches = [t for t, path in zip(trial_lists, args.trials) if _same_file(path, args.calibrate_on)]
        calibration_trials = matches[0] if matches else read_trials(args.calibrate_on)
        calibration_scores = scores[calibration_trials.name] if matches else score(calibration_trials)
        calibration = LogisticCalibration(prior=args.calibration_prior).fit(
            calibration_scores, calibration_trials.labels
        )
        settings["calibration"] = (
            f"logistic regression on {args.calibrate_on} (prior {args.calibration_prior:g}): "
            f"llr = {calibration.scale:.4f}·score + {calibration.offset:.4f}"
        )

    os.makedirs(os.path.join(args.output_dir, "scores"), exist_ok=True)
    results = {}
    for trials in trial_lists:
        llrs = calibration(scores[trials.name]) if calibration is not None else None
        try:
            results[trials.name] = evaluate(scores[trials.name], trials.labels, args.p_target, llrs)
        except ValueError as error:
            raise ValueError(f"trial list {trials.name!r} ({len(trials)} trials): {error}") from error
        write_scores(os.path.join(args.output_dir, "scores", f"{trials.name}.txt"),
                     trials, scores[trials.name], llrs)
    if calibration is not None:
        calibration.save(os.path.join(args.output_dir, "calibration.json"))
    table = write_results(args.output_dir, results, settings)

    if not args.no_plots:
        plot_det({t.name: (scores[t.name], t.labels) for t in trial_lists},
                 os.path.join(args.output_dir, "det.png"),
                 title=f"DET ({args.norm if norm else 'cosine'})")
        for trials in trial_lists:
            metrics = results[trials.name]
            first_p = f"{args.p_target[0]:g}"
            plot_score_histogram(
                scores[trials.name], trials.labels,
                os.path.join(args.output_dir, f"hist_{trials.name}.png"),
                thresholds={"EER threshold": metrics["eer_threshold"],
                            f"minDCF (p={first_p}) threshold": metrics[f"min_dcf_{first_p}_threshold"]},
                title=f"{trials.name}: scores ({args.norm if norm else 'cosine'})",
            )
    _say(args, table)
    _say(args, f"written to {args.output_dir} in {time.time() - started:.1f} s")
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
