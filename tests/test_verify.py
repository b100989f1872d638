"""Calibration that travels with the model and ``python -m sb_sphereface2.verify``, on a
tiny model trained by the recipe (10 librispeech-mini speakers, 1 epoch): score.py
``--store_calibration`` writes the QMF calibration into the model folder, verify prints the
LLR score.py gave the same trial; wrong rates and stereo are converted with a note, a short
clip is a one-line error; ``python -m sb_sphereface2.embed`` output scores to score.py's EER."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
TINY = ["--device=cpu", "--num_workers=0", "--augment=False", "--speed_perturb=False", "--n_mels=24",
        "--resnet_channels=[4,4,8,8]", "--resnet_blocks=[1,1,1,1]", "--emb_dim=32", "--batch_size=16",
        "--dev_speakers=0", "--warmup_epochs=0", "--number_of_epochs=1", "--average_last=1",
        "--margin_start_epoch=0", "--margin_fix_epoch=1"]


def _env():
    import os

    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _run(*command, timeout=600):
    return subprocess.run([sys.executable, *map(str, command)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _trial_lines(speakers, seed, count=32):
    rng = np.random.default_rng(seed)
    lines = [f"1 {s}/s1/{a:05d}.flac {s}/s2/{b:05d}.flac" for s in speakers for a in (1, 2) for b in (3, 4)]
    utts = [f"{s}/s{1 + k // 2}/{k + 1:05d}" for s in speakers for k in range(4)]
    while len(lines) < count:
        i, j = rng.choice(len(utts), 2, replace=False)
        if utts[i].split("/")[0] != utts[j].split("/")[0]:
            lines.append(f"0 {utts[i]}.flac {utts[j]}.flac")
    return lines


@pytest.fixture(scope="module")
def scored(librispeech_voxceleb_tree, tmp_path_factory):
    """A trained tiny model, scored by score.py with a QMF calibration stored (asnorm)."""
    tree = librispeech_voxceleb_tree
    base = tmp_path_factory.mktemp("verify")
    corpus = base / "corpus"
    trial_speakers, train_speakers = tree.trial_speakers[:4], tree.train_speakers[:6]
    for speaker in trial_speakers + train_speakers:
        shutil.copytree(tree.root / speaker, corpus / speaker)
    trial_list = base / "vox_tiny.txt"
    trial_list.write_text("\n".join(_trial_lines(trial_speakers, 3)) + "\n")
    calibration = base / "calibration.txt"
    calibration.write_text("\n".join(_trial_lines(train_speakers, 4)) + "\n")
    run = base / "run"
    trained = _run(REPO / "recipes/VoxCeleb/train.py", "hparams/train.yaml", *TINY, f"--data_folder={corpus}",
                   f"--trial_lists=[{trial_list}]", f"--output_folder={run}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = base / "scores"
    score = _run(REPO / "recipes/VoxCeleb/score.py", "hparams/verification.yaml", f"--model_folder={run / 'model'}",
                 f"--data_prep_folder={run / 'data'}", f"--output_folder={out}", "--cohort_utterances_per_speaker=2",
                 "--top_n=4", f"--calibration_trials={calibration}", "--store_calibration=asnorm")
    assert score.returncode == 0, score.stderr[-3000:]
    return {"model": run / "model", "prep": run / "data", "out": out, "corpus": corpus, "trials": trial_list,
            "calibration": calibration, "score": score}


@pytest.mark.slow
def test_score_py_stores_the_calibration_and_verify_gives_its_llr(scored, tmp_path):
    record = json.loads((scored["model"] / "calibration.json").read_text())
    assert record["kind"] == "qmf" and record["scoring"] == "asnorm" and record["prior"] == 0.5
    assert record["trial_list"]["path"] == str(scored["calibration"])
    assert record["quality_measures"] == ["duration", "imposter_mean"]
    assert "calibration (asnorm) stored in" in scored["score"].stdout
    lines = (scored["out"] / "asnorm" / "scores" / "vox_tiny.txt").read_text().splitlines()
    for line in (lines[0], lines[-1]):
        label, enrol, test, score, llr = line.split()[:5]
        result = _run("-m", "sb_sphereface2.verify", scored["model"], scored["corpus"] / f"{enrol}.flac",
                      scored["corpus"] / f"{test}.flac")
        assert result.returncode == 0, result.stderr[-2000:]
        printed = dict(row.split(": ", 1) for row in result.stdout.splitlines())
        assert float(printed["score (asnorm, training mean subtracted)"]) == pytest.approx(float(score), abs=1e-3)
        assert float(printed["llr"].split()[0]) == pytest.approx(float(llr), abs=1e-3)
        same = float(llr) > 0.0
        assert printed["decision at prior 0.5"].startswith("same speaker" if same else "different speakers")
    # Another prior moves the threshold to log((1 - P) / P).
    result = _run("-m", "sb_sphereface2.verify", scored["model"], scored["corpus"] / f"{enrol}.flac",
                  scored["corpus"] / f"{test}.flac", "--prior", "0.01")
    assert "decision at prior 0.01:" in result.stdout and "4.595)" in result.stdout


@pytest.mark.slow
def test_verify_converts_rate_and_channels_with_a_note_and_refuses_a_short_clip(scored, tmp_path):
    enrol = next(scored["corpus"].rglob("*.flac"))
    audio, rate = soundfile.read(enrol, dtype="float32")
    stereo = tmp_path / "stereo_8k.wav"
    soundfile.write(stereo, np.stack([audio[::2], audio[::2]], axis=1), rate // 2)
    result = _run("-m", "sb_sphereface2.verify", scored["model"], enrol, stereo)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"note: {stereo}: 2 channels downmixed to mono" in result.stderr
    assert f"note: {stereo}: resampled from 8000 Hz to 16000 Hz" in result.stderr
    assert "llr: " in result.stdout
    short = tmp_path / "short.wav"
    soundfile.write(short, audio[:3200], rate)
    result = _run("-m", "sb_sphereface2.verify", scored["model"], enrol, short)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"error: {short} is 0.20 s long, shorter than the minimum 0.5 s\n"


@pytest.mark.slow
def test_verify_without_a_calibration_prints_the_cosine_only(scored, tiny_model_folder):
    wav = next(scored["corpus"].rglob("*.flac"))
    result = _run("-m", "sb_sphereface2.verify", tiny_model_folder, wav, wav)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("cosine: 1.0000\n") and "no LLR" in result.stdout


@pytest.mark.slow
def test_store_calibration_without_a_calibration_list_is_a_one_line_error(scored, tmp_path):
    result = _run(REPO / "recipes/VoxCeleb/score.py", "hparams/verification.yaml", f"--model_folder={scored['model']}",
                  f"--data_prep_folder={scored['prep']}", f"--output_folder={tmp_path / 'out'}",
                  "--store_calibration=asnorm")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --store_calibration needs --calibration_trials=... (the list to fit it on)"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_embed_command_output_scores_to_the_eer_of_score_py(scored, tmp_path):
    from sb_sphereface2.scoring import cli

    emb = tmp_path / "emb.npz"
    result = _run("-m", "sb_sphereface2.embed", scored["model"], "--data-folder", scored["corpus"], "--out", emb,
                  "--quiet", "--workers", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    results = cli.main(["--embeddings", str(emb), "--trials", str(scored["trials"]), "--train-embeddings",
                        str(scored["out"] / "embeddings_train.npz"), "--output-dir", str(tmp_path / "s"), "--quiet",
                        "--no-plots"])
    reference = json.loads((scored["out"] / "results.json").read_text())["results"]["vox_tiny (cosine)"]
    assert results["vox_tiny"]["eer_percent"] == pytest.approx(reference["eer_percent"], abs=1e-6)
    assert results["vox_tiny"]["min_dcf_0.01"] == pytest.approx(reference["min_dcf_0.01"], abs=1e-6)


@pytest.mark.slow
def test_a_calibration_of_other_weights_is_a_one_line_error(scored, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(scored["model"], folder)
    import torch

    state = torch.load(folder / "embedding_model.ckpt", map_location="cpu")
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, folder / "embedding_model.ckpt")
    wav = next(scored["corpus"].rglob("*.flac"))
    result = _run("-m", "sb_sphereface2.verify", folder, wav, wav)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"error: {folder / 'calibration.json'} was fitted for other weights than "
                             f"{folder / 'embedding_model.ckpt'}: rerun score.py --store_calibration\n")
    shutil.copytree(scored["model"], tmp_path / "model2")
    (tmp_path / "model2" / "calibration_statistics.npz").write_bytes(b"replaced")
    result = _run("-m", "sb_sphereface2.verify", tmp_path / "model2", wav, wav)
    assert result.returncode == 1 and "is missing or is not the one" in result.stderr and result.stderr.count("\n") == 1
