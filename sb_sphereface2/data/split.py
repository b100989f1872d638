"""Items and the speaker split: the rows of the prepared CSVs, the held-out speakers and
their trial lists.

**Items.** A file is used whole (VoxCeleb's utterances), or, when it is a long recording,
cut into segments: its leading and trailing silence is trimmed and the rest is cut into
``n = floor(speech / segment_seconds)`` equal, non-overlapping segments of
``segment_seconds`` to ``2 * segment_seconds`` (3.5 s for a 14 s recording cut at 3 s).
The first half of a recording's segments form one "session", the second half another,
so trials between segments compare only segments of different halves: never a segment
with itself or a neighbour.

Which recordings are cut (``segmentation``):

- ``"auto"``: the recordings of speakers that have only one (a folder of one long
  recording per speaker, e.g. librispeech-mini); speakers with several files keep them
  whole, so VoxCeleb is used as its authors cut it;
- ``"all"``: every recording of at least two segments;
- ``"none"``: no recording.

Files named by a trial list are never cut (the list names the whole file).

**The split.** Speakers outside the user's trial lists are split into training,
validation ("dev") and, optionally, held-out test speakers. The trials among held-out
items are drawn by :func:`make_trials`: targets pair two items of one speaker from
different sessions (different videos, or different halves of a cut recording); when
those run out, two different files of one session; never two segments of one recording
half. Non-targets pair items of different speakers. A validation EER is only meaningful
with enough of them: :func:`validation_is_meaningful` says whether a dev set reaches 20
speakers or 1,000 trials.
"""

from collections import Counter, defaultdict
from typing import NamedTuple

import numpy as np

from sb_sphereface2.data.trials import TrialList, speaker_of

# --- segments -----------------------------------------------------------------------------

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


# --- heldout ------------------------------------------------------------------------------

MIN_DEV_SPEAKERS = 20
MIN_DEV_TRIALS = 1000


def validation_is_meaningful(num_speakers, num_trials):
    """True when a validation set has at least 20 speakers or 1,000 trials; with fewer,
    its EER moves in steps too coarse to select or monitor a model by (4 speakers read
    0, 25 or 50 %).

    Example
    -------
    >>> validation_is_meaningful(4, 400), validation_is_meaningful(20, 160), validation_is_meaningful(8, 1000)
    (False, True, True)
    """
    return num_speakers >= MIN_DEV_SPEAKERS or num_trials >= MIN_DEV_TRIALS


def _by_speaker(items):
    groups = defaultdict(list)
    for index, item in enumerate(items):
        groups[item.speaker].append(index)
    return groups


def _target_pairs(items, indices):
    """(cross-session pairs, same-session pairs of different recordings) of one speaker."""
    first, second = np.triu_indices(len(indices), k=1)
    sessions = np.array([items[i].session for i in indices])
    recordings = np.array([items[i].recording for i in indices])
    indices = np.asarray(indices)
    cross = sessions[first] != sessions[second]
    within = ~cross & (recordings[first] != recordings[second])
    pairs = np.stack([indices[first], indices[second]], axis=1)
    return pairs[cross], pairs[within]


def has_target_pair(items):
    """True when the items (of one speaker) allow a target trial.

    Example
    -------
    >>> from sb_sphereface2.data.split import Item
    >>> one = Item("a/r@001", "/r", 0, 9, 1, "a/r@a", "a/r")
    >>> has_target_pair([one]), has_target_pair([one, one._replace(id="a/r@002", session="a/r@b")])
    (False, True)
    """
    return len({i.session for i in items}) > 1 or len({i.recording for i in items}) > 1


def _nontarget_pairs(speaker_of_item, count, rng):
    """``count`` distinct pairs of items of different speakers, drawn uniformly."""
    n = len(speaker_of_item)
    sizes = np.bincount(speaker_of_item)
    available = n * (n - 1) // 2 - int((sizes * (sizes - 1) // 2).sum())
    count = min(count, available)
    if available <= 4 * count:  # few: list them all
        first, second = np.triu_indices(n, k=1)
        keep = speaker_of_item[first] != speaker_of_item[second]
        chosen = rng.choice(int(keep.sum()), size=count, replace=False)
        return np.stack([first[keep][chosen], second[keep][chosen]], axis=1)
    found = set()
    while len(found) < count:
        draw = rng.integers(0, n, size=(2 * (count - len(found)) + 16, 2))
        draw.sort(axis=1)
        draw = draw[speaker_of_item[draw[:, 0]] != speaker_of_item[draw[:, 1]]]
        for a, b in draw.tolist():
            if len(found) < count:
                found.add((a, b))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def make_trials(items, num_trials, seed, name="dev_trials"):
    """Balanced target / non-target trials among held-out items.

    Arguments
    ---------
    items : list of Item
        Held-out utterances or segments (:class:`sb_sphereface2.data.split.Item`).
    num_trials : int
        Wanted number of trials, half targets; fewer when there are not enough
        target pairs.
    seed : int
        Seed of the draw.
    name : str
        Name of the list.

    Returns
    -------
    TrialList

    Example
    -------
    >>> from sb_sphereface2.data.split import Item
    >>> items = [Item(f"{s}/r@00{k}", "/r", 0, 9, 1, f"{s}/r@{'ab'[k // 2]}", f"{s}/r")
    ...          for s in "xy" for k in range(4)]
    >>> trials = make_trials(items, 100, seed=0)
    >>> len(trials), int(trials.labels.sum())
    (16, 8)
    >>> sorted({tuple(sorted((e[-1], t[-1]))) for e, t, l in zip(trials.enrol, trials.test, trials.labels) if l})
    [('0', '2'), ('0', '3'), ('1', '2'), ('1', '3')]
    """
    rng = np.random.default_rng(seed)
    groups = _by_speaker(items)
    cross, within = [], []
    for speaker in sorted(groups):
        c, w = _target_pairs(items, groups[speaker])
        cross.append(c)
        within.append(w)
    cross = np.concatenate(cross) if cross else np.zeros((0, 2), np.int64)
    within = np.concatenate(within) if within else np.zeros((0, 2), np.int64)
    targets = np.concatenate([rng.permutation(cross), rng.permutation(within)])
    speaker_codes = np.unique([item.speaker for item in items], return_inverse=True)[1].reshape(-1)
    count = min(num_trials // 2, len(targets))
    nontargets = _nontarget_pairs(speaker_codes, count, rng) if count else np.zeros((0, 2), np.int64)
    count = min(count, len(nontargets))
    if count == 0:
        raise ValueError(f"{name}: the held-out speakers give no target or no non-target trial")
    pairs = np.concatenate([targets[:count], nontargets[:count]])
    labels = np.concatenate([np.ones(count, np.int8), np.zeros(count, np.int8)])
    order = rng.permutation(2 * count)
    pairs, labels = pairs[order], labels[order]
    swap = rng.random(2 * count) < 0.5
    pairs[swap] = pairs[swap][:, ::-1]
    return TrialList(name, labels, [items[i].id for i in pairs[:, 0]], [items[i].id for i in pairs[:, 1]])


def split_speakers(items, dev_speakers, test_speakers, exclude, per_speaker, seed):
    """Draw validation and held-out test speakers; the rest train.

    Arguments
    ---------
    items : list of Item
        Every item outside the user's trial lists.
    dev_speakers, test_speakers : int
        Speakers to hold out for validation and for the generated test list.
    exclude : collection of str
        Speakers never drawn and never trained on (those of the trial lists).
    per_speaker : int
        At most this many items of each held-out speaker are kept (drawn).
    seed : int
        Seed of the draws.

    Returns
    -------
    train, dev, test : list of Item

    Example
    -------
    >>> from sb_sphereface2.data.split import Item
    >>> items = [Item(f"{s}/{k}/u", "/r", 0, 9, 1, f"{s}/{k}", f"{s}/{k}/u") for s in "abcdef" for k in "12"]
    >>> train, dev, test = split_speakers(items, 2, 1, exclude={"f"}, per_speaker=20, seed=0)
    >>> len({i.speaker for i in train}), len({i.speaker for i in dev}), len({i.speaker for i in test})
    (2, 2, 1)
    """
    exclude = set(exclude)
    groups = defaultdict(list)
    for item in items:
        if item.speaker not in exclude:
            groups[item.speaker].append(item)
    eligible = sorted(s for s, group in groups.items() if has_target_pair(group))
    wanted = dev_speakers + test_speakers
    if wanted > len(eligible) or len(groups) - wanted < 2:
        raise ValueError(
            f"{len(groups)} speakers remain outside the trial lists ({len(eligible)} with two "
            f"sessions, files or segments): too few for dev_speakers={dev_speakers}, "
            f"test_speakers={test_speakers} and 2+ training speakers"
        )
    rng = np.random.default_rng(seed)
    drawn = rng.choice(eligible, size=wanted, replace=False).tolist() if wanted else []
    held = []
    for speakers in (sorted(drawn[:dev_speakers]), sorted(drawn[dev_speakers:])):
        kept = []
        for speaker in speakers:
            group = groups[speaker]
            if len(group) > per_speaker:
                chosen = sorted(rng.choice(len(group), size=per_speaker, replace=False).tolist())
                group = [group[i] for i in chosen]
            kept.extend(group)
        held.append(kept)
    drawn = set(drawn)
    train = [item for item in items if item.speaker not in exclude and item.speaker not in drawn]
    return train, held[0], held[1]
