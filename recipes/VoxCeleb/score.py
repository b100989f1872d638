#!/usr/bin/env python3
"""Scoring stage: embed full test utterances with a model folder, score every trial list with
cosine (training mean subtracted) and with AS-norm, report EER/minDCF, DET and histograms.

    python recipes/VoxCeleb/score.py hparams/verification.yaml \\
        --model_folder=results/<run>/model --data_prep_folder=results/<run>/data

Embeddings are computed one utterance at a time with the model folder's own modules, as
SpeechBrain's ``EncoderClassifier.encode_batch`` does, so they do not depend on batching
and equal what the exported model gives. Outputs in ``output_folder``: ``embeddings_test.npz``,
``embeddings_train.npz``, ``cosine/`` and ``asnorm/`` (scores, results, plots of
``python -m sb_sphereface2.scoring``) and ``results.md`` / ``results.json`` with both.
"""

import glob
import json
import os
import sys
import tempfile

import numpy as np
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.speaker import SpeakerRecognition

from sb_sphereface2.scoring import cli as scorer
from sb_sphereface2.data.dataio import utterance_dataset
from sb_sphereface2.scoring.embed import embed_dataset
from sb_sphereface2.scoring.embeddings_io import save_embeddings
from sb_sphereface2.pretrained.folder import check_model_folder
from sb_sphereface2.scoring.trial_scores import write_results


def load_model(model_folder, device="cpu"):
    """SpeechBrain's ``SpeakerRecognition`` over a model folder (offline, no hub)."""
    check_model_folder(model_folder)
    savedir = tempfile.mkdtemp(prefix="sb_sphereface2_model_")
    return SpeakerRecognition.from_hparams(
        source=os.path.abspath(model_folder), savedir=savedir, run_opts={"device": device}
    )


def cohort_subset(train_csv, out_csv, per_speaker, seed=0):
    """A CSV with at most ``per_speaker`` unperturbed utterances of each training speaker."""
    import csv

    with open(train_csv, encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if float(r.get("speed", 1.0)) == 1.0]
    if not rows:
        raise ValueError(f"{train_csv}: no training utterances for the cohort")
    rng = np.random.default_rng(seed)
    by_speaker = {}
    for row in rows:
        by_speaker.setdefault(row["spk_id"], []).append(row)
    chosen = []
    for speaker in sorted(by_speaker):
        group = by_speaker[speaker]
        picks = rng.choice(len(group), size=min(per_speaker, len(group)), replace=False)
        chosen.extend(group[i] for i in sorted(picks))
    with open(out_csv, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return out_csv


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as handle:
        hp = load_hyperpyyaml(handle, overrides)
    device = run_opts.get("device", "cpu")
    prep = hp["data_prep_folder"]
    test_csv = os.path.join(prep, "test.csv")
    trial_lists = sorted(glob.glob(os.path.join(prep, "trials", "*.txt")))
    if not os.path.isfile(test_csv) or not trial_lists:
        raise FileNotFoundError(
            f"{prep} has no test.csv or trials/*.txt: give train.py --trial_lists=[...] first"
        )
    out = hp["output_folder"]
    os.makedirs(out, exist_ok=True)

    model = load_model(hp["model_folder"], device)
    modules = (model.mods.compute_features, model.mods.mean_var_norm, model.mods.embedding_model)
    ids, emb = embed_dataset(utterance_dataset(test_csv, hp["sample_rate"]), *modules, device=device, desc="test utterances")
    test_npz = os.path.join(out, "embeddings_test.npz")
    save_embeddings(test_npz, ids, emb)

    cohort_csv = cohort_subset(
        os.path.join(prep, "train.csv"), os.path.join(out, "cohort.csv"), hp["cohort_utterances_per_speaker"]
    )
    cohort = utterance_dataset(cohort_csv, hp["sample_rate"], max_seconds=hp["cohort_max_seconds"])
    train_ids, train_emb = embed_dataset(cohort, *modules, device=device, desc="cohort utterances")
    speakers = [cohort.data[i]["spk_id"] for i in train_ids]
    train_npz = os.path.join(out, "embeddings_train.npz")
    save_embeddings(train_npz, train_ids, train_emb, speakers)

    combined = {}
    for norm in ("none", "asnorm"):
        name = "cosine" if norm == "none" else norm
        argv = ["--embeddings", str(test_npz), "--trials", *trial_lists, "--output-dir",
                os.path.join(out, name), "--train-embeddings", str(train_npz), "--norm", norm,
                "--top-n", str(hp["top_n"])]
        if hp["calibrate"]:
            argv += ["--calibrate-on", trial_lists[0]]
        for list_name, metrics in scorer.main(argv).items():
            combined[f"{list_name} ({name})"] = metrics
    table = write_results(out, combined, settings={"model_folder": hp["model_folder"], "top_n": hp["top_n"]})
    print(table)
    return combined


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
