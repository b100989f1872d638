"""Benchmark: exact metrics and AS-norm at VoxCeleb1-E scale against SpeechBrain's functions.

Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/bench_scoring.py            # whole table (~5 min, 2 cores)
    PYTHONPATH=$PWD python benchmarks/bench_scoring.py --quick    # small sizes only

Every case runs in its own subprocess, so its peak memory is measured cleanly: "extra
memory" is the peak resident size during the timed call minus the resident size just
before it (inputs included in neither). SpeechBrain's ``EER`` and ``minDCF`` run only at
sizes they finish quickly and within memory (its ``minDCF`` needs
thresholds × targets floats); ratios are taken at those sizes, in the same run.

The AS-norm baseline is the per-trial algorithm of SpeechBrain's VoxCeleb cosine-scoring
recipe (score both sides against the whole cohort, top-N, mean/std, for every trial),
rewritten here with torch; it is timed on a sample of trials and its per-trial cost is
multiplied out (marked "extrapolated").
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak():
    """Reset the kernel's peak-RSS counter (VmHWM) of this process, where Linux allows."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trials(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    scores = np.where(labels, rng.normal(0.55, 0.12, n), rng.normal(0.05, 0.09, n))
    return scores.astype(np.float32), labels


def _timed(function, repeats=1):
    _reset_peak()
    before = _rss_mb()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "extra_mb": max(0.0, _peak_mb() - before), "value": value}


def run_case(case, size):
    """One measurement in this process; returns a JSON-ready dict."""
    if case in ("ours_eer", "ours_mindcf", "sb_eer", "sb_mindcf"):
        scores, labels = _trials(size)
        if case == "ours_eer":
            from sb_sphereface2.scoring.metrics import compute_eer
            result = _timed(lambda: compute_eer(scores, labels)[0], repeats=3 if size < 10**6 else 1)
        elif case == "ours_mindcf":
            from sb_sphereface2.scoring.metrics import compute_min_dcf
            result = _timed(lambda: compute_min_dcf(scores, labels, 0.01)[0],
                            repeats=3 if size < 10**6 else 1)
        else:
            import torch
            from speechbrain.utils.metric_stats import EER, minDCF
            torch.set_num_threads(2)
            positives = torch.from_numpy(scores[labels])
            negatives = torch.from_numpy(scores[~labels])
            if case == "sb_eer":
                result = _timed(lambda: EER(positives, negatives)[0])
            else:  # unnormalised in SpeechBrain: divide by min(p, 1 - p) = 0.01
                result = _timed(lambda: minDCF(positives, negatives, p_target=0.01)[0] / 0.01)
        return result
    if case in ("ours_asnorm_stats", "ours_asnorm_trials", "loop_asnorm"):
        import torch
        from sb_sphereface2.scoring.normalization import cohort_statistics, l2_normalize
        torch.set_num_threads(2)
        rng = np.random.default_rng(1)
        n_utts, n_cohort, dim, top_n = size, 6000, 256, 300
        embeddings = rng.standard_normal((n_utts, dim), dtype=np.float32)
        cohort = l2_normalize(rng.standard_normal((n_cohort, dim), dtype=np.float32)).numpy()
        if case == "ours_asnorm_stats":
            return _timed(lambda: float(cohort_statistics(
                l2_normalize(embeddings), cohort, top_n=top_n).mean.mean()))
        if case == "ours_asnorm_trials":
            from sb_sphereface2.scoring.trial_scores import score_trials
            from sb_sphereface2.data.trials import TrialList
            n_trials = 579_818
            ids = [f"u{i}" for i in range(n_utts)]
            enrol = rng.integers(0, n_utts, n_trials)
            test = rng.integers(0, n_utts, n_trials)
            trials = TrialList("bench", (rng.random(n_trials) < 0.5).astype(np.int8),
                               [ids[i] for i in enrol], [ids[i] for i in test])
            index = {u: i for i, u in enumerate(ids)}
            return _timed(lambda: float(score_trials(
                index, embeddings, trials, cohort=cohort, top_n=top_n, norm="asnorm").mean()))
        # Per-trial baseline (SpeechBrain recipe's algorithm), timed on a sample of trials.
        sample = 300
        units = l2_normalize(embeddings)
        cohort_t = torch.from_numpy(cohort)
        pairs = rng.integers(0, n_utts, (sample, 2))

        def loop():
            out = []
            for e, t in pairs:
                enrol_vec, test_vec = units[e], units[t]
                score = torch.dot(enrol_vec, test_vec)
                top_e = torch.topk(cohort_t @ enrol_vec, top_n).values
                top_t = torch.topk(cohort_t @ test_vec, top_n).values
                out.append(0.5 * ((score - top_e.mean()) / top_e.std()
                                  + (score - top_t.mean()) / top_t.std()))
            return float(torch.stack(out).mean())

        result = _timed(loop)
        result["per_trial_seconds"] = result["seconds"] / sample
        return result
    raise ValueError(f"unknown case {case}")


def _subprocess(case, size, timeout=900):
    env = dict(os.environ)
    command = [sys.executable, __file__, "--case", case, "--size", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{case} {size} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size)))
        return

    eer_sizes = [5_000, 20_000] if args.quick else [5_000, 10_000, 20_000, 40_000]
    dcf_sizes = [2_000, 5_000] if args.quick else [2_500, 5_000, 10_000]
    big_sizes = [100_000] if args.quick else [579_818, 5_000_000]
    asnorm_utts = 20_000 if args.quick else 150_000
    rows, raw = [], {}

    def record(key, value):
        raw[key] = value
        print(f"  {key}: {value['seconds']:.4f} s, +{value['extra_mb']:.0f} MB", file=sys.stderr, flush=True)
        return value

    print("metrics", file=sys.stderr)
    for metric, sb_case, ours_case, sizes in (("EER", "sb_eer", "ours_eer", eer_sizes),
                                              ("minDCF", "sb_mindcf", "ours_mindcf", dcf_sizes)):
        for n in sizes:
            sb = record(f"{sb_case}@{n}", _subprocess(sb_case, n))
            ours = record(f"{ours_case}@{n}", _subprocess(ours_case, n))
            rows.append((f"{metric}, {n:,} trials", sb["seconds"], sb["extra_mb"], ours["seconds"],
                         ours["extra_mb"], sb["seconds"] / ours["seconds"],
                         abs(100 * sb["value"] - 100 * ours["value"]) if metric == "EER"
                         else abs(sb["value"] - ours["value"])))
        for n in big_sizes:
            ours = record(f"{ours_case}@{n}", _subprocess(ours_case, n))
            rows.append((f"{metric}, {n:,} trials", None, None, ours["seconds"], ours["extra_mb"],
                         None, None))

    print("AS-norm", file=sys.stderr)
    stats = record(f"ours_asnorm_stats@{asnorm_utts}", _subprocess("ours_asnorm_stats", asnorm_utts))
    trials = record(f"ours_asnorm_trials@{asnorm_utts}", _subprocess("ours_asnorm_trials", asnorm_utts))
    loop = record(f"loop_asnorm@{asnorm_utts}", _subprocess("loop_asnorm", asnorm_utts))
    loop_total = loop["per_trial_seconds"] * 579_818

    lines = [
        "| case | SpeechBrain s | SpeechBrain extra MB | ours s | ours extra MB | speed-up | |Δ| |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, sb_s, sb_mb, ours_s, ours_mb, ratio, delta in rows:
        cells = [name,
                 f"{sb_s:.3f}" if sb_s is not None else "not run",
                 f"{sb_mb:.0f}" if sb_mb is not None else "",
                 f"{ours_s:.4f}", f"{ours_mb:.0f}",
                 f"{ratio:,.0f}×" if ratio is not None else "",
                 f"{delta:.2g}" if delta is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"AS-norm, {asnorm_utts:,} utterances × 6,000 cohort, D = 256, top 300, 579,818 trials:",
        "",
        "| step | seconds | extra MB |",
        "|---|---:|---:|",
        f"| ours: cohort statistics of every utterance | {stats['seconds']:.1f} | {stats['extra_mb']:.0f} |",
        f"| ours: whole `score_trials(norm='asnorm')` (IDs, cosine, statistics, gather) | "
        f"{trials['seconds']:.1f} | {trials['extra_mb']:.0f} |",
        f"| per-trial loop (recipe algorithm), {loop['per_trial_seconds'] * 1e3:.2f} ms/trial, "
        f"extrapolated to 579,818 trials | {loop_total:.0f} | {loop['extra_mb']:.0f} |",
        "",
        f"AS-norm speed-up of the whole call over the per-trial loop: "
        f"{loop_total / trials['seconds']:,.0f}×.",
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(raw, handle, indent=2)


if __name__ == "__main__":
    main()
