"""VoxCeleb-style data preparation: speaker/session/utterance folders into SpeechBrain CSVs.

Any folder shaped like ``<root>/<speaker>/<session>/<utterance>.wav`` (or ``.flac``)
works, whatever the dataset: VoxCeleb1/2 (after converting VoxCeleb2's ``.m4a``, see
``recipes/VoxCeleb/convert_m4a.sh``), LibriSpeech, or the synthetic corpus of
:mod:`tools.synthetic_corpus`. Several roots can be combined (VoxCeleb2-dev
for training with VoxCeleb1 for the trial lists); utterance IDs are paths relative to
their root without extension (:func:`sb_sphereface2.data.trials.utterance_id`), so they
must not collide across roots.

Outputs in ``save_folder`` (all written atomically, the manifest last):

- ``train.csv``: ``ID,duration,wav,start,stop,spk_id,speed``, every utterance of the
  training speakers (neither in a trial list nor held out for validation). start/stop
  are samples (the whole file). With speed perturbation each utterance appears three
  times: ``speed`` 1.0, 0.9 and 1.1; the perturbed copies are new speakers
  (``<spk>@sp0.9``) with IDs ``<utt>@sp0.9`` and duration = original / speed.
- ``dev.csv`` and ``dev_trials.txt``: a few held-out speakers (not in train, not in
  any trial list) and balanced target/non-target trials among their utterances, for
  a per-epoch EER. Targets prefer different sessions. Deterministic given ``seed``.
- ``test.csv``: every utterance named by the trial lists, and a copy of each list in
  ``trials/<name>.txt``.
- ``prepare_manifest.json``: what the outputs were made from (folders, a fingerprint
  of every audio file's path, size and modification time, the options, the trial
  lists' hashes) and the outputs' hashes. A second call with the same inputs and
  intact outputs does nothing.

Bad input raises a one-line error before anything is written: a missing folder, no
audio in the expected layout, an unreadable or empty audio file, a sample rate other
than ``sample_rate``, a trial list with a bad line or naming a missing utterance.
"""

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import soundfile
from tqdm.auto import tqdm

from sb_sphereface2.files import (
    copy_atomic,
    file_sha256,
    outputs_intact,
    read_manifest,
    write_csv_atomic,
    write_manifest,
)
from sb_sphereface2.data.trials import TrialList, read_trials, speaker_of, utterance_id, write_trials

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac")
CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id", "speed"]
MANIFEST_NAME = "prepare_manifest.json"
PREPARE_VERSION = 1


@dataclass
class AudioFile:
    """One utterance found on disk.

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
    """

    utt_id: str
    path: str
    size: int
    mtime_ns: int


def speed_suffix(speed):
    """Suffix that marks speed-perturbed IDs and speakers.

    Example
    -------
    >>> speed_suffix(0.9), speed_suffix(1.1)
    ('@sp0.9', '@sp1.1')
    """
    return f"@sp{speed:g}"


def _one_line(error):
    return " ".join(str(error).split())


def find_audio_files(data_folder):
    """All ``<speaker>/<session>/<utterance>.{wav,flac}`` files under one root.

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
        No audio file at depth 3, or one ID given by both a WAV and a FLAC file.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "spk1", "sess1"))
    >>> soundfile.write(os.path.join(root, "spk1", "sess1", "00001.wav"), np.zeros(160), 16000)
    >>> [f.utt_id for f in find_audio_files(root)]
    ['spk1/sess1/00001']
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
            if depth != 2:
                elsewhere += 1
                continue
            path = os.path.join(folder, name)
            utt = utterance_id(os.path.relpath(path, root))
            if utt in found:
                raise ValueError(f"{root}: utterance {utt} exists as both {found[utt].path} and {path}")
            stat = os.stat(path)
            found[utt] = AudioFile(utt, path, stat.st_size, stat.st_mtime_ns)
    if not found:
        hint = (
            f" ({elsewhere} audio files at other depths: point data_folder at the folder "
            "that holds the speaker folders)"
            if elsewhere
            else ""
        )
        raise ValueError(f"{root}: no <speaker>/<session>/<utterance>.wav or .flac files{hint}")
    if elsewhere:
        logger.warning("%s: ignored %d audio files outside <speaker>/<session>/", root, elsewhere)
    return [found[u] for u in sorted(found)]


def read_audio_info(path, sample_rate=16000):
    """Number of samples and sample rate of an audio file, with one-line errors.

    Arguments
    ---------
    path : str
        Audio file.
    sample_rate : int or None
        Required sample rate; None accepts any.

    Returns
    -------
    (int, int)
        Frames and sample rate.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, np.zeros(800), 16000)
    >>> read_audio_info(path)
    (800, 16000)
    >>> open(path, "wb").close()
    >>> read_audio_info(path)
    Traceback (most recent call last):
    ...
    ValueError: ...a.wav: empty audio file (0 bytes)
    """
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty audio file (0 bytes)")
    try:
        info = soundfile.info(path)
    except Exception as error:  # libsndfile raises its own error types
        raise ValueError(f"{path}: unreadable audio file ({_one_line(error)})") from None
    if info.frames <= 0:
        raise ValueError(f"{path}: empty audio file (no samples)")
    if sample_rate is not None and info.samplerate != sample_rate:
        raise ValueError(
            f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
            "(resample the corpus or set sample_rate)"
        )
    return int(info.frames), int(info.samplerate)


def _fingerprint(files):
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.path}\t{f.size}\t{f.mtime_ns}\n".encode())
    return digest.hexdigest()


def _check_trial_ids(trial_path, trials, known, folders):
    """Raise on the first trial line that names an utterance not on disk."""
    missing = {u for u in trials.utterances() if u not in known}
    if not missing:
        return
    with open(trial_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) != 3:
                continue
            for field in fields[1:]:
                utt = utterance_id(field)
                if utt in missing:
                    where = " or ".join(folders)
                    raise ValueError(
                        f"{trial_path}:{number}: unknown utterance {field!r}: "
                        f"no {utt}.wav or {utt}.flac under {where}"
                    )
    raise ValueError(f"{trial_path}: unknown utterances {sorted(missing)[:3]}")  # unreachable


def _rows(utts, files_by_id, frames, rates, speeds=(1.0,)):
    rows = []
    for speed in speeds:
        suffix = "" if speed == 1.0 else speed_suffix(speed)
        for utt in utts:
            n = frames[utt]
            rows.append(
                [
                    utt + suffix,
                    f"{n / rates[utt] / speed:.4f}",
                    files_by_id[utt].path,
                    0,
                    n,
                    speaker_of(utt) + suffix,
                    str(float(speed)),
                ]
            )
    return rows


def make_dev_trials(utts, num_trials, seed):
    """Balanced target / non-target trials among utterances of held-out speakers.

    Targets are drawn first from pairs across sessions, then within a session;
    non-targets from pairs of different speakers. Vectorised over all pairs.

    Arguments
    ---------
    utts : list of str
        Utterance IDs (``speaker/session/utt``).
    num_trials : int
        Wanted number of trials (half targets); fewer when there are not enough
        target pairs.
    seed : int
        Seed of the draw.

    Returns
    -------
    TrialList
        Named ``dev_trials``.

    Example
    -------
    >>> utts = [f"{s}/{k}/{u}" for s in "ab" for k in ("s1", "s2") for u in ("1", "2")]
    >>> t = make_dev_trials(utts, 6, seed=0)
    >>> len(t), int(t.labels.sum())
    (6, 3)
    """
    utts = sorted(utts)
    speaker = np.array([speaker_of(u) for u in utts])
    session = np.array([u.rsplit("/", 1)[0] for u in utts])
    first, second = np.triu_indices(len(utts), k=1)
    same_speaker = speaker[first] == speaker[second]
    cross_session = session[first] != session[second]
    rng = np.random.default_rng(seed)
    targets_cross = rng.permutation(np.flatnonzero(same_speaker & cross_session))
    targets_within = rng.permutation(np.flatnonzero(same_speaker & ~cross_session))
    targets = np.concatenate([targets_cross, targets_within])
    nontargets = np.flatnonzero(~same_speaker)
    count = min(num_trials // 2, len(targets), len(nontargets))
    if count == 0:
        raise ValueError("held-out speakers give no target or no non-target trial")
    chosen = np.concatenate([targets[:count], rng.choice(nontargets, size=count, replace=False)])
    labels = np.concatenate([np.ones(count, np.int8), np.zeros(count, np.int8)])
    order = rng.permutation(2 * count)
    chosen, labels = chosen[order], labels[order]
    swap = rng.random(2 * count) < 0.5
    enrol = np.where(swap, second[chosen], first[chosen])
    test = np.where(swap, first[chosen], second[chosen])
    return TrialList(
        "dev_trials", labels, [utts[i] for i in enrol], [utts[i] for i in test]
    )


def prepare_voxceleb(
    data_folder,
    save_folder,
    trial_lists=(),
    dev_speakers=10,
    dev_utterances_per_speaker=20,
    dev_trials=1000,
    speed_perturb=False,
    speed_factors=(0.9, 1.1),
    sample_rate=16000,
    seed=1234,
):
    """Write train/dev/test CSVs and trial lists for a VoxCeleb-layout corpus.

    See the module docstring for the outputs. Safe to call from every DDP process
    through ``speechbrain.utils.distributed.run_on_main``.

    Arguments
    ---------
    data_folder : str or list of str
        Root(s) holding ``<speaker>/<session>/<utterance>.{wav,flac}``.
    save_folder : str
        Where the CSVs, trial lists and manifest go (created if needed).
    trial_lists : sequence of str
        VoxCeleb-format trial lists (``label enrol test`` per line); their speakers
        are removed from training. Each list's file name (without extension) must be
        distinct.
    dev_speakers : int
        Speakers held out for the validation EER (0: no dev set).
    dev_utterances_per_speaker : int
        At most this many utterances per dev speaker (drawn with ``seed``).
    dev_trials : int
        Wanted number of validation trials, half targets.
    speed_perturb : bool
        Add speed-perturbed copies of the training utterances as new speakers.
    speed_factors : tuple of float
        Speeds of the perturbed copies.
    sample_rate : int or None
        Required sample rate of every file (None: any).
    seed : int
        Seed of the dev speaker and trial draws.

    Returns
    -------
    dict
        ``train_csv``, ``dev_csv``, ``dev_trials``, ``test_csv`` (paths or None) and
        ``trial_lists`` ({name: path of the copy}).

    Example
    -------
    >>> import tempfile
    >>> root, save = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for spk in ("a", "b", "c", "d"):
    ...     for sess in ("s1", "s2"):
    ...         os.makedirs(os.path.join(root, spk, sess))
    ...         soundfile.write(os.path.join(root, spk, sess, "00001.wav"), np.zeros(1600), 16000)
    >>> out = prepare_voxceleb(root, save, dev_speakers=2, speed_perturb=True)
    >>> import csv
    >>> rows = list(csv.DictReader(open(out["train_csv"])))
    >>> len(rows), len({r["spk_id"] for r in rows}), sorted({r["speed"] for r in rows})
    (12, 6, ['0.9', '1.0', '1.1'])
    """
    folders = [data_folder] if isinstance(data_folder, (str, os.PathLike)) else list(data_folder)
    folders = [os.path.abspath(os.fspath(f)) for f in folders]
    save_folder = os.path.abspath(os.fspath(save_folder))
    trial_paths = [os.path.abspath(os.fspath(p)) for p in trial_lists]
    speed_factors = tuple(float(s) for s in speed_factors)
    if dev_speakers < 0 or dev_speakers == 1:
        raise ValueError(f"dev_speakers must be 0 or at least 2, got {dev_speakers}")
    if speed_perturb and (not speed_factors or any(s <= 0 or s == 1.0 for s in speed_factors)):
        raise ValueError(f"speed_factors must be positive and not 1.0, got {speed_factors}")

    # 1. Inputs: files on disk and trial lists (cheap), fingerprinted for the manifest.
    files = []
    for folder in folders:
        files.extend(find_audio_files(folder))
    files_by_id = {}
    for f in files:
        if f.utt_id in files_by_id:
            raise ValueError(
                f"utterance {f.utt_id} exists in two folders: {files_by_id[f.utt_id].path} and {f.path}"
            )
        files_by_id[f.utt_id] = f
    trials = {}
    for path in trial_paths:
        parsed = read_trials(path)
        if parsed.name in trials or parsed.name == "dev_trials":
            raise ValueError(f"{path}: trial list name {parsed.name!r} is used twice")
        trials[parsed.name] = (path, parsed)

    options = {
        "dev_speakers": dev_speakers,
        "dev_utterances_per_speaker": dev_utterances_per_speaker,
        "dev_trials": dev_trials,
        "speed_perturb": bool(speed_perturb),
        "speed_factors": list(speed_factors) if speed_perturb else [],
        "sample_rate": sample_rate,
        "seed": seed,
    }
    inputs = {
        "version": PREPARE_VERSION,
        "data_folders": folders,
        "num_files": len(files),
        "files_sha256": _fingerprint(files),
        "trial_lists": {name: [p, file_sha256(p)] for name, (p, _) in trials.items()},
        "options": options,
    }
    result = {
        "train_csv": os.path.join(save_folder, "train.csv"),
        "dev_csv": os.path.join(save_folder, "dev.csv") if dev_speakers else None,
        "dev_trials": os.path.join(save_folder, "dev_trials.txt") if dev_speakers else None,
        "test_csv": os.path.join(save_folder, "test.csv") if trials else None,
        "trial_lists": {name: os.path.join(save_folder, "trials", f"{name}.txt") for name in trials},
    }
    manifest_path = os.path.join(save_folder, MANIFEST_NAME)
    manifest = read_manifest(manifest_path)
    if manifest and manifest.get("inputs") == inputs and outputs_intact(manifest, save_folder):
        logger.info("Data preparation in %s is up to date, skipping", save_folder)
        return result

    # 2. Validate everything before writing anything.
    for name, (path, parsed) in trials.items():
        _check_trial_ids(path, parsed, files_by_id, folders)
    frames, rates = {}, {}
    for f in tqdm(files, desc="Reading audio durations", unit="file", mininterval=1.0):
        frames[f.utt_id], rates[f.utt_id] = read_audio_info(f.path, sample_rate)

    test_utts = sorted({u for _, parsed in trials.values() for u in parsed.utterances()})
    trial_speakers = {speaker_of(u) for u in test_utts}
    by_speaker = defaultdict(list)
    for utt in files_by_id:
        if speaker_of(utt) not in trial_speakers:
            by_speaker[speaker_of(utt)].append(utt)
    rng = np.random.default_rng(seed)
    eligible = sorted(s for s, u in by_speaker.items() if len(u) >= 2)
    if dev_speakers > len(eligible) or len(by_speaker) - dev_speakers < 2:
        raise ValueError(
            f"{len(by_speaker)} speakers remain outside the trial lists ({len(eligible)} with "
            f"2+ utterances): too few for dev_speakers={dev_speakers} and 2+ training speakers"
        )
    dev_set = set(rng.choice(eligible, size=dev_speakers, replace=False).tolist()) if dev_speakers else set()
    train_utts = sorted(u for s, us in by_speaker.items() if s not in dev_set for u in us)
    dev_utts = []
    for spk in sorted(dev_set):
        utts = sorted(by_speaker[spk])
        if len(utts) > dev_utterances_per_speaker:
            utts = sorted(rng.choice(utts, size=dev_utterances_per_speaker, replace=False).tolist())
        dev_utts.extend(utts)

    # 3. Write: temporary files first, then the swaps, then the manifest.
    os.makedirs(save_folder, exist_ok=True)
    if trials:
        os.makedirs(os.path.join(save_folder, "trials"), exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    if manifest:  # outputs of an earlier run that this run does not make
        for name in manifest.get("outputs", {}):
            stale = os.path.join(save_folder, name)
            if os.path.isfile(stale) and name not in _output_names(result, save_folder):
                os.remove(stale)
    speeds = (1.0,) + speed_factors if speed_perturb else (1.0,)
    write_csv_atomic(result["train_csv"], CSV_HEADER, _rows(train_utts, files_by_id, frames, rates, speeds))
    if dev_speakers:
        write_csv_atomic(result["dev_csv"], CSV_HEADER, _rows(dev_utts, files_by_id, frames, rates))
        write_trials(result["dev_trials"], make_dev_trials(dev_utts, dev_trials, seed))
    if trials:
        write_csv_atomic(result["test_csv"], CSV_HEADER, _rows(test_utts, files_by_id, frames, rates))
        for name, (path, _) in trials.items():
            copy_atomic(path, result["trial_lists"][name])
    write_manifest(manifest_path, inputs, save_folder, _output_names(result, save_folder))
    logger.info(
        "Prepared %d training utterances of %d speakers (%d rows), %d dev speakers, "
        "%d test utterances of %d trial speakers in %s",
        len(train_utts),
        len(by_speaker) - len(dev_set),
        len(train_utts) * len(speeds),
        len(dev_set),
        len(test_utts),
        len(trial_speakers),
        save_folder,
    )
    return result


def _output_names(result, save_folder):
    paths = [result["train_csv"], result["dev_csv"], result["dev_trials"], result["test_csv"]]
    paths += list(result["trial_lists"].values())
    return [os.path.relpath(p, save_folder).replace(os.sep, "/") for p in paths if p]
