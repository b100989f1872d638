"""The last step of ``recipes/VoxCeleb/demo.sh``: load the exported folder with SpeechBrain's
``SpeakerRecognition.from_hparams``, score held-out pairs with its ``verify_batch``, and
print the run's EER next to the MFCC mean/std baseline's on the same trials.

    python tools/demo_summary.py demo_output

Reads ``OUT/exported`` (the exported model), ``OUT/train/data`` (test.csv and the trial
lists), ``OUT/scores/results.json`` (score.py) and ``OUT/mfcc_baseline.json``
(``python -m sb_sphereface2.scoring.mfcc_baseline --json``).
"""

import argparse
import csv
import json
import os
import sys

import numpy as np
import torch

from sb_sphereface2.data.audio import read_segment
from sb_sphereface2.data.trials import read_trials
from sb_sphereface2.errors import fail

PAIRS_PER_KIND = 100


def verify_pairs(model, rows, trials, per_kind=PAIRS_PER_KIND):
    """``SpeakerRecognition.verify_batch`` scores of the first ``per_kind`` target and
    non-target trials (one pair per call: no padding).

    Returns
    -------
    same, different : numpy.ndarray
        Scores of the target and the non-target pairs.
    """
    chosen = {1: [], 0: []}
    for enrol, test, label in zip(trials.enrol, trials.test, trials.labels.tolist()):
        if len(chosen[label]) < per_kind:
            chosen[label].append((enrol, test))

    def waveform(utt):
        row = rows[utt]
        return read_segment(row["wav"], int(row["start"]), int(row["stop"]))[None]

    scores = {}
    with torch.no_grad():
        for label, pairs in chosen.items():
            scores[label] = np.array([float(model.verify_batch(waveform(e), waveform(t))[0].reshape(-1)[0])
                                      for e, t in pairs])
    return scores[1], scores[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the demo's output folder")
    args = parser.parse_args(argv)
    from speechbrain.inference.speaker import SpeakerRecognition

    prep = os.path.join(args.out, "train", "data")
    exported = os.path.abspath(os.path.join(args.out, "exported"))
    model = SpeakerRecognition.from_hparams(source=exported, savedir=os.path.join(args.out, "pretrained_savedir"))
    with open(os.path.join(prep, "test.csv"), encoding="utf-8", newline="") as handle:
        rows = {row["ID"]: row for row in csv.DictReader(handle)}
    results = json.load(open(os.path.join(args.out, "scores", "results.json"), encoding="utf-8"))["results"]
    baseline = json.load(open(os.path.join(args.out, "mfcc_baseline.json"), encoding="utf-8"))["results"]

    for name in sorted(baseline):
        trials = read_trials(os.path.join(prep, "trials", f"{name}.txt"))
        same, different = verify_pairs(model, rows, trials)
        ranked = float((same[:, None] > different[None, :]).mean())
        print(f"{name}: SpeakerRecognition.verify_batch on {len(same)} same-speaker and {len(different)} "
              f"different-speaker pairs of held-out speakers: mean cosine {same.mean():.3f} vs "
              f"{different.mean():.3f}; same-speaker pairs ranked above different-speaker pairs: {ranked:.1%}")
        ours = results[f"{name} (cosine)"]
        reference = baseline[name]
        verdict = "beats" if ours["eer_percent"] < reference["eer_percent"] else "DOES NOT BEAT"
        print(f"{name}: {ours['trials']} trials ({ours['targets']} targets) of speakers never trained on\n"
              f"  EER {ours['eer_percent']:6.2f} %  minDCF(0.01) {ours['min_dcf_0.01']:.3f}  this model (cosine)\n"
              f"  EER {results[f'{name} (asnorm)']['eer_percent']:6.2f} %  minDCF(0.01) "
              f"{results[f'{name} (asnorm)']['min_dcf_0.01']:.3f}  this model (AS-norm)\n"
              f"  EER {reference['eer_percent']:6.2f} %  minDCF(0.01) {reference['min_dcf_0.01']:.3f}  "
              f"MFCC mean/std cosine baseline\n"
              f"  -> the trained model {verdict} the baseline")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, KeyError) as error:
        sys.exit(fail(error, 1))
