"""Training curves of one or several runs, overlaid::

    python -m sb_sphereface2.curves RUN_FOLDER [RUN_FOLDER ...] --out FILE

Each RUN_FOLDER is a training run's output folder (its ``train_log.txt``,
``train_records.jsonl`` and ``train_histograms.jsonl``); each run gets its own colour,
labelled with its composed ``hyperparams.yaml``'s loss and seed (e.g. SphereFace2-C against
AAM, or seeds). FILE is a PNG, SVG or PDF (by its extension). The drawing is
:mod:`sb_sphereface2.training.curves`; a bad folder is one line ``error: ...``.
"""

import argparse
import os
import sys

from sb_sphereface2.errors import fail, os_error_line
from sb_sphereface2.training.curves import LOG_NAME, draw_curves, read_run
from sb_sphereface2.training.diagnostics import RECORDS_NAME

FORMATS = (".png", ".svg", ".pdf")


def main(argv=None):
    """The command line; returns the exit code (2: bad arguments or folders, 1: a write error).

    Example
    -------
    >>> import contextlib, io, tempfile
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     code = main([tempfile.mkdtemp(), "--out", "x.png"])
    >>> code, err.getvalue().startswith("error: no train_log.txt")
    (2, True)
    """
    parser = argparse.ArgumentParser(prog="python -m sb_sphereface2.curves", description=__doc__.split("::")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_FOLDER", help="training output folders")
    parser.add_argument("--out", required=True, metavar="FILE", help="the picture: .png, .svg or .pdf")
    args = parser.parse_args(argv)
    if os.path.splitext(args.out)[1].lower() not in FORMATS:
        return fail(f"--out must end in {', '.join(FORMATS)}, got {args.out}", 2)
    for folder in args.runs:
        if not any(os.path.isfile(os.path.join(folder, name)) for name in (LOG_NAME, RECORDS_NAME)):
            return fail(f"no {LOG_NAME} or {RECORDS_NAME} in {folder} (not a training run folder)", 2)
    try:
        draw_curves([read_run(folder) for folder in args.runs], args.out)
    except OSError as error:
        return fail(os_error_line(error), 1)
    except ValueError as error:  # a damaged records file
        return fail(f"a run folder's records cannot be read: {error}", 2)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
