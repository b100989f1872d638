"""The audio check of data preparation: every file decoded once, in parallel, cached.

:func:`check_audio` gives an :class:`~sb_sphereface2.data.audio_inspect.AudioReport`
for every file. Reports are cached in ``<save_folder>/audio_check_v1/part-*.csv``, keyed
by the file's path, size and modification time, and written while the check runs: a
rerun, or a run after an interruption, decodes only the files it has not seen. Files
are decoded in worker processes (``concurrent.futures``, 32 files per task) with at most
four tasks per worker in flight, so memory does not grow with the number of files
beyond one small report per file. :func:`screen_audio` applies the verdict of
:func:`~sb_sphereface2.data.audio_inspect.audio_problem`: the bad files are listed in
``bad_audio.txt`` and preparation stops, or they are dropped.
"""

import concurrent.futures
import concurrent.futures.process
import csv
import glob
import multiprocessing
import os
import logging
import time

from tqdm.auto import tqdm

from sb_sphereface2.data.audio_inspect import AudioReport, audio_problem, inspect_audio
from sb_sphereface2.files import atomic_write, write_text_atomic

logger = logging.getLogger(__name__)

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
        (:class:`sb_sphereface2.data.audio_files.AudioFile`).
    save_folder : str
        The data-prep folder (cache and ``bad_audio.txt``).
    sample_rate, min_seconds :
        See :func:`sb_sphereface2.data.audio_inspect.audio_problem`.
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
