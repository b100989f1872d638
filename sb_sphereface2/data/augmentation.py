"""Noise and room-impulse-response CSVs for ``speechbrain.augment`` (AddNoise, AddReverb).

SpeechBrain reads these with its legacy CSV reader: header
``ID,duration,wav,wav_format,wav_opts``, and it loads each listed file whole for every
batch item. Long recordings (MUSAN music runs for minutes) are therefore cut into
pieces of at most ``max_seconds``, written as WAV under ``chunk_folder``; the source
folders are never modified. Multi-channel files keep their first channel.

- :func:`write_augment_csv`: one folder (searched recursively) into one CSV.
- :func:`prepare_musan`: MUSAN's ``noise``, ``speech`` and ``music`` subfolders into
  ``musan_noise.csv``, ``musan_speech.csv``, ``musan_music.csv`` (the paper mixes
  them at 0-15, 10-30 and 5-15 dB SNR).
- :func:`prepare_rir`: a folder of impulse responses (e.g. RIRS_NOISES/simulated_rirs)
  into ``rir.csv``.

Each CSV is skipped when a manifest beside it shows the same inputs.
"""

import json
import os

import numpy as np  # noqa: F401 (the doctests use it)
import soundfile
import torch
from tqdm.auto import tqdm

from sb_sphereface2.files import (
    atomic_write,
    outputs_intact,
    read_manifest,
    write_csv_atomic,
    write_json_atomic,
    write_manifest,
)

AUGMENT_CSV_HEADER = ["ID", "duration", "wav", "wav_format", "wav_opts"]
# SNR ranges (dB) by MUSAN category: wespeaker's add_reverb_noise (processor.py).
MUSAN_SNR_DB = {"noise": (0.0, 15.0), "speech": (10.0, 30.0), "music": (5.0, 15.0)}
MUSAN_COUNTS = "musan_files.json"
AUGMENT_EXTENSIONS = (".wav", ".flac")


def _audio_files(folder):
    found = []
    for current, subfolders, names in os.walk(folder):
        subfolders.sort()
        found.extend(
            os.path.join(current, n)
            for n in sorted(names)
            if os.path.splitext(n)[1].lower() in AUGMENT_EXTENSIONS
        )
    return found


def write_augment_csv(audio_folder, csv_path, max_seconds=None, chunk_folder=None, sample_rate=16000):
    """List every WAV/FLAC file under ``audio_folder`` in a ``speechbrain.augment`` CSV.

    Arguments
    ---------
    audio_folder : str
        Folder searched recursively.
    csv_path : str
        Output CSV.
    max_seconds : float, optional
        Cut longer (or multi-channel) files into pieces of at most this length.
    chunk_folder : str, optional
        Where pieces go (default: ``<csv name>_chunks`` beside the CSV).
    sample_rate : int or None
        Required sample rate (None: any).

    Returns
    -------
    str
        ``csv_path``.

    Example
    -------
    >>> import tempfile
    >>> folder, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> soundfile.write(os.path.join(folder, "n1.wav"), np.zeros(40000), 16000)
    >>> path = write_augment_csv(folder, os.path.join(out, "noise.csv"), max_seconds=1.0)
    >>> open(path).read().splitlines()[0], len(open(path).read().splitlines())
    ('ID,duration,wav,wav_format,wav_opts', 4)
    """
    folder = os.path.abspath(os.fspath(audio_folder))
    csv_path = os.path.abspath(os.fspath(csv_path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"augmentation folder not found: {folder}")
    files = _audio_files(folder)
    if not files:
        raise ValueError(f"{folder}: no .wav or .flac files")
    stats = [[p, os.path.getsize(p), os.stat(p).st_mtime_ns] for p in files]
    base = os.path.splitext(os.path.basename(csv_path))[0]
    chunk_folder = os.path.abspath(chunk_folder or os.path.join(os.path.dirname(csv_path), f"{base}_chunks"))
    inputs = {"folder": folder, "files": stats, "max_seconds": max_seconds, "chunk_folder": chunk_folder}
    save_folder = os.path.dirname(csv_path)
    manifest_path = os.path.join(save_folder, f".{base}_manifest.json")
    manifest = read_manifest(manifest_path)
    if manifest and manifest.get("inputs") == inputs and outputs_intact(manifest, save_folder):
        return csv_path

    rows, pieces = [], []
    for index, path in enumerate(tqdm(files, desc=f"Listing {base}", unit="file", mininterval=1.0)):
        try:
            info = soundfile.info(path)
        except Exception as error:
            raise ValueError(f"{path}: unreadable audio file ({' '.join(str(error).split())})") from None
        if info.frames <= 0:
            raise ValueError(f"{path}: empty audio file")
        if sample_rate is not None and info.samplerate != sample_rate:
            raise ValueError(f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz")
        stem = os.path.splitext(os.path.relpath(path, folder))[0].replace(os.sep, "_").replace(",", "_")
        piece = info.frames if max_seconds is None else int(max_seconds * info.samplerate)
        if info.frames <= piece and info.channels == 1:
            ext = os.path.splitext(path)[1][1:].lower()
            rows.append([f"{stem}_{index}", f"{info.frames / info.samplerate:.4f}", path, ext, ""])
            continue
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        audio = audio[:, 0]
        for j, begin in enumerate(range(0, len(audio), piece)):
            segment = audio[begin : begin + piece]
            if len(segment) < min(piece, rate // 10):  # drop a tail under 0.1 s
                continue
            target = os.path.join(chunk_folder, f"{stem}_{j}.wav")
            pieces.append((target, segment, rate))
            rows.append([f"{stem}_{index}_{j}", f"{len(segment) / rate:.4f}", target, "wav", ""])

    os.makedirs(chunk_folder, exist_ok=True)
    for target, segment, rate in pieces:
        with atomic_write(target, "wb") as handle:
            soundfile.write(handle, segment, rate, subtype="PCM_16", format="WAV")
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    write_csv_atomic(csv_path, AUGMENT_CSV_HEADER, rows)
    write_manifest(manifest_path, inputs, save_folder, [os.path.basename(csv_path)])
    return csv_path


def prepare_musan(musan_folder, save_folder, max_seconds=5.0, sample_rate=16000):
    """``musan_noise.csv``, ``musan_speech.csv`` and ``musan_music.csv`` from a MUSAN folder.

    Arguments
    ---------
    musan_folder : str
        MUSAN root holding ``noise/``, ``speech/`` and ``music/``.
    save_folder : str
        Where the CSVs (and the pieces of long files) go.
    max_seconds : float
        Longest piece.
    sample_rate : int
        Required sample rate.

    Returns
    -------
    dict
        {"noise": path, "speech": path, "music": path}.

    Example
    -------
    >>> import tempfile
    >>> musan, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for kind in ("noise", "speech", "music"):
    ...     os.makedirs(os.path.join(musan, kind, "sub"))
    ...     soundfile.write(os.path.join(musan, kind, "sub", "a.wav"), np.zeros(8000), 16000)
    >>> sorted(os.path.basename(p) for p in prepare_musan(musan, out).values())
    ['musan_music.csv', 'musan_noise.csv', 'musan_speech.csv']
    """
    musan_folder = os.path.abspath(os.fspath(musan_folder))
    missing = [k for k in ("noise", "speech", "music") if not os.path.isdir(os.path.join(musan_folder, k))]
    if missing:
        raise FileNotFoundError(f"{musan_folder}: missing MUSAN subfolder(s) {', '.join(missing)}")
    os.makedirs(save_folder, exist_ok=True)
    paths = {
        kind: write_augment_csv(
            os.path.join(musan_folder, kind),
            os.path.join(save_folder, f"musan_{kind}.csv"),
            max_seconds=max_seconds,
            sample_rate=sample_rate,
        )
        for kind in MUSAN_SNR_DB
    }
    # wespeaker draws one file from all of MUSAN: the categories weigh as their file counts.
    counts = {kind: len(_audio_files(os.path.join(musan_folder, kind))) for kind in MUSAN_SNR_DB}
    write_json_atomic(os.path.join(save_folder, MUSAN_COUNTS), counts)
    return paths


def prepare_rir(rir_folder, save_folder, sample_rate=16000):
    """``rir.csv`` listing every impulse response under ``rir_folder`` (kept whole).

    Example
    -------
    >>> import tempfile
    >>> rirs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> soundfile.write(os.path.join(rirs, "r.wav"), np.eye(1, 800)[0], 16000)
    >>> os.path.basename(prepare_rir(rirs, out))
    'rir.csv'
    """
    os.makedirs(save_folder, exist_ok=True)
    return write_augment_csv(rir_folder, os.path.join(save_folder, "rir.csv"), sample_rate=sample_rate)


class ReverbOrNoise(torch.nn.Module):
    """wespeaker's augmentation on a batch: each utterance, with probability
    ``augment_prob``, gets reverberation or additive MUSAN noise with equal probability.

    Additive noise draws a category with probability proportional to its number of MUSAN
    files (wespeaker draws one file from all of MUSAN) and an SNR uniformly in the
    category's range (``MUSAN_SNR_DB``); SpeechBrain's ``AddNoise`` and ``AddReverb`` do
    the mixing. The CSVs (``musan_noise.csv``... ``rir.csv``, from ``prepare_musan`` and
    ``prepare_rir``) are read at the first call, so the module can be built before the
    data are prepared.

    Arguments
    ---------
    csv_folder : str
        Folder holding the CSVs and ``musan_files.json``.
    augment_prob : float
        Probability that an utterance is augmented (0.6 in the paper).
    sample_rate : int
        Sampling rate of the speech and of the noise files.

    Example
    -------
    >>> import tempfile
    >>> musan, rirs, out = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for kind in ("noise", "speech", "music"):
    ...     os.makedirs(os.path.join(musan, kind))
    ...     soundfile.write(os.path.join(musan, kind, "a.wav"), np.random.randn(16000) * 0.1, 16000)
    >>> soundfile.write(os.path.join(rirs, "r.wav"), np.eye(1, 800)[0], 16000)
    >>> _ = prepare_musan(musan, out), prepare_rir(rirs, out)
    >>> augment = ReverbOrNoise(out, augment_prob=1.0)
    >>> clean = torch.sin(torch.arange(32000.0)).repeat(4, 1) * 0.1
    >>> noisy, lengths = augment(clean, torch.ones(4))
    >>> noisy.shape, bool((noisy != clean).any(dim=1).all())
    (torch.Size([4, 32000]), True)
    """

    def __init__(self, csv_folder, augment_prob=0.6, sample_rate=16000):
        super().__init__()
        if not 0.0 <= float(augment_prob) <= 1.0:
            raise ValueError(f"augment_prob must be in [0, 1], got {augment_prob}")
        self.csv_folder = os.fspath(csv_folder)
        self.augment_prob = float(augment_prob)
        self.sample_rate = int(sample_rate)
        self._parts = None

    def _load(self):
        from speechbrain.augment.time_domain import AddNoise, AddReverb

        counts_path = os.path.join(self.csv_folder, MUSAN_COUNTS)
        needed = [os.path.join(self.csv_folder, f"musan_{k}.csv") for k in MUSAN_SNR_DB]
        needed += [os.path.join(self.csv_folder, "rir.csv"), counts_path]
        missing = [p for p in needed if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"augmentation CSV missing: {missing[0]} (prepare MUSAN and RIRs with --musan_folder "
                "and --rir_folder, or train with --augment=False)"
            )
        with open(counts_path, encoding="utf-8") as handle:
            counts = json.load(handle)
        rate = self.sample_rate
        noises = {
            kind: AddNoise(csv_file=os.path.join(self.csv_folder, f"musan_{kind}.csv"), snr_low=low,
                           snr_high=high, noise_sample_rate=rate, clean_sample_rate=rate)
            for kind, (low, high) in MUSAN_SNR_DB.items()
        }
        reverb = AddReverb(csv_file=os.path.join(self.csv_folder, "rir.csv"), reverb_sample_rate=rate,
                           clean_sample_rate=rate)
        weights = torch.tensor([float(counts[k]) for k in MUSAN_SNR_DB])
        self._parts = (reverb, noises, weights / weights.sum())

    def forward(self, wavs, lengths):
        """Augmented ``wavs`` [B, T] and the unchanged relative ``lengths`` [B]."""
        if self._parts is None:
            self._load()
        reverb, noises, weights = self._parts
        batch = wavs.shape[0]
        # The draws are CPU decisions on purpose, on any device: torch's CPU generator (which
        # checkpoints restore) and no device synchronisation to find the chosen rows; only
        # their indices go to the device.
        augmented = torch.rand(batch, device="cpu") < self.augment_prob
        use_reverb = torch.rand(batch, device="cpu") < 0.5
        kinds = torch.multinomial(weights, batch, replacement=True)
        out = wavs.clone()
        groups = [(augmented & use_reverb, reverb)]
        groups += [(augmented & ~use_reverb & (kinds == k), noise) for k, noise in enumerate(noises.values())]
        for mask, transform in groups:
            index = mask.nonzero().squeeze(1).to(wavs.device, non_blocking=True)
            if len(index):
                args = (wavs[index],) if transform is reverb else (wavs[index], lengths[index])
                out[index] = transform(*args)
        return out, lengths
