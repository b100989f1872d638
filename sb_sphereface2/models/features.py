"""Kaldi-compatible log mel filterbanks for a batch of waveforms (the paper's features).

The paper trains with wespeaker, which computes features with
``torchaudio.compliance.kaldi.fbank`` one utterance at a time: the waveform scaled to the
16-bit range, 25 ms frames every 10 ms that fit entirely in the signal, dither 1.0 while
training (0 when embedding test data), per-frame DC removal, pre-emphasis 0.97, a Hamming
window (``window_type='hamming'`` in wespeaker's ``compute_fbank``), a 512-point power
spectrum, 80 triangular mel bins from 20 Hz to Nyquist, natural log floored at float
epsilon, no energy column. ``KaldiFbank`` computes the same for a whole batch at once
(tests compare it with torchaudio's function) and is a ``torch.nn.Module`` in the place
of SpeechBrain's ``Fbank`` (``compute_features`` in the hparams and in model folders).
"""

import torch
from torchaudio.compliance.kaldi import get_mel_banks

WINDOWS = ("hamming", "povey", "hanning", "rectangular")


def _window(kind, size):
    if kind == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46)
    if kind == "povey":
        return torch.hann_window(size, periodic=False).pow(0.85)
    if kind == "hanning":
        return torch.hann_window(size, periodic=False)
    return torch.ones(size)


class KaldiFbank(torch.nn.Module):
    """Kaldi/wespeaker log mel filterbanks of a batch: [B, T] waveforms -> [B, frames, n_mels].

    Arguments
    ---------
    n_mels : int
        Number of mel bins (80 in the paper).
    sample_rate : int
        Sampling rate of the input.
    frame_length, frame_shift : float
        In milliseconds (25 and 10).
    dither : float
        Standard deviation of the Gaussian noise added to each frame in training mode, in
        16-bit sample units (wespeaker: 1.0). Nothing is added in eval mode.
    preemphasis : float
        Pre-emphasis coefficient (0.97).
    low_freq, high_freq : float
        Mel range in Hz; ``high_freq <= 0`` is an offset from Nyquist (20, 0).
    window : str
        "hamming" (wespeaker), "povey" (Kaldi's default), "hanning" or "rectangular".
    input_scale : float
        Multiplies the waveform first: 32768 turns [-1, 1] audio into Kaldi's 16-bit units.

    Example
    -------
    >>> fbank = KaldiFbank(n_mels=40).eval()
    >>> fbank(torch.randn(3, 16000) * 0.1).shape   # 1 s: 1 + (16000 - 400) // 160 frames
    torch.Size([3, 98, 40])
    """

    def __init__(self, n_mels=80, sample_rate=16000, frame_length=25.0, frame_shift=10.0, dither=1.0,
                 preemphasis=0.97, low_freq=20.0, high_freq=0.0, window="hamming", input_scale=32768.0):
        super().__init__()
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
        if not 0.0 <= preemphasis <= 1.0:
            raise ValueError(f"preemphasis must be in [0, 1], got {preemphasis}")
        if dither < 0:
            raise ValueError(f"dither must be >= 0, got {dither}")
        self.n_mels = int(n_mels)
        self.sample_rate = int(sample_rate)
        self.window_size = int(sample_rate * frame_length / 1000)
        self.window_shift = int(sample_rate * frame_shift / 1000)
        if self.window_size < 2 or self.window_shift < 1:
            raise ValueError(f"frame_length/frame_shift too small for {sample_rate} Hz")
        self.fft_size = 1 << (self.window_size - 1).bit_length()
        self.dither = float(dither)
        self.preemphasis = float(preemphasis)
        self.input_scale = float(input_scale)
        self.window_type = window
        self.register_buffer("window", _window(window, self.window_size).float(), persistent=False)
        banks, _ = get_mel_banks(self.n_mels, self.fft_size, float(sample_rate), float(low_freq),
                                 float(high_freq), 100.0, -500.0, 1.0)
        # get_mel_banks covers fft_size / 2 bins; the Nyquist bin gets weight 0 (as Kaldi).
        banks = torch.nn.functional.pad(banks, (0, 1))
        self.register_buffer("mel_banks", banks.T.contiguous().float(), persistent=False)

    def forward(self, wavs):
        """Filterbanks of ``wavs`` [B, T] (or [T]): [B, frames, n_mels], frames =
        1 + (T - window) // shift (frames that fit entirely, Kaldi's ``snip_edges``)."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.shape[-1] < self.window_size:
            raise ValueError(
                f"waveform of {wavs.shape[-1]} samples is shorter than one frame ({self.window_size})"
            )
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            frames = (wavs.float() * self.input_scale).unfold(-1, self.window_size, self.window_shift)
            if self.training and self.dither > 0:
                frames = frames + self.dither * torch.randn_like(frames)
            frames = frames - frames.mean(dim=-1, keepdim=True)
            if self.preemphasis:
                previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
                frames = frames - self.preemphasis * previous
            frames = frames * self.window
            power = torch.fft.rfft(frames, n=self.fft_size).abs().pow(2)
            energies = power @ self.mel_banks
            return energies.clamp(min=torch.finfo(torch.float32).eps).log()

    def extra_repr(self):
        return (
            f"n_mels={self.n_mels}, sample_rate={self.sample_rate}, window={self.window_type!r}, "
            f"dither={self.dither}, preemphasis={self.preemphasis}, fft_size={self.fft_size}"
        )

