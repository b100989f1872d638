"""The recipe learns from real speech: a small model trained on librispeech-mini speakers
scores held-out speakers clearly better than the same network untrained and than an MFCC
mean/std cosine baseline on the same trials. (LibriSpeech, CC BY 4.0.)

Held out: every 4th speaker; each recording is cut in quarters, quarters 1-2 as session 1
and 3-4 as session 2, and every session-1 quarter is compared with every session-2 quarter
(targets: the same recording). Training speakers give their recording's two halves.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.lobes.features import MFCC

from tools.corpus_split import split_recordings
from sb_sphereface2.scoring.metrics import compute_eer
from sb_sphereface2.scoring.trial_scores import score_trials
from sb_sphereface2.data.trials import read_trials

ROOT = Path(__file__).resolve().parents[1]
LIBRISPEECH_MINI = ROOT.parent / "shared" / "data" / "librispeech-mini"

# Small-CPU schedule, by command-line overrides only (the recipe's defaults stay the
# paper's): a small ResNet, Adam, SphereFace2-C with its margin ramped 0 -> 0.1 over epochs
# 8-16 (this little data cannot hold the paper's 0.2).
SMALL = {
    "device": "cpu", "num_workers": 0, "augment": False, "speed_perturb": False, "dev_speakers": 0,
    "n_mels": 40, "resnet_channels": "[8,16,32,32]", "resnet_blocks": "[1,1,1,1]", "emb_dim": 128,
    "batch_size": 32, "opt_class": "!name:torch.optim.Adam", "lr": 0.003, "final_lr": 0.0002,
    "warmup_epochs": 1, "margin": 0.1, "margin_start_epoch": 8, "margin_fix_epoch": 16,
    "average_last": 3, "number_of_epochs": 20,
}
# The same network with no training step: one epoch at a negligible learning rate (the
# batch-norm statistics still see the data).
UNTRAINED = {"number_of_epochs": 1, "lr": 1e-12, "final_lr": 1e-12, "warmup_epochs": 0, "average_last": 1}


def run(script, *args):
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    if result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stderr[-3000:]}")


@pytest.fixture(scope="module")
def quarters_corpus(tmp_path_factory):
    if not LIBRISPEECH_MINI.is_dir():
        pytest.fail(f"librispeech-mini not found at {LIBRISPEECH_MINI} (../shared/data beside the repo)")
    return split_recordings(LIBRISPEECH_MINI, tmp_path_factory.mktemp("quarters"))


def mfcc_baseline_eer(data, trials):
    """MFCC (20) mean and std per utterance, held-out mean subtracted, cosine."""
    mfcc = MFCC(n_mfcc=20, deltas=False, context=False)
    ids = trials.utterances()
    rows = []
    for utt in ids:
        audio, _ = soundfile.read(data / f"{utt}.flac", dtype="float32")
        feats = mfcc(torch.from_numpy(audio)[None])[0]
        rows.append(torch.cat([feats.mean(0), feats.std(0)]).numpy())
    emb = np.stack(rows)
    scores = score_trials(ids, emb, trials, mean=emb.mean(0))
    return 100 * compute_eer(scores, trials.labels)[0]


def recipe_eer(model_folder, data_prep, out):
    run("recipes/VoxCeleb/score.py", "hparams/verification.yaml", "--device=cpu",
        f"--model_folder={model_folder}", f"--data_prep_folder={data_prep}", f"--output_folder={out}",
        "--cohort_utterances_per_speaker=1", "--calibrate=False")
    results = json.loads((out / "results.json").read_text())["results"]
    return results["trials (cosine)"]["eer_percent"]


def test_trained_model_beats_untrained_and_mfcc(quarters_corpus, tmp_path):
    data, trials_path = quarters_corpus
    trials = read_trials(trials_path)
    assert trials.labels.sum() >= 200 and len(trials) > 10000

    untrained = tmp_path / "untrained"
    trained = tmp_path / "trained"
    for out, changes in ((untrained, UNTRAINED), (trained, {})):
        settings = {**SMALL, **changes, "data_folder": data, "trial_lists": f"[{trials_path}]", "output_folder": out}
        run("recipes/VoxCeleb/train.py", "hparams/train.yaml", *(f"--{k}={v}" for k, v in settings.items()))

    eer_trained = recipe_eer(trained / "model", trained / "data", tmp_path / "scores_trained")
    eer_untrained = recipe_eer(untrained / "model", untrained / "data", tmp_path / "scores_untrained")
    eer_mfcc = mfcc_baseline_eer(data, trials)
    print(f"EER %: trained {eer_trained:.2f}, untrained {eer_untrained:.2f}, MFCC {eer_mfcc:.2f}")
    assert eer_trained < eer_untrained - 5.0
    assert eer_trained < eer_mfcc - 2.0
