"""ONNX export of every model block: onnxruntime reproduces torch's embeddings (unit
normalised, max abs difference <= 1e-4) on real speech of 0.5-20 s, alone and as one
zero-padded batch of unequal lengths; the command line writes MODEL_FOLDER/embedding_model.onnx."""

import numpy as np
import pytest
import soundfile
import torch

from sb_sphereface2.pretrained.onnx_export import ONNX_FILE, OnnxEmbedder, export_onnx
from sb_sphereface2.pretrained.pipeline import pipeline_of_folder
from tests.fixtures import LIBRISPEECH_MINI

CROP_SECONDS = (0.5, 1.7, 4.0, 9.3, 20.0)


def real_utterances(sample_rate=16000):
    """Crops of librispeech-mini of CROP_SECONDS (20 s: two recordings joined)."""
    recordings = sorted(LIBRISPEECH_MINI.glob("*/*/*.flac"))[:12]
    audio = np.concatenate([soundfile.read(path, dtype="float32")[0] for path in recordings[:3]])
    offsets = np.linspace(0, len(audio) - 20 * sample_rate - 1, len(CROP_SECONDS)).astype(int)
    return [torch.from_numpy(audio[o : o + int(s * sample_rate)].copy()) for o, s in zip(offsets, CROP_SECONDS)]


def unit(x):
    return torch.nn.functional.normalize(torch.as_tensor(np.asarray(x)), dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet34", "ecapa_tdnn", "speechbrain_resnet"])
def test_onnxruntime_matches_torch_on_real_speech(model, tiny_model_folders, tmp_path):
    folder = tiny_model_folders[model]
    path = export_onnx(folder, tmp_path / "model.onnx")
    embedder = OnnxEmbedder(path)
    pipeline, _ = pipeline_of_folder(folder)
    utterances = real_utterances()
    with torch.no_grad():
        for wav in utterances:  # alone: every length from 0.5 to 20 s
            ones = torch.ones(1)
            assert (unit(embedder(wav[None], ones)) - unit(pipeline(wav[None], ones))).abs().max() <= 1e-4
        lengths = torch.tensor([len(w) for w in utterances])
        wavs = torch.zeros(len(utterances), int(lengths.max()))
        for row, wav in enumerate(utterances):
            wavs[row, : len(wav)] = wav
        lens = lengths / lengths.max()
        batched = embedder(wavs, lens)
        assert (unit(batched) - unit(pipeline(wavs, lens))).abs().max() <= 1e-4
    assert batched.shape == (len(utterances), 32)


@pytest.mark.slow
def test_command_writes_the_onnx_file_into_the_model_folder(tiny_model_folder, tmp_path, capsys):
    import shutil

    from sb_sphereface2.onnx import main

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_folder, folder)
    assert main([str(folder)]) == 0
    assert (folder / ONNX_FILE).stat().st_size > 0
    assert str(folder / ONNX_FILE) in capsys.readouterr().out


def test_command_reports_a_bad_folder_on_one_line(tmp_path, capsys):
    from sb_sphereface2.onnx import main

    (tmp_path / "hyperparams.yaml").write_text("pretrainer: [")
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not valid yaml" in err
