"""Embedding extraction speed: the project's extractor (torch and onnxruntime backends) and
SpeechBrain's ``EncoderClassifier.encode_batch`` called per file, each as a ratio to the
floor measured in the same run: the bare embedding-model forward on the same batches of
precomputed features (front end and mean normalisation done beforehand, untimed).

Corpus: librispeech-mini recordings (real speech, 16 kHz) cut into utterances of 3-12 s
(FLAC), at least ``--minutes`` of speech in all. Models: random-weight model folders of the
``resnet34`` and ``ecapa_tdnn`` blocks (``--resnet-channels`` / ``--ecapa-channels`` set
their widths; the defaults are the recipe's full sizes). Two batchings: batch size 1 (every
utterance alone: the extractor with ``batch_seconds=0``, SpeechBrain per file) and batched
by duration (``--batch-seconds`` of padded audio per batch, the extractor's plan).

What the extractor's time includes: header reads, the padding probe, decoding in
``--workers`` DataLoader workers, fbank, mean normalisation and the model. Each round runs
every configuration once, in the same order (interleaved); the table gives the median over
rounds of each ratio to the floor of the same batching in the same round.

Usage (from the repository root):
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_embed.py --json benchmarks/results_embed.json
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sb_sphereface2.data.audio import read_converted  # noqa: E402
from sb_sphereface2.data.speakers import label_encoder  # noqa: E402
from sb_sphereface2.data.utterance_sources import folder_utterances  # noqa: E402
from sb_sphereface2.hparams import load_recipe_hparams  # noqa: E402
from sb_sphereface2.pretrained.folder import inference_hparams_yaml, load_for_inference, write_model_folder  # noqa: E402
from sb_sphereface2.pretrained.onnx_export import OnnxEmbedder, export_onnx  # noqa: E402
from sb_sphereface2.pretrained.pipeline import pipeline_of_folder, torch_embedder  # noqa: E402
from sb_sphereface2.scoring.extract import extract, plan_batches  # noqa: E402

RATE = 16000
LIBRISPEECH_MINI = ROOT / "data" / "librispeech-mini"
STAGE = str(ROOT / "hparams" / "train.yaml")


def make_corpus(folder, minutes, seed=0):
    """librispeech-mini cut into 3-12 s FLAC utterances, ``minutes`` of speech at least."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for path in sorted(LIBRISPEECH_MINI.glob("*/*/*.flac")):
        audio, rate = soundfile.read(path, dtype="float32")
        speaker = folder / path.parts[-3]
        speaker.mkdir(parents=True, exist_ok=True)
        begin, k = 0, 0
        while total < minutes * 60:
            length = int(rng.uniform(3.0, 12.0) * rate)
            if begin + length > len(audio):
                break
            soundfile.write(speaker / f"{k:03d}.flac", audio[begin : begin + length], rate)
            begin, k, total = begin + length, k + 1, total + length / rate
        if total >= minutes * 60:
            break
    return total


def make_model_folder(base, model, overrides):
    """A random-weight model folder of a model block (seeded)."""
    encoder = base / f"{model}_labels.txt"
    label_encoder([f"s{i}" for i in range(10)], str(encoder))
    overrides = {"data_folder": str(base), "model": model, "speed_perturb": False, **overrides}
    torch.manual_seed(0)
    hparams = load_recipe_hparams(STAGE, overrides, num_classes=10)
    states = {name: hparams[name].state_dict() for name in ("embedding_model", "classifier")}
    return write_model_folder(str(base / model), inference_hparams_yaml(STAGE, overrides, num_classes=10), states,
                              str(encoder))


def floor_batches(pipeline, utterances, batches):
    """The precomputed (features, frame fractions) of every batch, untimed."""
    prepared = []
    with torch.no_grad():
        for batch in batches:
            signals = [read_converted(utterances[i].path, RATE)[0] for i in batch]
            lengths = torch.tensor([len(s) for s in signals])
            wavs = torch.zeros(len(signals), int(lengths.max()))
            for row, signal in enumerate(signals):
                wavs[row, : len(signal)] = signal
            prepared.append(pipeline.features(wavs, lengths.float() / lengths.max()))
    return prepared


def time_floor(pipeline, prepared):
    began = time.perf_counter()
    with torch.no_grad():
        for feats, lens in prepared:
            pipeline.embedding_model(feats, lens)
    return time.perf_counter() - began


def time_extract(utterances, embed, batch_seconds, workers):
    began = time.perf_counter()
    extract(utterances, embed, RATE, batch_seconds=batch_seconds, workers=workers, progress=False)
    return time.perf_counter() - began


def time_speechbrain(model, utterances):
    """``EncoderClassifier.encode_batch`` per file, reading included (as users call it)."""
    began = time.perf_counter()
    with torch.no_grad():
        for utt in utterances:
            model.encode_batch(read_converted(utt.path, RATE)[0][None])
    return time.perf_counter() - began


def bench_model(name, folder, utterances, seconds, args):
    from speechbrain.inference.classifiers import EncoderClassifier

    pipeline, _ = pipeline_of_folder(folder)
    torch_embed = torch_embedder(pipeline)
    onnx_embed = OnnxEmbedder(export_onnx(folder), threads=torch.get_num_threads())
    speechbrain = load_for_inference(folder, cls=EncoderClassifier)
    batched, _ = plan_batches(seconds, args.batch_seconds, len(seconds))
    single, _ = plan_batches(seconds, 0.0, len(seconds))
    prepared = {"batched": floor_batches(pipeline, utterances, batched),
                "1": floor_batches(pipeline, utterances, single)}
    rounds = []
    for round_number in range(args.rounds):
        t = {
            "floor_batched": time_floor(pipeline, prepared["batched"]),
            "torch_batched": time_extract(utterances, torch_embed, args.batch_seconds, args.workers),
            "onnx_batched": time_extract(utterances, onnx_embed, args.batch_seconds, args.workers),
            "floor_1": time_floor(pipeline, prepared["1"]),
            "torch_1": time_extract(utterances, torch_embed, 0.0, args.workers),
            "speechbrain_1": time_speechbrain(speechbrain, utterances),
        }
        rounds.append(t)
        print(f"{name} round {round_number + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()), flush=True)

    def median(key):
        return statistics.median(r[key] for r in rounds)

    def ratio(a, b):
        return statistics.median(r[a] / r[b] for r in rounds)

    audio = float(sum(seconds))
    return {
        "audio_seconds": audio, "utterances": len(seconds), "batches": len(batched),
        "median_seconds": {key: median(key) for key in rounds[0]},
        "ratio_to_floor": {"torch_batched": ratio("torch_batched", "floor_batched"),
                           "onnx_batched": ratio("onnx_batched", "floor_batched"),
                           "torch_1": ratio("torch_1", "floor_1"),
                           "speechbrain_1": ratio("speechbrain_1", "floor_1")},
        "onnx_over_torch_batched": ratio("onnx_batched", "torch_batched"),
        "utterances_per_second": {key: len(seconds) / median(key) for key in rounds[0]},
        "rounds": rounds,
    }


def table(results):
    lines = ["| model | batching | floor (model forward) | extractor, torch | extractor, onnxruntime | "
             "SpeechBrain encode_batch per file |", "|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        s, q = r["median_seconds"], r["ratio_to_floor"]
        lines.append(f"| {name} | batched ({r['batches']} batches) | {s['floor_batched']:.2f} s | "
                     f"{s['torch_batched']:.2f} s ({q['torch_batched']:.2f}x) | "
                     f"{s['onnx_batched']:.2f} s ({q['onnx_batched']:.2f}x; {r['onnx_over_torch_batched']:.2f}x torch) "
                     "| - |")
        lines.append(f"| {name} | 1 | {s['floor_1']:.2f} s | {s['torch_1']:.2f} s ({q['torch_1']:.2f}x) | - | "
                     f"{s['speechbrain_1']:.2f} s ({q['speechbrain_1']:.2f}x) |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of speech embedded per pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["resnet34", "ecapa_tdnn"])
    parser.add_argument("--resnet-channels", type=int, nargs=4, default=[32, 64, 128, 256])
    parser.add_argument("--ecapa-channels", type=int, default=1024)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        audio = make_corpus(base / "corpus", args.minutes)
        utterances = folder_utterances(base / "corpus")
        seconds = [soundfile.info(u.path).frames / RATE for u in utterances]
        print(f"{len(utterances)} utterances, {audio / 60:.1f} min of speech; {torch.get_num_threads()} thread(s), "
              f"{args.workers} worker(s), load average {os.getloadavg()[0]:.1f}", flush=True)
        sizes = {"resnet34": {"resnet_channels": args.resnet_channels},
                 "ecapa_tdnn": {"ecapa_channels": args.ecapa_channels}}
        results = {"settings": {**vars(args), "threads": torch.get_num_threads(),
                                "load_average_start": os.getloadavg()[0]}, "models": {}}
        for model in args.models:
            folder = make_model_folder(base, model, sizes[model])
            results["models"][model] = bench_model(model, folder, utterances, seconds, args)
        results["settings"]["load_average_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
