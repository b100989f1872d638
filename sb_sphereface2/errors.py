"""One-line errors: the one formatter every command and layer uses.

- ``one_line(error)``: an exception's (or a text's) message on one line, optionally cut;
- ``os_error_line(error)``: ``"<path>: <cause> [Errno n]"`` for an ``OSError``, with a
  temporary file's name (``.train.csv.tmp123``, written by :mod:`sb_sphereface2.files`)
  mapped back to the file it was to become;
- ``check_writable(folder)``: before any work, a folder is created and a probe file is
  written, fsync'ed and removed in it;
- ``fail(message, code)``: print ``error: <one line>`` on stderr and return ``code`` (the
  exit code of a command line).
"""

import os
import sys

from sb_sphereface2.files import TEMPORARY_NAME


def one_line(error, limit=None):
    """``str(error)`` with its white space folded to single spaces; cut to ``limit``
    characters (ending in "...") when given; the exception's type name when empty.

    Example
    -------
    >>> one_line(ValueError("a\\n  b"))
    'a b'
    >>> one_line("x" * 10, limit=6)
    'xxx...'
    >>> one_line(KeyError())
    'KeyError'
    """
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def os_error_line(error):
    """One line for an ``OSError``: the path (a temporary file's final name) and the cause.

    Example
    -------
    >>> import errno
    >>> os_error_line(OSError(errno.ENOSPC, "No space left on device", "/run/data/.train.csv.tmp42"))
    '/run/data/train.csv: No space left on device [Errno 28]'
    >>> os_error_line(OSError(errno.EIO, "Input/output error"))
    'Input/output error [Errno 5]'
    """
    cause = f"{error.strerror} [Errno {error.errno}]" if error.strerror else one_line(error)
    path = error.filename
    if path is None:
        return cause
    folder, name = os.path.split(os.fspath(path))
    match = TEMPORARY_NAME.match(name)
    if match:
        path = os.path.join(folder, match.group("name"))
    second = f" -> {error.filename2}" if getattr(error, "filename2", None) else ""
    return f"{path}{second}: {cause}"


def check_writable(folder, what="the output folder"):
    """Create ``folder`` if needed and check that a file can be written in it.

    Arguments
    ---------
    folder : str or path
        The folder.
    what : str
        How the error names it ("cannot write <what> <folder>: <cause>").

    Raises
    ------
    OSError
        "cannot write <what> <folder>: <cause>" (``os_error_line`` formats it).

    Example
    -------
    >>> import tempfile
    >>> check_writable(os.path.join(tempfile.mkdtemp(), "run", "save"))
    >>> try:
    ...     check_writable("/proc/version/run")
    ... except OSError as error:
    ...     print(os_error_line(error))
    cannot write the output folder /proc/version/run: Not a directory [Errno 20]
    """
    probe = os.path.join(folder, f".write_check.tmp{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"0")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise OSError(error.errno, f"cannot write {what} {folder}: {error.strerror}") from None
    finally:
        if os.path.lexists(probe):
            os.remove(probe)


def fail(message, code):
    """Print ``error: <message on one line>`` to stderr and return ``code``.

    Example
    -------
    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     code = fail(FileNotFoundError("no such\\nfile"), 1)
    >>> code, err.getvalue()
    (1, 'error: no such file\\n')
    """
    print(f"error: {one_line(message)}", file=sys.stderr)
    return code
