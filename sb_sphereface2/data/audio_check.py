"""A corpus's audio files and their check: finding them, decoding each once, caching the verdict.

**Finding** (:func:`find_audio_files`): ``<root>/<speaker>/<recording>`` and
``<root>/<speaker>/<session>/<utterance>`` (``.wav``, ``.flac``), in any mix. A file's
utterance ID is its path relative to the root without extension
(:func:`sb_sphereface2.data.trials.utterance_id`); its session is its session folder, or
the file itself when it sits directly in its speaker folder. Only names, sizes and
modification times are read (cheap, even for a million files).

**Decoding one file** (:func:`inspect_audio`): the file is read in blocks (a long
recording never sits in memory whole) and the function never raises: a file libsndfile
cannot open or decode gives a report with the decoder's message. It also finds where
speech starts and stops: 20 ms frames more than 40 dB below the loudest frame (or below
-70 dBFS) at either end are silence, trimmed when a recording is cut into segments
(:mod:`sb_sphereface2.data.split`). :func:`audio_problem` turns a report into a reason to
reject the file.

**The check of data preparation** (:func:`check_audio`, :func:`screen_audio`): an
:class:`AudioReport` for every file, cached in ``<save_folder>/audio_check_v1/part-*.csv``
keyed by the file's path, size and modification time, and written while the check runs:
a rerun, or a run after an interruption, decodes only the files it has not seen. Files
are decoded in worker processes (``concurrent.futures``, 32 files per task) with at most
four tasks per worker in flight, so memory does not grow with the number of files beyond
one small report per file. The bad files are listed in ``bad_audio.txt`` and preparation
stops, or they are dropped.
"""

import concurrent.futures
import concurrent.futures.process
import csv
import glob
import hashlib
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import soundfile
from tqdm.auto import tqdm

from sb_sphereface2.data.trials import utterance_id
from sb_sphereface2.errors import one_line
from sb_sphereface2.files import atomic_write, write_text_atomic

# --- audio files --------------------------------------------------------------------------

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


# --- audio inspect ------------------------------------------------------------------------

FRAME_SECONDS = 0.02  # frames of the silence detector
SILENCE_BELOW_PEAK_DB = 40.0  # frames this far below the loudest frame are silence
SILENCE_FLOOR_DBFS = -70.0  # and frames below this level always are
BLOCK_FRAMES = 200  # detector frames decoded at a time (4 s)


class AudioReport(NamedTuple):
    """What decoding one file found.

    Arguments
    ---------
    frames : int
        Samples per channel that were decoded.
    sample_rate : int
        Sample rate from the header (0 when the file could not be opened).
    nonfinite : int
        NaN or infinite samples (all channels).
    speech_start, speech_stop : int
        First and one-past-last sample of the span between the leading and the
        trailing silence (the whole file when no speech level is found).
    error : str
        The decoder's error message, "" when the file decoded cleanly.
    """

    frames: int
    sample_rate: int
    nonfinite: int
    speech_start: int
    speech_stop: int
    error: str


def _speech_span(levels_db, hop, frames):
    """(start, stop) in samples of the frames above the silence threshold."""
    if not len(levels_db):
        return 0, frames
    threshold = max(float(levels_db.max()) - SILENCE_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS)
    active = np.flatnonzero(levels_db > threshold)
    if not len(active):
        return 0, frames
    return int(active[0]) * hop, min(frames, (int(active[-1]) + 1) * hop)


def _frame_energy(block, hop):
    """Mean power of the (channel-averaged) signal in frames of ``hop`` samples; the
    last frame may be shorter."""
    signal = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
    power = np.square(signal)
    whole = len(power) // hop * hop
    energy = power[:whole].reshape(-1, hop).mean(axis=1)
    if whole < len(power):
        energy = np.append(energy, power[whole:].mean())
    return energy


def inspect_audio(path):
    """Decode ``path`` in full and report its length, rate, NaN/inf count, speech span, errors.

    Never raises: an unreadable file gives a report with ``error`` set.

    Arguments
    ---------
    path : str
        Audio file (anything libsndfile reads: WAV, FLAC, ...).

    Returns
    -------
    AudioReport

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> audio = np.zeros(16000, np.float32)
    >>> audio[4000:12000] = 0.1 * np.sin(np.arange(8000))
    >>> soundfile.write(path, audio, 16000)
    >>> inspect_audio(path)
    AudioReport(frames=16000, sample_rate=16000, nonfinite=0, speech_start=3840, speech_stop=12160, error='')
    >>> _ = open(path, "wb").write(b"RIFF not really")
    >>> print(inspect_audio(path).error)
    Error opening ...: Format not recognised.
    """
    try:
        if os.path.getsize(path) == 0:
            return AudioReport(0, 0, 0, 0, 0, "empty file (0 bytes)")
        handle = soundfile.SoundFile(path)
    except Exception as error:  # libsndfile and the OS raise their own types
        return AudioReport(0, 0, 0, 0, 0, one_line(error))
    frames = nonfinite = 0
    levels = []
    with handle:
        rate = int(handle.samplerate)
        hop = max(1, int(round(rate * FRAME_SECONDS)))
        try:
            while True:
                block = handle.read(hop * BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                energy = _frame_energy(block, hop)
                if not np.isfinite(energy).all():  # NaN/inf samples: count them, take them as 0
                    finite = np.isfinite(block)
                    nonfinite += int(block.size - np.count_nonzero(finite))
                    energy = _frame_energy(np.where(finite, block, 0.0), hop)
                levels.append(10.0 * np.log10(energy + 1e-12))
                frames += len(block)
        except Exception as error:
            return AudioReport(frames, rate, nonfinite, 0, frames, one_line(error))
    levels = np.concatenate(levels) if levels else np.zeros(0)
    start, stop = _speech_span(levels, hop, frames)
    return AudioReport(frames, rate, nonfinite, start, stop, "")


def audio_problem(report, sample_rate=16000, min_seconds=0.5):
    """Why a file cannot be used, or None.

    Arguments
    ---------
    report : AudioReport
        From :func:`inspect_audio`.
    sample_rate : int or None
        Required sample rate (None: any).
    min_seconds : float
        Shortest usable clip.

    Returns
    -------
    str or None

    Example
    -------
    >>> audio_problem(AudioReport(16000, 16000, 0, 0, 16000, ""))
    >>> audio_problem(AudioReport(16000, 16000, 50, 0, 16000, ""))
    '50 NaN/inf samples'
    >>> audio_problem(AudioReport(16000, 8000, 0, 0, 16000, ""))
    'sample rate 8000 Hz, expected 16000 Hz'
    >>> audio_problem(AudioReport(800, 16000, 0, 0, 800, ""))
    '0.05 s long, shorter than the 0.5 s minimum'
    >>> audio_problem(AudioReport(0, 0, 0, 0, 0, "flac decoder lost sync."))
    'cannot decode (flac decoder lost sync.)'
    """
    if report.error:
        return report.error if report.error.startswith("empty file") else f"cannot decode ({report.error})"
    if report.nonfinite:
        return f"{report.nonfinite} NaN/inf samples"
    if sample_rate is not None and report.sample_rate != sample_rate:
        return f"sample rate {report.sample_rate} Hz, expected {sample_rate} Hz"
    seconds = report.frames / report.sample_rate if report.sample_rate else 0.0
    if report.frames == 0 or seconds < min_seconds:
        return f"{seconds:.2f} s long, shorter than the {min_seconds:g} s minimum"
    return None


# --- audio check --------------------------------------------------------------------------


CACHE_FOLDER = "audio_check_v1"
BAD_AUDIO_NAME = "bad_audio.txt"
CACHE_COLUMNS = ["path", "size", "mtime_ns", "frames", "sample_rate", "nonfinite", "speech_start", "speech_stop", "error"]
FLUSH_EVERY_FILES = 20000  # cache part written after this many new reports...
FLUSH_EVERY_SECONDS = 60.0  # ...or after this long
TASK_FILES = 32  # files per worker task


def _inspect_many(paths):
    return [inspect_audio(path) for path in paths]


class AudioCheckCache:
    """Reports of earlier checks, by (path, size, modification time), in a cache folder.

    Arguments
    ---------
    folder : str
        The cache folder (created when the first part is written).

    Example
    -------
    >>> import tempfile
    >>> cache = AudioCheckCache(os.path.join(tempfile.mkdtemp(), "cache"))
    >>> report = AudioReport(16000, 16000, 0, 0, 16000, "")
    >>> cache.write_part([(("/a.wav", 10, 1), report)])
    >>> AudioCheckCache(cache.folder).load()[("/a.wav", 10, 1)] == report
    True
    """

    def __init__(self, folder):
        self.folder = folder
        self._written = []

    def _parts(self):
        return sorted(glob.glob(os.path.join(glob.escape(self.folder), "part-*.csv")))

    def load(self):
        """{(path, size, mtime_ns): AudioReport} of every readable part; damaged lines
        are skipped (those files are decoded again)."""
        found = {}
        for part in self._parts():
            try:
                with open(part, newline="", encoding="utf-8") as handle:
                    for row in csv.DictReader(handle):
                        try:
                            key = (row["path"], int(row["size"]), int(row["mtime_ns"]))
                            found[key] = AudioReport(
                                int(row["frames"]), int(row["sample_rate"]), int(row["nonfinite"]),
                                int(row["speech_start"]), int(row["speech_stop"]), row["error"],
                            )
                        except (KeyError, TypeError, ValueError):
                            continue
            except (OSError, csv.Error, UnicodeDecodeError):
                continue
        return found

    def write_part(self, entries):
        """Write ``[(key, report), ...]`` as one new part file (atomically)."""
        if not entries:
            return
        name = f"part-{time.time_ns()}-{os.getpid()}-{len(self._written)}.csv"
        path = os.path.join(self.folder, name)
        with atomic_write(path) as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CACHE_COLUMNS)
            for (path_, size, mtime_ns), report in entries:
                writer.writerow([path_, size, mtime_ns, *report[:5], report.error])
        self._written.append(path)

    def replace_all(self, entries):
        """Write ``entries`` as the only part: one compact file instead of many."""
        old = self._parts()
        self.write_part(entries)
        for path in old:
            if path not in self._written and os.path.exists(path):
                os.remove(path)


def default_workers():
    """Worker processes for the check: the CPUs this process may use, at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))


def _pool(num_workers):
    # fork: workers start at once and need nothing imported again; elsewhere the default.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context)


def _decode(paths, num_workers, on_result):
    """Call ``on_result(index, report)`` for every path, decoding in worker processes
    with at most ``4 * num_workers`` tasks in flight."""
    tasks = [range(i, min(i + TASK_FILES, len(paths))) for i in range(0, len(paths), TASK_FILES)]
    if num_workers <= 1 or len(tasks) <= 2:
        for task in tasks:
            for index, report in zip(task, _inspect_many([paths[i] for i in task])):
                on_result(index, report)
        return
    with _pool(num_workers) as pool:
        pending, queue = {}, iter(tasks)
        try:
            while True:
                for task in queue:
                    pending[pool.submit(_inspect_many, [paths[i] for i in task])] = task
                    if len(pending) >= 4 * num_workers:
                        break
                if not pending:
                    return
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                broken = []
                for future in done:
                    task = pending.pop(future)
                    try:
                        reports = future.result()
                    except concurrent.futures.process.BrokenProcessPool:
                        broken.extend(task)
                        continue
                    for index, report in zip(task, reports):
                        on_result(index, report)
                if broken:
                    unfinished = sorted(broken + [i for t in pending.values() for i in t])
                    raise ValueError(
                        f"audio check: a decoding process died (a file crashed the decoder, or "
                        f"memory ran out) on one of {len(unfinished)} files, the first "
                        f"{paths[unfinished[0]]}; the files checked so far are cached; rerun "
                        "with one worker (prep_workers=1 / --workers 1) to find it"
                    )
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def check_audio(keys, cache_folder, num_workers=None, progress=True):
    """Reports for files given by ``(path, size, mtime_ns)``, from the cache or decoded.

    Arguments
    ---------
    keys : list of (str, int, int)
        Path, size in bytes and modification time (ns) of every file.
    cache_folder : str
        Where the reports are cached (see the module docstring).
    num_workers : int, optional
        Decoding processes (default :func:`default_workers`); 1 decodes here.
    progress : bool
        Show a progress bar while decoding.

    Returns
    -------
    reports : list of AudioReport
        One per key, in order.
    decoded : int
        How many files were decoded (the others came from the cache).

    Example
    -------
    >>> import tempfile, numpy as np, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "a.wav")
    >>> soundfile.write(path, np.full(8000, 0.1), 16000)
    >>> key = (path, os.path.getsize(path), os.stat(path).st_mtime_ns)
    >>> reports, decoded = check_audio([key], os.path.join(folder, "cache"), progress=False)
    >>> reports[0].frames, decoded
    (8000, 1)
    >>> check_audio([key], os.path.join(folder, "cache"), progress=False)[1]
    0
    """
    cache = AudioCheckCache(cache_folder)
    known = cache.load()
    reports = [known.get(key) for key in keys]
    stale = len(known) > len(keys) - reports.count(None) or len(cache._parts()) > 1
    del known
    missing = [i for i, report in enumerate(reports) if report is None]
    if missing:
        num_workers = default_workers() if num_workers is None else max(1, int(num_workers))
        new, last_flush = [], time.monotonic()
        bar = tqdm(total=len(missing), desc="Checking audio", unit="file", disable=not progress, mininterval=1.0)

        def on_result(position, report):
            nonlocal last_flush
            index = missing[position]
            reports[index] = report
            new.append((keys[index], report))
            bar.update(1)
            if len(new) >= FLUSH_EVERY_FILES or time.monotonic() - last_flush > FLUSH_EVERY_SECONDS:
                cache.write_part(new)
                new.clear()
                last_flush = time.monotonic()

        try:
            _decode([keys[i][0] for i in missing], num_workers, on_result)
        finally:
            bar.close()
            cache.write_part(new)  # what was decoded is kept, even on interruption
        stale = True
    if stale:
        cache.replace_all(list(zip(keys, reports)))
    return reports, len(missing)


def screen_audio(files, save_folder, sample_rate=16000, min_seconds=0.5, drop_bad_audio=False, num_workers=None, protected=()):
    """Check every file; list the bad ones in ``bad_audio.txt`` and stop, or drop them.

    Arguments
    ---------
    files : list
        Objects with ``utt_id``, ``path``, ``size`` and ``mtime_ns``
        (:class:`sb_sphereface2.data.audio_check.AudioFile`).
    save_folder : str
        The data-prep folder (cache and ``bad_audio.txt``).
    sample_rate, min_seconds :
        See :func:`sb_sphereface2.data.audio_check.audio_problem`.
    drop_bad_audio : bool
        Leave bad files out instead of raising.
    num_workers : int, optional
        Decoding processes.
    protected : collection of str
        Utterance IDs that cannot be dropped (those named by a trial list).

    Returns
    -------
    good_files : list
    good_reports : list of AudioReport
    bad : list of (str, str)
        Path and reason of every dropped file.

    Raises
    ------
    ValueError
        One line: the number of bad files, the first with its reason, the list's path.

    Example
    -------
    >>> import tempfile, types, numpy as np, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "nan.wav")
    >>> soundfile.write(path, np.full(16000, np.nan), 16000, subtype="FLOAT")
    >>> bad = types.SimpleNamespace(utt_id="a/nan", path=path, size=os.path.getsize(path), mtime_ns=0)
    >>> screen_audio([bad], folder, num_workers=1)
    Traceback (most recent call last):
    ...
    ValueError: 1 bad audio file(s), first .../nan.wav: 16000 NaN/inf samples; all listed in .../bad_audio.txt; ...
    >>> screen_audio([bad], folder, drop_bad_audio=True)[2] == [(path, "16000 NaN/inf samples")]
    True
    """
    protected = set(protected)
    keys = [(f.path, f.size, f.mtime_ns) for f in files]
    reports, decoded = check_audio(keys, os.path.join(save_folder, CACHE_FOLDER), num_workers)
    bad, good_files, good_reports = [], [], []
    for file, report in zip(files, reports):
        problem = audio_problem(report, sample_rate, min_seconds)
        if problem is None:
            good_files.append(file)
            good_reports.append(report)
        else:
            bad.append((file, problem))
    logger.info(
        "Audio check: %d files (%d decoded, %d from the cache), %d bad", len(files), decoded, len(files) - decoded, len(bad)
    )
    bad_path = os.path.join(save_folder, BAD_AUDIO_NAME)
    if not bad:
        if os.path.isfile(bad_path):
            os.remove(bad_path)
        return good_files, good_reports, []
    write_text_atomic(bad_path, "".join(f"{f.path}\t{reason}\n" for f, reason in bad))
    first, reason = bad[0]
    if not drop_bad_audio:
        raise ValueError(
            f"{len(bad)} bad audio file(s), first {first.path}: {reason}; all listed in {bad_path}; "
            "fix or remove them, or leave them out with --drop_bad_audio=True (train.py) / "
            "--drop-bad-audio (prepare.py)"
        )
    named = [(f, r) for f, r in bad if f.utt_id in protected]
    if named:
        raise ValueError(
            f"{named[0][0].path} is named by a trial list and is bad ({named[0][1]}): "
            "a trial list's files cannot be dropped"
        )
    logger.warning("Dropped %d bad audio files (first %s: %s), listed in %s", len(bad), first.path, reason, bad_path)
    return good_files, good_reports, [(f.path, r) for f, r in bad]
