"""Reading training segments: part of an audio file, a speed change, a random crop.

- :func:`read_segment`: samples ``start..stop`` of a file (a path or in-memory bytes),
  through SpeechBrain's audio I/O with a frame offset, so only that span is decoded.
- :func:`change_speed`: resampling that plays a signal ``speed`` times faster
  (Kaldi/wespeaker-style speed perturbation: length and pitch change together).
- :func:`read_converted`: a whole file (or a span) at the rate a model needs, whatever
  its rate and channels: resampled and downmixed, saying so (embedding any audio).
- :func:`random_speed_crop`: a crop of fixed length from a random offset of the
  utterance *after* its speed change, reading only what it needs; an utterance shorter
  than the crop is repeated up to the crop length (as wespeaker pads).
"""

import functools
import io
import math

import torch
import torchaudio
from speechbrain.dataio import audio_io


def _name(source):
    return "<in-memory audio>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def read_segment(source, start, stop, sample_rate=16000, name=None):
    """Samples ``start``..``stop`` of an audio file as float32 mono [stop - start].

    Only that span is decoded (``speechbrain.dataio.audio_io.load`` with a frame
    offset). Multi-channel audio is averaged.

    Arguments
    ---------
    source : str or bytes
        Audio file, or the bytes of one (e.g. a FLAC member of a shard).
    start, stop : int
        Sample range (stop exclusive).
    sample_rate : int
        Required sample rate.
    name : str, optional
        What error messages call the source (default: the path).

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.arange(100) / 100, 16000, subtype="FLOAT")
    >>> read_segment(path, 10, 13)
    tensor([0.1000, 0.1100, 0.1200])
    """
    name = name or _name(source)
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        audio, rate = audio_io.load(
            data, dtype=torch.float32, frame_offset=start, num_frames=stop - start, channels_first=True
        )
    except Exception as error:
        cause = error.__cause__ or error
        raise ValueError(f"{name}: unreadable audio file ({' '.join(str(cause).split())})") from None
    if rate != sample_rate:
        raise ValueError(f"{name}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if audio.shape[1] != stop - start:
        raise ValueError(f"{name}: expected samples {start}..{stop}, the file has {start + audio.shape[1]}")
    return audio.mean(dim=0) if audio.shape[0] > 1 else audio[0]


def read_converted(path, sample_rate=16000, start=0, stop=None):
    """Samples ``start..stop`` (the file's own rate; ``stop`` None: to the end) of an audio
    file as float32 mono at ``sample_rate``: channels averaged and the rate converted when
    they differ, each change named in the returned notes.

    Arguments
    ---------
    path : str
        The audio file.
    sample_rate : int
        The rate wanted.
    start, stop : int
        Sample range in the file's rate.

    Returns
    -------
    tuple
        ``(signal [samples], notes)``; ``notes`` lists what was changed (empty when nothing).

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros((8000, 2)), 8000)
    >>> signal, notes = read_converted(path, 16000)
    >>> signal.shape, notes
    (torch.Size([16000]), ['2 channels downmixed to mono', 'resampled from 8000 Hz to 16000 Hz'])
    """
    try:
        audio, rate = audio_io.load(path, dtype=torch.float32, frame_offset=start,
                                    num_frames=-1 if stop is None else stop - start, channels_first=True)
    except Exception as error:
        cause = error.__cause__ or error
        raise ValueError(f"{path}: unreadable audio file ({' '.join(str(cause).split())})") from None
    notes = []
    if audio.shape[0] > 1:
        notes.append(f"{audio.shape[0]} channels downmixed to mono")
    signal = audio.mean(dim=0)
    if rate != sample_rate:
        notes.append(f"resampled from {rate} Hz to {sample_rate} Hz")
        signal = torchaudio.functional.resample(signal, rate, sample_rate)
    return signal.contiguous(), notes


@functools.lru_cache(maxsize=16)
def _resampler(orig_freq, new_freq):
    return torchaudio.transforms.Resample(orig_freq=orig_freq, new_freq=new_freq)


def change_speed(signal, speed, sample_rate=16000):
    """Play ``signal`` (float [samples]) ``speed`` times faster: about length / speed samples.

    Resampling from ``sample_rate * speed`` to ``sample_rate`` (torchaudio's windowed-sinc
    resampler; its kernel is computed once per speed and process).

    Example
    -------
    >>> change_speed(torch.zeros(900), 0.9).shape
    torch.Size([1000])
    >>> change_speed(torch.zeros(1100), 1.1).shape
    torch.Size([1000])
    """
    if speed == 1.0:
        return signal
    with torch.no_grad():
        return _resampler(int(round(sample_rate * speed)), sample_rate)(signal)


def random_speed_crop(source, start, stop, speed, crop_samples, rng, sample_rate=16000, name=None):
    """``crop_samples`` samples at speed ``speed`` from a random offset, reading only what it needs.

    The offset is drawn uniformly over the speed-changed utterance (over the positions
    of ``ceil(crop_samples * speed)`` input samples, which resample to at least
    ``crop_samples``). An utterance shorter than the crop after the speed change is
    read whole and repeated up to ``crop_samples``.

    Arguments
    ---------
    source : str or bytes
        Audio file or its bytes.
    start, stop : int
        Usable sample range.
    speed : float
        Speed factor.
    crop_samples : int
        Output length.
    rng : numpy.random.Generator
        Source of the offset.
    sample_rate : int
        Required sample rate.
    name : str, optional
        What error messages call the source.

    Returns
    -------
    torch.Tensor
        float32 [crop_samples].

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.random.randn(48000) * 0.1, 16000)
    >>> rng = np.random.default_rng(0)
    >>> random_speed_crop(path, 0, 48000, 1.1, 32000, rng).shape
    torch.Size([32000])
    >>> random_speed_crop(path, 0, 8000, 0.9, 32000, rng).shape  # short: repeated
    torch.Size([32000])
    """
    name = name or _name(source)
    available = stop - start
    if available <= 0:
        raise ValueError(f"{name}: empty segment {start}..{stop}")
    needed = crop_samples if speed == 1.0 else math.ceil(crop_samples * speed)
    if available <= needed:
        signal = change_speed(read_segment(source, start, stop, sample_rate, name), speed, sample_rate)
        repeats = math.ceil(crop_samples / len(signal))
        return signal.repeat(repeats)[:crop_samples] if repeats > 1 else signal[:crop_samples]
    offset = start + int(rng.integers(0, available - needed + 1))
    signal = read_segment(source, offset, offset + needed, sample_rate, name)
    return change_speed(signal, speed, sample_rate)[:crop_samples]
