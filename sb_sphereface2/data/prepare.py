"""Data preparation: folders of speakers' recordings into SpeechBrain CSVs and trial lists.

A speaker folder holds recordings directly (``<root>/<speaker>/<recording>.wav``, e.g.
one long recording per speaker) or in session folders
(``<root>/<speaker>/<session>/<utterance>.wav`` or ``.flac``: VoxCeleb after converting
VoxCeleb2's ``.m4a`` with ``recipes/VoxCeleb/convert_m4a.sh``, LibriSpeech, the
synthetic corpus of :mod:`tools.synthetic_corpus`), in any mix. Several roots can be
combined (VoxCeleb2-dev for training with VoxCeleb1 for the trial lists); utterance IDs
are paths relative to their root without extension
(:func:`sb_sphereface2.data.trials.utterance_id`), so they must not collide.

Steps: every file is decoded once and checked (:mod:`sb_sphereface2.data.audio_check`:
decode errors, NaN/inf samples, sample rate, clips under ``min_seconds``; cached, in
worker processes); long recordings are cut into segments
(:mod:`sb_sphereface2.data.split`); speakers outside the trial lists are split into
training, validation and held-out test speakers with generated trial lists
(:mod:`sb_sphereface2.data.split`).

Outputs in ``save_folder`` (all written atomically, the manifest last):

- ``train.csv``: ``ID,duration,wav,start,stop,spk_id``, one row per utterance or
  segment of the training speakers (start/stop in samples). Speed perturbation is
  not written here: the data loader draws a speed per read.
- ``dev.csv`` and ``dev_trials.txt``: held-out validation speakers and balanced
  target/non-target trials among their items, for the per-epoch EER.
- ``test.csv``: every utterance named by the trial lists (copied to
  ``trials/<name>.txt``) and the items of the held-out test speakers, whose
  generated list is ``trials/heldout.txt``.
- ``bad_audio.txt``: the files that failed the check, with the reason (tab-separated).
- ``prepare_summary.json``: counts of files, segments and the split.
- ``prepare_manifest.json``: what the outputs were made from (folders, a fingerprint
  of every audio file's path, size and modification time, the options, the trial
  lists' hashes) and the outputs' hashes. A second call with the same inputs and
  intact outputs does nothing.

Bad input raises a one-line ``ValueError`` (``FileNotFoundError`` for a missing
folder or list) before any CSV is written: no audio in the expected layout, damaged
audio (unless ``drop_bad_audio``), a trial list with a bad line or naming a missing
utterance, a data-prep folder that cannot be written.
"""

import csv
import json
import logging
import os

import numpy as np

from sb_sphereface2.data.audio_check import (
    BAD_AUDIO_NAME,
    CACHE_FOLDER,
    find_audio_files,
    fingerprint,
    screen_audio,
)
from sb_sphereface2.data.split import (
    make_items,
    make_trials,
    split_speakers,
    validation_is_meaningful,
)
from sb_sphereface2.data.trials import (
    read_trials,
    speaker_of,
    utterance_id,
    write_trials,
)
from sb_sphereface2.errors import check_writable, one_line
from sb_sphereface2.files import (
    atomic_write,
    copy_atomic,
    file_sha256,
    outputs_intact,
    read_manifest,
    remove_stale_temporaries,
    write_json_atomic,
    write_manifest,
)

# --- prepare ------------------------------------------------------------------------------

logger = logging.getLogger(__name__)

CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id"]
MANIFEST_NAME = "prepare_manifest.json"
SUMMARY_NAME = "prepare_summary.json"
HELDOUT_LIST = "heldout"
PREPARE_VERSION = 2


def _first_trial_line(trial_path, wanted):
    """(line number, field) of the first trial naming an utterance in ``wanted``."""
    with open(trial_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) == 3 and not fields[0].startswith("#"):
                for field in fields[1:]:
                    if utterance_id(field) in wanted:
                        return number, field
    return 0, sorted(wanted)[0]


def _check_trial_ids(trial_path, trials, known, folders):
    """Raise on the first trial line that names an utterance not on disk."""
    missing = {u for u in trials.utterances() if u not in known}
    if missing:
        number, field = _first_trial_line(trial_path, missing)
        utt = utterance_id(field)
        raise ValueError(
            f"{trial_path}:{number}: unknown utterance {field!r}: "
            f"no {utt}.wav or {utt}.flac under {' or '.join(folders)}"
        )


def _ensure_writable(save_folder):
    """Create the folder, remove leftovers of dead processes, and prove a file can be
    written there; one-line error naming the folder and the cause otherwise."""
    try:
        check_writable(save_folder, what="to the data-prep folder")
    except OSError as error:
        raise ValueError(error.strerror) from None
    for folder in (save_folder, os.path.join(save_folder, "trials"), os.path.join(save_folder, CACHE_FOLDER)):
        removed = remove_stale_temporaries(folder)
        if removed:
            logger.info("%s: removed %d temporary files of interrupted runs", folder, len(removed))


def _write_items(path, items):
    """Write a CSV of items, streamed (the rows are never all in memory as text)."""
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for item in items:
            writer.writerow(
                [item.id, f"{item.duration:.4f}", item.path, item.start, item.stop, item.speaker]
            )


def prepare_voxceleb(
    data_folder,
    save_folder,
    trial_lists=(),
    dev_speakers=10,
    dev_trials=1000,
    test_speakers=0,
    test_trials=2000,
    heldout_utterances_per_speaker=20,
    segmentation="auto",
    segment_seconds=3.0,
    sample_rate=16000,
    min_seconds=0.5,
    drop_bad_audio=False,
    num_workers=None,
    seed=1234,
):
    """Write train/dev/test CSVs and trial lists for a folder of speakers' recordings.

    See the module docstring for the outputs. Safe to call from every DDP process
    through ``speechbrain.utils.distributed.run_on_main``.

    Arguments
    ---------
    data_folder : str or list of str
        Root(s) holding speaker folders.
    save_folder : str
        Where the CSVs, trial lists and manifest go (created if needed).
    trial_lists : sequence of str
        VoxCeleb-format trial lists (``label enrol test`` per line); their speakers
        are removed from training. Each list's file name (without extension) must be
        distinct.
    dev_speakers : int
        Speakers held out for the validation EER (0: no dev set).
    dev_trials : int
        Wanted number of validation trials, half targets.
    test_speakers : int
        Speakers held out for a generated test list, ``trials/heldout.txt`` (0: none).
    test_trials : int
        Wanted number of held-out test trials, half targets.
    heldout_utterances_per_speaker : int
        At most this many utterances or segments per held-out speaker (drawn).
    segmentation : str
        Which recordings are cut into segments: "auto" (those of speakers with one
        recording), "all" or "none" (see :mod:`sb_sphereface2.data.split`).
    segment_seconds : float
        Shortest segment; segments are 1-2 times this long.
    sample_rate : int or None
        Required sample rate of every file (None: any).
    min_seconds : float
        Files shorter than this are bad audio.
    drop_bad_audio : bool
        Leave bad files out (listed in ``bad_audio.txt``) instead of stopping.
    num_workers : int, optional
        Processes decoding the audio (default: the CPUs, at most 16).
    seed : int
        Seed of the held-out speaker and trial draws.

    Returns
    -------
    dict
        ``train_csv``, ``dev_csv``, ``dev_trials``, ``test_csv``, ``bad_audio`` (paths or
        None), ``trial_lists`` ({name: path of the copy}) and ``summary`` (the counts of
        ``prepare_summary.json``).

    Example
    -------
    >>> import logging, tempfile, numpy as np, soundfile
    >>> logging.disable(logging.WARNING)
    >>> root, save = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for spk in "abcdef":  # one 10 s recording per speaker
    ...     os.makedirs(os.path.join(root, spk))
    ...     soundfile.write(os.path.join(root, spk, "rec.wav"), np.random.randn(160000) * 0.1, 16000)
    >>> out = prepare_voxceleb(root, save, dev_speakers=2, test_speakers=2, num_workers=1)
    >>> import csv
    >>> rows = list(csv.DictReader(open(out["train_csv"])))
    >>> len(rows), rows[0]["ID"], rows[0]["start"], rows[0]["stop"], rows[0]["duration"]
    (6, 'a/rec@001', '0', '53333', '3.3333')
    >>> out["summary"]["dev"]["trials"], out["summary"]["heldout"]["trials"]  # 2 cross-half targets each
    (8, 8)
    >>> logging.disable(logging.NOTSET)
    """
    folders = [data_folder] if isinstance(data_folder, (str, os.PathLike)) else list(data_folder)
    folders = [os.path.abspath(os.fspath(f)) for f in folders]
    save_folder = os.path.abspath(os.fspath(save_folder))
    for name, count in (("dev_speakers", dev_speakers), ("test_speakers", test_speakers)):
        if count < 0 or count == 1:
            raise ValueError(f"{name} must be 0 or at least 2, got {count}")
    if heldout_utterances_per_speaker < 2:
        raise ValueError(f"heldout_utterances_per_speaker must be at least 2, got {heldout_utterances_per_speaker}")
    options = {
        "dev_speakers": dev_speakers, "dev_trials": dev_trials, "test_speakers": test_speakers,
        "test_trials": test_trials, "heldout_utterances_per_speaker": heldout_utterances_per_speaker,
        "segmentation": segmentation, "segment_seconds": segment_seconds, "sample_rate": sample_rate,
        "min_seconds": min_seconds, "drop_bad_audio": bool(drop_bad_audio), "seed": seed,
    }
    files, trials, inputs = _read_inputs(folders, trial_lists, options)
    result = _output_paths(save_folder, trials, options)
    manifest_path = os.path.join(save_folder, MANIFEST_NAME)
    manifest = read_manifest(manifest_path)
    if manifest and manifest.get("inputs") == inputs and outputs_intact(manifest, save_folder):
        logger.info("Data preparation in %s is up to date, skipping", save_folder)
        with open(os.path.join(save_folder, SUMMARY_NAME), encoding="utf-8") as handle:
            result["summary"] = json.load(handle)
    else:
        files, reports, dropped = _check_trials_and_audio(files, trials, folders, save_folder, options, num_workers)
        split = _items_and_split(files, reports, trials, options)
        result["summary"] = build_summary(inputs["num_files"], len(dropped), *split["summary_of"])
        _write_outputs(result, split, trials, result["summary"], save_folder, manifest, inputs, bool(dropped))
    if result["summary"]["bad_files"]:
        result["bad_audio"] = os.path.join(save_folder, BAD_AUDIO_NAME)
    log_summary(result["summary"], save_folder)
    return result


def _read_inputs(folders, trial_lists, options):
    """Step 1, cheap: the audio files on disk and the trial lists, and what the manifest
    records of them (a fingerprint of every file's path, size and time; the lists' hashes)."""
    files, files_by_id = [], {}
    for folder in folders:
        for f in find_audio_files(folder):
            if f.utt_id in files_by_id:
                raise ValueError(
                    f"utterance {f.utt_id} exists in two folders: {files_by_id[f.utt_id].path} and {f.path}"
                )
            files_by_id[f.utt_id] = f
            files.append(f)
    trials = {}
    for path in (os.path.abspath(os.fspath(p)) for p in trial_lists):
        parsed = read_trials(path)
        if parsed.name in trials or parsed.name in ("dev_trials", HELDOUT_LIST):
            raise ValueError(f"{path}: trial list name {parsed.name!r} is used twice or reserved")
        trials[parsed.name] = (path, parsed)
    inputs = {
        "version": PREPARE_VERSION,
        "data_folders": folders,
        "num_files": len(files),
        "files_sha256": fingerprint(files),
        "trial_lists": {name: [p, file_sha256(p)] for name, (p, _) in trials.items()},
        "options": options,
    }
    return files, trials, inputs


def _output_paths(save_folder, trials, options):
    """The result's paths: CSVs, validation trials, the copies of the trial lists."""
    copies = {name: os.path.join(save_folder, "trials", f"{name}.txt") for name in trials}
    if options["test_speakers"]:
        copies[HELDOUT_LIST] = os.path.join(save_folder, "trials", f"{HELDOUT_LIST}.txt")
    dev = options["dev_speakers"]
    return {
        "train_csv": os.path.join(save_folder, "train.csv"),
        "dev_csv": os.path.join(save_folder, "dev.csv") if dev else None,
        "dev_trials": os.path.join(save_folder, "dev_trials.txt") if dev else None,
        "test_csv": os.path.join(save_folder, "test.csv") if copies else None,
        "trial_lists": copies,
        "bad_audio": None,
    }


def _check_trials_and_audio(files, trials, folders, save_folder, options, num_workers):
    """Step 2, before any CSV is written: every trial names a file on disk, the folder is
    writable, every file decodes (the bad ones stop preparation or are dropped)."""
    known = {f.utt_id for f in files}
    for path, parsed in trials.values():
        _check_trial_ids(path, parsed, known, folders)
    _ensure_writable(save_folder)
    protected = {u for _, parsed in trials.values() for u in parsed.utterances()}
    try:
        return screen_audio(files, save_folder, options["sample_rate"], options["min_seconds"],
                            options["drop_bad_audio"], num_workers, protected=protected)
    except OSError as error:  # the cache or bad_audio.txt (reading audio never raises)
        raise ValueError(f"cannot write in the data-prep folder {save_folder}: {one_line(error)}") from None


def _items_and_split(files, reports, trials, options):
    """Step 3: items (whole files or segments), the speaker split and the generated trials."""
    test_utts = {u for _, parsed in trials.values() for u in parsed.utterances()}
    items, cut = make_items(files, reports, options["segmentation"], options["segment_seconds"],
                            keep_whole=test_utts)
    listed = [i for i in items if i.id in test_utts]
    train, dev, heldout = split_speakers(items, options["dev_speakers"], options["test_speakers"],
                                         {speaker_of(u) for u in test_utts},
                                         options["heldout_utterances_per_speaker"], options["seed"])
    seed = options["seed"]
    dev_list = make_trials(dev, options["dev_trials"], seed, "dev_trials") if options["dev_speakers"] else None
    heldout_list = (make_trials(heldout, options["test_trials"], seed + 1, HELDOUT_LIST)
                    if options["test_speakers"] else None)
    return {"train": train, "dev": dev, "dev_list": dev_list, "listed": listed, "heldout": heldout,
            "heldout_list": heldout_list,
            "summary_of": (items, cut, train, (dev, dev_list), (heldout, heldout_list), len(trials), listed)}


def _write_outputs(result, split, trials, summary, save_folder, manifest, inputs, with_bad_audio):
    """Step 4: temporary files first, then the swaps, then the manifest (a crash leaves
    either the old outputs or no manifest, so the next call redoes the work)."""
    manifest_path = os.path.join(save_folder, MANIFEST_NAME)
    try:
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        outputs = _output_names(result, save_folder, with_bad_audio)
        if manifest:  # outputs of an earlier run that this run does not make
            for name in manifest.get("outputs", {}):
                stale = os.path.join(save_folder, name)
                if os.path.isfile(stale) and name not in outputs:
                    os.remove(stale)
        _write_items(result["train_csv"], split["train"])
        if split["dev_list"] is not None:
            _write_items(result["dev_csv"], split["dev"])
            write_trials(result["dev_trials"], split["dev_list"])
        if result["trial_lists"]:
            _write_items(result["test_csv"], sorted(split["listed"] + split["heldout"], key=lambda item: item.id))
            for name, (path, _) in trials.items():
                copy_atomic(path, result["trial_lists"][name])
            if split["heldout_list"] is not None:
                write_trials(result["trial_lists"][HELDOUT_LIST], split["heldout_list"])
        write_json_atomic(os.path.join(save_folder, SUMMARY_NAME), summary)
        write_manifest(manifest_path, inputs, save_folder, outputs)
    except OSError as error:
        raise ValueError(f"cannot write the prepared data in {save_folder}: {one_line(error)}") from None


def _output_names(result, save_folder, with_bad_audio):
    paths = [result["train_csv"], result["dev_csv"], result["dev_trials"], result["test_csv"]]
    paths += list(result["trial_lists"].values())
    paths.append(os.path.join(save_folder, SUMMARY_NAME))
    if with_bad_audio:
        paths.append(os.path.join(save_folder, BAD_AUDIO_NAME))
    return [os.path.relpath(p, save_folder).replace(os.sep, "/") for p in paths if p]


# --- prep summary -------------------------------------------------------------------------



def _summary_of(items, trials=None):
    """Speakers, items and hours of a set (and its trials and targets)."""
    out = {
        "speakers": len({i.speaker for i in items}),
        "items": len(items),
        "hours": round(sum(i.duration for i in items) / 3600, 3),
    }
    if trials is not None:
        out.update(trials=len(trials), targets=int(trials.labels.sum()))
    return out


def build_summary(num_files, dropped, items, cut, train, dev, heldout, num_lists, listed):
    """The counts of ``prepare_summary.json``.

    Arguments
    ---------
    num_files, dropped : int
        Audio files found, and dropped as bad.
    items : list of Item
        Every item (whole file or segment) of the good files.
    cut : int
        Recordings cut into segments.
    train : list of Item
        The training items.
    dev, heldout : (list of Item, TrialList or None)
        Held-out items and their trials (None: no such set).
    num_lists : int
        User trial lists.
    listed : list of Item
        The utterances they name.

    Returns
    -------
    dict

    Example
    -------
    >>> from sb_sphereface2.data.split import Item
    >>> items = [Item(f"s{k}/r@001", "/r", 0, 48000, 16000, f"s{k}/r@a", f"s{k}/r") for k in range(3)]
    >>> summary = build_summary(3, 0, items, 3, items, ([], None), ([], None), 0, [])
    >>> summary["segments"]["segments"], summary["train"]
    (3, {'speakers': 3, 'items': 3, 'hours': 0.003})
    """
    lengths = np.array([i.duration for i in items if i.id != i.recording])
    summary = {
        "files": num_files,
        "bad_files": dropped,
        "segments": {
            "recordings_cut": cut,
            "segments": len(lengths),
            "whole_files": len(items) - len(lengths),
            "min_seconds": round(float(lengths.min()), 3) if cut else 0.0,
            "max_seconds": round(float(lengths.max()), 3) if cut else 0.0,
            "mean_seconds": round(float(lengths.mean()), 3) if cut else 0.0,
        },
        "train": _summary_of(train),
        "trial_lists": {"count": num_lists, "utterances": len(listed)},
    }
    for key, (held, trials) in (("dev", dev), ("heldout", heldout)):
        if trials is not None:
            summary[key] = _summary_of(held, trials)
    if "dev" in summary:
        summary["dev"]["meaningful"] = validation_is_meaningful(summary["dev"]["speakers"], summary["dev"]["trials"])
    return summary


def log_summary(summary, save_folder):
    """Print (log) the segments and the split, and warn about a small validation set."""
    segs = summary["segments"]
    if segs["recordings_cut"]:
        logger.info(
            "Segments: %d recordings cut into %d segments of %.1f-%.1f s (mean %.1f s); %d files used whole",
            segs["recordings_cut"], segs["segments"], segs["min_seconds"], segs["max_seconds"],
            segs["mean_seconds"], segs["whole_files"],
        )
    parts = [f"training {summary['train']['speakers']} speakers, {summary['train']['items']} items "
             f"({summary['train']['hours']:.2f} h)"]
    for key, label in (("dev", "validation"), ("heldout", "held-out test")):
        part = summary.get(key)
        if part:
            parts.append(
                f"{label} {part['speakers']} speakers, {part['items']} items, "
                f"{part['trials']} trials ({part['targets']} targets)"
            )
    lists = summary["trial_lists"]
    parts.append(f"trial lists {lists['count']} ({lists['utterances']} utterances)" if lists["count"] else "no trial lists")
    logger.info("Split in %s: %s", save_folder, "; ".join(parts))
    dev = summary.get("dev")
    if dev and not dev["meaningful"]:
        logger.warning(
            "Validation set of %d speakers and %d trials is too small for a meaningful EER "
            "(needs 20 speakers or 1,000 trials): hold out more speakers, or turn validation off",
            dev["speakers"], dev["trials"],
        )
