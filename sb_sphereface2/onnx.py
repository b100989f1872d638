"""``python -m sb_sphereface2.onnx MODEL_FOLDER [--out FILE]``: export a model folder's
embedding pipeline (front end in the graph) to ONNX, checked against torch with
onnxruntime (:mod:`sb_sphereface2.pretrained.onnx_export`)."""

import argparse
import sys

from sb_sphereface2.errors import fail, os_error_line


def main(argv=None):
    """Command line (see the module docstring).

    Example
    -------
    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     code = main(["/nonexistent/model"])
    >>> code, err.getvalue()
    (1, 'error: model folder not found: /nonexistent/model\\n')
    """
    parser = argparse.ArgumentParser(prog="python -m sb_sphereface2.onnx", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_folder", help="a model folder (hyperparams.yaml + checkpoints)")
    parser.add_argument("--out", help="the .onnx file (default MODEL_FOLDER/embedding_model.onnx)")
    args = parser.parse_args(argv)
    from sb_sphereface2.pretrained.onnx_export import export_onnx

    try:
        path = export_onnx(args.model_folder, args.out)
    except (ValueError, RuntimeError) as error:
        return fail(error, 1)
    except OSError as error:
        return fail(os_error_line(error) if error.strerror else error, 1)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
