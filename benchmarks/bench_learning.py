"""Benchmark: what SphereFace2 buys at the scale of a small real corpus, measured so that a
real difference can show. Configurations x seeds on the same prepared data and trials,
every comparison paired by seed, with speaker-level bootstrap intervals.

Run from the repository root (about 3 minutes per stage-1 run on 2 CPU cores; the whole
default benchmark trains about 60 models)::

    PYTHONPATH=$PWD python benchmarks/bench_learning.py --work /tmp/bench_learning \\
        --json benchmarks/results_learning.json --results-md RESULTS.md

Parts (``--parts``, all by default), on librispeech-mini (``data/librispeech-mini``: 251
LibriSpeech speakers, one recording each), prepared once with the small-data preset of
``sb_sphereface2.training.presets`` (3-6 s segments; 60 held-out test speakers, 20
validation speakers, 171 training speakers), one data split for every run
(``split_seed``):

- ``stage1``: SphereFace2-C, AAM and SphereFace2-A (``--losses``) at the small-data margin
  0.1 with the stage-1 preset, ``--seeds`` (6 by default); the untrained network (a
  reference) with the first seed;
- ``lmf``: large-margin fine-tuning (stage 2, ``hparams/finetune.yaml`` with the
  fine-tuning preset: 3 s crops, the loss block's ``lmf_margin``, 5 epochs) of every
  stage-1 model of SphereFace2-C and AAM;
- ``pseudo``: the training speakers split into a labelled half and an unlabelled half (the
  same split for every seed); a seed model of each loss trained on the labelled half; the
  unlabelled half clustered with the number of speakers *estimated* (eigengap of a tuned
  nearest-neighbour graph, ``sb_sphereface2.labels.clustering``), then average-linkage
  clustering into that many pseudo speakers; each loss retrained on labelled +
  pseudo-labelled data: clustering loss x training loss, ``--pseudo-seeds``;
- ``noise``: class-wise label noise (``merge``: a fraction of the training speakers
  relabelled as other speakers, drawn with the run's seed) at 20 % and 50 %, each loss,
  ``--pseudo-seeds``; the clean rows are the stage-1 runs.

Scoring: every cross-half target pair of the held-out speakers and every non-target pair
("all", 28,782 trials), and the same with same-sex non-targets only ("hard"; LibriSpeech's
SPEAKERS.TXT gives the sex); cosine after subtracting the mean training embedding, and
AS-norm against per-speaker mean training embeddings. References: the MFCC mean/std cosine
baseline and the untrained network.

Comparisons: for each pair (or contrast) of configurations and each metric (EER %, minDCF
at p = 0.01) on each list, the per-seed paired differences, their mean with a 95 % t
interval over the seeds and the number of seeds favouring each side, and per seed a 95 %
speaker-level bootstrap interval (held-out speakers resampled with their trials, 1,000
draws) of the difference (``sb_sphereface2.scoring.comparison``).

Everything goes into ``--json`` after every run (a rerun resumes; a half-finished training
run resumes from its checkpoint); the scores of every model are kept in ``WORK/scores`` for
the bootstrap. ``--results-md FILE`` rewrites the generated part of FILE (between the
``bench_learning`` markers) from the JSON, so that no number is copied by hand.

On several cores, processes on disjoint seeds can share one ``--work`` folder, each with
its own ``--json`` and ``--train-only`` (start one first: it prepares the data); then one
``--report-only --merge OTHER.json ...`` run with every seed writes the report.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sb_sphereface2.data.trials import speaker_of  # noqa: E402
from sb_sphereface2.files import write_json_atomic, write_text_atomic  # noqa: E402
from sb_sphereface2.scoring.comparison import METRICS, paired_t_interval, speaker_bootstrap  # noqa: E402
from sb_sphereface2.scoring.heldout import (  # noqa: E402
    all_heldout_trials,
    embed_csv,
    heldout_scores,
    read_speaker_sexes,
    same_sex_trials,
)
from sb_sphereface2.scoring.metrics import evaluate  # noqa: E402
from sb_sphereface2.training.presets import measure_corpus, small_data_finetune_preset, small_data_preset  # noqa: E402

LIBRISPEECH_MINI = REPO / "data" / "librispeech-mini"
LOSSES = {"SphereFace2-C": "sphereface2_c", "AAM": "aam", "SphereFace2-A": "sphereface2_a"}
PAIR = ("SphereFace2-C", "AAM")  # the losses of the fine-tuning, pseudo-label and noise parts
MARGIN = 0.1  # the small-data margin of every loss (SMALL_DATA_MARGINS)
PARTS = ("stage1", "lmf", "pseudo", "noise")
LISTS = ("all", "hard")
SCORINGS = ("cosine", "asnorm")
NOISE_FRACTIONS = (0.2, 0.5)
LABELLED_FRACTION = 0.5
UNTRAINED = "untrained network"
UNTRAINED_OVERRIDES = {"number_of_epochs": 1, "lr": 1e-12, "final_lr": 1e-12, "warmup_epochs": 0, "average_last": 1,
                       "margin_start_epoch": 1, "margin_fix_epoch": 1}
BOOTSTRAP_RESAMPLES = 1000
START_MARK, END_MARK = "<!-- bench_learning: begin (generated from benchmarks/results_learning.json) -->", \
    "<!-- bench_learning: end -->"


def stage1(loss):
    return f"{loss} m={MARGIN:g}"


def lmf(loss):
    return f"{stage1(loss)} + LMF"


def seed_model(loss):
    return f"{loss} seed model (labelled half)"


def pseudo(cluster_loss, train_loss):
    return f"{train_loss} on pseudo-labels by {cluster_loss}"


def noisy(loss, fraction):
    return f"{loss} noise {fraction:.0%}"


def folder_name(config):
    return "".join(c if c.isalnum() or c in "-." else "_" for c in config)


def run_key(config, seed):
    return f"{config}/{seed}"


# --- running ---------------------------------------------------------------------------


def train(stage_file, overrides, output_folder, log_path, threads):
    """recipes/VoxCeleb/train.py with these overrides; its output goes to ``log_path``."""
    command = [sys.executable, str(REPO / "recipes" / "VoxCeleb" / "train.py"), str(REPO / "hparams" / stage_file),
               *(f"--{key}={value}" for key, value in overrides.items()), f"--output_folder={output_folder}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "a", encoding="utf-8") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise RuntimeError(f"training failed (exit {result.returncode}), see {log_path}")


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Bench:
    """The benchmark's state: the results file, the prepared data and trial lists."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.prep = self.work / "data"
        self.results = json.loads(Path(args.json).read_text()) if os.path.isfile(args.json) else {}
        self.results.setdefault("runs", {})
        self.results.setdefault("clustering", {})
        for other in args.merge or []:  # runs of other processes (disjoint seeds, one work folder)
            merged = json.loads(Path(other).read_text())
            for key in ("runs", "clustering"):
                for name, entry in merged.get(key, {}).items():
                    mine = self.results[key].get(name)
                    if mine is None or (mine.get("commit") is None and entry.get("commit") is not None):
                        self.results[key][name] = entry  # the entry of the process that trained it
        corpus = measure_corpus(args.data)
        self.preset = small_data_preset(corpus)
        self.finetune = small_data_finetune_preset(corpus)
        self.base = {**self.preset.overrides, "data_folder": args.data, "data_prep_folder": self.prep}
        self.lists = None
        self.sexes = read_speaker_sexes(Path(args.data) / "SPEAKERS.TXT")

    def save(self):
        self.results["settings"] = {
            "data": str(self.args.data), "stage1_preset": self.preset.overrides,
            "finetune_preset": self.finetune.overrides, "seeds": self.args.seeds,
            "pseudo_seeds": self.args.pseudo_seeds, "margin": MARGIN, "losses": LOSSES,
            "noise_fractions": self.args.noise_fractions, "labelled_fraction": LABELLED_FRACTION,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "untrained": UNTRAINED_OVERRIDES,
        }
        write_json_atomic(self.args.json, self.results)

    def trial_lists(self):
        if self.lists is None:
            everything = all_heldout_trials(self.prep)
            self.lists = {"all": everything, "hard": same_sex_trials(everything, self.sexes)}
        return self.lists

    def scores_path(self, name):
        return self.work / "scores" / f"{folder_name(name)}.npz"

    def model(self, config, seed, stage_file, overrides, kind):
        """Train (or find) one model and score it; record it in the results."""
        name = run_key(config, seed)
        folder = self.work / "runs" / folder_name(config) / str(seed)
        if name in self.results["runs"] and self.scores_path(name).is_file():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        start, load = time.time(), os.getloadavg()[0]
        trained_here = not (folder / "model" / "embedding_model.ckpt").is_file()
        if trained_here:
            train(stage_file, {**overrides, "seed": seed}, folder, folder / "stdout.txt", self.args.threads)
        seconds = time.time() - start
        lists = self.trial_lists()
        scores = heldout_scores(folder / "model", self.prep, [lists["all"], lists["hard"]])
        path = self.scores_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f"{lst}_{how}": scores[lists[lst].name][how] for lst in LISTS for how in SCORINGS})
        self.results["runs"][name] = {
            "config": config, "seed": seed, "kind": kind, "stage_file": stage_file,
            "metrics": {lst: {how: evaluate(scores[lists[lst].name][how], lists[lst].labels) for how in SCORINGS}
                        for lst in LISTS},
            "train_seconds": round(seconds, 1) if trained_here else None, "load_at_start": round(load, 2),
            "commit": git_commit() if trained_here else None, "threads": self.args.threads if trained_here else None,
        }
        self.save()
        m = self.results["runs"][name]["metrics"]
        print(f"{name}: EER all {m['all']['cosine']['eer_percent']:.2f} % (AS-norm "
              f"{m['all']['asnorm']['eer_percent']:.2f} %), hard {m['hard']['cosine']['eer_percent']:.2f} % "
              f"({seconds:.0f} s, load {load:.1f})", flush=True)
        return folder

    # --- parts -----------------------------------------------------------------------

    def stage1(self, seeds):
        for seed in seeds[:1]:  # a reference: one seed is enough
            self.model(UNTRAINED, seed, "train.yaml", {**self.base, **UNTRAINED_OVERRIDES}, "untrained")
        for seed in seeds:  # seed-major: an interrupted benchmark has whole pairs
            for loss in self.args.losses:
                block = LOSSES[loss]
                self.model(stage1(loss), seed, "train.yaml", {**self.base, "loss": block, "margin": MARGIN}, "stage1")

    def lmf(self, seeds):
        for seed in seeds:
            for loss in PAIR:
                block = LOSSES[loss]
                first = self.model(stage1(loss), seed, "train.yaml", {**self.base, "loss": block, "margin": MARGIN},
                                   "stage1")
                overrides = {**self.finetune.overrides, "data_folder": self.args.data, "data_prep_folder": self.prep,
                             "loss": block, "pretrained_model": first / "model"}
                self.model(lmf(loss), seed, "finetune.yaml", overrides, "lmf")

    def pseudo(self, seeds):
        from sb_sphereface2.labels.pseudo import combine_training_lists, pseudo_label, split_labelled
        from sb_sphereface2.scoring.embeddings_io import save_embeddings

        self.model(UNTRAINED, seeds[0], "train.yaml", {**self.base, **UNTRAINED_OVERRIDES}, "untrained")  # prepares
        folder = self.work / "pseudo"
        folder.mkdir(parents=True, exist_ok=True)
        labelled, unlabelled = folder / "labelled.csv", folder / "unlabelled.csv"
        if not unlabelled.is_file():
            split_labelled(self.prep / "train.csv", LABELLED_FRACTION, labelled, unlabelled, seed=self.args.split_seed)
        two = {k: LOSSES[k] for k in PAIR}
        for seed in seeds:
            for cluster_loss, block in two.items():
                model = self.model(seed_model(cluster_loss), seed, "train.yaml",
                                   {**self.base, "loss": block, "margin": MARGIN, "train_csv": labelled}, "seed model")
                pseudo_csv = folder / f"pseudo_{folder_name(cluster_loss)}_{seed}.csv"
                combined = folder / f"combined_{folder_name(cluster_loss)}_{seed}.csv"
                key = run_key(cluster_loss, seed)
                if key not in self.results["clustering"] or not combined.is_file():
                    ids, embeddings = embed_csv(model / "model", unlabelled)
                    npz = folder / f"unlabelled_{folder_name(cluster_loss)}_{seed}.npz"
                    save_embeddings(npz, ids, embeddings, speakers=[speaker_of(u) for u in ids])
                    report = pseudo_label(str(npz), str(unlabelled), str(pseudo_csv), num_speakers=None, seed=seed)
                    combine_training_lists([labelled, pseudo_csv], combined)
                    true = len({speaker_of(u) for u in ids})
                    self.results["clustering"][key] = {"estimated_speakers": report["num_clusters"],
                                                       "true_speakers": true, "utterances": len(ids),
                                                       **report["scores"]}
                    self.save()
                for train_loss, train_block in two.items():
                    self.model(pseudo(cluster_loss, train_loss), seed, "train.yaml",
                               {**self.base, "loss": train_block, "margin": MARGIN, "train_csv": combined}, "pseudo")

    def noise(self, seeds):
        from sb_sphereface2.labels.noise import inject_class_noise

        for seed in seeds:
            for loss in ("SphereFace2-C", "AAM"):
                self.model(stage1(loss), seed, "train.yaml", {**self.base, "loss": LOSSES[loss], "margin": MARGIN},
                           "stage1")
            for fraction in self.args.noise_fractions:
                noisy_csv = self.work / "noise" / f"train_noise{fraction:g}_{seed}.csv"
                if not noisy_csv.is_file():
                    noisy_csv.parent.mkdir(parents=True, exist_ok=True)
                    inject_class_noise(str(self.prep / "train.csv"), str(noisy_csv), fraction, mode="merge", seed=seed)
                for loss in ("SphereFace2-C", "AAM"):
                    self.model(noisy(loss, fraction), seed, "train.yaml",
                               {**self.base, "loss": LOSSES[loss], "margin": MARGIN, "train_csv": noisy_csv}, "noise")

    def mfcc(self):
        if "mfcc" in self.results:
            return
        from sb_sphereface2.scoring.mfcc_baseline import mfcc_baseline_scores

        lists = self.trial_lists()
        self.results["mfcc"] = {lst: evaluate(mfcc_baseline_scores(self.prep / "test.csv", lists[lst],
                                                                   self.prep / "train.csv"), lists[lst].labels)
                                for lst in LISTS}
        self.save()


# --- comparisons -----------------------------------------------------------------------


def comparisons(seeds, pseudo_seeds):
    """(title, group, [(config, scoring, coefficient), ...], seeds): every contrast reported.
    A pair is A - B; lower is better for both metrics, so a negative mean favours A."""
    pairs = []

    def pair(title, group, a, b, seeds_, scoring_a="cosine", scoring_b="cosine"):
        pairs.append((title, group, [(a, scoring_a, 1.0), (b, scoring_b, -1.0)], seeds_))

    c, a, aam = (stage1(x) for x in ("SphereFace2-C", "SphereFace2-A", "AAM"))
    pair("SphereFace2-C vs AAM", "central", c, aam, seeds)
    pair("SphereFace2-A vs AAM", "central", a, aam, seeds)
    pair("SphereFace2-C vs SphereFace2-A", "central", c, a, seeds)
    for loss in PAIR:
        pair(f"{loss}: stage 2 (LMF) vs stage 1", "lmf", lmf(loss), stage1(loss), seeds)
    pair("SphereFace2-C vs AAM after LMF", "lmf", lmf("SphereFace2-C"), lmf("AAM"), seeds)
    pair("SphereFace2-C vs AAM after LMF, AS-norm", "lmf", lmf("SphereFace2-C"), lmf("AAM"), seeds,
         "asnorm", "asnorm")
    for loss in LOSSES:
        for config in (stage1(loss), lmf(loss)) if loss in PAIR else (stage1(loss),):
            pair(f"{config}: AS-norm vs cosine", "asnorm", config, config, seeds, "asnorm", "cosine")
    for cluster_loss in ("SphereFace2-C", "AAM"):
        pair(f"clusters by {cluster_loss}: SphereFace2-C vs AAM", "pseudo", pseudo(cluster_loss, "SphereFace2-C"),
             pseudo(cluster_loss, "AAM"), pseudo_seeds)
    for train_loss in ("SphereFace2-C", "AAM"):
        pair(f"{train_loss} trained: clusters by SphereFace2-C vs by AAM", "pseudo",
             pseudo("SphereFace2-C", train_loss), pseudo("AAM", train_loss), pseudo_seeds)
        pair(f"{train_loss}: pseudo-labels (own clusters) vs clean labels", "pseudo",
             pseudo(train_loss, train_loss), stage1(train_loss), pseudo_seeds)
    for fraction in NOISE_FRACTIONS:
        pair(f"{fraction:.0%} noise: SphereFace2-C vs AAM", "noise", noisy("SphereFace2-C", fraction),
             noisy("AAM", fraction), pseudo_seeds)
        pairs.append((f"{fraction:.0%} noise: degradation of SphereFace2-C minus degradation of AAM", "noise",
                      [(noisy("SphereFace2-C", fraction), "cosine", 1.0), (c, "cosine", -1.0),
                       (noisy("AAM", fraction), "cosine", -1.0), (aam, "cosine", 1.0)], pseudo_seeds))
    return pairs


def compare(bench, seeds, pseudo_seeds):
    """Every contrast of ``comparisons`` whose runs exist: per-seed values, paired t
    interval, per-seed speaker bootstrap."""
    runs = bench.results["runs"]
    lists = bench.trial_lists()
    speakers = {lst: ([speaker_of(u) for u in lists[lst].enrol], [speaker_of(u) for u in lists[lst].test])
                for lst in LISTS}
    out = []
    for title, group, terms, seeds_ in comparisons(seeds, pseudo_seeds):
        present = [s for s in seeds_ if all(run_key(cfg, s) in runs for cfg, _, _ in terms)]
        if not present:
            continue
        entry = {"title": title, "group": group, "terms": terms, "seeds": present, "lists": {}}
        for lst in LISTS:
            entry["lists"][lst] = {}
            per_seed = {m: [] for m in METRICS}
            boots = {m: [] for m in METRICS}
            for seed in present:
                systems = []
                for cfg, how, _ in terms:
                    with np.load(bench.scores_path(run_key(cfg, seed))) as data:
                        systems.append(data[f"{lst}_{how}"])
                boot = speaker_bootstrap(lists[lst].labels, *speakers[lst], systems, [k for _, _, k in terms],
                                         resamples=BOOTSTRAP_RESAMPLES, seed=seed)
                for m in METRICS:
                    value = sum(k * runs[run_key(cfg, seed)]["metrics"][lst][how][m] for cfg, how, k in terms)
                    per_seed[m].append(value)
                    boots[m].append([boot[m]["low"], boot[m]["high"]])
            for m in METRICS:
                entry["lists"][lst][m] = {"per_seed": per_seed[m], "bootstrap": boots[m],
                                          **paired_t_interval(per_seed[m])}
        out.append(entry)
    bench.results["comparisons"] = out
    bench.save()
    return out


# --- the tables ------------------------------------------------------------------------


def _mean_sd(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0


def configuration_table(results, configs, scoring="cosine"):
    if not any(r["config"] in configs for r in results["runs"].values()):
        return "_Not run in this benchmark (no results in the JSON)._"
    lines = ["| configuration | seeds | EER % (all) | minDCF (all) | EER % (hard) | minDCF (hard) |",
             "|---|---:|---:|---:|---:|---:|"]
    for config in configs:
        runs = [r for r in results["runs"].values() if r["config"] == config]
        if not runs:
            continue
        cells = []
        for lst in LISTS:
            for m in METRICS:
                mean, sd = _mean_sd([r["metrics"][lst][scoring][m] for r in runs])
                cells.append(f"{mean:.2f} ± {sd:.2f}" if m == "eer_percent" else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {config} | {len(runs)} | " + " | ".join(cells) + " |")
    if "mfcc" in results and scoring == "cosine" and UNTRAINED in configs:
        cells = [f"{results['mfcc'][lst][m]:.2f}" if m == "eer_percent" else f"{results['mfcc'][lst][m]:.3f}"
                 for lst in LISTS for m in METRICS]
        lines.append("| MFCC mean/std cosine | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(value, low, high, digits):
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def comparison_table(entries, group):
    if not any(entry["group"] == group for entry in entries):
        return "_No comparison: its runs are missing._"
    lines = ["| comparison (A vs B) | list | metric | mean A − B [95 % t CI] | seeds favouring A / B | "
             "per-seed A − B [95 % speaker bootstrap] |", "|---|---|---|---|---|---|"]
    for entry in entries:
        if entry["group"] != group:
            continue
        for lst in LISTS:
            for m in METRICS:
                r = entry["lists"][lst][m]
                digits = 2 if m == "eer_percent" else 3
                label = "EER points" if m == "eer_percent" else "minDCF"
                ci = (_interval(r["mean"], r["low"], r["high"], digits) if r["seeds"] > 1
                      else f"{r['mean']:+.{digits}f}")
                boot = "; ".join(f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
                                 for d, (lo, hi) in zip(r["per_seed"], r["bootstrap"]))
                lines.append(f"| {entry['title']} | {lst} | {label} | {ci} | {r['favour_a']} / {r['favour_b']} "
                             f"(of {r['seeds']}) | {boot} |")
    return "\n".join(lines)


def verdicts(entries, group):
    """One line per contrast and metric whose t interval excludes 0, and a line for the rest."""
    excluded, included = [], []
    for entry in entries:
        if entry["group"] != group:
            continue
        for lst in LISTS:
            for m in METRICS:
                r = entry["lists"][lst][m]
                name = f"{entry['title']} ({lst}, {'EER' if m == 'eer_percent' else 'minDCF'})"
                if r["seeds"] > 1 and (r["low"] > 0 or r["high"] < 0):
                    side = "A is better" if r["high"] < 0 else "B is better"
                    excluded.append(f"{name}: the 95 % interval excludes 0 ({side}; mean {r['mean']:+.3g})")
                else:
                    included.append(name)
    if not excluded and not included:
        return ""
    lines = [f"- {line}" for line in excluded] or ["- No 95 % t interval of this group excludes 0."]
    if included:
        lines.append(f"- The interval contains 0 (no difference shown) for: {'; '.join(included)}.")
    return "\n".join(lines)


def clustering_table(results):
    if not results["clustering"]:
        return "_Not run in this benchmark._"
    lines = ["| clustering model | seed | utterances | speakers (true) | speakers (estimated) | NMI | ARI |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, r in sorted(results["clustering"].items()):
        loss, seed = key.rsplit("/", 1)
        lines.append(f"| {loss} seed model | {seed} | {r['utterances']} | {r['true_speakers']} | "
                     f"{r['estimated_speakers']} | {r['nmi']:.3f} | {r['ari']:.3f} |")
    return "\n".join(lines)


def render(results):
    """The generated part of RESULTS.md, from the results file alone."""
    entries = results.get("comparisons", [])
    s = results["settings"]
    runs = results["runs"]
    seeds = s["seeds"]
    any_run = next(iter(runs.values()))["metrics"]
    parts = [
        START_MARK,
        f"Seeds {', '.join(map(str, seeds))} for stage 1, LMF and AS-norm; "
        f"{', '.join(map(str, s['pseudo_seeds']))} for pseudo-labels and noise. Trials: all "
        f"{any_run['all']['cosine']['trials']:,} held-out pairs ({any_run['all']['cosine']['targets']} targets), "
        f"hard {any_run['hard']['cosine']['trials']:,} (same-sex non-targets). Each comparison is paired by "
        "seed (same data, split, initial weights and batch order); the mean difference carries a 95 % t "
        "interval over the seeds, and each seed's difference a 95 % speaker-level bootstrap interval "
        f"({s['bootstrap_resamples']} resamples of the 60 held-out speakers with their trials).",
        "",
        "### Stage 1 (cosine scoring), references",
        "",
        configuration_table(results, [stage1(x) for x in LOSSES] + [UNTRAINED]),
        "",
        comparison_table(entries, "central"),
        "",
        verdicts(entries, "central"),
        "",
        "### Large-margin fine-tuning (stage 2) and AS-norm",
        "",
        configuration_table(results, [lmf(x) for x in PAIR]),
        "",
        "With AS-norm:",
        "",
        configuration_table(results, [stage1(x) for x in LOSSES] + [lmf(x) for x in PAIR], scoring="asnorm"),
        "",
        comparison_table(entries, "lmf"),
        "",
        verdicts(entries, "lmf"),
        "",
        comparison_table(entries, "asnorm"),
        "",
        verdicts(entries, "asnorm"),
        "",
        "### Pseudo-labels with an estimated number of speakers",
        "",
        clustering_table(results),
        "",
        configuration_table(results, [seed_model(x) for x in ("SphereFace2-C", "AAM")]
                            + [pseudo(c, t) for c in ("SphereFace2-C", "AAM") for t in ("SphereFace2-C", "AAM")]),
        "",
        comparison_table(entries, "pseudo"),
        "",
        verdicts(entries, "pseudo"),
        "",
        "### Class-wise label noise",
        "",
        configuration_table(results, [noisy(x, f) for f in s["noise_fractions"] for x in ("SphereFace2-C", "AAM")]),
        "",
        comparison_table(entries, "noise"),
        "",
        verdicts(entries, "noise"),
        END_MARK,
    ]
    return "\n".join(parts)


def write_results_md(path, results):
    """Replace the generated part of ``path`` (between the markers) with ``render``."""
    text = Path(path).read_text(encoding="utf-8") if os.path.isfile(path) else ""
    block = render(results)
    if START_MARK in text and END_MARK in text:
        before, rest = text.split(START_MARK, 1)
        after = rest.split(END_MARK, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(path, text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(LIBRISPEECH_MINI), help="librispeech-mini (with SPEAKERS.TXT)")
    parser.add_argument("--work", required=True, help="folder for the prepared data, the runs and their scores")
    parser.add_argument("--json", required=True, help="results file (read back to resume)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1986, 1987, 1988, 1989, 1990, 1991])
    parser.add_argument("--pseudo-seeds", type=int, nargs="+", default=[1986, 1987, 1988])
    parser.add_argument("--split-seed", type=int, default=1986, help="seed of the labelled / unlabelled split")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES),
                        help="the losses of stage 1 (SphereFace2-C and AAM are needed by the other parts)")
    parser.add_argument("--noise-fractions", type=float, nargs="+", default=list(NOISE_FRACTIONS),
                        help="the class-wise noise levels of the noise part")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training run")
    parser.add_argument("--results-md", help="rewrite the generated part of this file (e.g. RESULTS.md)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--report-only", action="store_true", help="no training: comparisons and tables only")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="add the runs of these results files (same --work) to --json before the report")
    only.add_argument("--train-only", action="store_true",
                        help="train and score, no comparisons (e.g. several processes on disjoint seeds, each with "
                             "its own --json, reported together later)")
    args = parser.parse_args(argv)
    for other in args.merge or []:
        if not os.path.isfile(other):
            parser.error(f"--merge: results file not found: {other}")
    bench = Bench(args)
    print("\n".join([f"preset: {bench.preset.name}", *bench.preset.notes]), flush=True)
    if not args.report_only:
        for part in args.parts:
            getattr(bench, part)(args.pseudo_seeds if part in ("pseudo", "noise") else args.seeds)
    if args.train_only:
        return bench.results
    bench.mfcc()  # the baseline (no training), also for a report
    compare(bench, args.seeds, args.pseudo_seeds)
    if args.results_md:
        write_results_md(args.results_md, bench.results)
    print(render(bench.results))
    return bench.results


if __name__ == "__main__":
    main()
