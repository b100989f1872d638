"""Streaming training batches from tar shards, each utterance exactly once per epoch.

How an epoch is split (:func:`epoch_plan`): the shards are put in a random order (seed,
epoch) and their utterances laid end to end; that sequence is cut into one contiguous
span per *reader* (each DataLoader worker of each DDP process: ``world_size x
num_workers`` readers) of near-equal length (they differ by at most one utterance). A
span covers whole shards plus at most a part of a shard at each end; a reader skips
over the tar headers of the part it does not own without reading its audio. Every
utterance is thus read once per epoch in all, whatever the number of shards, processes
and workers, and no shard is read twice. Every reader yields the same number of batches
(its utterances split evenly: batches hold ``batch_size`` or slightly fewer
utterances), so every process has the same number of batches and DDP never waits for a
process that ran out. Fewer utterances than readers is an error.

Within a reader, records pass through a shuffle buffer (``shuffle_buffer`` records,
seeded by seed, epoch and reader) and are then decoded, speed-changed and cropped
exactly as the CSV path does (:func:`sb_sphereface2.data.dataio.labelled_speed_crop`:
the draws depend on seed, epoch and utterance ID only). The batch order depends on
the seed, the epoch, and the numbers of processes and workers.

:class:`ShardLoader` (a DataLoader) reads the epoch from SpeechBrain's ``EpochCounter``
when an epoch starts and saves its position in checkpoints: a run resumed from an
intra-epoch checkpoint skips the batches already trained on (their records are read but
not decoded) and goes on with the same epoch.
"""

import json
import logging
import os
import tarfile

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from sb_sphereface2.data.dataio import labelled_speed_crop
from sb_sphereface2.data.shard_writer import read_manifest
from sb_sphereface2.data.speed import SPEEDS, current_epoch

logger = logging.getLogger(__name__)

_PLAN_STREAM, _BUFFER_STREAM = 1, 2  # separate random streams of one (seed, epoch)


def epoch_plan(shard_sizes, readers, batch_size, seed, epoch):
    """Each reader's spans of shards and batch sizes for one epoch.

    Arguments
    ---------
    shard_sizes : list of int
        Utterances per shard.
    readers : int
        DDP processes x DataLoader workers per process; reader ``rank * workers + worker``.
    batch_size : int
        Most utterances per batch.
    seed, epoch : int
        Seed the shard order.

    Returns
    -------
    list of (spans, batch_sizes)
        Per reader: ``spans`` as ``(shard index, first, stop)`` (utterances
        ``first..stop-1`` of that shard), ``batch_sizes`` (same length for all readers).

    Example
    -------
    >>> plan = epoch_plan([4, 4, 3], readers=2, batch_size=4, seed=0, epoch=1)
    >>> [sum(b) for _, b in plan], [len(b) for _, b in plan]
    ([6, 5], [2, 2])
    >>> sorted((s, i) for spans, _ in plan for s, a, b in spans for i in range(a, b)) == [
    ...     (s, i) for s, n in enumerate([4, 4, 3]) for i in range(n)]
    True
    """
    total = int(sum(shard_sizes))
    if total < readers:
        raise ValueError(f"{total} utterances cannot feed {readers} readers (processes x workers)")
    order = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), _PLAN_STREAM]).permutation(len(shard_sizes))
    counts = [total // readers + (r < total % readers) for r in range(readers)]
    batches = -(-counts[0] // batch_size)  # ceil of the largest count
    if counts[-1] < batches:
        raise ValueError(f"{total} utterances are too few for {readers} readers (processes x workers) and batch size {batch_size}")
    plan = []
    cursor = [(int(s), int(shard_sizes[s])) for s in order]  # shards in epoch order
    shard, used = 0, 0
    for count in counts:
        spans, left = [], count
        while left:
            index, size = cursor[shard]
            take = min(size - used, left)
            spans.append((index, used, used + take))
            used, left = used + take, left - take
            if used == size:
                shard, used = shard + 1, 0
        sizes = [count // batches + (b < count % batches) for b in range(batches)]
        plan.append((spans, sizes))
    return plan


def batches_per_process(utterances, world_size, num_workers, batch_size):
    """Batches (iterations) per process in an epoch of the shard path: every reader
    (``world_size x max(1, num_workers)``) yields ceil(its utterances / batch_size).

    Example
    -------
    >>> batches_per_process(1092009, world_size=4, num_workers=4, batch_size=64)  # VoxCeleb2, 256 in all
    4268
    """
    readers = max(1, int(num_workers))
    largest = -(-int(utterances) // (int(world_size) * readers))
    return readers * -(-largest // int(batch_size))


def read_span(path, first, stop):
    """Records ``first..stop-1`` of a shard as dicts ``{"__key__", "json", "flac", ...}``
    (member extensions as keys, bytes as values); earlier records' data is not read."""
    index, record = -1, None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if record is None or key != record["__key__"]:
                    if record is not None and index >= first:
                        yield record
                    index += 1
                    if index >= stop:
                        return
                    record = {"__key__": key}
                if index >= first and member.isfile():
                    record[extension] = tar.extractfile(member).read()
            if record is not None and first <= index < stop:
                yield record
    except (OSError, tarfile.TarError) as error:
        raise ValueError(f"{path}: unreadable shard ({' '.join(str(error).split())})") from None
    if index + 1 < stop:
        raise ValueError(f"{path}: expected at least {stop} utterances, found {index + 1}")


def shuffled(records, buffer_size, rng):
    """Records in a random order through a buffer of ``buffer_size`` (0: as they come).

    Example
    -------
    >>> sorted(shuffled(iter(range(10)), 4, np.random.default_rng(0))) == list(range(10))
    True
    """
    if buffer_size <= 1:
        yield from records
        return
    buffer = []
    for record in records:
        if len(buffer) < buffer_size:
            buffer.append(record)
            continue
        index = int(rng.integers(buffer_size))
        yield buffer[index]
        buffer[index] = record
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


def _process_position():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(torch.utils.data.IterableDataset):
    """Batches (``PaddedBatch``: ``id``, ``sig``, ``spk_id_encoded``, ``load_seconds``)
    of one process for one epoch; see the module docstring for the split.

    Arguments
    ---------
    folder : str
        Shard folder (with ``shards.json``).
    label_encoder : CategoricalEncoder
        Over the speed-specific classes.
    batch_size : int
        Most utterances per batch (per process).
    num_workers : int
        DataLoader workers that will read it (0: the main process reads).
    crop_seconds, sample_rate, speeds, seed, epoch_source
        As :func:`sb_sphereface2.data.dataio.training_dataset`.
    shuffle_buffer : int
        Records in each reader's shuffle buffer.
    rank, world_size : int, optional
        This process's place in DDP (default: from torch.distributed or the
        ``RANK`` / ``WORLD_SIZE`` variables torchrun sets).
    """

    def __init__(self, folder, label_encoder, batch_size, num_workers=0, crop_seconds=2.0, sample_rate=16000,
                 speeds=SPEEDS, seed=0, epoch_source=None, shuffle_buffer=2000, rank=None, world_size=None):
        super().__init__()
        manifest = read_manifest(folder)
        if manifest["sample_rate"] != sample_rate:
            raise ValueError(f"{folder}: shards are at {manifest['sample_rate']} Hz, sample_rate is {sample_rate}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.folder = folder
        self.shard_names = [s["name"] for s in manifest["shards"]]
        self.shard_sizes = [int(s["utterances"]) for s in manifest["shards"]]
        self.speakers = manifest["speakers"]
        self.label_encoder = label_encoder
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.sample_rate = sample_rate
        self.speeds = tuple(float(s) for s in speeds)
        self.seed = int(seed)
        self.epoch_source = epoch_source
        self.epoch = None  # set_epoch() overrides epoch_source
        self.shuffle_buffer = int(shuffle_buffer)
        position = _process_position()
        self.rank = position[0] if rank is None else int(rank)
        self.world_size = position[1] if world_size is None else int(world_size)
        self.skip_batches = 0
        self.readers_per_process = max(1, self.num_workers)
        epoch_plan(self.shard_sizes, self.world_size * self.readers_per_process, self.batch_size, 0, 0)  # checks

    def set_epoch(self, epoch):
        """Use ``epoch`` (instead of ``epoch_source``) for the next iteration."""
        self.epoch = int(epoch)

    def __len__(self):
        """Batches per process and epoch (the same for every process)."""
        return batches_per_process(sum(self.shard_sizes), self.world_size, self.num_workers, self.batch_size)

    def __iter__(self):
        epoch = self.epoch if self.epoch is not None else current_epoch(self.epoch_source)
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != self.readers_per_process:
            raise ValueError(
                f"ShardDataset was made for {self.num_workers} DataLoader workers but runs in {workers}"
            )
        # DataLoader takes batches from its workers in turn, starting with worker 0, and
        # batch j of an epoch belongs to reader j % workers. Resuming after s batches,
        # worker w plays reader (w + s) % workers, so that the first batch is batch s.
        done = self.skip_batches
        reader = (worker + done) % workers
        skip = max(0, -(-(done - reader) // workers))  # its batches among the first s
        return self._batches(epoch, self.rank * workers + reader, skip)

    def _batches(self, epoch, reader, skip):
        plan = epoch_plan(self.shard_sizes, self.world_size * self.readers_per_process, self.batch_size, self.seed, epoch)
        spans, batch_sizes = plan[reader]
        records = (
            record
            for shard, first, stop in spans
            for record in read_span(os.path.join(self.folder, self.shard_names[shard]), first, stop)
        )
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), _BUFFER_STREAM, reader])
        stream = shuffled(records, self.shuffle_buffer, rng)
        for number, size in enumerate(batch_sizes):
            chosen = [next(stream) for _ in range(size)]
            if number < skip:
                continue
            yield PaddedBatch([self._item(record, epoch) for record in chosen])

    def _item(self, record, epoch):
        name = f"{self.folder}:{record['__key__']}"
        try:
            meta = json.loads(record["json"])
            audio = record["flac"]
        except (KeyError, ValueError):
            raise ValueError(f"{name}: a shard record needs .json and .flac members") from None
        signal, label, seconds = labelled_speed_crop(
            meta["ID"], audio, 0, int(meta["samples"]), meta["spk_id"], self.label_encoder, self.speeds,
            self.crop_samples, self.seed, epoch, self.sample_rate, name=f"{name} ({meta['ID']})",
        )
        return {"id": meta["ID"], "sig": signal, "spk_id_encoded": torch.LongTensor([label]), "load_seconds": seconds}


@register_checkpoint_hooks
class ShardLoader(torch.utils.data.DataLoader):
    """A DataLoader over a :class:`ShardDataset` that starts each epoch at the right
    epoch and, after an intra-epoch checkpoint, at the right batch (see
    :func:`shard_loader`). ``batch_size``, ``shuffle``, ``drop_last`` and samplers do not
    apply: the dataset makes the batches.
    """

    def __init__(self, dataset, **loader_kwargs):
        if loader_kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers must be False for shards (workers take the epoch when they start)")
        if int(loader_kwargs.get("num_workers", 0)) != dataset.num_workers:
            raise ValueError(f"num_workers {loader_kwargs.get('num_workers', 0)} differs from the dataset's {dataset.num_workers}")
        for key in ("shuffle", "sampler", "batch_sampler", "drop_last", "batch_size"):
            loader_kwargs.pop(key, None)
        super().__init__(dataset, batch_size=None, **loader_kwargs)
        self.batches_done = 0
        self._resume_at = 0

    def __iter__(self):
        self.dataset.skip_batches, self._resume_at = self._resume_at, 0
        self.batches_done = self.dataset.skip_batches
        iterator = super().__iter__()  # workers copy the dataset now
        self.dataset.skip_batches = 0
        for batch in iterator:
            self.batches_done += 1
            yield batch
        self.batches_done = 0

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"{self.batches_done}\n")

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        with open(path, encoding="utf-8") as handle:
            done = int(handle.read().strip() or 0)
        self._resume_at = 0 if end_of_epoch else done


def shard_loader(folder, label_encoder, batch_size, num_workers=0, shuffle_buffer=2000, crop_seconds=2.0,
                 sample_rate=16000, speeds=SPEEDS, seed=0, epoch_source=None, **loader_kwargs):
    """A :class:`ShardLoader` over a :class:`ShardDataset` (arguments as there; other
    keyword arguments go to the DataLoader, e.g. ``pin_memory``).

    Example
    -------
    >>> import os, tempfile, numpy as np, soundfile
    >>> from sb_sphereface2.data.shard_writer import pack_shards
    >>> from sb_sphereface2.data.speakers import label_encoder
    >>> from sb_sphereface2.data.speed import speed_labels
    >>> root = tempfile.mkdtemp()
    >>> wav = os.path.join(root, "a.wav")
    >>> soundfile.write(wav, np.random.randn(16000) * 0.1, 16000)
    >>> csv_path = os.path.join(root, "train.csv")
    >>> _ = open(csv_path, "w").write("ID,duration,wav,start,stop,spk_id\\n" + "".join(
    ...     f"u{i},1.0,{wav},0,16000,s{i % 2}\\n" for i in range(5)))
    >>> _ = pack_shards(csv_path, os.path.join(root, "shards"), utterances_per_shard=2)
    >>> encoder = label_encoder(speed_labels(["s0", "s1"]), os.path.join(root, "enc.txt"))
    >>> loader = shard_loader(os.path.join(root, "shards"), encoder, batch_size=2, crop_seconds=0.5)
    >>> loader.dataset.set_epoch(1)
    >>> [batch.sig.data.shape for batch in loader]
    [torch.Size([2, 8000]), torch.Size([2, 8000]), torch.Size([1, 8000])]
    """
    dataset = ShardDataset(
        folder, label_encoder, batch_size, num_workers=num_workers, crop_seconds=crop_seconds,
        sample_rate=sample_rate, speeds=speeds, seed=seed, epoch_source=epoch_source, shuffle_buffer=shuffle_buffer,
    )
    return ShardLoader(dataset, num_workers=num_workers, **loader_kwargs)
