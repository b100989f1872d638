#!/usr/bin/env python3
"""Robustness to class-wise label noise and pseudo-labels: SphereFace2 vs AAM, over several seeds.

For each seed and condition the training list is changed, each loss is trained with the
same settings (train.py: the small-data preset of ``sb_sphereface2.training.presets``
for the corpus, each loss at its small-data margin, then ``--train_args``), and the
held-out trials are scored (cosine after subtracting the mean training embedding).
Conditions:

- ``clean``: the prepared training list;
- ``noise <f>``: a fraction f of the training speakers corrupted class-wise
  (``sb_sphereface2.labels.noise``, mode ``--mode``, drawn with the run's seed);
- ``pseudo-labels``: labels from clustering the training utterances' embeddings, made
  with the model trained on the clean list with the first loss and the same seed
  (``sb_sphereface2.labels.pseudo``, speaker count given).

Every run uses one data preparation (``OUTPUT/data``; ``split_seed`` keeps the split),
so all seeds and conditions are scored on the same trials: ``--trials`` (a trial list,
whose speakers leave training), or else every trial among the preset's held-out test
speakers (``tools.heldout_trials.all_heldout_trials``). ``results.json`` is written after
every run, and a second call with the same output folder resumes. The table
(``results.md``) gives mean ± sd over the seeds per condition and loss, and SphereFace2's
difference from AAM per condition, marked where it is larger than the seed spread.

    python recipes/VoxCeleb/noisy_labels.py --data_folder data/librispeech-mini \\
        --output_folder /tmp/noisy --seeds 1986 1987 1988 --fractions 0.2 0.5
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sb_sphereface2.data.dataio import read_speakers  # noqa: E402
from sb_sphereface2.data.trials import read_trials  # noqa: E402
from sb_sphereface2.files import write_json_atomic, write_text_atomic  # noqa: E402
from sb_sphereface2.labels.noise import inject_class_noise  # noqa: E402
from sb_sphereface2.labels.pseudo import pseudo_label  # noqa: E402
from sb_sphereface2.scoring.embeddings_io import save_embeddings  # noqa: E402
from sb_sphereface2.training.presets import measure_corpus, small_data_preset  # noqa: E402
from tools.heldout_trials import all_heldout_trials, embed_csv, evaluate_model_folder  # noqa: E402


def run(script, *args):
    """Run a recipe stage; a failure shows the stage's last lines of stderr."""
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args[:3]))} ... failed:\n{result.stderr[-2000:]}")


def train(folder, loss, train_csv, seed, args):
    """Train one loss on one training list with one seed (train.py): the preset's
    overrides, then this run's, then ``--train_args`` (a later value of a key wins)."""
    overrides = dict(small_data_preset(measure_corpus(args.data_folder), loss, trial_list=bool(args.trials)).overrides)
    overrides.update(data_folder=args.data_folder, trial_lists=f"[{args.trials or ''}]",
                     data_prep_folder=f"{args.output_folder}/data", output_folder=folder, loss=loss, seed=seed)
    if train_csv is not None:
        overrides["train_csv"] = train_csv
    for argument in shlex.split(args.train_args):
        key, equals, value = argument.removeprefix("--").partition("=")
        if not equals:
            raise ValueError(f"--train_args: expected --key=value, got {argument!r}")
        overrides[key] = value
    run("recipes/VoxCeleb/train.py", "hparams/train.yaml", *(f"--{k}={v}" for k, v in overrides.items()))


def evaluation_trials(args):
    """The scored list: the given one (as prepared), or every held-out trial."""
    prepared = Path(args.output_folder) / "data"
    if args.trials:
        return read_trials(prepared / "trials" / f"{Path(args.trials).stem}.txt")
    return all_heldout_trials(prepared)


def pseudo_labelled_list(model_folder, train_csv, out, seed):
    """Cluster the training utterances' embeddings into as many speakers as the list has."""
    ids, embeddings = embed_csv(model_folder, train_csv)
    npz = out / f"train_embeddings_{seed}.npz"
    save_embeddings(npz, ids, embeddings)
    pseudo_csv = out / f"pseudo_{seed}.csv"
    report = pseudo_label(str(npz), str(train_csv), str(pseudo_csv),
                          num_speakers=len(read_speakers(str(train_csv))), seed=seed)
    return pseudo_csv, report


def mean_sd(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(runs, conditions, losses, seeds):
    """``{"condition / loss": mean metrics + sd}`` and the markdown table with the
    SphereFace2 - AAM differences."""
    rows, lines = {}, ["| condition | loss | seeds | EER (%) | minDCF (p=0.01) |", "|---|---|---:|---:|---:|"]
    for condition in conditions:
        for loss in losses:
            found = [runs[f"{condition} / {loss} / {s}"] for s in seeds if f"{condition} / {loss} / {s}" in runs]
            if not found:
                continue
            eer, eer_sd = mean_sd([r["eer_percent"] for r in found])
            dcf, dcf_sd = mean_sd([r["min_dcf_0.01"] for r in found])
            rows[f"{condition} / {loss}"] = {"eer_percent": eer, "eer_sd": eer_sd, "min_dcf_0.01": dcf,
                                             "min_dcf_0.01_sd": dcf_sd, "seeds": len(found)}
            lines.append(f"| {condition} | {loss} | {len(found)} | {eer:.2f} ± {eer_sd:.2f} | {dcf:.3f} ± {dcf_sd:.3f} |")
    if "aam" in losses:
        lines.append("")
        for condition in conditions:
            for loss in losses:
                a, b = rows.get(f"{condition} / {loss}"), rows.get(f"{condition} / aam")
                if loss == "aam" or not a or not b:
                    continue
                delta, spread = a["eer_percent"] - b["eer_percent"], a["eer_sd"] + b["eer_sd"]
                verdict = "larger than" if abs(delta) > spread else "within"
                lines.append(f"- {condition}: {loss} - aam = {delta:+.2f} EER points ({verdict} the seed spread "
                             f"{spread:.2f})")
    return rows, "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True, help="VoxCeleb-layout corpus")
    parser.add_argument("--trials", help="a trial list (its speakers leave training); default: the preset's "
                        "held-out test speakers, every trial among them")
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.2, 0.5],
                        help="fractions of corrupted speakers (default: 0.2 0.5)")
    parser.add_argument("--mode", default="merge", choices=("merge", "split", "mixed"))
    parser.add_argument("--losses", nargs="+", default=["sphereface2_c", "aam"])
    parser.add_argument("--no_pseudo", action="store_true", help="skip the pseudo-label condition")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[1986, 1987, 1988])
    parser.add_argument("--train_args", default="", help="more train.py overrides, one string")
    args = parser.parse_args(argv)
    for path in filter(None, (args.data_folder, args.trials)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"not found: {path}")
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    runs, details = saved.get("runs", {}), saved.get("settings", {}).get("details", {})
    conditions = ["clean", *(f"noise {f:g} ({args.mode})" for f in args.fractions)]
    conditions += [] if args.no_pseudo else ["pseudo-labels"]
    trials = None

    def save():
        rows, table = summary(runs, conditions, args.losses, args.seeds)
        settings = {"seeds": args.seeds, "mode": args.mode, "train_args": args.train_args, "details": details,
                    "trials": args.trials or "every trial among the held-out test speakers"}
        write_json_atomic(results_path, {"results": rows, "runs": runs, "settings": settings})
        write_text_atomic(out / "results.md", "# Label noise and pseudo-labels: SphereFace2 vs AAM\n\n" + table + "\n")
        return table

    def one(condition, loss, seed, train_csv):
        nonlocal trials
        key = f"{condition} / {loss} / {seed}"
        if key in runs:
            return
        folder = out / f"{condition.split(' (')[0].replace(' ', '')}_{loss}" / str(seed)
        train(folder, loss, train_csv, seed, args)
        trials = trials or evaluation_trials(args)  # the first run prepared the data
        runs[key] = evaluate_model_folder(folder / "model", out / "data", [trials])[trials.name]
        save()
        print(f"{key}: EER {runs[key]['eer_percent']:.2f} %", flush=True)

    for seed in args.seeds:
        for loss in args.losses:
            one("clean", loss, seed, None)
        clean_csv = out / "data" / "train.csv"
        for fraction, condition in zip(args.fractions, conditions[1:]):
            noisy_csv = out / f"noise{fraction:g}_{seed}.csv"
            report = inject_class_noise(str(clean_csv), str(noisy_csv), fraction, mode=args.mode, seed=seed)
            details[f"noise{fraction:g}/{seed}"] = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
            for loss in args.losses:
                one(condition, loss, seed, noisy_csv)
        if not args.no_pseudo and any(f"pseudo-labels / {loss} / {seed}" not in runs for loss in args.losses):
            model = out / f"clean_{args.losses[0]}" / str(seed) / "model"
            pseudo_csv, report = pseudo_labelled_list(model, clean_csv, out, seed)
            details[f"pseudo/{seed}"] = {"num_clusters": report["num_clusters"], **(report["scores"] or {})}
            for loss in args.losses:
                one("pseudo-labels", loss, seed, pseudo_csv)
    table = save()
    print(table)
    return runs


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"error: {error}")
