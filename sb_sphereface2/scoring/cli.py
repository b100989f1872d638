"""Command-line scorer: embeddings + trial lists -> scores, results tables, DET and histograms.

Example::

    python -m sb_sphereface2.scoring --embeddings test_emb.npz \\
        --trials veri_test2.txt list_test_all2.txt list_test_hard2.txt \\
        --train-embeddings train_emb.npz --norm asnorm --top-n 300 \\
        --calibrate-on calibration_trials.txt --quality-measures duration imposter_mean \\
        --output-dir results/

Writes into the output folder: ``scores/<list>.txt`` (``label enrol test score [llr]``),
``results.md`` and ``results.json`` (EER, minDCF and, with calibration, actual DCF and Cllr
before and after it), ``det.png`` (every list on one DET plot), ``hist_<list>.png`` and,
with calibration, ``calibration.json``. One run holds the output folder at a time, and the
folder is replaced only when the run succeeds (:mod:`sb_sphereface2.scoring.output_folder`).
Bad input, a busy or unwritable folder: one ``error:`` line and exit status 1.
"""

import argparse
import os
import sys
import time

import numpy as np

from sb_sphereface2.data.trials import read_trials
from sb_sphereface2.scoring.calibration import LogisticCalibration
from sb_sphereface2.scoring.embeddings_io import read_embeddings
from sb_sphereface2.scoring.normalization import NORM_METHODS
from sb_sphereface2.errors import fail, os_error_line
from sb_sphereface2.scoring.output_folder import OutputFolderError, exclusive_output_folder
from sb_sphereface2.scoring.plots import plot_det, plot_score_histogram
from sb_sphereface2.scoring.quality import MAX_DURATION, QUALITY_MEASURES, quality_features
from sb_sphereface2.scoring.reports import describe_model, write_results, write_scores
from sb_sphereface2.scoring.trial_checks import check_trial_list
from sb_sphereface2.scoring.trial_scores import COHORT_KINDS, build_cohort, score_trial_list
from sb_sphereface2.scoring.metrics import evaluate

__all__ = ["build_parser", "parse_args", "score_into", "main", "run"]


def build_parser():
    """The argument parser of ``python -m sb_sphereface2.scoring``.

    Example
    -------
    >>> args = build_parser().parse_args(["--embeddings", "e.npz", "--trials", "a.txt", "--output-dir", "out"])
    >>> args.norm, args.top_n, args.p_target, args.quality_measures
    ('none', 300, [0.01, 0.05], [])
    """
    parser = argparse.ArgumentParser(
        prog="python -m sb_sphereface2.scoring",
        description="Score speaker-verification trial lists with cosine similarity "
        "(optionally mean-subtracted and z/t/s/AS-normalised) and report EER, minDCF, "
        "calibrated (optionally quality-aware) actual DCF and Cllr, a DET curve and score histograms.",
    )
    parser.add_argument("--embeddings", required=True,
                        help="test embeddings .npz (ids, embeddings[, durations, model]) from "
                        "sb_sphereface2.scoring.embeddings_io; must cover the calibration list too")
    parser.add_argument("--trials", required=True, nargs="+",
                        help="one or more trial lists, lines 'label enrol test'")
    parser.add_argument("--output-dir", required=True,
                        help="folder for scores, tables and plots (replaced as a whole on success)")
    parser.add_argument("--train-embeddings",
                        help="training embeddings .npz (with speakers for a speaker-mean cohort): "
                        "gives the mean subtracted before scoring and the normalisation cohort")
    parser.add_argument("--no-mean-subtraction", action="store_true",
                        help="do not subtract the training mean embedding before the cosine")
    parser.add_argument("--norm", default="none", choices=("none",) + NORM_METHODS,
                        help="score normalisation (needs --train-embeddings); asnorm keeps the "
                        "top-N cohort scores, snorm/znorm/tnorm the whole cohort (default: none)")
    parser.add_argument("--top-n", type=int, default=300,
                        help="cohort scores kept per utterance for asnorm and the imposter mean (default: 300)")
    parser.add_argument("--cohort", default="speaker-mean", choices=COHORT_KINDS,
                        help="cohort: per-speaker mean training embeddings or every training "
                        "utterance (default: speaker-mean)")
    parser.add_argument("--calibrate-on",
                        help="trial list to fit logistic-regression calibration on (a list of its own, "
                        "e.g. drawn from training speakers); LLRs, actual DCF and Cllr before and "
                        "after calibration are then reported for every list")
    parser.add_argument("--quality-measures", nargs="*", default=[], choices=QUALITY_MEASURES,
                        help="quality measures added to the calibration (QMF): duration (needs "
                        "durations in the embeddings file), imposter_mean (mean of the top-N cohort "
                        "scores; needs --train-embeddings), magnitude (embedding length)")
    parser.add_argument("--max-duration", type=float, default=MAX_DURATION,
                        help=f"durations are capped at this many seconds (default: {MAX_DURATION:g}, as wespeaker)")
    parser.add_argument("--calibration-prior", type=float, default=0.5,
                        help="effective target prior of the calibration fit (default: 0.5, i.e. Cllr)")
    parser.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05],
                        help="target priors for minDCF/actual DCF (default: 0.01 0.05)")
    parser.add_argument("--chunk-size", type=int, default=16384, help="trials scored at a time")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return parser


def parse_args(argv=None):
    """Parse and cross-check the arguments (argparse's usage error on a bad combination)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.norm != "none" and not args.train_embeddings:
        parser.error(f"--norm {args.norm} needs --train-embeddings for its cohort")
    if "imposter_mean" in args.quality_measures and not args.train_embeddings:
        parser.error("--quality-measures imposter_mean needs --train-embeddings for its cohort")
    if args.quality_measures and not args.calibrate_on:
        parser.error("--quality-measures needs --calibrate-on (the list the calibration is fitted on)")
    if args.top_n < 2:
        parser.error("--top-n must be at least 2")
    return args


def _say(args, message):
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _same_file(a, b):
    return os.path.abspath(a) == os.path.abspath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    )


def _read_checked(path, warn):
    trials = read_trials(path)
    check = check_trial_list(trials, path)
    for warning in check.warnings() if warn else ():
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return trials, check


def _training_statistics(args, test):
    """Mean embedding, cohort and settings from ``--train-embeddings``."""
    settings = {"normalisation": args.norm}
    if not args.train_embeddings:
        return None, None, settings
    train = read_embeddings(args.train_embeddings)
    if train.embeddings.shape[1] != test.embeddings.shape[1]:
        raise ValueError(f"{args.train_embeddings}: dimension {train.embeddings.shape[1]} differs "
                         f"from {args.embeddings}: {test.embeddings.shape[1]}")
    if train.model and test.model and train.model != test.model:
        raise ValueError(f"{args.train_embeddings} was made by {describe_model(train.model)} but "
                         f"{args.embeddings} by {describe_model(test.model)}: score with one model")
    settings["train_embeddings"] = args.train_embeddings
    mean = None if args.no_mean_subtraction else train.embeddings.astype(np.float64).mean(axis=0)
    cohort = None
    if args.norm != "none" or "imposter_mean" in args.quality_measures:
        if args.cohort == "speaker-mean" and train.speakers is None:
            raise ValueError(f"{args.train_embeddings} has no 'speakers' array; a speaker-mean "
                             "cohort needs it (or use --cohort utterance)")
        cohort = build_cohort(train.embeddings, train.speakers, mean, kind=args.cohort)
        settings["cohort"] = f"{args.cohort}, {len(cohort):,} embeddings"
        settings["top_n"] = args.top_n
    return mean, cohort, settings


def score_into(args, folder, warn=True):
    """Score every list of ``args`` (from :func:`parse_args`) into ``folder`` (no lock: see
    :func:`main`); returns ``{list_name: metrics}``. ``warn``: print the trial-list
    warnings (duplicates, self-trials)."""
    started = time.time()
    # Everything that can be checked before scoring is checked first.
    lists = [_read_checked(path, warn) for path in args.trials]
    names = [trials.name for trials, _ in lists]
    if len(set(names)) != len(names):
        raise ValueError(f"trial lists must have distinct file names, got {names}")
    calibration_list, calibration_listed = None, False
    if args.calibrate_on:
        matches = [i for i, path in enumerate(args.trials) if _same_file(path, args.calibrate_on)]
        calibration_listed = bool(matches)
        calibration_list = lists[matches[0]] if matches else _read_checked(args.calibrate_on, warn)
    test = read_embeddings(args.embeddings)
    if "duration" in args.quality_measures and test.durations is None:
        raise ValueError(f"{args.embeddings} has no durations; the duration quality measure needs them")
    _say(args, f"{len(test.ids):,} test embeddings of dimension {test.embeddings.shape[1]}")
    index = {utt: row for row, utt in enumerate(test.ids)}
    mean, cohort, settings = _training_statistics(args, test)
    settings = {"embeddings": args.embeddings, **settings, "mean_subtraction": mean is not None}
    imposter_top_n = args.top_n if "imposter_mean" in args.quality_measures else None

    def score(trials):
        return score_trial_list(index, test.embeddings, trials, mean=mean, cohort=cohort,
                                top_n=args.top_n, norm=None if args.norm == "none" else args.norm,
                                chunk_size=args.chunk_size, progress=not args.quiet,
                                imposter_top_n=imposter_top_n)

    def quality(scored):
        return quality_features(args.quality_measures, scored, test.durations, args.max_duration)

    scored = {trials.name: score(trials) for trials, _ in lists}
    calibration = None
    if calibration_list is not None:
        trials, check = calibration_list
        fit_on = scored[trials.name] if calibration_listed else score(trials)
        features, feature_names = quality(fit_on)
        calibration = LogisticCalibration(prior=args.calibration_prior, feature_names=feature_names)
        calibration.fit(fit_on.scores, trials.labels, features)
        kind = "quality-aware (QMF) " if feature_names else ""
        settings["calibration"] = (f"{kind}logistic regression on {check.path} (sha256 {check.sha256}, "
                                   f"prior {args.calibration_prior:g}): {calibration.describe()}")

    results = {}
    for trials, check in lists:
        scores = scored[trials.name].scores
        llrs = None if calibration is None else calibration(scores, quality(scored[trials.name])[0])
        results[trials.name] = {**evaluate(scores, trials.labels, args.p_target, llrs), **check.provenance()}
        if calibration_listed and calibration_list[0] is trials:
            results[trials.name]["calibration_list"] = True
        write_scores(os.path.join(folder, "scores", f"{trials.name}.txt"), trials, scores, llrs)
    if calibration is not None:
        calibration.save(os.path.join(folder, "calibration.json"))
    table = write_results(folder, results, settings, model=test.model)

    if not args.no_plots:
        label = args.norm if args.norm != "none" else "cosine"
        plot_det({t.name: (scored[t.name].scores, t.labels) for t, _ in lists},
                 os.path.join(folder, "det.png"), title=f"DET ({label})")
        first_p = f"{args.p_target[0]:g}"
        for trials, _ in lists:
            metrics = results[trials.name]
            plot_score_histogram(
                scored[trials.name].scores, trials.labels, os.path.join(folder, f"hist_{trials.name}.png"),
                thresholds={"EER threshold": metrics["eer_threshold"],
                            f"minDCF (p={first_p}) threshold": metrics[f"min_dcf_{first_p}_threshold"]},
                title=f"{trials.name}: scores ({label})",
            )
    _say(args, table)
    _say(args, f"scored in {time.time() - started:.1f} s")
    return results


def main(argv=None):
    """Run the scorer with the output folder locked and replaced on success; returns the
    results dict ``{list_name: metrics}`` (errors raise)."""
    args = parse_args(argv)
    with exclusive_output_folder(args.output_dir) as folder:
        results = score_into(args, folder)
    _say(args, f"written to {args.output_dir}")
    return results


def run(argv=None):
    """:func:`main` as a program: exit status 0, or 1 with one ``error:`` line (no traceback)."""
    try:
        main(argv)
    except (ValueError, OutputFolderError) as error:
        return fail(error, 1)
    except OSError as error:
        return fail(os_error_line(error), 1)
    return 0


if __name__ == "__main__":
    sys.exit(run())
