"""A speaker-disjoint VoxCeleb-layout split of a corpus with one long recording per speaker
(such as librispeech-mini): training speakers keep their recording's halves as two
utterances; held-out speakers give quarters (1-2 as session s1, 3-4 as s2) and a trial list
that compares every s1 quarter with every s2 quarter (targets: the same recording).
"""

import argparse
import os
from pathlib import Path

import soundfile
from tqdm.auto import tqdm


def split_recordings(source, out_folder, held_out_every=4, min_seconds=6.0):
    """Write the split and its trial list; return ``(data_folder, trials_path)``.

    Arguments
    ---------
    source : str
        Folder with ``<speaker>/**/<file>.flac|wav``, one recording used per speaker.
    out_folder : str
        Receives ``data/`` and ``trials.txt``.
    held_out_every : int
        Every n-th speaker (sorted) is held out for the trials.
    min_seconds : float
        Shorter recordings are left out.

    Returns
    -------
    tuple
        (Path of the data folder, Path of the trial list).

    Example
    -------
    >>> import tempfile, numpy as np
    >>> src = Path(tempfile.mkdtemp())
    >>> for spk in ("a", "b", "c", "d", "e"):
    ...     (src / spk).mkdir()
    ...     soundfile.write(src / spk / "x.flac", np.random.randn(16000 * 8) * 0.1, 16000)
    >>> data, trials = split_recordings(src, tempfile.mkdtemp(), held_out_every=2)
    >>> len(trials.read_text().splitlines())  # 3 held-out speakers, 2 x 2 quarters each pair
    36
    """
    source, out = Path(source), Path(out_folder)
    if not source.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {source}")
    recordings = {}
    for path in sorted(list(source.rglob("*.flac")) + list(source.rglob("*.wav"))):
        recordings.setdefault(path.relative_to(source).parts[0], path)
    if not recordings:
        raise ValueError(f"{source}: no .flac or .wav files")
    held_out = set(sorted(recordings)[::held_out_every])
    data = out / "data"
    test_speakers = []
    for speaker, path in tqdm(sorted(recordings.items()), desc="splitting recordings", unit="spk"):
        audio, rate = soundfile.read(path, dtype="float32")
        if len(audio) < min_seconds * rate:
            continue
        pieces = 4 if speaker in held_out else 2
        size = len(audio) // pieces
        for k in range(pieces):
            folder = data / speaker / f"s{1 + k * 2 // pieces}"
            folder.mkdir(parents=True, exist_ok=True)
            soundfile.write(folder / f"{k + 1:05d}.flac", audio[k * size:(k + 1) * size], rate)
        if speaker in held_out:
            test_speakers.append(speaker)
    trials = out / "trials.txt"
    tmp = trials.with_suffix(".tmp")
    tmp.write_text("".join(
        f"{int(a == b)} {a}/s1/{e:05d}.flac {b}/s2/{t:05d}.flac\n"
        for a in test_speakers for b in test_speakers for e in (1, 2) for t in (3, 4)
    ))
    os.replace(tmp, trials)
    return data, trials


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="corpus with one recording per speaker (e.g. librispeech-mini)")
    parser.add_argument("out_folder")
    parser.add_argument("--held-out-every", type=int, default=4)
    args = parser.parse_args(argv)
    data, trials = split_recordings(args.source, args.out_folder, args.held_out_every)
    print(f"data: {data}\ntrials: {trials}")


if __name__ == "__main__":
    main()
