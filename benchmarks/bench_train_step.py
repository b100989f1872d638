"""The training step as a whole against its floor: ResNet34 and ECAPA-TDNN, 2 s crops.

**step**: one ``SpeakerBrain.fit_batch`` iteration of the recipe (``hparams/train.yaml``
with the model block): device copy, augmentation (when on), Kaldi/SpeechBrain fbank,
per-utterance mean normalisation, embedding model, cosine head, SphereFace2-C loss
(the default lean implementation), the margin and lr schedules, the finite checks and
the raw-cosine statistics of the train log, SpeechBrain's gradient clipping and the
optimizer step. **floor**: the same modules' forward, backward and optimizer step on the
same batch's features computed beforehand (``recipe_step.floor_step``): what any
implementation of the step must spend. The two run interleaved (floor, step, then step,
floor, ...) on the same batch after ``--warmup`` pairs (the first compiles the lean
loss kernel); the ratio is the median of the per-pair ratios.

The parts above the floor are then timed alone on the same batch (median of
``--repeats``): augmentation, features + normalisation, checks + statistics, schedules,
gradient clipping. ``--profile`` also prints the torch.profiler operators whose self CPU
time grows most from the floor to the step.

The loader's share: the CPU seconds the training loader needs per batch (1 worker,
from ``benchmarks/results_loader.json``, the "load" stage of the CSV path: read, speed
change, crop) against the step's seconds.

Usage (from the repository root; batch 32 of ResNet34 takes ~20 s a step on one core):
    PYTHONPATH=$PWD python benchmarks/bench_train_step.py --repeats 3 --json benchmarks/results_train_step.json
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe_step import (  # noqa: E402
    ROOT,
    fit_step,
    floor_step,
    precomputed_features,
    recipe_brain,
    synthetic_batch,
    timed,
)

LOADER_RESULTS = ROOT / "benchmarks" / "results_loader.json"


def loader_seconds_per_utterance():
    """CPU seconds per utterance of the training loader (CSV path, 1 worker, load stage)."""
    if not LOADER_RESULTS.is_file():
        return None
    rows = json.loads(LOADER_RESULTS.read_text())["results"]
    for row in rows:
        if row["stage"] == "load" and row["path"] == "csv" and row["workers"] == 1:
            return 1.0 / row["utt_per_s_per_worker"]
    return None


def paired_ratios(brain, batch, warmup, repeats):
    """Interleaved step and floor times on one batch: (step seconds, floor seconds, ratios)."""
    device = brain.device
    inputs = precomputed_features(brain, batch)
    steps, floors, ratios = [], [], []
    for index in range(warmup + repeats):
        order = ("floor", "step") if index % 2 == 0 else ("step", "floor")
        times = {}
        for name in order:
            if name == "step":
                times[name], loss = timed(fit_step, device, brain, batch)
            else:
                times[name], loss = timed(floor_step, device, brain, *inputs)
            if not torch.isfinite(loss).all():
                raise RuntimeError(f"{name}: non-finite loss")
        if index >= warmup:
            steps.append(times["step"])
            floors.append(times["floor"])
            ratios.append(times["step"] / times["floor"])
        print(f"  pair {index + 1}{' (warm-up)' if index < warmup else ''}: step {times['step']:.3f} s, "
              f"floor {times['floor']:.3f} s", flush=True)
    return steps, floors, ratios


def part_times(brain, batch, repeats):
    """Median seconds of each part of the step above the floor, timed alone."""
    device, modules, hparams = brain.device, brain.modules, brain.hparams
    moved = batch.to(device)
    wavs, lens = moved.sig
    labels = moved.spk_id_encoded.data
    with torch.no_grad():
        cosines = modules.classifier(modules.embedding_model(
            modules.mean_var_norm(modules.compute_features(wavs), lens), lens))

    def augmentation():
        with torch.no_grad():
            return hparams.wav_augment(wavs, lens)

    def features():
        with torch.no_grad():
            return modules.mean_var_norm(modules.compute_features(wavs), lens)

    def checks_and_statistics():
        brain._check_finite(cosines, moved.id, "cosines")
        brain._count(cosines, labels)

    def schedules():
        brain._set_schedules(brain.optimizer_step)

    params = [p for p in modules.parameters() if p.requires_grad]

    def clipping():
        return torch.nn.utils.clip_grad_norm_(params, brain.max_grad_norm)

    parts = {"features + normalisation": features, "checks + statistics": checks_and_statistics,
             "schedules": schedules}
    if getattr(hparams, "augment", False):
        parts = {"augmentation": augmentation, **parts}
    feats, flens, flabels = precomputed_features(brain, batch)
    modules.compute_cost(modules.classifier(modules.embedding_model(feats, flens)), flabels).backward()
    parts["gradient clipping"] = clipping
    results = {}
    for name, function in parts.items():
        function()  # warm-up
        results[name] = statistics.median(timed(function, device)[0] for _ in range(repeats))
    brain.optimizer.zero_grad(set_to_none=True)
    return results


def profile_difference(brain, batch, top=12):
    """torch.profiler operators whose self CPU time grows most from the floor to the step."""
    from torch.profiler import ProfilerActivity, profile

    inputs = precomputed_features(brain, batch)
    totals = {}
    for name, run in (("floor", lambda: floor_step(brain, *inputs)), ("step", lambda: fit_step(brain, batch))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        totals[name] = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    growth = {key: totals["step"].get(key, 0.0) - totals["floor"].get(key, 0.0)
              for key in set(totals["step"]) | set(totals["floor"])}
    return sorted(growth.items(), key=lambda item: -item[1])[:top]


def run(args):
    per_utterance = loader_seconds_per_utterance()
    summary = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
               "classes": args.classes, "cpu_count": os.cpu_count(),
               "load_average_start": [round(x, 2) for x in os.getloadavg()], "results": []}
    for model in args.models:
        for augment in (False, True):
            print(f"{model}, augmentation {'on' if augment else 'off'}", flush=True)
            overrides = {"ecapa_channels": args.ecapa_channels} if model == "ecapa_tdnn" else {}
            brain = recipe_brain(model, device=args.device, batch=args.batch, num_classes=args.classes,
                                 augment=augment, overrides=overrides)
            batch = synthetic_batch(args.batch, num_classes=args.classes)
            steps, floors, ratios = paired_ratios(brain, batch, args.warmup, args.repeats)
            step_s = statistics.median(steps)
            row = {"model": model, "augment": augment, "step_s": round(step_s, 4),
                   "floor_s": round(statistics.median(floors), 4), "ratio": round(statistics.median(ratios), 3),
                   "ratios": [round(r, 3) for r in ratios],
                   "parts_s": {k: round(v, 4) for k, v in part_times(brain, batch, args.repeats).items()}}
            if per_utterance is not None:
                row["loader_s"] = round(per_utterance * args.batch, 4)
                row["loader_share"] = round(per_utterance * args.batch / step_s, 3)
            if args.profile:
                row["profile_growth_s"] = [[k, round(v, 4)] for k, v in profile_difference(brain, batch)]
            summary["results"].append(row)
            print(json.dumps(row), flush=True)
    summary["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return summary


def report(summary):
    print(f"\ntorch {summary['torch']}, {summary['threads']} threads, batch {summary['batch']}, "
          f"{summary['classes']} classes, load average {summary['load_average_start']} -> {summary['load_average_end']}")
    print("\n| model | augmentation | step s | floor s | step / floor (median of pairs) | per pair | "
          "loader CPU s per batch | loader / step |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for r in summary["results"]:
        print(f"| {r['model']} | {'on' if r['augment'] else 'off'} | {r['step_s']:.2f} | {r['floor_s']:.2f} | "
              f"**{r['ratio']:.2f}** | {', '.join(f'{x:.2f}' for x in r['ratios'])} | "
              f"{r.get('loader_s', float('nan')):.2f} | {r.get('loader_share', float('nan')):.2f} |")
    print("\n| model | augmentation | part | s | share of the floor |")
    print("|---|---|---|---:|---:|")
    for r in summary["results"]:
        for part, seconds in r["parts_s"].items():
            print(f"| {r['model']} | {'on' if r['augment'] else 'off'} | {part} | {seconds:.3f} | "
                  f"{seconds / r['floor_s']:.3f} |")
    for r in summary["results"]:
        if "profile_growth_s" in r:
            print(f"\nprofiler, {r['model']} augmentation {'on' if r['augment'] else 'off'}: self CPU s, step - floor")
            for key, seconds in r["profile_growth_s"]:
                print(f"  {key}: {seconds:+.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet34", "ecapa_tdnn"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=17982)
    parser.add_argument("--ecapa-channels", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="print the profiler's operator growth")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    summary = run(args)
    summary["seconds"] = round(time.perf_counter() - began, 1)
    report(summary)
    if args.json:
        from sb_sphereface2.files import write_json_atomic

        write_json_atomic(args.json, {"command": " ".join(sys.argv), **summary})


if __name__ == "__main__":
    main()
