#!/usr/bin/env python3
"""Scoring stage: embed full test utterances with a model folder, score every trial list with
cosine (training mean subtracted) and with AS-norm, report EER/minDCF, DET and histograms,
and, given a calibration list, calibrated LLRs (optionally quality-aware: QMF).

    python recipes/VoxCeleb/score.py hparams/verification.yaml \\
        --model_folder=results/<run>/model --data_prep_folder=results/<run>/data \\
        [--output_folder=...] [--calibration_trials=calibration.txt [--store_calibration=asnorm]]

Before anything is embedded, every trial list is checked (targets and non-targets present,
no pair labelled both ways, every utterance in test.csv, none shorter than
``min_utterance_seconds``; duplicates and self-trials are counted and warned about).
One run holds the output folder at a time (a second one refuses at once, naming the PID of
the first); it writes into a temporary folder beside it, swapped in when everything is
written, so a failed or killed run leaves the previous results or nothing.

Embeddings are computed by the project's extractor (``sb_sphereface2.scoring.extract``,
the loop of ``python -m sb_sphereface2.embed``): batched by duration for a model that
honours lengths (the same embeddings as one at a time), one at a time for a model whose
embeddings depend on padding, so they equal what the exported model gives. Outputs in ``output_folder``:
``embeddings_test.npz`` (with durations and the model), ``embeddings_train.npz``,
``cosine/`` and ``asnorm/`` (scores, results, plots of ``python -m sb_sphereface2.scoring``)
and ``results.md`` / ``results.json`` with both; every results file names the model folder,
the sha256 of its ``embedding_model.ckpt`` and each trial list's sha256. With
``--store_calibration=cosine|asnorm`` the calibration of that scoring is written into the
model folder (``sb_sphereface2.scoring.stored_calibration``) for ``python -m
sb_sphereface2.verify``; without it the model folder is not touched.
"""

import csv
import glob
import os
import sys

import numpy as np
import speechbrain as sb

from sb_sphereface2.data.trials import read_trials
from sb_sphereface2.data.utterance_sources import csv_utterances
from sb_sphereface2.errors import fail, os_error_line
from sb_sphereface2.hparams import parse_overrides, peek_hparams
from sb_sphereface2.scoring import cli as scorer
from sb_sphereface2.scoring.extract import embedder_of_folder, extract, model_record
from sb_sphereface2.scoring.embeddings_io import save_embeddings
from sb_sphereface2.scoring.output_folder import (
    OutputFolderError,
    exclusive_output_folder,
)
from sb_sphereface2.scoring.reports import write_results
from sb_sphereface2.scoring.stored_calibration import SCORINGS, store_calibration
from sb_sphereface2.scoring.trial_checks import check_trial_list


def read_rows(csv_path):
    """``{ID: row}`` of a data-preparation CSV."""
    with open(csv_path, encoding="utf-8", newline="") as handle:
        return {row["ID"]: row for row in csv.DictReader(handle)}


def cohort_subset(train_rows, per_speaker, seed=0):
    """At most ``per_speaker`` training utterances of each speaker."""
    if not train_rows:
        raise ValueError("train.csv has no training utterances for the cohort")
    rng = np.random.default_rng(seed)
    by_speaker = {}
    for row in train_rows.values():
        by_speaker.setdefault(row["spk_id"], []).append(row)
    chosen = []
    for speaker in sorted(by_speaker):
        group = by_speaker[speaker]
        picks = rng.choice(len(group), size=min(per_speaker, len(group)), replace=False)
        chosen.extend(group[i] for i in sorted(picks))
    return chosen


def _rows_of(trials, rows, where):
    """The CSV rows of every utterance a list names; an error naming the first one missing."""
    for side in ("enrol", "test"):
        for index, utt in enumerate(getattr(trials, side)):
            if utt not in rows:
                raise ValueError(f"trial list {trials.name!r}, line {trials.line_of(index)}: "
                                 f"utterance {utt!r} is not in {where}")
    return {utt: rows[utt] for utt in trials.utterances()}


def check_inputs(hp):
    """Read and check everything the run needs before any embedding: trial lists, the
    calibration list and the rows of every utterance they name."""
    prep = hp["data_prep_folder"]
    test_csv, train_csv = os.path.join(prep, "test.csv"), os.path.join(prep, "train.csv")
    trial_paths = sorted(glob.glob(os.path.join(prep, "trials", "*.txt")))
    if not os.path.isfile(test_csv) or not trial_paths:
        raise FileNotFoundError(f"{prep} has no test.csv or trials/*.txt: give train.py --trial_lists=[...] first")
    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"{train_csv} not found: the mean embedding and the cohort come from it")
    test_rows, train_rows = read_rows(test_csv), read_rows(train_csv)
    needed = {}
    for path in trial_paths:
        trials = read_trials(path)
        for warning in check_trial_list(trials, path).warnings():
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        needed.update(_rows_of(trials, test_rows, test_csv))
    calibration_path = hp.get("calibration_trials")
    if calibration_path:
        trials = read_trials(calibration_path)
        for warning in check_trial_list(trials, calibration_path).warnings():
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        needed.update(_rows_of(trials, {**train_rows, **test_rows}, f"{test_csv} or {train_csv}"))
    minimum = float(hp["min_utterance_seconds"])
    short = sorted((float(row["duration"]), row["wav"], utt) for utt, row in needed.items()
                   if float(row["duration"]) < minimum)
    if short:
        seconds, wav, utt = short[0]
        raise ValueError(f"{wav}: utterance {utt!r} is {seconds:.2f} s long, shorter than "
                         f"min_utterance_seconds = {minimum:g} s ({len(short)} such utterances in the "
                         "trial lists); remove them from the lists or lower --min_utterance_seconds")
    return trial_paths, calibration_path, [needed[utt] for utt in sorted(needed)], train_rows


def embed_rows(rows, embed, desc, sample_rate, max_seconds=None, min_seconds=0.05):
    """Embed the utterances of ``rows`` with the extractor, one at a time for a model whose
    embeddings depend on padding (``exact``); returns the IDs, the embeddings and the
    embedded durations. A file that cannot be embedded is an error naming it."""
    result = extract(csv_utterances(rows, sample_rate, max_seconds), embed, sample_rate, exact=True, desc=desc,
                     min_seconds=min_seconds)
    if result.skipped:
        first = result.skipped[0]
        raise ValueError(f"{first['path']}: utterance {first['id']!r} cannot be embedded: {first['reason']} "
                         f"({len(result.skipped)} such utterances)")
    return result.ids, result.embeddings, result.durations


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hp = peek_hparams(hparams_file, parse_overrides(overrides))  # unknown keys are named
    for key in ("model_folder", "data_prep_folder"):
        if not hp.get(key):
            raise ValueError(f"--{key}=... is required (see {hparams_file})")
    device = run_opts.get("device", "cpu")
    if hp.get("store_calibration") is not None:
        if hp["store_calibration"] not in SCORINGS:
            raise ValueError(f"--store_calibration must be one of {', '.join(SCORINGS)}, got {hp['store_calibration']!r}")
        if not hp.get("calibration_trials"):
            raise ValueError("--store_calibration needs --calibration_trials=... (the list to fit it on)")
    trial_paths, calibration_path, utterance_rows, train_rows = check_inputs(hp)
    record = model_record(hp["model_folder"])
    out = hp["output_folder"]
    with exclusive_output_folder(out) as tmp:
        embed, _ = embedder_of_folder(hp["model_folder"], device=device)
        ids, emb, durations = embed_rows(utterance_rows, embed, "test utterances", hp["sample_rate"],
                                         min_seconds=float(hp["min_utterance_seconds"]))
        test_npz = os.path.join(tmp, "embeddings_test.npz")
        save_embeddings(test_npz, ids, emb, durations=durations, model=record)
        cohort_rows = cohort_subset(train_rows, hp["cohort_utterances_per_speaker"])
        train_ids, train_emb, train_durations = embed_rows(
            cohort_rows, embed, "cohort utterances", hp["sample_rate"], max_seconds=hp["cohort_max_seconds"])
        speakers = [row["spk_id"] for row in cohort_rows]
        train_npz = os.path.join(tmp, "embeddings_train.npz")
        save_embeddings(train_npz, train_ids, train_emb, speakers, train_durations, model=record)

        combined = {}
        for norm in ("none", "asnorm"):
            name = "cosine" if norm == "none" else norm
            argv = ["--embeddings", test_npz, "--trials", *trial_paths, "--output-dir", os.path.join(out, name),
                    "--train-embeddings", train_npz, "--norm", norm, "--top-n", str(hp["top_n"])]
            if calibration_path:
                argv += ["--calibrate-on", calibration_path]
                argv += ["--quality-measures", *hp["calibration_quality"]] if hp["calibration_quality"] else []
            for list_name, metrics in scorer.score_into(scorer.parse_args(argv), os.path.join(tmp, name), warn=False).items():
                combined[f"{list_name} ({name})"] = metrics
        settings = {"top_n": hp["top_n"], "cohort": f"{len(set(speakers))} speaker means of "
                    f"{len(train_ids)} training utterances (first {hp['cohort_max_seconds']:g} s)"}
        if calibration_path:
            settings["calibration"] = (f"{calibration_path}, quality measures: "
                                       f"{', '.join(hp['calibration_quality']) or 'none'} (see cosine/, asnorm/)")
        table = write_results(tmp, combined, settings=settings, model=record)
    print(table)
    print(f"written to {out}")
    if hp.get("store_calibration") is not None:
        name = hp["store_calibration"]
        stored = store_calibration(hp["model_folder"], os.path.join(out, name, "calibration.json"),
                                   os.path.join(out, "embeddings_train.npz"), name, calibration_path,
                                   hp["calibration_quality"] or (), hp["top_n"])
        print(f"calibration ({name}) stored in {stored}")
    return combined


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OutputFolderError) as error:  # bad input or a busy folder: one line
        sys.exit(fail(error, 1))
    except OSError as error:  # the operating system: the path and the cause
        sys.exit(fail(os_error_line(error), 1))
