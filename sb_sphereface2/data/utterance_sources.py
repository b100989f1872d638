"""Where the utterances to embed come from: every audio file under a folder, the files of a
list, the rows of a data-preparation CSV; each an :class:`Utterance` (ID, file, span,
speaker) for :func:`sb_sphereface2.scoring.extract.extract`."""

import csv
import dataclasses
import math
import os
from collections import Counter

from sb_sphereface2.data.audio_check import AUDIO_EXTENSIONS
from sb_sphereface2.data.trials import speaker_of, utterance_id

__all__ = ["Utterance", "folder_utterances", "list_utterances", "csv_utterances"]


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
