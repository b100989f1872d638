"""A small multi-speaker corpus in VoxCeleb layout, synthesised with espeak-ng.

Each speaker is a distinct espeak-ng English voice + variant with its own pitch,
speaking rate and word gap, all drawn from ``seed``. Each session has its own gain,
channel colouring (one-pole low-pass) and background noise level, so sessions of one
speaker differ the way recordings do. Each utterance is 3-6 s of freshly composed
sentences, 16 kHz mono 16-bit WAV::

    OUT_DIR/spk001/s1/00001.wav ...
    OUT_DIR/trials.txt      VoxCeleb-format trials over the held-out speakers
    OUT_DIR/corpus.json     the parameters (a second identical call does nothing)

It gives the quick start (``make demo``) real speech-like data without downloads.
espeak-ng comes from Debian's packages: ``apt-get install -y espeak-ng``.

Command line::

    python tools/synthetic_corpus.py OUT_DIR --speakers 40
"""

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import soundfile
from scipy.signal import lfilter, resample_poly
from tqdm.auto import tqdm

from sb_sphereface2.data.trials import TrialList, write_trials

SAMPLE_RATE = 16000
CORPUS_VERSION = 1
MANIFEST_NAME = "corpus.json"
ENGLISH_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
MIN_SECONDS, MAX_SECONDS = 3.0, 6.0

_ADJECTIVES = (
    "quiet bright heavy little golden narrow ancient gentle sudden distant purple frozen "
    "careful silver hollow busy crooked friendly patient rusty windy sleepy curious "
    "wooden brave muddy clever empty noisy tiny broad humble proud eager lonely"
).split()
_NOUNS = (
    "river farmer basket mountain teacher window garden lantern kitten engine harbour "
    "bicycle village doctor pencil castle meadow sailor island ladder kettle painter "
    "orchard bridge market tunnel violin wagon forest blanket captain mirror valley "
    "candle station parrot cottage fountain traveller letter hammer chimney"
).split()
_VERBS = (
    "carried painted followed opened watched repaired visited noticed collected "
    "borrowed cleaned counted described lifted dropped found answered pushed "
    "measured remembered wrapped covered delivered admired"
).split()
_ADVERBS = (
    "slowly quickly happily softly early proudly nearly gladly rarely calmly "
    "boldly often gently loudly warmly"
).split()
_PLACES = (
    "near the old bridge|before the long winter|after the evening train|behind the "
    "little shop|across the open field|under the tall trees|beside the cold lake|"
    "during the summer fair|along the narrow road|at the end of the day"
).split("|")
_TEMPLATES = (
    "The {a1} {n1} {v} the {a2} {n2} {p}.",
    "Every morning the {n1} {adv} {v} a {a1} {n2}.",
    "Nobody knew why the {a1} {n1} {v} the {n2} {p}.",
    "{P}, a {a1} {n1} {adv} {v} the {a2} {n2}.",
    "Did the {n1} really say that the {a1} {n2} was {a2}?",
    "My {a1} {n1} {v} {num} {n2}s {p}.",
    "We {adv} {v} the {a1} {n1} and the {a2} {n2}.",
)
_NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()


def compose_text(rng, words):
    """Sentences of at least ``words`` words drawn from a built-in word bank.

    Example
    -------
    >>> text = compose_text(np.random.default_rng(0), 12)
    >>> len(text.split()) >= 12, text[0].isupper(), text.endswith((".", "?"))
    (True, True, True)
    """
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        a1, a2 = rng.choice(_ADJECTIVES, 2, replace=False)
        n1, n2 = rng.choice(_NOUNS, 2, replace=False)
        sentence = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(
            a1=a1, a2=a2, n1=n1, n2=n2, v=rng.choice(_VERBS), adv=rng.choice(_ADVERBS),
            p=rng.choice(_PLACES), P=rng.choice(_PLACES).capitalize(), num=rng.choice(_NUMBERS),
        )
        sentences.append(sentence[0].upper() + sentence[1:])
    return " ".join(sentences)


def espeak_binary():
    """Path of the espeak-ng program; a clear error when it is missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError("espeak-ng not found: install it with: apt-get install -y espeak-ng")
    return path


def espeak_version():
    """espeak-ng's version line (part of the corpus manifest)."""
    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def espeak_variants():
    """Sorted voice variants espeak-ng offers (whispering ones left out)."""
    out = subprocess.run(
        [espeak_binary(), "--voices=variant"], capture_output=True, text=True, check=True
    )
    names = set()
    for line in out.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("!v/"):
            name = fields[4][3:]
            if "whisper" not in name.lower():
                names.add(name)
    return sorted(names)


@dataclass(frozen=True)
class SyntheticSpeaker:
    """How one synthetic speaker talks.

    Arguments
    ---------
    name : str
        Folder name, e.g. ``spk001``.
    voice : str
        espeak-ng voice with variant, e.g. ``en-gb+f3``.
    pitch : int
        espeak-ng pitch, 0-99.
    rate : int
        Words per minute.
    word_gap : int
        Extra pause between words, in units of 10 ms.
    """

    name: str
    voice: str
    pitch: int
    rate: int
    word_gap: int


def draw_speakers(num_speakers, seed, variants=None):
    """Distinct speakers: voice/variant pairs drawn without replacement, plus pitch, rate, gap.

    Example
    -------
    >>> speakers = draw_speakers(3, seed=0, variants=["f1", "m1", "m2"])
    >>> len({s.voice for s in speakers}), speakers[0].name
    (3, 'spk001')
    """
    variants = espeak_variants() if variants is None else list(variants)
    pairs = [f"{voice}+{variant}" for voice in ENGLISH_VOICES for variant in variants]
    if num_speakers > len(pairs):
        raise ValueError(f"at most {len(pairs)} distinct synthetic speakers, asked for {num_speakers}")
    rng = np.random.default_rng([seed, 0])
    chosen = rng.choice(len(pairs), size=num_speakers, replace=False)
    return [
        SyntheticSpeaker(
            name=f"spk{i + 1:03d}",
            voice=pairs[index],
            pitch=int(rng.integers(20, 80)),
            rate=int(rng.integers(135, 200)),
            word_gap=int(rng.integers(0, 4)),
        )
        for i, index in enumerate(chosen)
    ]


def synthesize(text, speaker):
    """espeak-ng speech of ``text`` by ``speaker`` as float32 at 16 kHz.

    Example
    -------
    >>> speaker = SyntheticSpeaker("s", "en-us+m3", 50, 170, 0)
    >>> audio = synthesize("hello world", speaker)
    >>> audio.dtype, 0.3 < len(audio) / SAMPLE_RATE < 3
    (dtype('float32'), True)
    """
    command = [
        espeak_binary(), "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.rate),
        "-g", str(speaker.word_gap), "--stdout", text,
    ]
    result = subprocess.run(command, capture_output=True, check=False)
    data = result.stdout
    if result.returncode != 0 or len(data) < 46 or data[:4] != b"RIFF":
        message = " ".join(result.stderr.decode(errors="replace").split())
        raise RuntimeError(f"espeak-ng failed for voice {speaker.voice}: {message}")
    rate = int.from_bytes(data[24:28], "little")
    samples = np.frombuffer(data[44 : 44 + (len(data) - 44) // 2 * 2], dtype="<i2")
    audio = samples.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:
        divisor = np.gcd(SAMPLE_RATE, rate)
        audio = resample_poly(audio, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return audio


def _trim_silence(audio, threshold=1e-3):
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio[:0]


def _utterance(task):
    """Make and write one utterance (runs in a worker process)."""
    speaker, session, index, seed, path = task
    spk_number = int(speaker.name[3:])
    rng = np.random.default_rng([seed, spk_number, session, index])
    target = int(rng.uniform(MIN_SECONDS, MAX_SECONDS) * SAMPLE_RATE)
    words_per_second = speaker.rate / 60.0
    pieces, length = [], 0
    while length < target:
        words = int(np.ceil((target - length) / SAMPLE_RATE * words_per_second)) + 2
        piece = _trim_silence(synthesize(compose_text(rng, words), speaker))
        pieces.append(piece)
        pieces.append(np.zeros(int(0.25 * SAMPLE_RATE), np.float32))
        length += len(piece) + int(0.25 * SAMPLE_RATE)
    audio = np.concatenate(pieces)[:target]

    channel = np.random.default_rng([seed, spk_number, session, 10**6])
    pole = channel.uniform(0.0, 0.6)
    audio = lfilter([1.0 - pole], [1.0, -pole], audio)
    audio = audio / (np.abs(audio).max() + 1e-9) * 10 ** (channel.uniform(-12.0, -2.0) / 20)
    snr_db = channel.uniform(15.0, 35.0)
    noise = rng.standard_normal(len(audio)) * np.sqrt(np.mean(audio**2) / 10 ** (snr_db / 10))
    audio = np.clip(audio + noise, -1.0, 1.0)
    soundfile.write(path, audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


def make_trials(speakers, sessions_per_speaker, utts_per_session, seed):
    """Cross-session target trials of the given speakers and as many non-targets.

    Example
    -------
    >>> t = make_trials(["spk001", "spk002"], 2, 2, seed=0)
    >>> len(t), int(t.labels.sum())
    (16, 8)
    """
    utts = [
        f"{spk}/s{k + 1}/{u + 1:05d}"
        for spk in speakers
        for k in range(sessions_per_speaker)
        for u in range(utts_per_session)
    ]
    speaker = np.array([u.split("/")[0] for u in utts])
    session = np.array([u.rsplit("/", 1)[0] for u in utts])
    first, second = np.triu_indices(len(utts), k=1)
    same = speaker[first] == speaker[second]
    targets = np.flatnonzero(same & (session[first] != session[second]))
    rng = np.random.default_rng([seed, 1])
    nontargets = rng.choice(np.flatnonzero(~same), size=min(len(targets), int((~same).sum())), replace=False)
    chosen = np.concatenate([targets, np.sort(nontargets)])
    labels = np.concatenate([np.ones(len(targets), np.int8), np.zeros(len(nontargets), np.int8)])
    return TrialList("trials", labels, [utts[i] for i in first[chosen]], [utts[i] for i in second[chosen]])


@dataclass
class SyntheticCorpus:
    """What :func:`make_espeak_corpus` made.

    Arguments
    ---------
    root : str
        Corpus folder (``speaker/session/utt.wav``).
    trials : str
        Trial list over ``trial_speakers``.
    speakers : list of SyntheticSpeaker
        All speakers.
    trial_speakers : list of str
        Names of the held-out speakers in the trial list.
    """

    root: str
    trials: str
    speakers: list = field(default_factory=list)
    trial_speakers: list = field(default_factory=list)


def make_espeak_corpus(
    out_dir,
    num_speakers=40,
    sessions_per_speaker=2,
    utts_per_session=4,
    trial_speakers=None,
    seed=1234,
    num_workers=None,
):
    """Synthesise a VoxCeleb-layout corpus and a trial list; idempotent.

    Arguments
    ---------
    out_dir : str
        Corpus folder. Created; rebuilt when it holds a synthetic corpus made with
        other parameters; an error when it holds anything else.
    num_speakers : int
        Number of speakers.
    sessions_per_speaker : int
        Sessions per speaker (``s1``, ``s2``, ...).
    utts_per_session : int
        Utterances per session.
    trial_speakers : int, optional
        How many speakers (the last ones) the trial list uses; default a fifth,
        at least 2.
    seed : int
        Seed of every random draw.
    num_workers : int, optional
        Worker processes (default: the CPU count, at most 8).

    Returns
    -------
    SyntheticCorpus

    Example
    -------
    >>> import tempfile
    >>> corpus = make_espeak_corpus(os.path.join(tempfile.mkdtemp(), "c"), 3, 1, 2, 2, num_workers=1)
    >>> sorted(os.listdir(corpus.root))
    ['corpus.json', 'spk001', 'spk002', 'spk003', 'trials.txt']
    """
    if num_speakers < 2 or sessions_per_speaker < 1 or utts_per_session < 1:
        raise ValueError("need at least 2 speakers, 1 session and 1 utterance per session")
    if trial_speakers is None:
        trial_speakers = max(2, num_speakers // 5)
    if not 2 <= trial_speakers <= num_speakers:
        raise ValueError(f"trial_speakers must be between 2 and {num_speakers}, got {trial_speakers}")
    if sessions_per_speaker * utts_per_session < 2:
        raise ValueError("target trials need at least 2 utterances per speaker")
    out_dir = os.path.abspath(os.fspath(out_dir))
    speakers = draw_speakers(num_speakers, seed)
    params = {
        "version": CORPUS_VERSION,
        "espeak": espeak_version(),
        "num_speakers": num_speakers,
        "sessions_per_speaker": sessions_per_speaker,
        "utts_per_session": utts_per_session,
        "trial_speakers": trial_speakers,
        "seed": seed,
        "speakers": [vars(s) for s in speakers],
    }
    held_out = [s.name for s in speakers[-trial_speakers:]]
    relative = [
        f"{s.name}/s{k + 1}/{u + 1:05d}.wav"
        for s in speakers
        for k in range(sessions_per_speaker)
        for u in range(utts_per_session)
    ]
    result = SyntheticCorpus(out_dir, os.path.join(out_dir, "trials.txt"), speakers, held_out)
    manifest = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        try:
            with open(manifest, encoding="utf-8") as handle:
                existing = json.load(handle)
        except (OSError, ValueError):
            raise ValueError(
                f"{out_dir} exists and is not a synthetic corpus (no {MANIFEST_NAME}): refusing to overwrite it"
            ) from None
        if existing == params and all(os.path.isfile(os.path.join(out_dir, r)) for r in relative):
            return result

    partial = f"{out_dir}.partial{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        tasks = []
        for s in speakers:
            for k in range(sessions_per_speaker):
                os.makedirs(os.path.join(partial, s.name, f"s{k + 1}"))
                for u in range(utts_per_session):
                    tasks.append((s, k + 1, u + 1, seed, os.path.join(partial, s.name, f"s{k + 1}", f"{u + 1:05d}.wav")))
        workers = num_workers or min(os.cpu_count() or 1, 8)
        progress = dict(total=len(tasks), desc="Synthesising speech", unit="utt", mininterval=1.0)
        if workers == 1:
            for task in tqdm(tasks, **progress):
                _utterance(task)
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(workers) as pool:
                for _ in tqdm(pool.imap_unordered(_utterance, tasks, chunksize=4), **progress):
                    pass
        write_trials(
            os.path.join(partial, "trials.txt"),
            make_trials(held_out, sessions_per_speaker, utts_per_session, seed),
        )
        with open(os.path.join(partial, MANIFEST_NAME), "w", encoding="utf-8") as handle:
            json.dump(params, handle, indent=1)
        if os.path.isdir(out_dir):
            old = f"{out_dir}.old{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(partial, out_dir)
            shutil.rmtree(old)
        else:
            os.makedirs(os.path.dirname(out_dir), exist_ok=True)
            os.replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return result


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description="Synthesise a small VoxCeleb-layout speaker corpus with espeak-ng."
    )
    parser.add_argument("out_dir", help="corpus folder to create")
    parser.add_argument("--speakers", type=int, default=40, help="number of speakers (default 40)")
    parser.add_argument("--sessions", type=int, default=2, help="sessions per speaker (default 2)")
    parser.add_argument("--utterances", type=int, default=4, help="utterances per session (default 4)")
    parser.add_argument("--trial-speakers", type=int, default=None, help="held-out speakers in trials.txt")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        corpus = make_espeak_corpus(
            args.out_dir, args.speakers, args.sessions, args.utterances,
            args.trial_speakers, args.seed, args.workers,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{corpus.root}: {len(corpus.speakers)} speakers, trials in {corpus.trials}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
