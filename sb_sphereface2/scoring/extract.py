"""The embedding extractor: utterances (a folder, a list, a prepared CSV) to one embeddings
file, batched, resumable. The one embedding loop of the project (``score.py``, the held-out
evaluation, the exported mean and ``python -m sb_sphereface2.embed`` all run it).

1. Every utterance's duration is read from its header (or the CSV); unreadable files and
   clips shorter than ``min_seconds`` are set aside with the reason, and the run goes on.
2. The others are sorted by duration and cut into batches whose padded length (batch size x
   longest) stays within ``batch_seconds``; consecutive batches form chunks of about
   ``chunk_utterances`` utterances.
3. DataLoader workers decode the batches (resampled to the model's rate, downmixed to mono,
   :func:`sb_sphereface2.data.audio.read_converted`) and zero-pad them with relative
   lengths, as SpeechBrain does; the main process embeds them
   (:class:`sb_sphereface2.pretrained.pipeline.EmbeddingPipeline` with torch, or its ONNX
   export with onnxruntime). A progress bar shows utterances/s and the real-time factor.
4. Each finished chunk is written atomically into ``<out>.parts/``, beside a plan that names
   the inputs, the batching and the model; a rerun of the same job (after a crash or a
   ``kill -9``) keeps the finished chunks and computes only the others. The embeddings file
   (:mod:`sb_sphereface2.scoring.embeddings_io`, in input order, with durations and the
   model) is written atomically at the end, then the parts are removed; the set-aside
   files go to ``<out without .npz>.skipped.json``.

A length-aware model (this package's ResNet) gives a padded utterance the embedding it has
alone. Models that ignore the lengths or pad their convolutions by reflection (SpeechBrain's
ResNet lobe, ECAPA-TDNN) do not; ``exact=True`` (what ``score.py`` asks for) measures that on
a probe first and then embeds such a model one utterance at a time.
"""

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import Counter

import numpy as np
import torch
from tqdm.auto import tqdm

from sb_sphereface2.data.audio import read_converted
from sb_sphereface2.data.audio_files import AUDIO_EXTENSIONS
from sb_sphereface2.data.trials import speaker_of, utterance_id
from sb_sphereface2.errors import one_line
from sb_sphereface2.files import file_sha256, read_manifest, sidecar_path, write_json_atomic
from sb_sphereface2.scoring.embeddings_io import read_embeddings, save_embeddings

__all__ = ["Utterance", "Extraction", "folder_utterances", "list_utterances", "csv_utterances", "model_record",
           "embedder_of_folder", "torch_embedder", "plan_batches", "extract"]

PADDING_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One utterance to embed.

    Arguments
    ---------
    utt_id : str
        Its ID in the embeddings file.
    path : str
        The audio file.
    start, stop : int
        Sample span in the file's own rate (``stop`` None: to the end).
    speaker : str, optional
        Its speaker (kept in the embeddings file when every utterance has one).
    seconds : float, optional
        Its duration when known (otherwise read from the header).
    """

    utt_id: str
    path: str
    start: int = 0
    stop: int = None
    speaker: str = None
    seconds: float = None


@dataclasses.dataclass
class Extraction:
    """What :func:`extract` embedded: ``ids``, ``embeddings`` (float32 [N, D]), ``durations``
    (seconds [N]), ``speakers`` (or None), ``skipped`` (``[{"id", "path", "reason"}]``),
    ``notes`` (``{note: count}``, e.g. resampled files), ``chunks`` and ``computed_chunks``
    (chunks of the job, and those this call computed), ``padding_change`` (the probe's)
    and ``one_at_a_time`` (whether batching was turned off by ``exact``)."""

    ids: list
    embeddings: np.ndarray
    durations: np.ndarray
    speakers: list
    skipped: list
    notes: dict
    chunks: int
    computed_chunks: int
    padding_change: float
    one_at_a_time: bool


def folder_utterances(data_folder):
    """Every audio file under a folder (any depth, hidden files left out), its ID its path
    relative to the folder without the extension; speakers (the first folder) when every
    file sits in a folder.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "spk", "s1"))
    >>> soundfile.write(os.path.join(root, "spk", "s1", "1.flac"), np.zeros(800), 16000)
    >>> [(u.utt_id, u.speaker) for u in folder_utterances(root)]
    [('spk/s1/1', 'spk')]
    """
    root = os.path.abspath(os.fspath(data_folder))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                path = os.path.join(folder, name)
                found.append((utterance_id(os.path.relpath(path, root)), path))
    if not found:
        raise ValueError(f"{root}: no {' or '.join(AUDIO_EXTENSIONS)} files under it")
    with_speakers = all("/" in utt for utt, _ in found)
    return _distinct([Utterance(utt, path, speaker=speaker_of(utt) if with_speakers else None)
                      for utt, path in found], root)


def list_utterances(list_file):
    """The utterances of a list file: one ``PATH`` or ``ID PATH`` per line (blank lines and
    ``#`` comments skipped), relative paths from the list's folder; an ID by default is the
    path as written, without its extension.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "l.txt"), "w").write("a/x.wav\\n# c\\nutt2 /data/y.flac\\n")
    >>> [(u.utt_id, u.path.endswith("a/x.wav"), u.path) for u in list_utterances(os.path.join(folder, "l.txt"))][1]
    ('utt2', False, '/data/y.flac')
    """
    list_file = os.fspath(list_file)
    base = os.path.dirname(os.path.abspath(list_file))
    utterances = []
    with open(list_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.strip().split(maxsplit=1)
            if not fields or fields[0].startswith("#"):
                continue
            utt, path = (utterance_id(fields[0]), fields[0]) if len(fields) == 1 else fields
            utterances.append(Utterance(utt, os.path.join(base, path.strip())))
    if not utterances:
        raise ValueError(f"{list_file}: no files listed")
    return _distinct(utterances, list_file)


def csv_utterances(csv_path_or_rows, sample_rate=16000, max_seconds=None):
    """The utterances of a data-preparation CSV (or its rows as dicts): whole utterances at
    speed 1.0, optionally their first ``max_seconds``.

    Example
    -------
    >>> rows = [{"ID": "s/1/1", "wav": "/a.wav", "start": "0", "stop": "48000", "duration": "3.0", "spk_id": "s"}]
    >>> csv_utterances(rows, max_seconds=2.0)[0]
    Utterance(utt_id='s/1/1', path='/a.wav', start=0, stop=32000, speaker='s', seconds=2.0)
    """
    rows = csv_path_or_rows
    if isinstance(rows, (str, os.PathLike)):
        with open(rows, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    utterances = []
    for row in rows:
        if float(row.get("speed") or 1.0) != 1.0:
            continue
        start, stop = int(row["start"]), int(row["stop"])
        if max_seconds is not None:
            stop = min(stop, start + int(math.ceil(max_seconds * sample_rate)))
        utterances.append(Utterance(row["ID"], row["wav"], start, stop, row.get("spk_id") or None,
                                    (stop - start) / sample_rate))
    return _distinct(utterances, "the CSV rows")


def _distinct(utterances, where):
    counts = Counter(u.utt_id for u in utterances)
    twice = [utt for utt, n in counts.items() if n > 1]
    if twice:
        raise ValueError(f"{where}: utterance ID {twice[0]!r} given {counts[twice[0]]} times ({len(twice)} such IDs)")
    return utterances


def model_record(model_folder):
    """``{"folder", "embedding_model_sha256"}``: which model made the embeddings.

    Example
    -------
    >>> len(model_record(getfixture("tiny_model_folder"))["embedding_model_sha256"])
    64
    """
    checkpoint = os.path.join(model_folder, "embedding_model.ckpt")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"model folder {model_folder} has no embedding_model.ckpt")
    return {"folder": os.path.abspath(model_folder), "embedding_model_sha256": file_sha256(checkpoint)}


def embedder_of_folder(model_folder, backend="torch", device="cpu", threads=None):
    """``(embed, sample_rate)``: ``embed(wavs [B, T], wav_lens [B]) -> numpy [B, D]`` with the
    folder's pipeline in torch, or its ONNX export in onnxruntime (exported first when
    ``MODEL_FOLDER/embedding_model.onnx`` is absent).

    Example
    -------
    >>> embed, rate = embedder_of_folder(getfixture("tiny_model_folder"))
    >>> rate, embed(torch.zeros(2, 8000), torch.tensor([1.0, 0.5])).shape
    (16000, (2, 32))
    """
    from sb_sphereface2.pretrained.folder import HPARAMS_FILE

    if backend == "onnx":
        from hyperpyyaml import load_hyperpyyaml

        from sb_sphereface2.pretrained.onnx_export import ONNX_FILE, OnnxEmbedder, export_onnx

        path = os.path.join(model_folder, ONNX_FILE)
        if not os.path.isfile(path):
            export_onnx(model_folder, path)
        with open(os.path.join(model_folder, HPARAMS_FILE), encoding="utf-8") as handle:
            rate = int(load_hyperpyyaml(handle).get("sample_rate", 16000))
        return OnnxEmbedder(path, threads=threads), rate
    if backend != "torch":
        raise ValueError(f"backend must be torch or onnx, got {backend!r}")
    from sb_sphereface2.pretrained.pipeline import pipeline_of_folder

    pipeline, hparams = pipeline_of_folder(model_folder, device)
    return torch_embedder(pipeline, device), int(hparams.get("sample_rate", 16000))


def torch_embedder(pipeline, device="cpu"):
    """``embed(wavs, wav_lens) -> numpy [B, D]`` of an
    :class:`sb_sphereface2.pretrained.pipeline.EmbeddingPipeline` (or any module of that
    signature) on ``device``.

    Example
    -------
    >>> from sb_sphereface2.pretrained.pipeline import pipeline_of_folder
    >>> embed = torch_embedder(pipeline_of_folder(getfixture("tiny_model_folder"))[0])
    >>> embed(torch.zeros(1, 4000), torch.ones(1)).dtype
    dtype('float32')
    """
    pipeline = pipeline.to(device).eval()

    @torch.no_grad()
    def embed(wavs, wav_lens):
        return pipeline(torch.as_tensor(wavs).to(device), torch.as_tensor(wav_lens).to(device)).cpu().numpy()

    return embed


def plan_batches(seconds, batch_seconds, chunk_utterances):
    """Batches (lists of indices, shortest utterances first, ties by index) whose padded
    length ``len(batch) * longest`` stays within ``batch_seconds`` (0: one utterance each),
    and chunks (lists of consecutive batch numbers) of at least ``chunk_utterances``.

    Example
    -------
    >>> plan_batches([3.0, 1.0, 2.0, 1.0], batch_seconds=4.0, chunk_utterances=3)
    ([[1, 3], [2], [0]], [[0, 1], [2]])
    """
    order = sorted(range(len(seconds)), key=lambda i: (seconds[i], i))
    batches, current = [], []
    for index in order:
        if current and (len(current) + 1) * seconds[index] > batch_seconds:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    chunks, current, size = [], [], 0
    for number, batch in enumerate(batches):
        current.append(number)
        size += len(batch)
        if size >= chunk_utterances:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return batches, chunks


class _Decoding(torch.utils.data.Dataset):
    """Decodes an utterance in a DataLoader worker: ``(index, signal or None, notes, reason)``."""

    def __init__(self, utterances, sample_rate, min_seconds):
        self.utterances, self.sample_rate, self.min_seconds = utterances, sample_rate, min_seconds

    def __len__(self):
        return len(self.utterances)

    def __getitem__(self, index):
        utt = self.utterances[index]
        try:
            signal, notes = read_converted(utt.path, self.sample_rate, utt.start, utt.stop)
        except ValueError as error:
            return index, None, [], one_line(error)
        seconds = len(signal) / self.sample_rate
        if seconds < self.min_seconds:
            return index, None, notes, f"{seconds:.2f} s long, shorter than the minimum {self.min_seconds:g} s"
        return index, signal, notes, None


def _pad(items):
    """A zero-padded batch with relative lengths, and the failures beside it."""
    good = [(index, signal) for index, signal, _, reason in items if reason is None]
    failed = [(index, reason) for index, _, _, reason in items if reason is not None]
    notes = [note for _, _, item_notes, _ in items for note in item_notes]
    if not good:
        return [], None, None, failed, notes
    lengths = torch.tensor([len(signal) for _, signal in good])
    wavs = torch.zeros(len(good), int(lengths.max()))
    for row, (_, signal) in enumerate(good):
        wavs[row, : len(signal)] = signal
    return [index for index, _ in good], wavs, lengths.float() / lengths.max(), failed, notes


def _header_seconds(utterances):
    """Duration of every utterance (header reads for those not known); failures."""
    from speechbrain.dataio import audio_io

    seconds, failed = [], {}
    for index, utt in enumerate(utterances):
        if utt.seconds is not None:
            seconds.append(utt.seconds)
            continue
        try:
            info = audio_io.info(utt.path)
            stop = info.frames if utt.stop is None else min(utt.stop, info.frames)
            seconds.append(max(stop - utt.start, 0) / info.sample_rate)
        except Exception as error:  # soundfile's errors have no common base
            cause = error.__cause__ or error
            failed[index] = f"{utt.path}: unreadable audio file ({one_line(cause)})"
            seconds.append(0.0)
    return seconds, failed


def _job_key(utterances, seconds, batches, model, sample_rate, backend):
    digest = hashlib.sha256()
    digest.update(json.dumps([model, sample_rate, backend, batches], sort_keys=True).encode())
    for utt, s in zip(utterances, seconds):
        digest.update(f"{utt.utt_id}\t{utt.path}\t{utt.start}\t{utt.stop}\t{s:.6f}\n".encode())
    return digest.hexdigest()


def _chunk_paths(parts, number):
    return os.path.join(parts, f"chunk_{number:06d}.npz"), os.path.join(parts, f"chunk_{number:06d}.json")


def _read_chunk(parts, number, expected_ids):
    """A finished chunk's ``({id: (embedding, seconds)}, failures)``, or None."""
    npz, done = _chunk_paths(parts, number)
    record = read_manifest(done)
    if not isinstance(record, dict) or sorted(record.get("ids", [])) != sorted(expected_ids):
        return None
    rows = {}
    if record.get("embedded"):
        try:
            content = read_embeddings(npz)
        except (FileNotFoundError, ValueError):
            return None
        rows = {utt: (content.embeddings[row], content.durations[row]) for row, utt in enumerate(content.ids)}
        if sorted(rows) != sorted(record["embedded"]):
            return None
    return rows, record.get("failed", {})


def extract(utterances, embed, sample_rate=16000, out=None, batch_seconds=200.0, chunk_utterances=2000,
            workers=0, min_seconds=0.5, exact=False, model=None, progress=True, desc="embedding"):
    """Embed utterances in batches sorted by duration, resuming a killed run of the same job.

    Arguments
    ---------
    utterances : list of Utterance
        What to embed (:func:`folder_utterances`, :func:`list_utterances`, :func:`csv_utterances`).
    embed : callable
        ``embed(wavs [B, T], wav_lens [B]) -> [B, D]`` (:func:`embedder_of_folder`).
    sample_rate : int
        The model's rate (other rates are resampled).
    out : str, optional
        The embeddings file (with ``<out>.parts/`` while running and
        ``<out without .npz>.skipped.json``); None: nothing is written.
    batch_seconds : float
        Most padded audio per batch (batch size x longest), seconds; 0: one at a time.
    chunk_utterances : int
        Utterances per chunk written (the unit of resuming).
    workers : int
        DataLoader workers decoding audio (0: in this process).
    min_seconds : float
        Shorter clips are set aside.
    exact : bool
        Embed one at a time when padding changes the model's embeddings (probe above
        ``PADDING_TOLERANCE``).
    model : dict, optional
        :func:`model_record` of the model, stored in the file and in the job's plan.
    progress : bool
        Show the progress bar.
    desc : str
        Its label.

    Returns
    -------
    Extraction

    Example
    -------
    >>> import tempfile, soundfile
    >>> root = tempfile.mkdtemp()
    >>> for name, seconds in [("a", 1.0), ("b", 2.0), ("c", 0.1)]:
    ...     soundfile.write(os.path.join(root, name + ".wav"), np.random.randn(int(seconds * 16000)) * 0.1, 16000)
    >>> embed, rate = embedder_of_folder(getfixture("tiny_model_folder"))
    >>> result = extract(folder_utterances(root), embed, rate, out=os.path.join(root, "emb.npz"), progress=False)
    >>> result.ids, result.embeddings.shape, [s["reason"] for s in result.skipped]
    (['a', 'b'], (2, 32), ['0.10 s long, shorter than the minimum 0.5 s'])
    >>> read_embeddings(os.path.join(root, "emb.npz")).durations.tolist()
    [1.0, 2.0]
    """
    from sb_sphereface2.pretrained.pipeline import padding_changes_embeddings

    if not utterances:
        raise ValueError("no utterances to embed")
    padding_change = padding_changes_embeddings(embed, sample_rate)
    one_at_a_time = exact and padding_change > PADDING_TOLERANCE
    seconds, failed = _header_seconds(utterances)
    for index, s in enumerate(seconds):
        if index not in failed and s < min_seconds:
            failed[index] = f"{s:.2f} s long, shorter than the minimum {min_seconds:g} s"
    candidates = [i for i in range(len(utterances)) if i not in failed]
    batches, chunks = plan_batches([seconds[i] for i in candidates], 0.0 if one_at_a_time else batch_seconds,
                                   chunk_utterances)
    batches = [[candidates[i] for i in batch] for batch in batches]
    backend = type(embed).__name__
    key = _job_key(utterances, seconds, batches, model, sample_rate, backend)
    parts = None if out is None else f"{os.path.abspath(os.fspath(out))}.parts"
    rows, failures, done = {}, {utterances[i].utt_id: reason for i, reason in failed.items()}, set()
    if parts is not None:
        plan_path = os.path.join(parts, "plan.json")
        if (read_manifest(plan_path) or {}).get("job") != key:
            shutil.rmtree(parts, ignore_errors=True)
            write_json_atomic(plan_path, {"job": key, "chunks": len(chunks), "utterances": len(utterances)})
        for number, chunk in enumerate(chunks):
            previous = _read_chunk(parts, number, [utterances[i].utt_id for b in chunk for i in batches[b]])
            if previous is not None:
                rows.update(previous[0])
                failures.update(previous[1])
                done.add(number)
    todo = [number for number in range(len(chunks)) if number not in done]
    sampler = [batches[b] for number in todo for b in chunks[number]]
    loader = torch.utils.data.DataLoader(_Decoding(utterances, sample_rate, min_seconds), batch_sampler=sampler,
                                         num_workers=workers, collate_fn=_pad)
    notes = Counter()
    total = len(candidates)
    bar = tqdm(total=total, initial=total - sum(len(batches[b]) for n in todo for b in chunks[n]), desc=desc,
               unit="utt", disable=not progress, file=sys.stderr)
    audio, began = 0.0, time.perf_counter()
    batch_iter = iter(loader)
    for number in todo:
        chunk_rows, chunk_failed = {}, {}
        for _ in chunks[number]:
            indices, wavs, lens, batch_failed, batch_notes = next(batch_iter)
            notes.update(batch_notes)
            for index, reason in batch_failed:
                chunk_failed[utterances[index].utt_id] = reason
            if indices:
                embeddings = np.asarray(embed(wavs, lens), dtype=np.float32).reshape(len(indices), -1)
                lengths = (lens * wavs.shape[1]).round().numpy() / sample_rate
                for index, embedding, length in zip(indices, embeddings, lengths):
                    chunk_rows[utterances[index].utt_id] = (embedding, float(length))
                audio += float(lengths.sum())
            bar.update(len(indices) + len(batch_failed))
            elapsed = time.perf_counter() - began
            bar.set_postfix_str(f"RTF {elapsed / max(audio, 1e-9):.4f}", refresh=False)
        if parts is not None:
            npz, record = _chunk_paths(parts, number)
            if chunk_rows:
                ids = sorted(chunk_rows)
                save_embeddings(npz, ids, np.stack([chunk_rows[u][0] for u in ids]),
                                durations=[chunk_rows[u][1] for u in ids])
            write_json_atomic(record, {"ids": [utterances[i].utt_id for b in chunks[number] for i in batches[b]],
                                       "embedded": sorted(chunk_rows), "failed": chunk_failed})
        rows.update(chunk_rows)
        failures.update(chunk_failed)
    bar.close()
    ids = [u.utt_id for u in utterances if u.utt_id in rows]
    if not ids:
        raise ValueError(f"nothing embedded: all {len(utterances)} utterances were set aside, the first because "
                         f"{next(iter(failures.values()))}")
    embeddings = np.stack([rows[u][0] for u in ids])
    durations = np.array([rows[u][1] for u in ids], dtype=np.float64)
    by_id = {u.utt_id: u for u in utterances}
    speakers = [by_id[u].speaker for u in ids]
    speakers = speakers if all(s is not None for s in speakers) else None
    skipped = [{"id": u.utt_id, "path": u.path, "reason": failures[u.utt_id]} for u in utterances
               if u.utt_id in failures]
    if out is not None:
        save_embeddings(out, ids, embeddings, speakers, durations, model=model)
        skipped_path = sidecar_path(os.fspath(out), "skipped")
        if skipped:
            write_json_atomic(skipped_path, skipped)
        elif os.path.isfile(skipped_path):
            os.remove(skipped_path)
        shutil.rmtree(parts, ignore_errors=True)
    return Extraction(ids, embeddings, durations, speakers, skipped, dict(notes), len(chunks), len(todo),
                      padding_change, one_at_a_time)
