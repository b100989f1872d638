"""Benchmark: data preparation of a large generated corpus, and the audio check's speed.

Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/bench_prepare.py --json benchmarks/results_prepare.json
    PYTHONPATH=$PWD python benchmarks/bench_prepare.py --sizes 2000 --skip-librispeech   # quick look

Two parts, every measured call in its own subprocess (clean peak memory):

1. **Scale.** A tree of N tiny WAV files (1,000 speakers x 2 sessions, 0.2 s each,
   ``--min-seconds 0.1``) is generated and prepared: cold (every file decoded), again
   with the same inputs (the manifest says nothing changed), and again with another
   seed (a new split and new CSVs; the audio from the check's cache). The baseline,
   in the same run, is the least any preparation does per file: ``os.walk`` and a
   ``soundfile.info`` header read of every file in one process (what the 0.1 preparation
   did). "extra MB" is the peak resident size of the preparing process during the call
   minus its size just before (imports excluded); the decoding workers are separate
   processes, their peak is reported apart.
2. **Audio check on real speech.** ``check_audio`` on librispeech-mini (251 FLAC
   recordings, about 52 minutes) and on WAV copies of it, with 1 worker process and
   with the default (the CPUs, at most 16), no cache; files/s, audio seconds per second,
   and the projection to VoxCeleb2-dev (1,092,009 utterances, 7.8 s on average: the
   VoxCeleb2 paper's 2,442 h over 1,128,246 utterances).
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH_MINI = REPO / "data" / "librispeech-mini"
VOXCELEB2_DEV_FILES = 1_092_009
VOXCELEB2_MEAN_SECONDS = 2442 * 3600 / 1_128_246

_CHILD_PRELUDE = """
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
def cpu_s():  # this process and its waited-for children (the decoding workers)
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
"""

_CHILD_PREPARE = _CHILD_PRELUDE + """
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
from sb_sphereface2.data.prepare import prepare_voxceleb
before = rss_mb()
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak counter after the imports
except OSError:
    pass
start, cpu = time.perf_counter(), cpu_s()
out = prepare_voxceleb({root!r}, {save!r}, dev_speakers=20, test_speakers=20, min_seconds=0.1, seed={seed})
seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "cpu_s": cpu, "extra_mb": peak_mb() - before, "worker_peak_mb": children,
                  "train_rows": out["summary"]["train"]["items"]}}))
"""

_CHILD_BASELINE = _CHILD_PRELUDE + """
import soundfile
start, cpu = time.perf_counter(), cpu_s()
frames = 0
for folder, _, names in os.walk({root!r}):
    for name in names:
        if name.endswith(".wav"):
            frames += soundfile.info(os.path.join(folder, name)).frames
seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
print(json.dumps({{"seconds": seconds, "cpu_s": cpu, "frames": frames}}))
"""

_CHILD_CHECK = _CHILD_PRELUDE + """
from sb_sphereface2.data.audio_check import check_audio
paths = sorted(os.path.join(f, n) for f, _, ns in os.walk({root!r}) for n in ns if n.endswith({ext!r}))
keys = [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
start, cpu = time.perf_counter(), cpu_s()
reports, decoded = check_audio(keys, {cache!r}, num_workers={workers}, progress=False)
seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
audio = sum(r.frames / r.sample_rate for r in reports)
print(json.dumps({{"seconds": seconds, "cpu_s": cpu, "files": decoded, "audio_seconds": audio}}))
"""


def _child(code):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generate_tree(root, num_files, seconds=0.2, speakers=1000, sessions=2):
    """num_files tiny WAV files: <root>/spkNNNN/sK/NNNNN.wav (16 kHz PCM-16 noise)."""
    rng = np.random.default_rng(0)
    variants = []
    for _ in range(16):
        buffer = io.BytesIO()
        soundfile.write(buffer, rng.standard_normal(int(seconds * 16000)) * 0.1, 16000, format="WAV", subtype="PCM_16")
        variants.append(buffer.getvalue())
    per_folder = max(1, num_files // (speakers * sessions))
    written = 0
    for s in range(speakers):
        for k in range(sessions):
            folder = root / f"spk{s:04d}" / f"s{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for u in range(per_folder):
                (folder / f"{u:05d}.wav").write_bytes(variants[written % len(variants)])
                written += 1
    return written


def scale(sizes, workdir):
    rows = []
    for size in sizes:
        root, save = workdir / f"tree_{size}", workdir / f"prep_{size}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(save, ignore_errors=True)
        start = time.perf_counter()
        files = generate_tree(root, size)
        generated = time.perf_counter() - start
        baseline = _child(_CHILD_BASELINE.format(repo=str(REPO), root=str(root)))
        run = {"root": str(root), "save": str(save), "repo": str(REPO)}
        cold = _child(_CHILD_PREPARE.format(seed=1, **run))
        skip = _child(_CHILD_PREPARE.format(seed=1, **run))
        cached = _child(_CHILD_PREPARE.format(seed=2, **run))
        csv_mb = (save / "train.csv").stat().st_size / 2**20
        row = {
            "files": files, "generate_s": generated, "baseline_s": baseline["seconds"],
            "cold": cold, "unchanged": skip, "new_seed": cached, "train_csv_mb": csv_mb,
        }
        rows.append(row)
        print(
            f"{files:>7} files: baseline (walk + header read) {baseline['seconds']:.1f} s, CPU {baseline['cpu_s']:.1f} s; "
            f"prepare cold {cold['seconds']:.1f} s ({files / cold['seconds']:.0f} files/s), CPU {cold['cpu_s']:.1f} s "
            f"({cold['cpu_s'] / baseline['cpu_s']:.1f}x baseline CPU), extra {cold['extra_mb']:.0f} MB, "
            f"worker peak {cold['worker_peak_mb']:.0f} MB; unchanged {skip['seconds']:.1f} s; "
            f"new seed (cached audio) {cached['seconds']:.1f} s, extra {cached['extra_mb']:.0f} MB; "
            f"train.csv {csv_mb:.1f} MB",
            flush=True,
        )
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(save, ignore_errors=True)
    return rows


def audio_check_speed(workdir):
    if not LIBRISPEECH_MINI.is_dir():
        raise SystemExit(f"librispeech-mini not found: {LIBRISPEECH_MINI} (or pass --skip-librispeech)")
    wav_root = workdir / "librispeech_wav"
    shutil.rmtree(wav_root, ignore_errors=True)
    for path in sorted(LIBRISPEECH_MINI.glob("*/*/*.flac")):
        target = wav_root / path.relative_to(LIBRISPEECH_MINI).with_suffix(".wav")
        target.parent.mkdir(parents=True, exist_ok=True)
        audio, rate = soundfile.read(path, dtype="int16")
        soundfile.write(target, audio, rate, subtype="PCM_16")
    rows = []
    for label, root, ext in (("FLAC", LIBRISPEECH_MINI, ".flac"), ("WAV", wav_root, ".wav")):
        for workers in (1, "None"):
            cache = tempfile.mkdtemp(dir=workdir)
            result = _child(_CHILD_CHECK.format(repo=str(REPO), root=str(root), ext=ext, cache=cache, workers=workers))
            shutil.rmtree(cache)
            files_per_s = result["files"] / result["seconds"]
            audio_per_cpu_s = result["audio_seconds"] / result["cpu_s"]
            vox2_cpu_h = VOXCELEB2_DEV_FILES * VOXCELEB2_MEAN_SECONDS / audio_per_cpu_s / 3600
            row = {
                "format": label, "workers": "default" if workers == "None" else workers, **result,
                "files_per_s": files_per_s, "files_per_cpu_s": result["files"] / result["cpu_s"],
                "audio_s_per_cpu_s": audio_per_cpu_s,
                "voxceleb2_dev_wall_h_at_this_rate": VOXCELEB2_DEV_FILES / files_per_s / 3600,
                "voxceleb2_dev_cpu_h": vox2_cpu_h,
            }
            rows.append(row)
            print(
                f"audio check, librispeech-mini {label}, workers {row['workers']}: {result['files']} files "
                f"in {result['seconds']:.2f} s ({files_per_s:.0f} files/s), CPU {result['cpu_s']:.2f} s "
                f"({row['files_per_cpu_s']:.0f} files per CPU-s, {audio_per_cpu_s:.0f} s of audio per CPU-s); "
                f"VoxCeleb2-dev: {row['voxceleb2_dev_wall_h_at_this_rate']:.2f} h at this files/s, "
                f"{vox2_cpu_h:.2f} CPU-hours by audio length",
                flush=True,
            )
    shutil.rmtree(wav_root, ignore_errors=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000], help="generated tree sizes")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--skip-librispeech", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"cpus": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}
    try:
        if not args.skip_librispeech:
            results["audio_check"] = audio_check_speed(workdir)
        results["scale"] = scale(args.sizes, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    if args.json:
        sys.path.insert(0, str(REPO))
        from sb_sphereface2.files import write_json_atomic

        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
