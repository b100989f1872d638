"""One check of everything that depends on the device, printed as one table.

On the device present (``--device``; default ``cuda`` when there is one, else ``cpu``):

* **loss**: cosine head + loss forward and backward against the matmul floor (the
  head's cosines summed): plain, lean, and lean compiled (``SB_SPHEREFACE2_COMPILE=1``;
  on the CPU the lean kernel compiles by itself from B x C >= 2^19);
* **step**: ``--iterations`` iterations of the recipe's ``SpeakerBrain.fit_batch``
  (ResNet34, 2 s crops of synthetic audio, batch 128, 17,982 classes: the paper's
  settings) in fp32, fp16 with SpeechBrain's GradScaler, bf16, fp32 with the recipe's
  augmentation (synthetic noise and impulse responses), and fp32 with the embedding
  model compiled (SpeechBrain's ``--compile``): utterances/s, peak memory, whether every
  loss was finite;
* **ddp**: the fp32 step under DistributedDataParallel with one process on the device's
  backend (NCCL on CUDA, gloo on the CPU), as ``torchrun`` runs the recipe;
* **embed**: embedding extraction as the scorer does it (whole 8 s utterances, one at a
  time, evaluation mode): utterances/s.

On the CPU the sizes are tiny unless ``--full`` (a tiny ResNet, batch 4, 100 classes;
compile rows only with ``--compile``): the CPU form runs in the test suite so that the
script cannot rot. SpeechBrain refuses ``--precision=fp16`` on the CPU; there the fp16
row runs the same path with float16 CPU autocast and ``torch.amp.GradScaler("cpu")``.
On one H100 the whole check takes a few minutes (sized for at most 8).

Usage (from the repository root):
    benchmarks/device_check.sh                      # cuda when present, else cpu (tiny)
    benchmarks/device_check.sh --json /tmp/device_check.json
"""

import argparse
import gc
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speechbrain as sb  # noqa: E402

from recipe_step import fit_step, recipe_brain, synchronize, synthetic_batch, timed  # noqa: E402

TINY_RESNET = {"resnet_channels": [8, 8, 16, 16], "resnet_blocks": [1, 1, 1, 1], "emb_dim": 32, "n_mels": 40}
COLUMNS = ["check", "setting", "iterations", "result", "vs floor", "peak MB", "finite", "seconds"]


class PeakMemory:
    """Peak memory of a block: CUDA's peak allocation, or on the CPU the peak resident
    size above the size at the start (``/proc/self/clear_refs``)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.mb = math.nan

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif os.path.exists("/proc/self/clear_refs"):
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.before = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 1e6
        elif hasattr(self, "before"):
            self.mb = (_status_kb("VmHWM") - self.before) / 1e3


def _status_kb(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def loss_rows(args):
    """Head + loss forward/backward against the floor, interleaved, median ms."""
    from bench_loss import make_step

    names = ["floor", "plain", "lean"] + (["lean compiled"] if args.compile else [])
    steps = {}
    for name in names:
        os.environ["SB_SPHEREFACE2_COMPILE"] = "1" if name == "lean compiled" else "auto"
        steps[name] = make_step("lean" if name == "lean compiled" else name, args.loss_batch, 256,
                                args.classes, device=args.device)
    times = {name: [] for name in names}
    finite = {name: True for name in names}
    began = time.perf_counter()
    for index in range(2 + args.loss_repeats):  # two warm-up rounds (the compiled kernel compiles)
        for name in names:
            os.environ["SB_SPHEREFACE2_COMPILE"] = "1" if name == "lean compiled" else "auto"
            step, zero = steps[name]
            zero()
            seconds, loss = timed(step, args.device)
            finite[name] &= bool(torch.isfinite(loss))
            if index >= 2:
                times[name].append(seconds)
    os.environ.pop("SB_SPHEREFACE2_COMPILE", None)
    floor = statistics.median(times["floor"])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append(["loss", f"{name}, B={args.loss_batch}, C={args.classes}", args.loss_repeats,
                     f"{median * 1e3:.2f} ms", f"{median / floor:.2f}x", math.nan, "yes" if finite[name] else "NO",
                     time.perf_counter() - began])
    return rows


def _batches(args, seed=0):
    batches = [synthetic_batch(args.batch, num_classes=args.classes, seed=seed + i) for i in range(2)]
    if torch.device(args.device).type == "cuda":
        batches = [batch.pin_memory() for batch in batches]  # as the loader gives them on a GPU
    return batches


def step_row(args, setting, precision="fp32", augment=False, run_opts=None, work=None):
    """``--iterations`` recipe iterations: utterances/s, peak memory, all losses finite."""
    cpu = torch.device(args.device).type == "cpu"
    brain = recipe_brain("resnet34", device=args.device, batch=args.batch, num_classes=args.classes, augment=augment,
                         precision="fp32" if cpu and precision == "fp16" else precision,
                         overrides=args.model_overrides, run_opts=run_opts, work=work)
    if cpu and precision == "fp16":  # the GPU's fp16 path, on the CPU
        from speechbrain.utils.autocast import TorchAutocast

        brain.training_ctx = TorchAutocast(device_type="cpu", dtype=torch.float16)
        brain.scaler = torch.amp.GradScaler("cpu")
    batches = _batches(args)
    began = time.perf_counter()
    finite = True
    for index in range(2):  # warm-up: kernels, the compiled loss kernel or model, the augmentation's files
        finite &= bool(torch.isfinite(fit_step(brain, batches[index % 2])))
    with PeakMemory(args.device) as peak:
        synchronize(args.device)
        start = time.perf_counter()
        for index in range(args.iterations):
            finite &= bool(torch.isfinite(fit_step(brain, batches[index % 2])))
        synchronize(args.device)
        seconds = time.perf_counter() - start
    if precision == "fp16" and brain.scaler.is_enabled():
        setting += f", final scale {brain.scaler.get_scale():g}"
    return brain, ["step", setting, args.iterations, f"{args.iterations * args.batch / seconds:.1f} utt/s", "",
                   peak.mb, "yes" if finite else "NO", time.perf_counter() - began]


def ddp_row(args):
    """The fp32 step under DDP with one process on the device's backend."""
    backend = "nccl" if torch.device(args.device).type == "cuda" else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        sb.utils.distributed.ddp_init_group({"distributed_backend": backend})
        brain, row = step_row(args, f"fp32, DDP 1 process ({backend})", run_opts={"distributed_backend": backend})
        wrapped = type(brain.modules.embedding_model).__name__
        row[1] += f", model {wrapped}"
        return row
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def embed_row(args, brain):
    """Embedding extraction of whole utterances, one at a time, evaluation mode."""
    brain.modules.eval()
    utterances = [synthetic_batch(1, seconds=args.embed_seconds, num_classes=args.classes, seed=100 + i)
                  for i in range(2)]
    began = time.perf_counter()
    finite = True
    with torch.no_grad(), brain.evaluation_ctx:
        for batch in utterances:  # warm-up
            brain.compute_forward(batch, sb.Stage.VALID)
        synchronize(args.device)
        start = time.perf_counter()
        for index in range(args.embed_utterances):
            finite &= bool(torch.isfinite(brain.compute_forward(utterances[index % 2], sb.Stage.VALID)).all())
        synchronize(args.device)
        seconds = time.perf_counter() - start
    return ["embed", f"{args.embed_seconds:g} s utterances, batch 1, fp32",
            args.embed_utterances, f"{args.embed_utterances / seconds:.1f} utt/s", "", math.nan,
            "yes" if finite else "NO", time.perf_counter() - began]


def _progress(row):
    print(_format(row), file=sys.stderr, flush=True)


def _release(device):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run(args):
    rows = loss_rows(args)
    for row in rows:
        _progress(row)
    work = tempfile.mkdtemp(prefix="device_check_")
    for setting, precision, augment, options in (
        ("fp32", "fp32", False, None),
        ("fp16 + GradScaler", "fp16", False, None),
        ("bf16", "bf16", False, None),
        ("fp32 + augmentation", "fp32", True, None),
    ) + ((("fp32, torch.compile(embedding_model)", "fp32", False,
           {"compile": True, "compile_module_keys": ["embedding_model"]}),) if args.compile else ()):
        brain, row = step_row(args, setting, precision, augment, options, work=os.path.join(work, f"{len(rows)}"))
        rows.append(row)
        _progress(row)
        if setting == "fp32":  # its model extracts the embeddings
            rows.append(embed_row(args, brain))
            _progress(rows[-1])
        del brain
        _release(args.device)
    rows.append(ddp_row(args))
    _progress(rows[-1])
    return rows


def _format(row):
    cells = []
    for value in row:
        if isinstance(value, float):
            cells.append("" if math.isnan(value) else f"{value:.1f}")
        else:
            cells.append(str(value))
    return "| " + " | ".join(cells) + " |"


def device_name(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="the paper's sizes on the CPU too")
    parser.add_argument("--iterations", type=int, help="recipe iterations per step row (cuda: 200, cpu: 3)")
    parser.add_argument("--batch", type=int, help="recipe batch (paper: 128; tiny cpu: 4)")
    parser.add_argument("--classes", type=int, help="classes (paper: 17982; tiny cpu: 100)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile rows (default: on cuda only)")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)
    full = args.full or torch.device(args.device).type == "cuda"
    args.iterations = args.iterations or (200 if full else 3)
    args.batch = args.batch or (128 if full else 4)
    args.classes = args.classes or (17982 if full else 100)
    args.compile = (torch.device(args.device).type == "cuda") if args.compile is None else args.compile
    args.model_overrides = {} if full else TINY_RESNET
    args.loss_batch = 128 if full else 8
    args.loss_repeats = 20 if full else 3
    args.embed_seconds = 8.0 if full else 2.0
    args.embed_utterances = 200 if full else 3
    began = time.perf_counter()
    print(f"device check on {device_name(args.device)}: torch {torch.__version__}, speechbrain {sb.__version__}, "
          f"{'paper sizes' if full else 'tiny sizes'} (batch {args.batch}, {args.classes} classes)",
          file=sys.stderr, flush=True)
    rows = run(args)
    total = time.perf_counter() - began
    print(f"device check on {device_name(args.device)}: torch {torch.__version__}, speechbrain {sb.__version__}, "
          f"{'paper sizes' if full else 'tiny sizes'} (batch {args.batch}, {args.classes} classes, "
          f"2.015 s crops), {total:.0f} s in all\n")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print(_format(row))
    bad = [row for row in rows if row[6] != "yes"]
    if args.json:
        from sb_sphereface2.files import write_json_atomic

        write_json_atomic(args.json, {"command": " ".join(sys.argv), "device": device_name(args.device),
                                      "seconds": round(total, 1), "columns": COLUMNS, "rows": rows})
    if bad:
        print(f"error: non-finite losses in {len(bad)} row(s): {', '.join(row[1] for row in bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
