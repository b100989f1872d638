"""Datasets for training and scoring, built from the CSVs of :mod:`sb_sphereface2.data.prepare`.

- :func:`training_dataset`: random crops of ``crop_seconds`` (only the crop is read
  from disk), resampled by the row's ``speed`` factor, with the speaker label encoded.
  Clips shorter than the crop are dropped (logged); none left is an error.
- :func:`utterance_dataset`: whole utterances (optionally their first ``max_seconds``)
  for validation, test and cohort embeddings.
- :func:`load_label_encoder`: a ``CategoricalEncoder`` over the training speakers,
  saved in the save folder and rebuilt when the training CSV's speakers change.

Items carry the keys ``id``, ``sig`` (float32 [samples]) and ``spk_id`` /
``spk_id_encoded`` (training), like SpeechBrain's own VoxCeleb recipe.
"""

import csv
import logging
import math
import os

import numpy as np
import soundfile
import torch
import torchaudio.functional
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.data_pipeline import provides, takes

from sb_sphereface2.files import temporary_path

logger = logging.getLogger(__name__)

CSV_TYPES = {"start": int, "stop": int, "speed": float}


def read_segment(path, start, stop, sample_rate=16000):
    """Samples ``start``..``stop`` of an audio file as float32 mono [stop - start].

    Only that span is read. Multi-channel audio is averaged.

    Arguments
    ---------
    path : str
        Audio file.
    start, stop : int
        Sample range (stop exclusive).
    sample_rate : int
        Required sample rate.

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.arange(100) / 100, 16000, subtype="FLOAT")
    >>> read_segment(path, 10, 13)
    tensor([0.1000, 0.1100, 0.1200])
    """
    try:
        audio, rate = soundfile.read(
            path, start=start, stop=stop, dtype="float32", always_2d=True
        )
    except Exception as error:
        raise ValueError(f"{path}: unreadable audio file ({' '.join(str(error).split())})") from None
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if len(audio) != stop - start:
        raise ValueError(
            f"{path}: expected samples {start}..{stop}, the file has {start + len(audio)}"
        )
    return torch.from_numpy(audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0])


def change_speed(signal, speed, sample_rate=16000):
    """Play ``signal`` ``speed`` times faster (pitch moves too): length / speed samples.

    Example
    -------
    >>> change_speed(torch.zeros(900), 0.9).shape
    torch.Size([1000])
    >>> change_speed(torch.zeros(1100), 1.1).shape
    torch.Size([1000])
    """
    if speed == 1.0:
        return signal
    return torchaudio.functional.resample(
        signal, orig_freq=int(round(sample_rate * speed)), new_freq=sample_rate
    )


def random_crop(path, start, stop, speed, crop_samples, sample_rate=16000, generator=None):
    """A random crop of ``crop_samples`` samples at speed ``speed``, reading only what it needs.

    Arguments
    ---------
    path : str
        Audio file.
    start, stop : int
        Usable sample range of the file.
    speed : float
        Speed factor; ``ceil(crop_samples * speed)`` samples are read and resampled.
    crop_samples : int
        Output length.
    sample_rate : int
        Required sample rate.
    generator : torch.Generator, optional
        Source of the crop position (default: torch's global generator, which
        SpeechBrain seeds and DataLoader workers re-seed).

    Returns
    -------
    torch.Tensor
        float32 [crop_samples].

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.random.randn(48000) * 0.1, 16000)
    >>> random_crop(path, 0, 48000, 1.1, 32000).shape
    torch.Size([32000])
    """
    needed = crop_samples if speed == 1.0 else math.ceil(crop_samples * speed)
    available = stop - start
    if available < needed:
        raise ValueError(
            f"{path}: clip of {available / sample_rate / speed:.2f} s at speed {speed:g} is "
            f"shorter than the {crop_samples / sample_rate:g} s crop"
        )
    offset = start + int(torch.randint(0, available - needed + 1, (1,), generator=generator))
    signal = change_speed(read_segment(path, offset, offset + needed, sample_rate), speed, sample_rate)
    if len(signal) < crop_samples:  # not reached: resampling ceil(n*speed) gives >= n
        raise ValueError(f"{path}: resampled crop is {len(signal)} samples, wanted {crop_samples}")
    return signal[:crop_samples]


def read_speakers(csv_path):
    """Sorted distinct ``spk_id`` values of a CSV.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write("ID,spk_id\\na/1,b\\nb/1,a\\nb/2,b\\n")
    >>> read_speakers(path)
    ['a', 'b']
    """
    with open(csv_path, encoding="utf-8", newline="") as handle:
        return sorted({row["spk_id"] for row in csv.DictReader(handle)})


def load_label_encoder(train_csv, path):
    """Speaker label encoder over ``train_csv``'s ``spk_id`` (sorted), stored at ``path``.

    An existing file is reused when it holds exactly the CSV's speakers, else it is
    rebuilt (written atomically, so concurrent DDP processes are safe).

    Arguments
    ---------
    train_csv : str
        Training CSV (all rows, speed-perturbed copies included, so fine-tuning
        without them keeps the same classes).
    path : str
        Encoder file, e.g. ``<save_folder>/label_encoder.txt``.

    Returns
    -------
    speechbrain.dataio.encoder.CategoricalEncoder

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> csv_path = os.path.join(folder, "train.csv")
    >>> _ = open(csv_path, "w").write("ID,spk_id\\nx/1,spk2\\ny/1,spk1\\n")
    >>> encoder = load_label_encoder(csv_path, os.path.join(folder, "label_encoder.txt"))
    >>> len(encoder), encoder.encode_label("spk1"), encoder.encode_label("spk2")
    (2, 0, 1)
    """
    speakers = read_speakers(train_csv)
    encoder = CategoricalEncoder()
    if os.path.isfile(path):
        try:
            encoder.load(path)
            if sorted(encoder.lab2ind) == speakers:
                return encoder
        except Exception:  # unreadable or foreign file: rebuild it
            pass
        encoder = CategoricalEncoder()
    encoder.update_from_iterable(speakers)
    encoder.expect_len(len(speakers))
    tmp = temporary_path(path)
    encoder.save(tmp)
    os.replace(tmp, path)
    return encoder


def training_dataset(csv_path, label_encoder, crop_seconds=2.0, sample_rate=16000, speed_perturbed=True):
    """Random fixed-length crops with encoded speaker labels.

    Arguments
    ---------
    csv_path : str
        ``train.csv`` of :func:`sb_sphereface2.data.prepare.prepare_voxceleb`.
    label_encoder : CategoricalEncoder
        From :func:`load_label_encoder`.
    crop_seconds : float
        Crop length in seconds (after the speed change).
    sample_rate : int
        Sample rate of the audio.
    speed_perturbed : bool
        Keep the speed-perturbed rows (False: only ``speed`` 1.0, e.g. for
        large-margin fine-tuning; the encoder keeps every class).

    Returns
    -------
    DynamicItemDataset
        Output keys ``id``, ``sig`` [crop samples], ``spk_id_encoded`` (LongTensor [1]).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> wav = os.path.join(folder, "a.wav")
    >>> soundfile.write(wav, np.random.randn(40000) * 0.1, 16000)
    >>> csv_path = os.path.join(folder, "train.csv")
    >>> _ = open(csv_path, "w").write(
    ...     "ID,duration,wav,start,stop,spk_id,speed\\n"
    ...     f"s/1/1,2.5,{wav},0,40000,s,1.0\\ns/1/1@sp1.1,2.27,{wav},0,40000,s@sp1.1,1.1\\n")
    >>> encoder = load_label_encoder(csv_path, os.path.join(folder, "enc.txt"))
    >>> data = training_dataset(csv_path, encoder, crop_seconds=2.0)
    >>> [(item["sig"].shape[0], item["spk_id_encoded"].item()) for item in data]
    [(32000, 0), (32000, 1)]
    """
    crop_samples = int(round(crop_seconds * sample_rate))
    dataset = DynamicItemDataset.from_csv(csv_path, col_types=CSV_TYPES)
    if not speed_perturbed:
        dataset = dataset.filtered_sorted(key_test={"speed": lambda speed: speed == 1.0})
    before = len(dataset)
    dataset = dataset.filtered_sorted(key_min_value={"duration": crop_seconds})
    if before > len(dataset):
        logger.info(
            "%s: dropped %d of %d clips shorter than the %g s crop",
            csv_path, before - len(dataset), before, crop_seconds,
        )
    if len(dataset) == 0:
        raise ValueError(f"{csv_path}: no clip is at least {crop_seconds:g} s long (the crop)")

    @takes("wav", "start", "stop", "speed")
    @provides("sig")
    def crop_pipeline(wav, start, stop, speed):
        return random_crop(wav, start, stop, speed, crop_samples, sample_rate)

    @takes("spk_id")
    @provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return torch.LongTensor([label_encoder.encode_label(spk_id)])

    dataset.add_dynamic_item(crop_pipeline)
    dataset.add_dynamic_item(label_pipeline)
    dataset.set_output_keys(["id", "sig", "spk_id_encoded"])
    return dataset


def utterance_dataset(csv_path, sample_rate=16000, max_seconds=None):
    """Whole utterances (at the row's speed), for validation, test and cohort embeddings.

    Arguments
    ---------
    csv_path : str
        A CSV of :func:`sb_sphereface2.data.prepare.prepare_voxceleb`.
    sample_rate : int
        Sample rate of the audio.
    max_seconds : float, optional
        Keep only the first ``max_seconds`` of each utterance.

    Returns
    -------
    DynamicItemDataset
        Output keys ``id``, ``sig`` [samples], ``spk_id`` (str); static key
        ``duration`` for sorting.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> wav = os.path.join(folder, "a.wav")
    >>> soundfile.write(wav, np.random.randn(8000) * 0.1, 16000)
    >>> csv_path = os.path.join(folder, "test.csv")
    >>> _ = open(csv_path, "w").write(
    ...     f"ID,duration,wav,start,stop,spk_id,speed\\ns/1/1,0.5,{wav},0,8000,s,1.0\\n")
    >>> item = utterance_dataset(csv_path)[0]
    >>> item["id"], item["sig"].shape
    ('s/1/1', torch.Size([8000]))
    """
    dataset = DynamicItemDataset.from_csv(csv_path, col_types=CSV_TYPES)
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))

    @takes("wav", "start", "stop", "speed")
    @provides("sig")
    def audio_pipeline(wav, start, stop, speed):
        if max_samples is not None:
            stop = min(stop, start + math.ceil(max_samples * speed))
        signal = change_speed(read_segment(wav, start, stop, sample_rate), speed, sample_rate)
        return signal if max_samples is None else signal[:max_samples]

    dataset.add_dynamic_item(audio_pipeline)
    dataset.set_output_keys(["id", "sig", "spk_id"])
    return dataset
