#!/usr/bin/env python3
"""Prepare VoxCeleb-layout data for the SphereFace2 recipes (command-line wrapper).

Writes train.csv, dev.csv + dev_trials.txt, test.csv + trials/<name>.txt and a
manifest into SAVE_FOLDER (see ``sb_sphereface2.data.prepare``); optionally MUSAN and RIR
CSVs for ``speechbrain.augment``. Re-running with the same inputs does nothing.

Examples::

    # VoxCeleb2-dev (converted to WAV, see convert_m4a.sh) for training, VoxCeleb1 for
    # the cleaned O/E/H trial lists; their speakers leave the training set.
    python recipes/VoxCeleb/prepare.py results/data vox2_dev_wav vox1_wav \\
        --trials veri_test2.txt list_test_all2.txt list_test_hard2.txt \\
        --speed-perturb --musan musan --rir RIRS_NOISES/simulated_rirs

    # Any speaker/session/utterance folder works, e.g. the synthetic demo corpus:
    python tools/synthetic_corpus.py data/espeak --speakers 40
    python recipes/VoxCeleb/prepare.py results/data data/espeak --trials data/espeak/trials.txt
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from sb_sphereface2.data.augmentation import prepare_musan, prepare_rir  # noqa: E402
from sb_sphereface2.data.prepare import prepare_voxceleb  # noqa: E402


def main(argv=None):
    """Parse arguments, run the preparation, print a one-line error on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("save_folder", help="where the CSVs and trial lists go")
    parser.add_argument("data_folders", nargs="+", help="root(s) of <speaker>/<session>/<utt>.wav|flac")
    parser.add_argument("--trials", nargs="*", default=[], help="VoxCeleb-format trial lists")
    parser.add_argument("--dev-speakers", type=int, default=10, help="held-out validation speakers (0: none)")
    parser.add_argument("--dev-utterances-per-speaker", type=int, default=20)
    parser.add_argument("--dev-trials", type=int, default=1000, help="validation trials, half targets")
    parser.add_argument("--speed-perturb", action="store_true", help="add 0.9x/1.1x copies as new speakers")
    parser.add_argument("--sample-rate", type=int, default=16000)
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
            dev_utterances_per_speaker=args.dev_utterances_per_speaker,
            dev_trials=args.dev_trials,
            speed_perturb=args.speed_perturb,
            sample_rate=args.sample_rate,
            seed=args.seed,
        )
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
