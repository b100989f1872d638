"""Utterances/s of the training loader: the CSV path and the tar-shard path.

What one utterance costs (in the DataLoader workers, as in training): read (CSV path:
the WAV span a crop needs; shard path: the tar record, then FLAC decode), a random speed
(0.9/1.0/1.1, torchaudio resampling), a 2.015 s (200-frame) random crop; with
``+aug+fbank`` also the recipe's augmentation (``ReverbOrNoise``: probability 0.6,
reverberation or MUSAN-style noise, mixed by ``speechbrain.augment``) and 80-bin Kaldi
fbank (the recipe's ``KaldiFbank``), run per
batch in the workers through ``collate_fn`` (in training they run in the Brain, on the
GPU when there is one: then only the first column matters for the CPU).

Corpus: librispeech-mini (real speech, 16 kHz) cut into utterances of about 7 s (VoxCeleb2
averages 7.8 s) and written as WAV, as ``recipes/VoxCeleb/convert_m4a.sh`` writes
VoxCeleb2; the shards are packed from that CSV (FLAC inside). Noise and impulse responses
for the augmentation are synthetic. Everything sits in the page cache after the first
pass, so this measures CPU cost, not disk reads (where shards help most: sequential reads
of large files instead of one random read per utterance).

Each configuration runs ``--epochs`` full epochs after one warm-up epoch, timing the
wall clock from the start of the epoch's iteration (worker start-up included) to its
last batch. "per worker" divides by the workers; it is the per-core rate when the
machine has a free core per worker (the report prints the load average).

Usage (from the repository root):
    PYTHONPATH=$PWD python benchmarks/bench_loader.py --json benchmarks/results_loader.json
"""

import argparse
import json
import os
import sys
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechbrain.dataio.batch import PaddedBatch  # noqa: E402
from speechbrain.dataio.dataloader import make_dataloader  # noqa: E402

from sb_sphereface2.data.dataio import training_dataset  # noqa: E402
from sb_sphereface2.data.shard_writer import pack_shards  # noqa: E402
from sb_sphereface2.data.shards import shard_loader  # noqa: E402
from sb_sphereface2.data.speakers import label_encoder, read_speakers  # noqa: E402
from sb_sphereface2.data.speed import SPEEDS, speed_labels  # noqa: E402

RATE = 16000
LIBRISPEECH_MINI = ROOT / "data" / "librispeech-mini"


def make_corpus(folder, utterance_seconds=7.0):
    """librispeech-mini recordings cut into WAV utterances; returns the training CSV."""
    recordings = sorted(LIBRISPEECH_MINI.glob("*/*/*.flac"))
    if not recordings:
        sys.exit(f"error: test data missing: {LIBRISPEECH_MINI}")
    rows, piece = [], int(utterance_seconds * RATE)
    for recording in recordings:
        audio, rate = soundfile.read(recording, dtype="float32")
        speaker = recording.parts[-3]
        for index in range(len(audio) // piece):
            path = folder / "wav" / speaker / f"{index}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, audio[index * piece : (index + 1) * piece], rate, subtype="PCM_16")
            rows.append(f"{speaker}/s/{index},{utterance_seconds},{path},0,{piece},{speaker}\n")
    csv_path = folder / "train.csv"
    csv_path.write_text("ID,duration,wav,start,stop,spk_id\n" + "".join(rows))
    return str(csv_path)


def make_augmentation(folder):
    """The recipe's augmentation (``ReverbOrNoise``, probability 0.6) over synthetic MUSAN-like
    folders (5 s noise files) and decaying-noise impulse responses."""
    from sb_sphereface2.data.augmentation import ReverbOrNoise, prepare_musan, prepare_rir

    rng = np.random.default_rng(0)
    for kind in ("noise", "speech", "music", "rir"):
        sub = folder / "sources" / kind
        sub.mkdir(parents=True, exist_ok=True)
        for index in range(5):
            if kind == "rir":
                length = int(0.4 * RATE)
                signal = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.05 * RATE))
                signal[0] = 1.0
            else:
                signal = rng.standard_normal(5 * RATE) * 0.1
            soundfile.write(sub / f"{index}.wav", signal.astype(np.float32), RATE)
    csvs = folder / "csv"
    prepare_musan(str(folder / "sources"), str(csvs), sample_rate=RATE)
    prepare_rir(str(folder / "sources" / "rir"), str(csvs), sample_rate=RATE)
    return ReverbOrNoise(str(csvs), augment_prob=0.6, sample_rate=RATE)


class AugmentAndFbank:
    """collate_fn: the batch (a PaddedBatch, or items to make one) -> augmented Kaldi fbank
    (the recipe's ``KaldiFbank``, 80 bins, dither 1.0)."""

    def __init__(self, augment):
        from sb_sphereface2.models.features import KaldiFbank

        self.augment, self.fbank = augment, KaldiFbank(n_mels=80, sample_rate=RATE, dither=1.0, window="hamming")

    def __call__(self, batch):
        if not isinstance(batch, PaddedBatch):
            batch = PaddedBatch(batch)
        with torch.no_grad():
            wavs, lens = self.augment(batch.sig.data, batch.sig.lengths)
            feats = self.fbank(wavs)
        return SimpleBatch(batch.id, feats)


class SimpleBatch:
    def __init__(self, ids, feats):
        self.id, self.feats = ids, feats


def epoch_rate(loader, clock, epoch):
    clock.current = epoch
    began = time.perf_counter()
    utterances = sum(len(batch.id) for batch in loader)
    return utterances, time.perf_counter() - began


def run(args):
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    csv_path = make_corpus(work)
    shards = str(work / "shards")
    began = time.perf_counter()
    pack_shards(csv_path, shards, utterances_per_shard=args.utterances_per_shard)
    pack_seconds = time.perf_counter() - began
    speakers = read_speakers(csv_path)
    encoder = label_encoder(speed_labels(speakers, SPEEDS), str(work / "label_encoder.txt"))
    augment = make_augmentation(work / "augment")
    utterances = sum(1 for _ in open(csv_path)) - 1
    print(f"{utterances} utterances of {len(speakers)} speakers; packed into shards in {pack_seconds:.1f} s", flush=True)
    results = []
    for stage in ("load", "load+aug+fbank"):
        for workers in args.workers:
            for path in ("csv", "shards"):
                clock = SimpleNamespace(current=1)
                common = dict(crop_seconds=2.015, speeds=SPEEDS, seed=1, epoch_source=clock)
                post = {"collate_fn": AugmentAndFbank(augment)} if stage != "load" else {}
                if path == "csv":
                    data = training_dataset(csv_path, encoder, **common)
                    loader = make_dataloader(data, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                             **({"collate_fn": PaddedBatch} | post))
                else:
                    loader = shard_loader(shards, encoder, args.batch_size, num_workers=workers,
                                          shuffle_buffer=args.shuffle_buffer, **common, **post)
                epoch_rate(loader, clock, 1)  # warm-up: page cache, resampling kernels
                counted, seconds = 0, 0.0
                for epoch in range(2, 2 + args.epochs):
                    n, s = epoch_rate(loader, clock, epoch)
                    counted, seconds = counted + n, seconds + s
                rate = counted / seconds
                row = {"stage": stage, "path": path, "workers": workers, "utterances": counted,
                       "seconds": round(seconds, 3), "utt_per_s": round(rate, 1),
                       "utt_per_s_per_worker": round(rate / max(1, workers), 1)}
                results.append(row)
                print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"utterances": utterances, "pack_seconds": round(pack_seconds, 2), "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "torch_threads": torch.get_num_threads(),
            "results": results}


def report(summary, target):
    print(f"\nmachine: {summary['cpu_count']} cores, load average at the end {summary['load_average']}")
    print("\n| stage | path | workers | utt/s | utt/s per worker | shard/CSV |")
    print("|---|---|---:|---:|---:|---:|")
    by_key = {(r["stage"], r["path"], r["workers"]): r for r in summary["results"]}
    for r in summary["results"]:
        base = by_key[(r["stage"], "csv", r["workers"])]["utt_per_s"]
        ratio = f"{r['utt_per_s'] / base:.2f}" if r["path"] == "shards" else ""
        print(f"| {r['stage']} | {r['path']} | {r['workers']} | {r['utt_per_s']:.0f} | {r['utt_per_s_per_worker']:.0f} | {ratio} |")
    print()
    for stage in ("load", "load+aug+fbank"):
        for path in ("csv", "shards"):
            rows = [r for r in summary["results"] if r["stage"] == stage and r["path"] == path and r["workers"] == 1]
            if rows:
                print(f"cores to feed {target} utt/s ({stage}, {path}): {target / rows[0]['utt_per_s_per_worker']:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--utterances-per-shard", type=int, default=100)
    parser.add_argument("--shuffle-buffer", type=int, default=500)
    parser.add_argument("--target", type=float, default=500.0, help="utterances/s a GPU trainer needs")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    summary = run(args)
    report(summary, args.target)
    if args.json:
        from sb_sphereface2.files import write_json_atomic

        write_json_atomic(args.json, {"command": " ".join(sys.argv), **summary})


if __name__ == "__main__":
    main()
