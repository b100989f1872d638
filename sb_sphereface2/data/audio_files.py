"""Finding a corpus's audio files: ``<root>/<speaker>/<recording>`` and
``<root>/<speaker>/<session>/<utterance>`` (``.wav``, ``.flac``), in any mix.

A file's utterance ID is its path relative to the root without extension
(:func:`sb_sphereface2.data.trials.utterance_id`); its session is its session folder,
or the file itself when it sits directly in its speaker folder. Only names, sizes and
modification times are read here (cheap, even for a million files); the audio is
checked by :mod:`sb_sphereface2.data.audio_check`.
"""

import hashlib
import logging
import os
from dataclasses import dataclass

from sb_sphereface2.data.trials import utterance_id

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac")


@dataclass(slots=True)
class AudioFile:
    """One audio file found on disk.

    Arguments
    ---------
    utt_id : str
        Path relative to its root without extension, e.g. ``id10270/x6uYqmx31kE/00001``.
    path : str
        Absolute path of the audio file.
    size : int
        File size in bytes.
    mtime_ns : int
        Modification time in nanoseconds.
    session : str
        ``speaker/session`` for a file in a session folder; its own ID for a file
        directly in its speaker folder.
    """

    utt_id: str
    path: str
    size: int
    mtime_ns: int
    session: str


def find_audio_files(data_folder):
    """All ``<speaker>/<recording>`` and ``<speaker>/<session>/<utterance>`` audio files
    (``.wav``, ``.flac``) under one root.

    Hidden files (names starting with ``.``, e.g. unfinished conversions) are ignored.

    Arguments
    ---------
    data_folder : str or os.PathLike
        Folder that holds the speaker folders.

    Returns
    -------
    list of AudioFile
        Sorted by utterance ID.

    Raises
    ------
    FileNotFoundError
        The folder does not exist.
    ValueError
        No audio file at depth 2 or 3, or one ID given by both a WAV and a FLAC file.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "spk1", "sess1"))
    >>> soundfile.write(os.path.join(root, "spk1", "sess1", "00001.wav"), np.zeros(160), 16000)
    >>> soundfile.write(os.path.join(root, "spk2.wav"), np.zeros(160), 16000)  # not in a speaker folder
    >>> os.makedirs(os.path.join(root, "spk2"))
    >>> soundfile.write(os.path.join(root, "spk2", "long.flac"), np.zeros(160), 16000)
    >>> [(f.utt_id, f.session) for f in find_audio_files(root)]
    [('spk1/sess1/00001', 'spk1/sess1'), ('spk2/long', 'spk2/long')]
    """
    root = os.path.abspath(os.fspath(data_folder))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    found, elsewhere = {}, 0
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        depth = 0 if folder == root else os.path.relpath(folder, root).count(os.sep) + 1
        for name in names:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                continue  # hidden files are temporary or system files
            if depth not in (1, 2):
                elsewhere += 1
                continue
            path = os.path.join(folder, name)
            utt = utterance_id(os.path.relpath(path, root))
            if utt in found:
                raise ValueError(f"{root}: utterance {utt} exists as both {found[utt].path} and {path}")
            stat = os.stat(path)
            session = utt.rsplit("/", 1)[0] if depth == 2 else utt
            found[utt] = AudioFile(utt, path, stat.st_size, stat.st_mtime_ns, session)
    if not found:
        hint = (
            f" ({elsewhere} audio files at other depths: point data_folder at the folder "
            "that holds the speaker folders)"
            if elsewhere
            else ""
        )
        raise ValueError(
            f"{root}: no <speaker>/<recording> or <speaker>/<session>/<utterance> .wav or .flac files{hint}"
        )
    if elsewhere:
        logger.warning("%s: ignored %d audio files outside <speaker>/ and <speaker>/<session>/", root, elsewhere)
    return [found[u] for u in sorted(found)]


def fingerprint(files):
    """SHA-256 of every file's path, size and modification time (a manifest input)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.path}\t{f.size}\t{f.mtime_ns}\n".encode())
    return digest.hexdigest()
