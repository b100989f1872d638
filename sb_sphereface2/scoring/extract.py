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

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter

import numpy as np
import torch
from tqdm.auto import tqdm

from sb_sphereface2.data.audio import read_converted
from sb_sphereface2.errors import one_line
from sb_sphereface2.files import file_sha256, read_manifest, sidecar_path, write_json_atomic
from sb_sphereface2.scoring.embeddings_io import read_embeddings, save_embeddings

__all__ = ["Extraction", "model_record", "embedder_of_folder", "plan_batches", "extract"]

PADDING_TOLERANCE = 1e-5


@dataclasses.dataclass
class Extraction:
    """What :func:`extract` embedded: ``ids``, ``embeddings`` (float32 [N, D]), ``durations``
    (seconds [N]), ``speakers`` (or None), ``skipped`` (``[{"id", "path", "reason"}]``),
    ``notes`` (``{note: count}``, e.g. resampled files), ``chunks`` and ``computed_chunks``
    (chunks of the job, and those this call computed), ``padding_change`` (the probe's, with
    ``exact``; else None) and ``one_at_a_time`` (whether batching was turned off by ``exact``)."""

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
    from sb_sphereface2.pretrained.pipeline import pipeline_of_folder, torch_embedder

    pipeline, hparams = pipeline_of_folder(model_folder, device)
    return torch_embedder(pipeline, device), int(hparams.get("sample_rate", 16000))


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


def extract(utterances, embed, sample_rate=16000, out=None, batch_seconds=30.0, chunk_utterances=2000,
            workers=0, min_seconds=0.5, exact=False, model=None, progress=True, desc="embedding"):
    """Embed utterances in batches sorted by duration, resuming a killed run of the same job.

    Arguments
    ---------
    utterances : list of sb_sphereface2.data.utterance_sources.Utterance
        What to embed (a folder, a list file or CSV rows: :mod:`sb_sphereface2.data.utterance_sources`).
    embed : callable
        ``embed(wavs [B, T], wav_lens [B]) -> [B, D]``
        (:func:`embedder_of_folder`).
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
    >>> from sb_sphereface2.data.utterance_sources import folder_utterances
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
    padding_change = padding_changes_embeddings(embed, sample_rate) if exact else None
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
