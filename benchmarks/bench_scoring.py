"""Benchmark: exact metrics against SpeechBrain's functions, and AS-norm against its floor.

Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/bench_scoring.py            # everything (~10 min, 2 cores)
    PYTHONPATH=$PWD python benchmarks/bench_scoring.py --only asnorm
    PYTHONPATH=$PWD python benchmarks/bench_scoring.py --quick    # small sizes only

AS-norm is measured against its floor, in one process on the same arrays, interleaved
(floor, ours, ours, floor, ... so that load from other processes falls on both), median of
``--repeats`` rounds: the floor is the L2 normalisation of the raw embeddings, a plain
chunked ``torch.mm`` of them by the cohort + ``torch.topk`` + ``torch.std_mean`` of the
top-N scores, then, for the trials, a gather of both sides' unit rows by integer index,
their dot product and the AS-norm formula on the gathered statistics; ours is the whole
``score_trial_list(norm="asnorm").scores`` call from string IDs and raw embeddings (ID lookup, mean
subtraction, normalisation, the same chunked statistics). The ratio ours / floor is
printed for the cohort statistics alone and for the whole scoring call.

Every case runs in its own subprocess, so its peak memory is measured cleanly: "extra
memory" is the peak resident size during the timed call minus the resident size just
before it (inputs included in neither). SpeechBrain's ``EER`` and ``minDCF`` run only at
sizes they finish quickly and within memory (its ``minDCF`` needs
thresholds × targets floats); ratios are taken at those sizes, in the same run.

A second AS-norm baseline is the per-trial algorithm of SpeechBrain's VoxCeleb
cosine-scoring recipe (score both sides against the whole cohort, top-N, mean/std, for
every trial), rewritten here with torch; it is timed on a sample of trials and its
per-trial cost is multiplied out (marked "extrapolated").
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
    if case == "loop_asnorm":
        import torch
        from sb_sphereface2.scoring.normalization import l2_normalize
        rng = np.random.default_rng(1)
        n_utts, n_cohort, dim, top_n = size, 6000, 256, 300
        units = l2_normalize(rng.standard_normal((n_utts, dim), dtype=np.float32))
        cohort_t = l2_normalize(rng.standard_normal((n_cohort, dim), dtype=np.float32))
        # Per-trial baseline (SpeechBrain recipe's algorithm), timed on a sample of trials.
        sample = 300
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


def asnorm_side_by_side(n_utts, n_trials, n_cohort=6000, dim=256, top_n=300, repeats=3,
                        chunk_size=4096):
    """AS-norm: ours against the plain floor, same arrays, interleaved rounds (see the module
    docstring); returns medians and ratios."""
    import torch
    from sb_sphereface2.data.trials import TrialList
    from sb_sphereface2.scoring.normalization import cohort_statistics, l2_normalize
    from sb_sphereface2.scoring.trial_scores import score_trial_list

    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((n_utts, dim), dtype=np.float32)
    cohort = l2_normalize(rng.standard_normal((n_cohort, dim), dtype=np.float32))
    enrol = rng.integers(0, n_utts, n_trials)
    test = rng.integers(0, n_utts, n_trials)
    ids = [f"id{i // 50:05d}/video{i % 7}/{i:08d}" for i in range(n_utts)]
    trials = TrialList("bench", (rng.random(n_trials) < 0.5).astype(np.int8),
                       [ids[i] for i in enrol], [ids[i] for i in test])
    index = {u: i for i, u in enumerate(ids)}
    units = l2_normalize(embeddings)
    enrol_t, test_t = torch.from_numpy(enrol), torch.from_numpy(test)

    raw = torch.from_numpy(embeddings)

    def floor_statistics(units):
        means = torch.empty(n_utts)
        stds = torch.empty(n_utts)
        for start in range(0, n_utts, chunk_size):
            top = torch.topk(torch.mm(units[start:start + chunk_size], cohort.T), top_n, dim=1).values
            stds[start:start + chunk_size], means[start:start + chunk_size] = torch.std_mean(top, dim=1)
        return means, stds

    def floor_scoring():
        units = torch.nn.functional.normalize(raw, dim=1)
        means, stds = floor_statistics(units)
        scores = (units[enrol_t] * units[test_t]).sum(dim=1)
        return 0.5 * ((scores - means[enrol_t]) / stds[enrol_t] + (scores - means[test_t]) / stds[test_t])

    cases = {
        "floor_statistics": lambda: floor_statistics(units)[0],
        "ours_statistics": lambda: cohort_statistics(units, cohort, top_n=top_n, chunk_size=chunk_size).mean,
        "floor_scoring": floor_scoring,
        "ours_scoring": lambda: score_trial_list(index, embeddings, trials, cohort=cohort, top_n=top_n, norm="asnorm").scores,
    }
    # Same answers, up to float32 rounding (summation order), magnified by AS-norm's division.
    difference = float(np.max(np.abs(np.asarray(cases["floor_scoring"]()) - cases["ours_scoring"]())))
    times = {name: [] for name in cases}
    with torch.no_grad():
        for round_ in range(repeats):
            names = list(cases) if round_ % 2 == 0 else list(reversed(cases))
            for name in names:
                start = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - start)
    median = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "utterances": n_utts, "trials": n_trials, "cohort": n_cohort, "dim": dim, "top_n": top_n,
        "repeats": repeats, "threads": torch.get_num_threads(), "times": times, "median": median,
        "statistics_ratio": median["ours_statistics"] / median["floor_statistics"],
        "scoring_ratio": median["ours_scoring"] / median["floor_scoring"],
        "max_abs_difference": difference,
    }


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
    parser.add_argument("--only", choices=("metrics", "asnorm"), help="run one part only")
    parser.add_argument("--utterances", type=int, default=60_000, help="AS-norm: utterances (default 60,000)")
    parser.add_argument("--trials", type=int, default=230_000, help="AS-norm: trials (default 230,000)")
    parser.add_argument("--repeats", type=int, default=5, help="AS-norm: interleaved rounds (median)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size)))
        return

    raw, lines = {}, []
    if args.only != "asnorm":
        lines += metrics_table(args.quick, raw)
    if args.only != "metrics":
        lines += asnorm_table(args, raw)
    print("\n".join(lines))
    if args.json:  # update the file: a part run alone keeps the other part's figures
        previous = {}
        if os.path.isfile(args.json):
            with open(args.json) as handle:
                previous = json.load(handle)
        with open(args.json, "w") as handle:
            json.dump({**previous, **raw}, handle, indent=2)


def _record(raw, key, value):
    raw[key] = value
    print(f"  {key}: {value['seconds']:.4f} s, +{value['extra_mb']:.0f} MB", file=sys.stderr, flush=True)
    return value


def metrics_table(quick, raw):
    """EER and minDCF, ours against SpeechBrain's, each case in its own process."""
    eer_sizes = [5_000, 20_000] if quick else [5_000, 10_000, 20_000, 40_000]
    dcf_sizes = [2_000, 5_000] if quick else [2_500, 5_000, 10_000]
    big_sizes = [100_000] if quick else [579_818, 5_000_000]
    rows = []
    print("metrics", file=sys.stderr)
    for metric, sb_case, ours_case, sizes in (("EER", "sb_eer", "ours_eer", eer_sizes),
                                              ("minDCF", "sb_mindcf", "ours_mindcf", dcf_sizes)):
        for n in sizes:
            sb = _record(raw, f"{sb_case}@{n}", _subprocess(sb_case, n))
            ours = _record(raw, f"{ours_case}@{n}", _subprocess(ours_case, n))
            rows.append((f"{metric}, {n:,} trials", sb["seconds"], sb["extra_mb"], ours["seconds"],
                         ours["extra_mb"], sb["seconds"] / ours["seconds"],
                         abs(100 * sb["value"] - 100 * ours["value"]) if metric == "EER"
                         else abs(sb["value"] - ours["value"])))
        for n in big_sizes:
            ours = _record(raw, f"{ours_case}@{n}", _subprocess(ours_case, n))
            rows.append((f"{metric}, {n:,} trials", None, None, ours["seconds"], ours["extra_mb"], None, None))
    lines = [
        "| case | SpeechBrain s | SpeechBrain extra MB | ours s | ours extra MB | speed-up | |Δ| |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, sb_s, sb_mb, ours_s, ours_mb, ratio, delta in rows:
        cells = [name, f"{sb_s:.3f}" if sb_s is not None else "not run", f"{sb_mb:.0f}" if sb_mb is not None else "",
                 f"{ours_s:.4f}", f"{ours_mb:.0f}", f"{ratio:,.0f}×" if ratio is not None else "",
                 f"{delta:.2g}" if delta is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def asnorm_table(args, raw):
    """AS-norm against its floor (side by side) and against the per-trial loop."""
    n_utts, n_trials = (20_000, 60_000) if args.quick else (args.utterances, args.trials)
    print("AS-norm", file=sys.stderr)
    side = asnorm_side_by_side(n_utts, n_trials, repeats=args.repeats)
    raw["asnorm_side_by_side"] = side
    loop = _record(raw, f"loop_asnorm@{n_utts}", _subprocess("loop_asnorm", n_utts))
    loop_total = loop["per_trial_seconds"] * n_trials
    m = side["median"]
    return [
        f"AS-norm, {n_utts:,} utterances × {side['cohort']:,} cohort, D = {side['dim']}, top {side['top_n']}, "
        f"{n_trials:,} trials; median of {side['repeats']} interleaved rounds, {side['threads']} torch threads:",
        "",
        "| step | floor s | ours s | ours / floor |",
        "|---|---:|---:|---:|",
        f"| cohort statistics of every utterance (floor: chunked `torch.mm` + `torch.topk` + `torch.std_mean`) | "
        f"{m['floor_statistics']:.2f} | {m['ours_statistics']:.2f} | {side['statistics_ratio']:.2f}× |",
        f"| whole scoring (floor: L2 normalisation + the statistics + integer-index trial gather + dot + "
        f"formula; ours: `score_trial_list(norm='asnorm').scores` from string IDs) | {m['floor_scoring']:.2f} | "
        f"{m['ours_scoring']:.2f} | {side['scoring_ratio']:.2f}× |",
        "",
        f"Largest difference between the two scorings: {side['max_abs_difference']:.1e}.",
        f"Per-trial loop (SpeechBrain recipe's algorithm): {loop['per_trial_seconds'] * 1e3:.2f} ms/trial, "
        f"{loop_total:,.0f} s extrapolated to {n_trials:,} trials: {loop_total / m['ours_scoring']:,.0f}× ours.",
    ]


if __name__ == "__main__":
    main()
