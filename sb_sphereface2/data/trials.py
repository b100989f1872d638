"""Verification trial lists in VoxCeleb format: ``label enrol test`` per line.

Utterances are named by their path relative to the dataset root with the extension
removed (``id10270/x6uYqmx31kE/00001``), so one trial list serves WAV, FLAC or
converted M4A copies of the same data. This is also the ``ID`` column of the CSVs
that data preparation writes and the key of an embeddings file.
"""

import os
from dataclasses import dataclass

import numpy as np

from sb_sphereface2.files import write_text_atomic


def utterance_id(relative_path):
    """Utterance ID of a path relative to the dataset root: the path without extension,
    with forward slashes.

    Example
    -------
    >>> utterance_id("id10270/x6uYqmx31kE/00001.wav")
    'id10270/x6uYqmx31kE/00001'
    >>> utterance_id("id10270\\\\x6uYqmx31kE\\\\00001.flac")
    'id10270/x6uYqmx31kE/00001'
    """
    return os.path.splitext(relative_path.replace("\\", "/"))[0]


def speaker_of(utt_id):
    """Speaker of an utterance ID: its first path component.

    Example
    -------
    >>> speaker_of("id10270/x6uYqmx31kE/00001")
    'id10270'
    """
    return utt_id.split("/", 1)[0]


@dataclass
class TrialList:
    """A parsed trial list.

    Arguments
    ---------
    name : str
        Name of the list (file name without extension).
    labels : numpy.ndarray
        1 for target, 0 for non-target trials, int8 [N].
    enrol : list of str
        Enrolment utterance IDs [N].
    test : list of str
        Test utterance IDs [N].
    line_numbers : numpy.ndarray, optional
        1-based line of each trial in the file it was read from (int64 [N]), so
        that errors about a trial can name its line; None for lists built in code.

    Example
    -------
    >>> t = TrialList("toy", np.array([1, 0], dtype=np.int8), ["a/s/1", "a/s/1"], ["a/s/2", "b/s/1"])
    >>> len(t), t.utterances()
    (2, ['a/s/1', 'a/s/2', 'b/s/1'])
    """

    name: str
    labels: np.ndarray
    enrol: list
    test: list
    line_numbers: np.ndarray = None

    def __len__(self):
        return len(self.labels)

    def line_of(self, index):
        """Line number of trial ``index`` in its file (1-based), or, for a list
        built in code, its 1-based position.

        Example
        -------
        >>> TrialList("toy", np.array([1], dtype=np.int8), ["a/s/1"], ["a/s/2"]).line_of(0)
        1
        """
        if self.line_numbers is None:
            return int(index) + 1
        return int(self.line_numbers[index])

    def utterances(self):
        """Sorted distinct utterance IDs named by the list."""
        return sorted(set(self.enrol) | set(self.test))

    def speakers(self):
        """Sorted distinct speakers named by the list."""
        return sorted({speaker_of(u) for u in self.utterances()})


def read_trials(path):
    """Read a VoxCeleb-format trial list (``label enrol test`` per line, label 0 or 1).

    Blank lines and lines starting with ``#`` are ignored. A bad line raises a
    ValueError naming the file and the line number.

    Arguments
    ---------
    path : str or os.PathLike
        The trial list.

    Returns
    -------
    TrialList
        Labels and the utterance IDs of both sides (extensions removed).

    Example
    -------
    >>> import tempfile
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    >>> _ = f.write("1 id1/a/00001.wav id1/b/00002.wav\\n0 id1/a/00001.wav id2/c/00001.wav\\n")
    >>> f.close()
    >>> trials = read_trials(f.name)
    >>> trials.labels.tolist(), trials.test
    ([1, 0], ['id1/b/00002', 'id2/c/00001'])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trial list not found: {path}")
    labels, enrol, test, numbers = [], [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(
                    f"{path}:{number}: expected 'label enrol test' with label 0 or 1, "
                    f"got {line.strip()!r}"
                )
            labels.append(int(fields[0]))
            enrol.append(utterance_id(fields[1]))
            test.append(utterance_id(fields[2]))
            numbers.append(number)
    if not labels:
        raise ValueError(f"{path}: no trials")
    name = os.path.splitext(os.path.basename(path))[0]
    return TrialList(
        name, np.asarray(labels, dtype=np.int8), enrol, test, np.asarray(numbers, dtype=np.int64)
    )


def write_trials(path, trials):
    """Write a TrialList in VoxCeleb format (IDs get a ``.wav`` extension), atomically.

    Example
    -------
    >>> import tempfile
    >>> path = tempfile.mktemp(suffix=".txt")
    >>> write_trials(path, TrialList("t", np.array([1], dtype=np.int8), ["a/s/1"], ["a/s/2"]))
    >>> open(path).read()
    '1 a/s/1.wav a/s/2.wav\\n'
    """
    lines = (f"{label} {e}.wav {t}.wav\n" for label, e, t in zip(trials.labels.tolist(), trials.enrol, trials.test))
    write_text_atomic(os.fspath(path), "".join(lines))
