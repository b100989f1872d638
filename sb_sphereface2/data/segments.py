"""Utterances and segments: the rows of the prepared CSVs.

A file is used whole (VoxCeleb's utterances), or, when it is a long recording, cut into
segments: its leading and trailing silence is trimmed and the rest is cut into
``n = floor(speech / segment_seconds)`` equal, non-overlapping segments of
``segment_seconds`` to ``2 * segment_seconds`` (3.5 s for a 14 s recording cut at 3 s).
The first half of a recording's segments form one "session", the second half another,
so trials between segments (:mod:`sb_sphereface2.data.heldout`) compare only
segments of different halves: never a segment with itself or a neighbour.

Which recordings are cut (``segmentation``):

- ``"auto"``: the recordings of speakers that have only one (a folder of one long
  recording per speaker, e.g. librispeech-mini); speakers with several files keep them
  whole, so VoxCeleb is used as its authors cut it;
- ``"all"``: every recording of at least two segments;
- ``"none"``: no recording.

Files named by a trial list are never cut (the list names the whole file).
"""

from collections import Counter
from typing import NamedTuple

from sb_sphereface2.data.trials import speaker_of

SEGMENTATION_MODES = ("auto", "all", "none")


class Item(NamedTuple):
    """One row of a prepared CSV: a whole file or a segment of one.

    Arguments
    ---------
    id : str
        Utterance ID (``spk/session/utt``), with ``@NNN`` appended for a segment.
    path : str
        Audio file.
    start, stop : int
        Sample range in the file.
    sample_rate : int
        Sample rate of the file.
    session : str
        Trials between two items of one speaker are targets across sessions.
    recording : str
        Utterance ID of the file the item comes from.
    """

    id: str
    path: str
    start: int
    stop: int
    sample_rate: int
    session: str
    recording: str

    @property
    def speaker(self):
        """The speaker: the first component of the ID."""
        return speaker_of(self.id)

    @property
    def duration(self):
        """Length in seconds."""
        return (self.stop - self.start) / self.sample_rate


def whole_file(utt_id, path, session, report):
    """The item of a file used whole.

    Example
    -------
    >>> from sb_sphereface2.data.audio_check import AudioReport
    >>> whole_file("a/s1/1", "/d/a/s1/1.wav", "a/s1", AudioReport(16000, 16000, 0, 800, 15000, ""))
    Item(id='a/s1/1', path='/d/a/s1/1.wav', start=0, stop=16000, sample_rate=16000, session='a/s1', recording='a/s1/1')
    """
    return Item(utt_id, path, 0, report.frames, report.sample_rate, session, utt_id)


def cut_recording(utt_id, path, report, segment_seconds):
    """Segments of one recording (see the module docstring); [] when its speech is
    shorter than two segments.

    Arguments
    ---------
    utt_id : str
        Utterance ID of the file.
    path : str
        The file.
    report : AudioReport
        Its length, rate and speech span (:func:`sb_sphereface2.data.audio_check.inspect_audio`).
    segment_seconds : float
        Shortest segment.

    Returns
    -------
    list of Item
        IDs ``<utt_id>@001``..., sessions ``<utt_id>@a`` (first half) and ``<utt_id>@b``.

    Example
    -------
    >>> from sb_sphereface2.data.audio_check import AudioReport
    >>> report = AudioReport(150000, 16000, 0, 2000, 146000, "")  # 9 s of speech
    >>> [(s.id, s.start, s.stop, s.session) for s in cut_recording("a/c/1", "/a.flac", report, 3.0)]
    [('a/c/1@001', 2000, 50000, 'a/c/1@a'), ('a/c/1@002', 50000, 98000, 'a/c/1@a'), ('a/c/1@003', 98000, 146000, 'a/c/1@b')]
    >>> cut_recording("a/c/1", "/a.flac", report, 5.0)
    []
    """
    span = report.speech_stop - report.speech_start
    count = int(span // int(round(segment_seconds * report.sample_rate)))
    if count < 2:
        return []
    bounds = [report.speech_start + span * k // count for k in range(count + 1)]
    return [
        Item(
            f"{utt_id}@{k + 1:03d}",
            path,
            bounds[k],
            bounds[k + 1],
            report.sample_rate,
            f"{utt_id}@{'a' if 2 * k < count else 'b'}",
            utt_id,
        )
        for k in range(count)
    ]


def make_items(files, reports, segmentation="auto", segment_seconds=3.0, keep_whole=()):
    """The items of a corpus: files whole or cut into segments.

    Arguments
    ---------
    files : list
        Objects with ``utt_id``, ``path`` and ``session`` (:class:`sb_sphereface2.data.prepare.AudioFile`).
    reports : list of AudioReport
        One per file.
    segmentation : str
        "auto", "all" or "none" (see the module docstring).
    segment_seconds : float
        Shortest segment.
    keep_whole : collection of str
        Utterance IDs never cut (those of the trial lists).

    Returns
    -------
    items : list of Item
        Sorted by ID.
    cut : int
        Recordings that were cut.

    Example
    -------
    >>> from types import SimpleNamespace as File
    >>> from sb_sphereface2.data.audio_check import AudioReport
    >>> files = [File(utt_id=u, path=f"/{u}.wav", session=u.rsplit("/", 1)[0]) for u in ("a/1/x", "b/1/x", "b/2/y")]
    >>> reports = [AudioReport(160000, 16000, 0, 0, 160000, "")] * 3
    >>> items, cut = make_items(files, reports, "auto", 3.0)
    >>> [i.id for i in items], cut
    (['a/1/x@001', 'a/1/x@002', 'a/1/x@003', 'b/1/x', 'b/2/y'], 1)
    """
    if segmentation not in SEGMENTATION_MODES:
        raise ValueError(f"segmentation must be one of {SEGMENTATION_MODES}, got {segmentation!r}")
    if segmentation != "none" and not segment_seconds > 0:
        raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
    files_per_speaker = Counter(speaker_of(f.utt_id) for f in files)
    keep_whole = set(keep_whole)
    items, cut = [], 0
    for file, report in zip(files, reports):
        wanted = segmentation == "all" or (
            segmentation == "auto" and files_per_speaker[speaker_of(file.utt_id)] == 1
        )
        segments = []
        if wanted and file.utt_id not in keep_whole:
            segments = cut_recording(file.utt_id, file.path, report, segment_seconds)
        if segments:
            items.extend(segments)
            cut += 1
        else:
            items.append(whole_file(file.utt_id, file.path, file.session, report))
    items.sort(key=lambda item: item.id)
    return items, cut
