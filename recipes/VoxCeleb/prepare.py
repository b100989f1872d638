#!/usr/bin/env python3
"""Prepare speakers' recordings for the SphereFace2 recipes (command-line wrapper).

Checks every audio file (decoded once, in parallel, cached), cuts long single
recordings into segments, and writes train.csv, dev.csv + dev_trials.txt, test.csv +
trials/<name>.txt, bad_audio.txt (if any), a summary and a manifest into SAVE_FOLDER
(see ``sb_sphereface2.data.prepare``); optionally MUSAN and RIR CSVs for
``speechbrain.augment``. Re-running with the same inputs does nothing.

Examples::

    # VoxCeleb2-dev (converted to WAV, see convert_m4a.sh) for training, VoxCeleb1 for
    # the cleaned O/E/H trial lists; their speakers leave the training set.
    python recipes/VoxCeleb/prepare.py results/data vox2_dev_wav vox1_wav \\
        --trials veri_test2.txt list_test_all2.txt list_test_hard2.txt \\
        --musan musan --rir RIRS_NOISES/simulated_rirs

    # One recording per speaker (cut into 3-6 s segments), 20 validation speakers and
    # 24 held-out test speakers with generated trials (trials/heldout.txt):
    python recipes/VoxCeleb/prepare.py results/data data/librispeech-mini \\
        --dev-speakers 20 --test-speakers 24
"""

import argparse
import logging
import sys

from sb_sphereface2.data.augmentation import prepare_musan, prepare_rir
from sb_sphereface2.data.prepare import prepare_voxceleb
from sb_sphereface2.data.split import SEGMENTATION_MODES


def main(argv=None):
    """Parse arguments, run the preparation, print a one-line error on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("save_folder", help="where the CSVs and trial lists go")
    parser.add_argument(
        "data_folders", nargs="+", help="root(s) of <speaker>/<recording> or <speaker>/<session>/<utt> .wav|.flac"
    )
    parser.add_argument("--trials", nargs="*", default=[], help="VoxCeleb-format trial lists")
    parser.add_argument("--dev-speakers", type=int, default=10, help="held-out validation speakers (0: none)")
    parser.add_argument("--dev-trials", type=int, default=1000, help="validation trials, half targets")
    parser.add_argument("--test-speakers", type=int, default=0, help="held-out test speakers for trials/heldout.txt")
    parser.add_argument("--test-trials", type=int, default=2000, help="held-out test trials, half targets")
    parser.add_argument(
        "--heldout-utterances-per-speaker", "--dev-utterances-per-speaker", type=int, default=20,
        help="at most this many utterances/segments per held-out speaker",
    )
    parser.add_argument(
        "--segmentation", choices=SEGMENTATION_MODES, default="auto",
        help="cut recordings into segments: auto (speakers with one recording), all, none",
    )
    parser.add_argument("--segment-seconds", type=float, default=3.0, help="shortest segment (segments are 1-2x)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="shorter files are bad audio")
    parser.add_argument("--drop-bad-audio", action="store_true", help="leave bad files out instead of stopping")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPUs, at most 16)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--musan", help="MUSAN root (noise/, speech/, music/) for augmentation CSVs")
    parser.add_argument("--rir", help="folder of room impulse responses for rir.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = prepare_voxceleb(
            args.data_folders,
            args.save_folder,
            trial_lists=args.trials,
            dev_speakers=args.dev_speakers,
            dev_trials=args.dev_trials,
            test_speakers=args.test_speakers,
            test_trials=args.test_trials,
            heldout_utterances_per_speaker=args.heldout_utterances_per_speaker,
            segmentation=args.segmentation,
            segment_seconds=args.segment_seconds,
            sample_rate=args.sample_rate,
            min_seconds=args.min_seconds,
            drop_bad_audio=args.drop_bad_audio,
            num_workers=args.workers,
            seed=args.seed,
        )
        result.pop("summary")
        if args.musan:
            result.update({f"musan_{k}": v for k, v in prepare_musan(args.musan, args.save_folder).items()})
        if args.rir:
            result["rir"] = prepare_rir(args.rir, args.save_folder)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
