"""Packing a training CSV into tar shards (WebDataset layout) and reading their manifest.

A shard is a plain tar file ``shard-000000.tar`` holding, per utterance, two members
with the same key: ``<key>.json`` (``{"ID", "spk_id", "samples"}``) and ``<key>.flac``
(the audio, kept compressed: a whole FLAC file is copied byte for byte, anything else is
encoded as 16-bit FLAC). This is the layout WebDataset and wespeaker read. Utterances
are shuffled (with ``seed``) before packing, so every shard mixes speakers, and every
shard but the last holds exactly ``utterances_per_shard`` of them.

``shards.json`` (written last) lists the shards with their utterance counts, the
speakers and the inputs (the CSV's SHA-256 and the packing settings). Every shard is
written atomically; a rerun with the same inputs keeps the shards already written and
finishes the rest, and a finished folder is left alone.

Command line::

    python -m sb_sphereface2.data.shard_writer train.csv shards/ --utterances-per-shard 1000 --jobs 4
"""

import argparse
import io
import json
import logging
import os
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile

from sb_sphereface2.data.audio import read_segment
from sb_sphereface2.data.training_csv import read_training_csv
from sb_sphereface2.files import atomic_write, file_sha256, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "shards.json"
FORMAT = "sb_sphereface2-shards-1"


def shard_name(index):
    """File name of shard ``index``.

    Example
    -------
    >>> shard_name(7)
    'shard-000007.tar'
    """
    return f"shard-{index:06d}.tar"


def flac_bytes(path, start, stop, sample_rate=16000):
    """The FLAC bytes of samples ``start..stop`` of ``path``: the file itself when it is a
    mono FLAC file at ``sample_rate`` used whole, else the span encoded as 16-bit FLAC.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.linspace(-0.5, 0.5, 1600), 16000)
    >>> data = flac_bytes(path, 100, 1100)
    >>> data[:4], soundfile.info(io.BytesIO(data)).frames
    (b'fLaC', 1000)
    """
    try:
        info = soundfile.info(path)
    except Exception as error:
        raise ValueError(f"{path}: unreadable audio file ({' '.join(str(error).split())})") from None
    whole = start == 0 and stop == info.frames
    if whole and info.format == "FLAC" and info.channels == 1 and info.samplerate == sample_rate:
        with open(path, "rb") as handle:
            return handle.read()
    signal = read_segment(path, start, stop, sample_rate).numpy()
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(signal, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same inputs give the same bytes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, records, sample_rate=16000):
    """Write one shard atomically; ``records`` are (key, row) with the CSV columns
    ``ID, wav, start, stop, spk_id``. Returns its size in bytes."""
    with atomic_write(path, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, row in records:
                start, stop = int(row["start"]), int(row["stop"])
                meta = {"ID": row["ID"], "spk_id": row["spk_id"], "samples": stop - start}
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
                _add_member(tar, f"{key}.flac", flac_bytes(row["wav"], start, stop, sample_rate))
    return os.path.getsize(path)


def _write_shard_job(job):
    path, records, sample_rate = job
    if os.path.isfile(path):  # written by an earlier run with the same inputs (atomic: complete)
        return os.path.getsize(path)
    return write_shard(path, records, sample_rate)


def read_manifest(folder):
    """The manifest of a finished shard folder (one-line errors when missing or broken).

    Returns
    -------
    dict
        ``shards`` (list of ``{"name", "utterances", "bytes"}``), ``speakers``,
        ``utterances``, ``sample_rate``, ``inputs``.
    """
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no shard manifest {path}: pack the training CSV first (sb_sphereface2.data.shard_writer)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        assert manifest["format"] == FORMAT and manifest["shards"] and manifest["speakers"]
    except Exception:
        raise ValueError(f"{path}: not a shard manifest of this version ({FORMAT})") from None
    return manifest


def pack_shards(train_csv, folder, utterances_per_shard=1000, sample_rate=16000, seed=0, jobs=1):
    """Pack the utterances of ``train_csv`` into tar shards in ``folder``.

    Arguments
    ---------
    train_csv : str
        Training CSV (``ID,duration,wav,start,stop,spk_id``).
    folder : str
        Output folder (``shard-*.tar`` and ``shards.json``).
    utterances_per_shard : int
        Utterances per shard (all shards but the last are full). About 130 MB per
        1,000 VoxCeleb2 utterances as FLAC.
    sample_rate : int
        Required sample rate.
    seed : int
        Seed of the order of the utterances across shards.
    jobs : int
        Processes writing shards in parallel.

    Returns
    -------
    dict
        The manifest.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> wav = os.path.join(root, "a.wav")
    >>> soundfile.write(wav, np.zeros(16000), 16000)
    >>> csv_path = os.path.join(root, "train.csv")
    >>> _ = open(csv_path, "w").write("ID,duration,wav,start,stop,spk_id\\n" + "".join(
    ...     f"u{i},0.5,{wav},{8000 * (i % 2)},{8000 * (i % 2 + 1)},s{i % 3}\\n" for i in range(5)))
    >>> manifest = pack_shards(csv_path, os.path.join(root, "shards"), utterances_per_shard=2)
    >>> [s["utterances"] for s in manifest["shards"]], manifest["speakers"]
    ([2, 2, 1], ['s0', 's1', 's2'])
    """
    if int(utterances_per_shard) < 1:
        raise ValueError(f"utterances_per_shard must be >= 1, got {utterances_per_shard}")
    _, rows = read_training_csv(train_csv, required=("ID", "wav", "start", "stop", "spk_id"))
    inputs = {
        "train_csv": os.path.abspath(train_csv),
        "train_csv_sha256": file_sha256(train_csv),
        "utterances_per_shard": int(utterances_per_shard),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
    }
    os.makedirs(folder, exist_ok=True)
    manifest_path = os.path.join(folder, MANIFEST)
    try:
        done = read_manifest(folder)
        if done["inputs"] == inputs and all(
            os.path.getsize(os.path.join(folder, s["name"])) == s["bytes"] for s in done["shards"]
        ):
            logger.info("%s: shards are up to date", folder)
            return done
    except (OSError, ValueError):
        pass
    # Shards of other inputs must not be taken for ours: record the inputs before writing.
    inputs_path = os.path.join(folder, "packing.json")
    previous = None
    if os.path.isfile(inputs_path):
        with open(inputs_path, encoding="utf-8") as handle:
            previous = json.load(handle)
    if previous != inputs:
        for name in os.listdir(folder):
            if name.startswith("shard-") and name.endswith(".tar") or name == MANIFEST:
                os.remove(os.path.join(folder, name))
        write_json_atomic(inputs_path, inputs)
    order = np.random.default_rng(int(seed)).permutation(len(rows))
    count = int(utterances_per_shard)
    jobs_list = []
    for index, first in enumerate(range(0, len(rows), count)):
        chunk = order[first : first + count]
        records = [(f"{first + k:09d}", rows[i]) for k, i in enumerate(chunk)]
        jobs_list.append((os.path.join(folder, shard_name(index)), records, int(sample_rate)))
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=int(jobs)) as pool:
            sizes = list(pool.map(_write_shard_job, jobs_list))
    else:
        sizes = [_write_shard_job(job) for job in jobs_list]
    manifest = {
        "format": FORMAT,
        "inputs": inputs,
        "sample_rate": int(sample_rate),
        "utterances": len(rows),
        "speakers": sorted({row["spk_id"] for row in rows}),
        "shards": [
            {"name": os.path.basename(path), "utterances": len(records), "bytes": size}
            for (path, records, _), size in zip(jobs_list, sizes)
        ],
    }
    write_json_atomic(manifest_path, manifest)
    logger.info("%s: %d utterances in %d shards", folder, len(rows), len(jobs_list))
    return manifest


def main(argv=None):
    """Command line: pack a training CSV into shards; one-line errors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_csv")
    parser.add_argument("folder")
    parser.add_argument("--utterances-per-shard", type=int, default=1000)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = pack_shards(args.train_csv, args.folder, args.utterances_per_shard, args.sample_rate, args.seed, args.jobs)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{manifest['utterances']} utterances of {len(manifest['speakers'])} speakers in "
          f"{len(manifest['shards'])} shards: {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
