"""KaldiFbank computes torchaudio's Kaldi-compatible fbank (wespeaker's features) for a batch."""

import pytest
import torch
from torchaudio.compliance import kaldi

from sb_sphereface2.models.features import KaldiFbank


def _reference(wav, window, n_mels=80):
    """wespeaker's compute_fbank: the waveform in 16-bit units, kaldi.fbank per utterance."""
    return kaldi.fbank(wav[None] * 32768, num_mel_bins=n_mels, frame_length=25, frame_shift=10, dither=0.0,
                       sample_frequency=16000, window_type=window, use_energy=False)


@pytest.mark.parametrize("window", ["hamming", "povey"])
def test_batch_equals_torchaudio_per_utterance(window):
    torch.manual_seed(0)
    wavs = torch.randn(3, 32240) * 0.1  # 200 frames: (200 - 1) x 160 + 400 samples
    wavs[1] *= 0.001                     # a quiet one: the log floor matters
    ours = KaldiFbank(n_mels=80, window=window).eval()(wavs)
    assert ours.shape == (3, 200, 80)
    for row, wav in zip(ours, wavs):
        torch.testing.assert_close(row, _reference(wav, window), rtol=1e-5, atol=1e-4)


def test_dither_only_in_training_mode():
    wav = torch.zeros(1, 16000)
    fbank = KaldiFbank(n_mels=24)
    silent = fbank.eval()(wav)
    assert torch.all(silent == torch.log(torch.tensor(torch.finfo(torch.float32).eps)))
    dithered = fbank.train()(wav)
    assert bool((dithered > silent + 1).all())  # dither 1.0 in 16-bit units lifts every bin


def test_bad_settings_and_too_short_input():
    with pytest.raises(ValueError, match="window must be one of"):
        KaldiFbank(window="kaiser")
    with pytest.raises(ValueError, match="shorter than one frame"):
        KaldiFbank().eval()(torch.zeros(2, 100))
