"""Benchmark: does the recipe learn speaker identity from a little real speech, and which loss
and margin learn best at this scale? Several seeds each, the same data and the same trials.

Run from the repository root (about 4 minutes per training run on 2 CPU cores)::

    PYTHONPATH=$PWD python benchmarks/bench_learning.py --work /tmp/bench_learning \\
        --json benchmarks/results_learning.json

Data: librispeech-mini (251 LibriSpeech speakers, one recording each), prepared once by
the recipe with the small-data preset of ``sb_sphereface2.training.presets``: recordings
cut into 3-6 s segments, 60 held-out test speakers, 20 validation speakers, the rest
train. Every run trains with the preset's settings (``recipes/VoxCeleb/train.py``) and
changes only the loss, its margin and the seed; the data split stays the same
(``split_seed``). Trials: every cross-half target pair of the held-out speakers and every
non-target pair ("all"), and the same with same-sex non-targets only ("hard";
LibriSpeech's SPEAKERS.TXT gives the sex), scored by cosine after subtracting the mean
training embedding. References on the same trials: the MFCC mean/std cosine baseline and
the untrained network (one epoch at lr 1e-12: only batch-norm statistics move).

Results go into ``--json`` after every run, so an interrupted benchmark resumes where it
stopped (a half-finished training run resumes from its last checkpoint). At the end it
prints EER and minDCF as mean ± sd over the seeds, and every configuration's difference
from the first one, marked where it is larger than the seed spread (the sum of the two
standard deviations).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sb_sphereface2.files import write_json_atomic  # noqa: E402
from sb_sphereface2.training.presets import measure_corpus, small_data_preset  # noqa: E402
from tools.heldout_trials import (  # noqa: E402
    all_heldout_trials,
    evaluate_model_folder,
    read_speaker_sexes,
    same_sex_trials,
)

LIBRISPEECH_MINI = REPO / "data" / "librispeech-mini"
# (loss block, margin): each loss at its small-data margin (the preset's) and at the paper's.
CONFIGS = {
    "SphereFace2-C m=0.1": {"loss": "sphereface2_c", "margin": 0.1},
    "SphereFace2-C m=0.2 (paper)": {"loss": "sphereface2_c", "margin": 0.2},
    "SphereFace2-A m=0.1": {"loss": "sphereface2_a", "margin": 0.1},
    "SphereFace2-A m=0.15 (paper)": {"loss": "sphereface2_a", "margin": 0.15},
    "AAM m=0.1": {"loss": "aam", "margin": 0.1},
    "AAM m=0.2 (paper)": {"loss": "aam", "margin": 0.2},
}
UNTRAINED = "untrained network"
UNTRAINED_OVERRIDES = {"number_of_epochs": 1, "lr": 1e-12, "final_lr": 1e-12, "warmup_epochs": 0, "average_last": 1,
                       "margin_start_epoch": 1, "margin_fix_epoch": 1}
MFCC = "MFCC mean/std cosine"
METRICS = (("eer_percent", "EER %"), ("min_dcf_0.01", "minDCF"))


def run_name(config, seed):
    return f"{config}/{seed}"


def folder_name(config):
    return "".join(c if c.isalnum() or c in "-." else "_" for c in config)


def train(overrides, output_folder, log_path):
    """recipes/VoxCeleb/train.py with these overrides; its output goes to ``log_path``."""
    command = [sys.executable, str(REPO / "recipes" / "VoxCeleb" / "train.py"), str(REPO / "hparams" / "train.yaml"),
               *(f"--{key}={value}" for key, value in overrides.items()), f"--output_folder={output_folder}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise RuntimeError(f"training failed (exit {result.returncode}), see {log_path}")


def summarise(values):
    """``(mean, sd)`` (sd 0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results, configs, seeds):
    """Markdown rows: mean ± sd of every metric on every list, per configuration."""
    lists = ("all", "hard")
    header = "| configuration | seeds | " + " | ".join(f"{label} ({name})" for name in lists for _, label in METRICS) + " |"
    lines = [header, "|" + "---|" * (2 + len(lists) * len(METRICS))]
    stats = {}
    for config in configs:
        runs = [results["runs"][run_name(config, s)] for s in seeds if run_name(config, s) in results["runs"]]
        if config == MFCC:
            runs = [results["mfcc"]] if "mfcc" in results else []
        if not runs:
            continue
        cells, stats[config] = [], {}
        for name in lists:
            for key, _ in METRICS:
                mean, sd = summarise([r[name][key] for r in runs])
                stats[config][(name, key)] = (mean, sd, len(runs))
                cells.append(f"{mean:.2f} ± {sd:.2f}" if key == "eer_percent" else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {config} | {len(runs) if config != MFCC else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines), stats


def differences(stats, reference):
    """Each configuration's EER difference from ``reference``, marked where it is larger
    than the seed spread (|difference| > sd_a + sd_b)."""
    lines = []
    for config, values in stats.items():
        if config == reference or reference not in stats:
            continue
        parts = []
        for name in ("all", "hard"):
            mean, sd, _ = values[(name, "eer_percent")]
            ref_mean, ref_sd, _ = stats[reference][(name, "eer_percent")]
            delta = mean - ref_mean
            verdict = "larger than the seed spread" if abs(delta) > sd + ref_sd else "within the seed spread"
            parts.append(f"{name}: {delta:+.2f} EER points ({verdict}, spread {sd + ref_sd:.2f})")
        lines.append(f"- {config} vs {reference}: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(LIBRISPEECH_MINI), help="librispeech-mini (with SPEAKERS.TXT)")
    parser.add_argument("--work", required=True, help="folder for the prepared data and the runs")
    parser.add_argument("--json", required=True, help="results file (read back to resume)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1986, 1987, 1988])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="a subset of: " + ", ".join(CONFIGS))
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration {unknown[0]!r} (known: {', '.join(CONFIGS)})")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    preset = small_data_preset(measure_corpus(args.data))
    print("\n".join([f"preset: {preset.name}", *preset.notes]), flush=True)
    base = {**preset.overrides, "data_folder": args.data, "data_prep_folder": work / "data"}
    results = json.loads(Path(args.json).read_text()) if os.path.isfile(args.json) else {"runs": {}}
    results["settings"] = {"data": args.data, "preset": preset.overrides, "configs": CONFIGS,
                           "untrained": UNTRAINED_OVERRIDES, "seeds": args.seeds}
    sexes = read_speaker_sexes(Path(args.data) / "SPEAKERS.TXT")
    lists = None

    todo = [(UNTRAINED, seed, UNTRAINED_OVERRIDES) for seed in args.seeds]
    todo += [(config, seed, CONFIGS[config]) for config in args.configs for seed in args.seeds]
    for config, seed, changes in todo:
        name = run_name(config, seed)
        if name in results["runs"]:
            continue
        folder = work / "runs" / folder_name(config) / str(seed)
        folder.mkdir(parents=True, exist_ok=True)
        start, load = time.time(), os.getloadavg()[0]
        train({**base, **changes, "seed": seed}, folder, folder / "stdout.txt")
        seconds = time.time() - start
        if lists is None:
            everything = all_heldout_trials(work / "data")
            lists = [everything, same_sex_trials(everything, sexes)]
        metrics = evaluate_model_folder(folder / "model", work / "data", lists)
        results["runs"][name] = {"all": metrics["heldout_all"], "hard": metrics["heldout_hard"],
                                 "train_seconds": round(seconds, 1), "load_at_start": round(load, 2)}
        write_json_atomic(args.json, results)
        print(f"{name}: EER all {metrics['heldout_all']['eer_percent']:.2f} %, hard "
              f"{metrics['heldout_hard']['eer_percent']:.2f} % ({seconds:.0f} s, load {load:.1f})", flush=True)

    if "mfcc" not in results:
        from sb_sphereface2.scoring.mfcc_baseline import mfcc_baseline_scores
        from sb_sphereface2.scoring.metrics import evaluate

        if lists is None:
            everything = all_heldout_trials(work / "data")
            lists = [everything, same_sex_trials(everything, sexes)]
        scored = {}
        for trials, key in zip(lists, ("all", "hard")):
            scores = mfcc_baseline_scores(work / "data" / "test.csv", trials, work / "data" / "train.csv")
            scored[key] = evaluate(scores, trials.labels)
        results["mfcc"] = scored
        write_json_atomic(args.json, results)

    configs = [c for c in args.configs] + [UNTRAINED, MFCC]
    rows, stats = table(results, configs, args.seeds)
    counts = results["runs"][run_name(configs[0], args.seeds[0])]
    print(f"\nheld-out trials: all {counts['all']['trials']} ({counts['all']['targets']} targets), "
          f"hard {counts['hard']['trials']} ({counts['hard']['targets']} targets)\n")
    print(rows)
    print()
    print(differences(stats, configs[0]))
    return results


if __name__ == "__main__":
    main()
