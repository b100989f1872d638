"""Forward+backward time and peak memory of SphereFace2 implementations against the floor.

Every implementation starts from the same embeddings x [B, D] and class weights
W [C, D] and runs the cosine head (F.linear of the L2-normalised x and W) then its
loss, then backward to x and W:

* floor: the head's cosines summed (no implementation can do less);
* plain: ``SphereFace2Loss(implementation="plain")``, the eager autograd formula;
* lean: ``SphereFace2Loss()`` (default), loss and gradient in one chunked pass, its
  elementwise kernel compiled by ``torch.compile`` (on CPU, for B x C >= 2^19);
* lean_eager: the same with ``SB_SPHEREFACE2_COMPILE=0`` (the fallback when no
  compiler is available);
* sb_aam: SpeechBrain's ``LogSoftmaxWrapper(AdditiveAngularMargin(m=0.2, s=30))``.

Time: of the whole step, and of the loss alone (from given cosines to their
gradient; its floor is ``cos.sum()``). Implementations run round-robin (so that load
from other processes spreads over all of them), a few warm-up rounds (the first
compiles the lean kernel), then the median of ``--repeats`` rounds, as wall-clock time
and as the process's CPU time (with one thread, CPU time is much less disturbed by
other processes on a shared machine than wall time; with two, it also counts the
threads' waiting).

Memory: each implementation runs in a fresh subprocess with glibc's mmap threshold
fixed at 64 KiB, so every large tensor is its own mapping, returned to the system
when freed; after one warm-up step (kernels, MKL workspaces) the gradients are
dropped, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``) and one
forward+backward step runs; the peak RSS above the RSS before the step is what the
step needed at its peak (all allocations, torch's and the libraries', counted once).
Reported as MB and as [B, C] float32 buffers beyond the floor, for the whole step
(head + loss; at B = 128, D = 256 the peak of the step falls in the backward of the
weight normalisation, [C, D] sized, after the loss's buffers are gone) and for the
loss alone (cosines given as a leaf; floor: their sum, whose gradient is one [B, C]
buffer).

Usage (from the repository root):
    PYTHONPATH=$PWD python benchmarks/bench_loss.py
    PYTHONPATH=$PWD python benchmarks/bench_loss.py --classes 17982 --threads 1 --no-memory
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

IMPLEMENTATIONS = ("floor", "plain", "lean", "lean_eager", "sb_aam")
# SB_SPHEREFACE2_COMPILE for each implementation that reads it.
COMPILE_SETTING = {"lean": "auto", "lean_eager": "0"}


def make_step(name, batch, dim, classes, seed=0, loss_only=False, device="cpu"):
    """Return (step, zero): step() runs one forward+backward of implementation ``name``
    on ``device`` and returns the loss, zero() drops the gradients. With ``loss_only`` the cosines are
    computed once and step() runs the loss alone, from the cosines (a leaf) to their
    gradient."""
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

    from sb_sphereface2.models.head import SphereFace2Head
    from sb_sphereface2.losses.sphereface2 import SphereFace2Loss

    torch.manual_seed(seed)
    head = SphereFace2Head(dim, classes).to(device)
    x = torch.randn(batch, dim, device=device, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), device=device)
    if name == "floor":
        loss_fn = lambda cos, y: cos.sum()  # noqa: E731
    elif name in ("plain", "lean", "lean_eager"):
        loss_fn = SphereFace2Loss(classes, implementation="plain" if name == "plain" else "lean").to(device)
    elif name == "sb_aam":
        aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30.0))
        loss_fn = lambda cos, y: aam(cos, y.unsqueeze(1))  # noqa: E731
    else:
        raise ValueError(f"unknown implementation {name!r}")

    setting = COMPILE_SETTING.get(name)
    if loss_only:
        cosines = head(x).detach().requires_grad_()

        def step():
            if setting is not None:
                os.environ["SB_SPHEREFACE2_COMPILE"] = setting
            loss = loss_fn(cosines, labels)
            loss.backward()
            return loss.detach()

    else:
        cosines = None

        def step():
            if setting is not None:
                os.environ["SB_SPHEREFACE2_COMPILE"] = setting
            loss = loss_fn(head(x), labels)
            loss.backward()
            return loss.detach()

    def zero():
        if cosines is not None:
            cosines.grad = None
        x.grad = None
        head.weight.grad = None
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn.zero_grad(set_to_none=True)

    return step, zero


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak_memory(name, batch, dim, classes, loss_only):
    """Run in a fresh process: bytes of peak RSS above the RSS before one step."""
    step, zero = make_step(name, batch, dim, classes, loss_only=loss_only)
    step()
    zero()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    step()
    return (_status_kb("VmHWM") - before) * 1024


def peak_memory_in_subprocess(name, batch, dim, classes, loss_only=False):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    code = (
        "import json, sys; sys.path.insert(0, %r); "
        "from bench_loss import measure_peak_memory; "
        "print(json.dumps(measure_peak_memory(%r, %d, %d, %d, %r)))"
    ) % (os.path.dirname(os.path.abspath(__file__)), name, batch, dim, classes, loss_only)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_round_robin(batch, dim, classes, warmup, repeats, loss_only=False):
    """Per implementation: lists of wall-clock and CPU seconds of the timed rounds."""
    steps = {
        name: make_step(name, batch, dim, classes, loss_only=loss_only) for name in IMPLEMENTATIONS
    }
    wall = {name: [] for name in IMPLEMENTATIONS}
    cpu = {name: [] for name in IMPLEMENTATIONS}
    for round_index in range(warmup + repeats):
        for name, (step, zero) in steps.items():
            zero()
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if round_index >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, nargs="+", default=[5994, 17982, 100000])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}, B={args.batch}, D={args.dim}, "
          f"{os.cpu_count()} CPUs")
    print()
    print("| C | impl | step ms (median) | step / floor | IQR / median | step CPU / floor CPU "
          "| step peak MB | step peak - floor, [B,C] f32 buffers "
          "| loss-only peak - floor, [B,C] f32 buffers | loss-only ms (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for classes in args.classes:
        times, cpu_times = time_round_robin(args.batch, args.dim, classes, args.warmup, args.repeats)
        loss_times, _ = time_round_robin(
            args.batch, args.dim, classes, args.warmup, args.repeats, loss_only=True
        )
        memory = {
            name: math.nan if args.no_memory else peak_memory_in_subprocess(name, args.batch, args.dim, classes)
            for name in IMPLEMENTATIONS
        }
        loss_memory = {
            name: math.nan if args.no_memory
            else peak_memory_in_subprocess(name, args.batch, args.dim, classes, True)
            for name in IMPLEMENTATIONS
        }
        buffer = 4 * args.batch * classes
        floor_time = statistics.median(times["floor"])
        floor_cpu = statistics.median(cpu_times["floor"])
        for name in IMPLEMENTATIONS:
            median = statistics.median(times[name])
            q = statistics.quantiles(times[name], n=4)
            print(
                f"| {classes} | {name} | {median * 1e3:.1f} | {median / floor_time:.2f} "
                f"| {(q[2] - q[0]) / median:.2f} "
                f"| {statistics.median(cpu_times[name]) / floor_cpu:.2f} | {memory[name] / 1e6:.0f} "
                f"| {(memory[name] - memory['floor']) / buffer:+.2f} "
                f"| {(loss_memory[name] - loss_memory['floor']) / buffer:+.2f} "
                f"| {statistics.median(loss_times[name]) * 1e3:.1f} |",
                flush=True,
            )
    print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
