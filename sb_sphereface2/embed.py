"""``python -m sb_sphereface2.embed MODEL_FOLDER (--data-folder D | --list FILE) --out EMB.npz``:
embed every audio file under a folder (IDs: paths relative to it, no extension, as in the
recipe's trial lists) or of a list, into one embeddings file that
``python -m sb_sphereface2.scoring --embeddings EMB.npz`` scores directly.

Batched by duration, decoded in DataLoader workers, resumable: a rerun after a crash or a
kill continues from the last finished chunk. Unreadable and too-short files are listed
(stderr and ``EMB.skipped.json``) and the run goes on. ``--backend onnx`` runs
``MODEL_FOLDER/embedding_model.onnx`` with onnxruntime, exporting it first if absent.
See :mod:`sb_sphereface2.scoring.extract`.
"""

import argparse
import sys

from sb_sphereface2.errors import fail, os_error_line


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m sb_sphereface2.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_folder", help="a model folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-folder", help="embed every .wav/.flac file under this folder")
    source.add_argument("--list", help="a file of paths (or 'ID path' lines), relative to its folder")
    parser.add_argument("--out", required=True, help="the embeddings file (.npz)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--device", default="cpu", help="torch device (torch backend)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding audio (0: none)")
    parser.add_argument("--batch-seconds", type=float, default=30.0,
                        help="most padded audio per batch, seconds (0: one utterance at a time; 30 was fastest "
                        "on a CPU in BENCHMARKS.md, a GPU wants more)")
    parser.add_argument("--chunk-utterances", type=int, default=2000, help="utterances per resumable chunk")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="shorter clips are listed and left out")
    parser.add_argument("--exact", action="store_true",
                        help="embed one at a time when padding changes this model's embeddings")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (onnx backend)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    """Command line (see the module docstring).

    Example
    -------
    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     code = main([str(getfixture("tiny_model_folder")), "--data-folder", "/nonexistent", "--out", "/tmp/e.npz"])
    >>> code, err.getvalue()
    (1, 'error: data folder not found: /nonexistent\\n')
    """
    args = build_parser().parse_args(argv)
    from sb_sphereface2.data.utterance_sources import folder_utterances, list_utterances
    from sb_sphereface2.pretrained.pipeline import padding_changes_embeddings
    from sb_sphereface2.scoring.extract import PADDING_TOLERANCE, embedder_of_folder, extract, model_record

    try:
        if args.batch_seconds < 0 or args.chunk_utterances < 1 or args.workers < 0:
            raise ValueError("--batch-seconds must be >= 0, --chunk-utterances >= 1 and --workers >= 0")
        utterances = folder_utterances(args.data_folder) if args.data_folder else list_utterances(args.list)
        record = model_record(args.model_folder)
        embed, rate = embedder_of_folder(args.model_folder, args.backend, args.device, args.threads)
        result = extract(utterances, embed, rate, out=args.out, batch_seconds=args.batch_seconds,
                         chunk_utterances=args.chunk_utterances, workers=args.workers,
                         min_seconds=args.min_seconds, exact=args.exact, model=record,
                         progress=not args.quiet, desc=f"embedding ({args.backend})")
    except (ValueError, RuntimeError) as error:
        return fail(error, 1)
    except OSError as error:
        return fail(os_error_line(error) if error.strerror else error, 1)
    for item in result.skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    for note, count in sorted(result.notes.items()):
        print(f"note: {count} file(s) {note}", file=sys.stderr)
    change = result.padding_change if args.exact else padding_changes_embeddings(embed, rate)
    if change > PADDING_TOLERANCE:
        how = "embedded one at a time (--exact)" if args.exact else "batched anyway (--exact: one at a time)"
        print(f"note: padding changes this model's embeddings by up to {change:.2g}; {how}", file=sys.stderr)
    resumed = result.chunks - result.computed_chunks
    print(f"written {args.out}: {len(result.ids)} embeddings, {len(result.skipped)} skipped"
          + (f", {resumed} of {result.chunks} chunks kept from an earlier run" if resumed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
