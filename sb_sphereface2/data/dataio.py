"""Datasets for training and scoring, built from the CSVs of :mod:`sb_sphereface2.data.prepare`.

- :func:`training_dataset`: one item per training utterance (a CSV row) per epoch, at a
  speed drawn per read from ``speeds``, labelled with the speed-specific speaker
  (:mod:`sb_sphereface2.data.speed`), cropped to ``crop_seconds`` from a random offset
  after the speed change (only the needed span is read; shorter utterances are
  repeated). Draws are reproducible from (seed, epoch, utterance ID).
- :func:`utterance_dataset`: whole utterances (optionally their first ``max_seconds``)
  for validation, test and cohort embeddings.

The tar-shard input (the same items, streamed) is :mod:`sb_sphereface2.data.shards`.
Items carry the keys ``id``, ``sig`` (float32 [samples]), ``spk_id_encoded``
(training) or ``spk_id``, like SpeechBrain's own VoxCeleb recipe, and ``load_seconds``
(training: time spent reading, resampling and cropping the item, for
:mod:`sb_sphereface2.data.throughput`).
"""

import logging
import math
import time

import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes

from sb_sphereface2.data.audio import random_speed_crop, read_segment
from sb_sphereface2.data.speed import (
    SPEEDS,
    current_epoch,
    draw_speed,
    item_rng,
    speed_label,
)

logger = logging.getLogger(__name__)

CSV_TYPES = {"start": int, "stop": int}


def labelled_speed_crop(key, source, start, stop, spk_id, label_encoder, speeds, crop_samples, seed, epoch,
                        sample_rate=16000, name=None):
    """One training item's random draws and reading: ``(signal, class index, seconds)``.

    Shared by the CSV and the shard path, so both give an utterance the same speed and
    crop for the same (seed, epoch).

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile
    >>> from speechbrain.dataio.encoder import CategoricalEncoder
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.random.randn(32000) * 0.1, 16000)
    >>> encoder = CategoricalEncoder()
    >>> encoder.update_from_iterable(["s", "s@sp0.9", "s@sp1.1"])
    >>> sig, label, seconds = labelled_speed_crop("u1", path, 0, 32000, "s", encoder, SPEEDS, 16000, 1, 1)
    >>> sig.shape, label in (0, 1, 2)
    (torch.Size([16000]), True)
    """
    began = time.perf_counter()
    rng = item_rng(seed, epoch, key)
    speed = draw_speed(rng, speeds)
    signal = random_speed_crop(source, start, stop, speed, crop_samples, rng, sample_rate, name)
    label = label_encoder.encode_label(speed_label(spk_id, speed))
    return signal, label, time.perf_counter() - began


def training_dataset(csv_path, label_encoder, crop_seconds=2.0, sample_rate=16000, speeds=SPEEDS, seed=0,
                     epoch_source=None):
    """Random fixed-length crops at random speeds, with speed-specific speaker labels.

    Arguments
    ---------
    csv_path : str
        Training CSV, columns ``ID,duration,wav,start,stop,spk_id`` (one row per
        utterance; the speeds are drawn per read).
    label_encoder : CategoricalEncoder
        Over ``speed_labels(speakers, speeds)`` (or a pretrained model's, which may
        hold more classes).
    crop_seconds : float
        Crop length in seconds (after the speed change).
    sample_rate : int
        Sample rate of the audio.
    speeds : sequence of float
        Speeds drawn from, uniformly (``(1.0,)``: no perturbation).
    seed : int
        The run's seed.
    epoch_source : object with ``current``, optional
        SpeechBrain's ``EpochCounter``: the epoch that seeds the draws (read when an
        item is made; DataLoader workers see the value at the start of the epoch).

    Returns
    -------
    DynamicItemDataset
        Output keys ``id``, ``sig`` [crop samples], ``spk_id_encoded`` (LongTensor [1]),
        ``load_seconds``.

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile
    >>> from types import SimpleNamespace
    >>> from sb_sphereface2.data.speakers import label_encoder
    >>> from sb_sphereface2.data.speed import speed_labels
    >>> folder = tempfile.mkdtemp()
    >>> wav = os.path.join(folder, "a.wav")
    >>> soundfile.write(wav, np.random.randn(40000) * 0.1, 16000)
    >>> csv_path = os.path.join(folder, "train.csv")
    >>> _ = open(csv_path, "w").write(f"ID,duration,wav,start,stop,spk_id\\ns/1/1,2.5,{wav},0,40000,s\\n")
    >>> encoder = label_encoder(speed_labels(["s"]), os.path.join(folder, "enc.txt"))
    >>> data = training_dataset(csv_path, encoder, epoch_source=SimpleNamespace(current=1))
    >>> item = data[0]
    >>> item["sig"].shape, encoder.decode_ndim(item["spk_id_encoded"].item()) in ("s", "s@sp0.9", "s@sp1.1")
    (torch.Size([32000]), True)
    """
    crop_samples = int(round(crop_seconds * sample_rate))
    if crop_samples <= 0:
        raise ValueError(f"crop_seconds must be > 0, got {crop_seconds}")
    dataset = DynamicItemDataset.from_csv(csv_path, col_types=CSV_TYPES)
    if len(dataset) == 0:
        raise ValueError(f"{csv_path}: no training utterance")
    speeds = tuple(float(s) for s in speeds)

    @takes("id", "wav", "start", "stop", "spk_id")
    @provides("sig", "spk_id_encoded", "load_seconds")
    def crop_pipeline(key, wav, start, stop, spk_id):
        signal, label, seconds = labelled_speed_crop(
            key, wav, start, stop, spk_id, label_encoder, speeds, crop_samples, seed,
            current_epoch(epoch_source), sample_rate,
        )
        yield signal
        yield torch.LongTensor([label])
        yield seconds

    dataset.add_dynamic_item(crop_pipeline)
    dataset.set_output_keys(["id", "sig", "spk_id_encoded", "load_seconds"])
    return dataset


def utterance_dataset(csv_path, sample_rate=16000, max_seconds=None):
    """Whole utterances as recorded (speed 1.0), for validation, test and cohort embeddings.

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
    >>> import os, tempfile, numpy as np, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> wav = os.path.join(folder, "a.wav")
    >>> soundfile.write(wav, np.random.randn(8000) * 0.1, 16000)
    >>> csv_path = os.path.join(folder, "test.csv")
    >>> _ = open(csv_path, "w").write(f"ID,duration,wav,start,stop,spk_id\\ns/1/1,0.5,{wav},0,8000,s\\n")
    >>> item = utterance_dataset(csv_path)[0]
    >>> item["id"], item["sig"].shape
    ('s/1/1', torch.Size([8000]))
    """
    dataset = DynamicItemDataset.from_csv(csv_path, col_types=CSV_TYPES)
    max_samples = None if max_seconds is None else int(math.ceil(max_seconds * sample_rate))

    @takes("wav", "start", "stop")
    @provides("sig")
    def audio_pipeline(wav, start, stop):
        if max_samples is not None:
            stop = min(stop, start + max_samples)
        return read_segment(wav, start, stop, sample_rate)

    dataset.add_dynamic_item(audio_pipeline)
    dataset.set_output_keys(["id", "sig", "spk_id"])
    return dataset
