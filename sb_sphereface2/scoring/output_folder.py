"""One scoring per output folder, all or nothing, with one-line errors for the file system.

:func:`exclusive_output_folder` wraps a scoring run:

1. It takes an exclusive lock (``filelock``) on ``.<name>.lock`` beside the output folder
   (beside, not inside: the folder itself is replaced at the end). A second run on the
   same folder refuses at once, naming the folder and the PID of the run that holds it
   (written to ``.<name>.lock.pid``). The kernel drops the lock when its holder dies, even
   by ``kill -9``.
2. It removes temporary folders and files that dead processes left beside the output
   folder (:func:`sb_sphereface2.files.remove_stale_temporaries`).
3. The run writes into a temporary folder beside the target, which replaces the target in
   one rename when the run succeeds (:func:`sb_sphereface2.files.atomic_folder`): a killed
   or failed run leaves the previous complete results, or nothing. Because the target is
   replaced as a whole, an existing target must be empty or hold earlier results (a
   ``results.json``): a folder of other files is refused, not deleted.
4. Operating-system errors on the output side (read-only or unwritable folder, disk full)
   become one :class:`OutputFolderError` line naming the folder, the file and the cause.
"""

import contextlib
import errno
import os

import filelock

from sb_sphereface2.errors import os_error_line
from sb_sphereface2.files import atomic_folder, remove_stale_temporaries, write_text_atomic

__all__ = ["OutputFolderError", "exclusive_output_folder"]


class OutputFolderError(RuntimeError):
    """The output folder is in use by another run, or cannot be written."""


def _holder(pid_file):
    try:
        with open(pid_file, encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError:
        return "PID unknown"
    return f"PID {text}" if text.isdigit() else "PID unknown"


# Errors that only writing gives: without a file name (a failed write() on an open file),
# they still concern the output, the only thing a scoring run writes.
_WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def _is_output_side(error, parent, name):
    """Whether an OSError concerns the output folder, its temporaries or its lock."""
    filename = getattr(error, "filename", None)
    if not filename:
        return error.errno in _WRITE_ERRORS
    filename = os.path.abspath(os.fspath(filename))
    if filename == parent:
        return True
    inside = os.path.commonpath([filename, parent]) == parent
    relative = os.path.relpath(filename, parent).split(os.sep)[0] if inside else ""
    return relative == name or relative.startswith(f".{name}.")


def _check_replaceable(path):
    """Refuse to replace anything but an empty folder or earlier results."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise OutputFolderError(f"output folder {path} exists and is not a folder")
    entries = sorted(os.listdir(path))
    if entries and "results.json" not in entries:
        raise OutputFolderError(
            f"output folder {path} holds {len(entries)} entries that are not scoring results "
            f"(e.g. {entries[0]!r}) and would be replaced as a whole: choose a new or empty folder"
        )


@contextlib.contextmanager
def exclusive_output_folder(path):
    """Lock ``path`` for this run and yield a temporary folder that replaces it on success
    (see the module docstring).

    Arguments
    ---------
    path : str or os.PathLike
        The output folder.

    Yields
    ------
    str
        The temporary folder to write into.

    Raises
    ------
    OutputFolderError
        Another run holds the folder, it holds files other than earlier results, or it
        cannot be created or written (the message names the path and the cause).

    Example
    -------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "scores")
    >>> with exclusive_output_folder(out) as tmp:
    ...     write_text_atomic(os.path.join(tmp, "results.json"), "done\\n")
    >>> os.listdir(out)
    ['results.json']
    >>> messages = []
    >>> with exclusive_output_folder(out) as tmp:
    ...     write_text_atomic(os.path.join(tmp, "results.json"), "half")
    ...     try:
    ...         with exclusive_output_folder(out):  # a second run on the same folder
    ...             pass
    ...     except OutputFolderError as error:
    ...         messages.append(str(error).replace(out, "<out>").replace(str(os.getpid()), "<pid>"))
    ...     raise RuntimeError("the run fails")
    Traceback (most recent call last):
    RuntimeError: the run fails
    >>> print(messages[0])
    output folder <out> is in use by another scoring run (PID <pid>); wait for it to finish or choose another output folder
    >>> open(os.path.join(out, "results.json")).read(), sorted(os.listdir(os.path.dirname(out)))
    ('done\\n', ['.scores.lock', 'scores'])
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    lock_file = os.path.join(parent, f".{name}.lock")
    pid_file = f"{lock_file}.pid"

    def unwritable(error):
        return OutputFolderError(f"cannot write the output folder {path}: {os_error_line(error)}")

    try:
        os.makedirs(parent, exist_ok=True)
        lock = filelock.FileLock(lock_file)
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise OutputFolderError(
            f"output folder {path} is in use by another scoring run ({_holder(pid_file)}); "
            "wait for it to finish or choose another output folder"
        ) from None
    except OSError as error:
        raise unwritable(error) from None
    try:
        _check_replaceable(path)
        write_text_atomic(pid_file, f"{os.getpid()}\n")
        remove_stale_temporaries(parent)
        with atomic_folder(path) as tmp:
            yield tmp
    except OSError as error:
        if _is_output_side(error, parent, name):
            raise unwritable(error) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(pid_file)
        lock.release()
