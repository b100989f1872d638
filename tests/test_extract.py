"""The embedding extractor and ``python -m sb_sphereface2.embed``: batched embeddings equal
one-at-a-time ones for a length-aware model, a kill -9 mid-run resumes without redoing
finished chunks and gives the same file, bad files are listed and the run goes on, the ONNX
backend equals torch, and the file is what the scoring CLI reads."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sb_sphereface2.scoring.embeddings_io import read_embeddings
from sb_sphereface2.data.utterance_sources import folder_utterances
from sb_sphereface2.scoring.extract import embedder_of_folder, extract, plan_batches
from tests.fixtures import LIBRISPEECH_MINI

REPO = Path(__file__).resolve().parents[1]


def _embed_command(*args):
    return [sys.executable, "-m", "sb_sphereface2.embed", *map(str, args)]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def varied_folder(tmp_path_factory):
    """Real speech of many lengths: two crops of 0.6-7 s from the two halves of each of 12
    librispeech-mini recordings, in speaker folders."""
    root = tmp_path_factory.mktemp("varied")
    recordings = sorted(LIBRISPEECH_MINI.glob("*/*/*.flac"))[:12]
    rng = np.random.default_rng(0)
    for k, path in enumerate(recordings):
        audio, rate = soundfile.read(path, dtype="float32")
        half = len(audio) // 2
        (root / path.parts[-3]).mkdir(exist_ok=True)
        for side in (0, 1):
            seconds = float(rng.uniform(0.6, min(7.0, half / rate)))
            crop = audio[side * half : side * half + int(seconds * rate)]
            soundfile.write(root / path.parts[-3] / f"{2 * k + side:03d}.flac", crop, rate)
    return root


def test_batched_embeddings_equal_one_at_a_time(varied_folder, tiny_model_folder):
    embed, rate = embedder_of_folder(tiny_model_folder)
    utterances = folder_utterances(varied_folder)
    batched = extract(utterances, embed, rate, batch_seconds=60.0, progress=False)
    alone = extract(utterances, embed, rate, batch_seconds=0.0, progress=False)
    batches, _ = plan_batches([float(d) for d in batched.durations], 60.0, 1)
    assert max(len(b) for b in batches) >= 4  # real batching happened
    assert batched.ids == alone.ids == [u.utt_id for u in utterances]
    assert np.abs(batched.embeddings - alone.embeddings).max() <= 1e-5
    assert batched.speakers == [u.split("/")[0] for u in batched.ids]


def test_exact_embeds_a_padding_sensitive_model_one_at_a_time(varied_folder, tiny_model_folders):
    embed, rate = embedder_of_folder(tiny_model_folders["speechbrain_resnet"])
    utterances = folder_utterances(varied_folder)[:6]
    exact = extract(utterances, embed, rate, exact=True, progress=False)
    alone = extract(utterances, embed, rate, batch_seconds=0.0, progress=False)
    batched = extract(utterances, embed, rate, progress=False)
    assert exact.one_at_a_time and exact.padding_change > 1e-3
    assert np.abs(exact.embeddings - alone.embeddings).max() == 0
    assert np.abs(batched.embeddings - alone.embeddings).max() > 1e-4  # why exact exists


def test_bad_files_are_listed_and_the_run_goes_on(varied_folder, tiny_model_folder, tmp_path):
    data = tmp_path / "data"
    good = sorted(varied_folder.rglob("*.flac"))[:3]
    (data / "spk").mkdir(parents=True)
    for k, path in enumerate(good):
        (data / "spk" / f"good{k}.flac").write_bytes(path.read_bytes())
    (data / "spk" / "broken.wav").write_bytes(b"RIFF not audio at all")
    soundfile.write(data / "spk" / "short.wav", np.zeros(1600, np.float32), 16000)
    audio, _ = soundfile.read(good[0], dtype="float32")
    stereo_8k = np.stack([audio[::2], audio[::2]], axis=1)
    soundfile.write(data / "spk" / "stereo8k.wav", stereo_8k, 8000)
    out = tmp_path / "emb.npz"
    result = subprocess.run(_embed_command(tiny_model_folder, "--data-folder", data, "--out", out, "--workers", 1,
                                           "--quiet"), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stderr and "broken.wav: " in result.stderr and "unreadable" in result.stderr
    assert "short.wav: 0.10 s long, shorter than the minimum 0.5 s" in result.stderr
    assert "note: 1 file(s) resampled from 8000 Hz to 16000 Hz" in result.stderr
    assert "note: 1 file(s) 2 channels downmixed to mono" in result.stderr
    skipped = json.loads((tmp_path / "emb.skipped.json").read_text())
    assert sorted(item["id"] for item in skipped) == ["spk/broken", "spk/short"]
    content = read_embeddings(out)
    assert content.ids == ["spk/good0", "spk/good1", "spk/good2", "spk/stereo8k"]
    assert content.model["embedding_model_sha256"] and content.durations[3] == pytest.approx(len(audio[::2]) / 8000)
    assert not (tmp_path / "emb.npz.parts").exists()


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_gives_the_same_file(tiny_model_folder, tmp_path):
    reference = tmp_path / "reference.npz"
    args = ["--data-folder", LIBRISPEECH_MINI, "--chunk-utterances", 16, "--workers", 1, "--quiet"]
    done = subprocess.run(_embed_command(tiny_model_folder, "--out", reference, *args), cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "emb.npz"
    parts = tmp_path / "emb.npz.parts"
    process = subprocess.Popen(_embed_command(tiny_model_folder, "--out", out, *args), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("chunk_*.json"))) < 2:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not out.exists()
    finished = len(list(parts.glob("chunk_*.json")))
    assert finished >= 2
    rerun = subprocess.run(_embed_command(tiny_model_folder, "--out", out, *args), cwd=REPO, env=_env(),
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    kept = int(rerun.stdout.split(" chunks kept")[0].split(", ")[-1].split(" of ")[0])
    assert kept >= finished
    a, b = read_embeddings(reference), read_embeddings(out)
    assert a.ids == b.ids and len(a.ids) == 251
    assert np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.durations, b.durations)
    assert not parts.exists()


@pytest.mark.slow
def test_onnx_backend_equals_torch_and_the_scoring_cli_reads_the_file(varied_folder, tiny_model_folder, tmp_path):
    import shutil

    from sb_sphereface2.scoring import cli

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_folder, folder)
    outputs = {}
    for backend in ("torch", "onnx"):
        outputs[backend] = tmp_path / f"{backend}.npz"
        result = subprocess.run(_embed_command(folder, "--data-folder", varied_folder, "--out", outputs[backend],
                                               "--backend", backend, "--quiet"), cwd=REPO, env=_env(),
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (folder / "embedding_model.onnx").is_file()  # exported on first use
    a, b = read_embeddings(outputs["torch"]), read_embeddings(outputs["onnx"])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    assert a.ids == b.ids and np.abs(unit(a.embeddings) - unit(b.embeddings)).max() <= 1e-4
    ids = a.ids
    speakers = sorted({u.split("/")[0] for u in ids})
    lines = [f"{int(x.split('/')[0] == y.split('/')[0])} {x} {y}" for i, x in enumerate(ids) for y in ids[i + 1 :]]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    assert len(speakers) > 2 and any(line.startswith("1") for line in lines)
    eer = {}
    for backend, path in outputs.items():
        results = cli.main(["--embeddings", str(path), "--trials", str(trials), "--output-dir",
                            str(tmp_path / f"scores_{backend}"), "--quiet"])
        eer[backend] = results["trials"]["eer_percent"]
    assert 0.0 <= eer["torch"] <= 100.0 and eer["onnx"] == pytest.approx(eer["torch"], abs=0.5)
