"""``python -m sb_sphereface2.verify MODEL_FOLDER A.wav B.wav [--prior P]``: the cosine score
of two recordings and, when the model folder carries a calibration (``score.py
--store_calibration=cosine|asnorm``), its log-likelihood ratio and the decision at a target
prior (LLR above log((1 - P) / P): same speaker).

Each file is embedded whole by the model folder's pipeline; another sample rate is
resampled and stereo is downmixed (each said on stderr); a clip shorter than
``--min-seconds`` is a one-line error.
"""

import argparse
import math
import sys

import numpy as np

from sb_sphereface2.errors import fail, os_error_line


def _embed_file(embed, path, sample_rate, min_seconds):
    from sb_sphereface2.data.audio import read_converted

    signal, notes = read_converted(path, sample_rate)
    for note in notes:
        print(f"note: {path}: {note}", file=sys.stderr)
    seconds = len(signal) / sample_rate
    if seconds < min_seconds:
        raise ValueError(f"{path} is {seconds:.2f} s long, shorter than the minimum {min_seconds:g} s")
    return np.asarray(embed(signal[None], np.ones(1, np.float32)))[0], seconds


def main(argv=None):
    """Command line (see the module docstring).

    Example
    -------
    >>> import contextlib, io, os, tempfile, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> for name, seconds in (("a.wav", 2.0), ("b.wav", 0.2)):
    ...     soundfile.write(os.path.join(folder, name), np.random.randn(int(16000 * seconds)) * 0.1, 16000)
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     code = main([str(getfixture("tiny_model_folder")), os.path.join(folder, "a.wav"), os.path.join(folder, "b.wav")])
    >>> code, err.getvalue().replace(folder, "...")
    (1, 'error: .../b.wav is 0.20 s long, shorter than the minimum 0.5 s\\n')
    """
    parser = argparse.ArgumentParser(prog="python -m sb_sphereface2.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_folder")
    parser.add_argument("enrol", help="first recording (.wav, .flac)")
    parser.add_argument("test", help="second recording")
    parser.add_argument("--prior", type=float, default=None,
                        help="target prior of the decision (default: the prior the calibration was fitted for)")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="shorter clips are an error")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from sb_sphereface2.scoring.extract import embedder_of_folder
    from sb_sphereface2.scoring.stored_calibration import load_calibration, pair_llr

    try:
        if args.prior is not None and not 0.0 < args.prior < 1.0:
            raise ValueError(f"--prior must lie in (0, 1), got {args.prior}")
        stored = load_calibration(args.model_folder)
        embed, rate = embedder_of_folder(args.model_folder, device=args.device)
        pairs = [_embed_file(embed, path, rate, args.min_seconds) for path in (args.enrol, args.test)]
        embeddings = np.stack([embedding for embedding, _ in pairs]).astype(np.float64)
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        print(f"cosine: {float(unit[0] @ unit[1]):.4f}")
        if stored is None:
            print("no calibration in the model folder (score.py --store_calibration=cosine|asnorm stores one): no LLR")
            return 0
        record = stored[0]
        score, llr = pair_llr(stored, embeddings, [seconds for _, seconds in pairs])
        prior = record["prior"] if args.prior is None else args.prior
        threshold = math.log((1.0 - prior) / prior)
        decision = "same speaker" if llr > threshold else "different speakers"
        print(f"score ({record['scoring']}, training mean subtracted): {score:.4f}")
        print(f"llr: {llr:.3f} ({record['kind']} calibration fitted on {record['trial_list']['path']} "
              f"at prior {record['prior']:g})")
        print(f"decision at prior {prior:g}: {decision} (llr {'>' if llr > threshold else '<='} {threshold:.3f})")
    except (ValueError, RuntimeError) as error:
        return fail(error, 1)
    except OSError as error:
        return fail(os_error_line(error) if error.strerror else error, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
