#!/usr/bin/env python3
"""Robustness to class-wise label noise and pseudo-labels: SphereFace2 vs AAM.

For each condition the training list is changed, each loss is trained with the same
recipe settings (train.py, command-line overrides), and the held-out trial list is scored
(score.py, cosine after training-mean subtraction). Conditions:

- ``clean``: the prepared training list;
- ``noise<f>``: a fraction f of the training speakers corrupted class-wise
  (``sb_sphereface2.labels.noise``, mode ``--mode``, seeded);
- ``pseudo``: labels from clustering the training utterances' embeddings, made with the
  model trained on the clean list with the first loss (``sb_sphereface2.labels.pseudo``,
  speaker count given).

Writes ``results.md`` / ``results.json`` (EER and minDCF per condition and loss, the noise
reports, the clustering scores) in the output folder.

    python recipes/VoxCeleb/noisy_labels.py --data_folder DATA --trials TRIALS.txt --output_folder OUT \\
        --fractions 0.2 0.5 --train_args "--n_mels=40 --resnet_channels=[8,16,32,32] ..."
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from sb_sphereface2.data.dataio import read_speakers, utterance_dataset
from sb_sphereface2.scoring.embed import embed_dataset
from sb_sphereface2.scoring.embeddings_io import save_embeddings
from sb_sphereface2.pretrained.folder import load_model_folder
from sb_sphereface2.labels.noise import inject_class_noise
from sb_sphereface2.labels.pseudo import pseudo_label
from sb_sphereface2.scoring.trial_scores import write_results

ROOT = Path(__file__).resolve().parents[2]


def run(script, *args):
    """Run a recipe stage; a failure shows the stage's last lines of stderr."""
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args[:3]))} ... failed:\n{result.stderr[-2000:]}")


def train_and_score(name, loss, train_csv, args, out):
    """Train one loss on one training list, score the trials; return the metrics."""
    folder = out / f"{name}_{loss}"
    overrides = [f"--data_folder={args.data_folder}", f"--trial_lists=[{args.trials}]",
                 f"--output_folder={folder}", f"--loss={loss}", f"--seed={args.seed}",
                 *shlex.split(args.train_args)]
    if train_csv is not None:
        overrides.append(f"--train_csv={train_csv}")
    run("recipes/VoxCeleb/train.py", "hparams/train.yaml", *overrides)
    run("recipes/VoxCeleb/score.py", "hparams/verification.yaml", "--device=cpu",
        f"--model_folder={folder / 'model'}", f"--data_prep_folder={folder / 'data'}",
        f"--output_folder={folder / 'scores'}", "--cohort_utterances_per_speaker=1", "--calibrate=False")
    results = json.loads((folder / "scores" / "results.json").read_text())["results"]
    return next(v for k, v in results.items() if k.endswith("(cosine)"))


def pseudo_labelled_list(model_folder, train_csv, out, seed):
    """Cluster the training utterances' embeddings into as many speakers as the list has."""
    hp = load_model_folder(str(model_folder))
    ids, emb = embed_dataset(utterance_dataset(str(train_csv)), hp["compute_features"], hp["mean_var_norm"],
                             hp["embedding_model"], desc="embedding the training list")
    npz = out / "train_embeddings.npz"
    save_embeddings(npz, ids, emb)
    pseudo_csv = out / "pseudo.csv"
    report = pseudo_label(str(npz), str(train_csv), str(pseudo_csv),
                          num_speakers=len(read_speakers(str(train_csv))), seed=seed)
    return pseudo_csv, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True, help="VoxCeleb-layout corpus")
    parser.add_argument("--trials", required=True, help="held-out trial list (its speakers leave training)")
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.2, 0.5],
                        help="fractions of corrupted speakers (default: 0.2 0.5)")
    parser.add_argument("--mode", default="merge", choices=("merge", "split", "mixed"))
    parser.add_argument("--losses", nargs="+", default=["sphereface2_c", "aam"])
    parser.add_argument("--no_pseudo", action="store_true", help="skip the pseudo-label condition")
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument("--train_args", default="", help="more train.py overrides, one string")
    args = parser.parse_args(argv)
    for path in (args.data_folder, args.trials):
        if not os.path.exists(path):
            raise FileNotFoundError(f"not found: {path}")
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)

    rows, details = {}, {}
    for loss in args.losses:
        rows[f"clean / {loss}"] = train_and_score("clean", loss, None, args, out)
    clean_csv = out / f"clean_{args.losses[0]}" / "data" / "train.csv"
    for fraction in args.fractions:
        noisy_csv = out / f"noise{fraction:g}.csv"
        report = inject_class_noise(str(clean_csv), str(noisy_csv), fraction, mode=args.mode, seed=args.seed)
        details[f"noise{fraction:g}"] = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
        for loss in args.losses:
            rows[f"noise {fraction:g} ({args.mode}) / {loss}"] = train_and_score(
                f"noise{fraction:g}", loss, noisy_csv, args, out)
    if not args.no_pseudo:
        pseudo_csv, report = pseudo_labelled_list(out / f"clean_{args.losses[0]}" / "model", clean_csv, out, args.seed)
        details["pseudo"] = {"num_clusters": report["num_clusters"], **(report["scores"] or {})}
        for loss in args.losses:
            rows[f"pseudo-labels / {loss}"] = train_and_score("pseudo", loss, pseudo_csv, args, out)
    table = write_results(out, rows, settings={"seed": args.seed, "mode": args.mode,
                                               "train_args": args.train_args, "details": details},
                          title="Label noise and pseudo-labels: SphereFace2 vs AAM")
    print(table)
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"error: {error}")
