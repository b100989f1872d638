"""Decoding one audio file in full: its length, rate, NaN/inf samples, speech span, errors.

:func:`inspect_audio` reads a file in blocks (a long recording never sits in memory
whole) and never raises: a file libsndfile cannot open or decode gives a report with
the decoder's message. It also finds where speech starts and stops: 20 ms frames more
than 40 dB below the loudest frame (or below -70 dBFS) at either end are silence,
trimmed when a recording is cut into segments (:mod:`sb_sphereface2.data.segments`).
:func:`audio_problem` turns a report into a reason to reject the file.
"""

import os
from typing import NamedTuple

import numpy as np
import soundfile

FRAME_SECONDS = 0.02  # frames of the silence detector
SILENCE_BELOW_PEAK_DB = 40.0  # frames this far below the loudest frame are silence
SILENCE_FLOOR_DBFS = -70.0  # and frames below this level always are
BLOCK_FRAMES = 200  # detector frames decoded at a time (4 s)


class AudioReport(NamedTuple):
    """What decoding one file found.

    Arguments
    ---------
    frames : int
        Samples per channel that were decoded.
    sample_rate : int
        Sample rate from the header (0 when the file could not be opened).
    nonfinite : int
        NaN or infinite samples (all channels).
    speech_start, speech_stop : int
        First and one-past-last sample of the span between the leading and the
        trailing silence (the whole file when no speech level is found).
    error : str
        The decoder's error message, "" when the file decoded cleanly.
    """

    frames: int
    sample_rate: int
    nonfinite: int
    speech_start: int
    speech_stop: int
    error: str


def _one_line(text):
    return " ".join(str(text).split())


def _speech_span(levels_db, hop, frames):
    """(start, stop) in samples of the frames above the silence threshold."""
    if not len(levels_db):
        return 0, frames
    threshold = max(float(levels_db.max()) - SILENCE_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS)
    active = np.flatnonzero(levels_db > threshold)
    if not len(active):
        return 0, frames
    return int(active[0]) * hop, min(frames, (int(active[-1]) + 1) * hop)


def _frame_energy(block, hop):
    """Mean power of the (channel-averaged) signal in frames of ``hop`` samples; the
    last frame may be shorter."""
    signal = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
    power = np.square(signal)
    whole = len(power) // hop * hop
    energy = power[:whole].reshape(-1, hop).mean(axis=1)
    if whole < len(power):
        energy = np.append(energy, power[whole:].mean())
    return energy


def inspect_audio(path):
    """Decode ``path`` in full and report its length, rate, NaN/inf count, speech span, errors.

    Never raises: an unreadable file gives a report with ``error`` set.

    Arguments
    ---------
    path : str
        Audio file (anything libsndfile reads: WAV, FLAC, ...).

    Returns
    -------
    AudioReport

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> audio = np.zeros(16000, np.float32)
    >>> audio[4000:12000] = 0.1 * np.sin(np.arange(8000))
    >>> soundfile.write(path, audio, 16000)
    >>> inspect_audio(path)
    AudioReport(frames=16000, sample_rate=16000, nonfinite=0, speech_start=3840, speech_stop=12160, error='')
    >>> _ = open(path, "wb").write(b"RIFF not really")
    >>> print(inspect_audio(path).error)
    Error opening ...: Format not recognised.
    """
    try:
        if os.path.getsize(path) == 0:
            return AudioReport(0, 0, 0, 0, 0, "empty file (0 bytes)")
        handle = soundfile.SoundFile(path)
    except Exception as error:  # libsndfile and the OS raise their own types
        return AudioReport(0, 0, 0, 0, 0, _one_line(error))
    frames = nonfinite = 0
    levels = []
    with handle:
        rate = int(handle.samplerate)
        hop = max(1, int(round(rate * FRAME_SECONDS)))
        try:
            while True:
                block = handle.read(hop * BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                energy = _frame_energy(block, hop)
                if not np.isfinite(energy).all():  # NaN/inf samples: count them, take them as 0
                    finite = np.isfinite(block)
                    nonfinite += int(block.size - np.count_nonzero(finite))
                    energy = _frame_energy(np.where(finite, block, 0.0), hop)
                levels.append(10.0 * np.log10(energy + 1e-12))
                frames += len(block)
        except Exception as error:
            return AudioReport(frames, rate, nonfinite, 0, frames, _one_line(error))
    levels = np.concatenate(levels) if levels else np.zeros(0)
    start, stop = _speech_span(levels, hop, frames)
    return AudioReport(frames, rate, nonfinite, start, stop, "")


def audio_problem(report, sample_rate=16000, min_seconds=0.5):
    """Why a file cannot be used, or None.

    Arguments
    ---------
    report : AudioReport
        From :func:`inspect_audio`.
    sample_rate : int or None
        Required sample rate (None: any).
    min_seconds : float
        Shortest usable clip.

    Returns
    -------
    str or None

    Example
    -------
    >>> audio_problem(AudioReport(16000, 16000, 0, 0, 16000, ""))
    >>> audio_problem(AudioReport(16000, 16000, 50, 0, 16000, ""))
    '50 NaN/inf samples'
    >>> audio_problem(AudioReport(16000, 8000, 0, 0, 16000, ""))
    'sample rate 8000 Hz, expected 16000 Hz'
    >>> audio_problem(AudioReport(800, 16000, 0, 0, 800, ""))
    '0.05 s long, shorter than the 0.5 s minimum'
    >>> audio_problem(AudioReport(0, 0, 0, 0, 0, "flac decoder lost sync."))
    'cannot decode (flac decoder lost sync.)'
    """
    if report.error:
        return report.error if report.error.startswith("empty file") else f"cannot decode ({report.error})"
    if report.nonfinite:
        return f"{report.nonfinite} NaN/inf samples"
    if sample_rate is not None and report.sample_rate != sample_rate:
        return f"sample rate {report.sample_rate} Hz, expected {sample_rate} Hz"
    seconds = report.frames / report.sample_rate if report.sample_rate else 0.0
    if report.frames == 0 or seconds < min_seconds:
        return f"{seconds:.2f} s long, shorter than the {min_seconds:g} s minimum"
    return None
