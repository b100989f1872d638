"""All-or-nothing writes of files and folders, and content fingerprints.

Every output of the project goes through this module:

- ``atomic_write(path)``: a context manager yielding a handle on a temporary file beside
  ``path``; on success the file is flushed, fsync'ed and renamed over ``path``
  (``os.replace`` is atomic within a folder); on error the temporary file is removed and
  the old ``path`` is left as it was. ``write_text_atomic``, ``write_csv_atomic``,
  ``write_json_atomic``, ``copy_atomic`` and ``torch_save_atomic`` are one-liners on it.
- ``atomic_folder(path)``: the same for a whole folder: files are written into a
  temporary folder beside ``path``, which replaces ``path`` in one rename at the end.
- Temporary names carry the writer's PID (``.<name>.tmp<pid>``), so that
  ``remove_stale_temporaries`` can delete the leftovers of dead processes.
- ``file_sha256`` and the manifest functions record what outputs were made from, so a
  rerun with the same inputs can skip the work.
"""

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil

TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)(?P<pid>\d+)$")


def temporary_path(path, kind="tmp"):
    """A temporary name beside ``path`` (same folder, so ``os.replace`` is atomic),
    marked with this process's PID.

    Example
    -------
    >>> temporary_path("/data/train.csv") == f"/data/.train.csv.tmp{os.getpid()}"
    True
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}.{kind}{os.getpid()}")


def fsync_folder(folder):
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on every platform / file system
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8", newline=""):
    """Write ``path`` all at once: yield a handle on a temporary file, rename it into
    place when the block ends without an error. The folder is created if needed.

    Arguments
    ---------
    path : str
        The destination.
    mode : str
        "w" (text) or "wb" (bytes).
    encoding, newline : str
        For text mode.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_write(path) as handle:
    ...     _ = handle.write("hello\\n")
    >>> open(path).read()
    'hello\\n'
    >>> try:
    ...     with atomic_write(path) as handle:
    ...         _ = handle.write("half")
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     pass
    >>> open(path).read(), sorted(os.listdir(os.path.dirname(path)))
    ('hello\\n', ['a.txt'])
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_path(path)
    kwargs = {} if mode == "wb" else {"encoding": encoding, "newline": newline}
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(os.path.dirname(path))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_text_atomic(path, "hello\\n")
    >>> open(path).read()
    'hello\\n'
    """
    with atomic_write(path) as handle:
        handle.write(text)


def write_csv_atomic(path, header, rows):
    """Write a CSV file atomically: ``rows`` are lists (in ``header`` order) or dicts.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> write_csv_atomic(path, ["ID", "duration"], [["a", 1.5], {"ID": "b,c", "duration": 2.0}])
    >>> open(path).read().splitlines()
    ['ID,duration', 'a,1.5', '"b,c",2.0']
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[key] for key in header] if isinstance(row, dict) else row)
    write_text_atomic(path, buffer.getvalue())


def write_json_atomic(path, data):
    """Write ``data`` as indented JSON atomically.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> write_json_atomic(path, {"a": 1})
    >>> json.load(open(path))
    {'a': 1}
    """
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def copy_atomic(source, destination):
    """Copy a file byte for byte, atomically at the destination."""
    with atomic_write(destination, "wb") as handle, open(source, "rb") as original:
        shutil.copyfileobj(original, handle)


def torch_save_atomic(obj, path):
    """``torch.save`` to ``path`` atomically (a checkpoint is never seen half-written)."""
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


@contextlib.contextmanager
def atomic_folder(path):
    """Build a folder all at once: yield a temporary folder beside ``path``; when the
    block ends without an error its files are fsync'ed and it replaces ``path`` (the old
    folder, if any, is removed after the swap). On error the temporary folder is removed
    and ``path`` is left as it was.

    Example
    -------
    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "model")
    >>> with atomic_folder(target) as tmp:
    ...     write_text_atomic(os.path.join(tmp, "a.txt"), "1")
    >>> sorted(os.listdir(target))
    ['a.txt']
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp, old = temporary_path(path), temporary_path(path, "old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as handle:
                    os.fsync(handle.fileno())
        if os.path.lexists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_folder(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder):
    """Remove the temporary files and folders (``.<name>.tmp<pid>``, ``.<name>.old<pid>``)
    that dead processes left in ``folder``; return their names.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(folder, ".model.tmp999999999"))
    >>> remove_stale_temporaries(folder), os.listdir(folder)
    (['.model.tmp999999999'], [])
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        match = TEMPORARY_NAME.match(name)
        if not match or _pid_alive(int(match.group("pid"))):
            continue
        target = os.path.join(folder, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(target)
        removed.append(name)
    return removed


def file_sha256(path):
    """SHA-256 hex digest of a file's content.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_text_atomic(path, "abc")
    >>> file_sha256(path)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path):
    """The manifest stored at ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def outputs_intact(manifest, folder):
    """True when every output the manifest lists exists in ``folder`` with its recorded hash."""
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outputs, dict) or not outputs:
        return False
    for name, digest in outputs.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or file_sha256(path) != digest:
            return False
    return True


def write_manifest(path, inputs, folder, output_names):
    """Write ``{"inputs": inputs, "outputs": {name: sha256}}`` atomically; call it last."""
    outputs = {name: file_sha256(os.path.join(folder, name)) for name in sorted(output_names)}
    write_json_atomic(path, {"inputs": inputs, "outputs": outputs})


def plain_value(value, keep=None, strict_json=False):
    """``value`` as plain Python data for a JSON or yaml file: mappings (keys as strings),
    lists, bool, None, int, float and str (subclasses such as ruamel's scalars become their
    base type), 0-d tensors and numpy scalars as numbers, anything else as its ``str``.
    ``keep(v)`` False drops a mapping's entry; ``strict_json`` writes non-finite floats
    (an ``inf`` threshold) as None.

    Example
    -------
    >>> import numpy as np
    >>> plain_value({"a": (1, np.float32(0.5)), 2: None, "f": open})["a"]
    [1, 0.5]
    >>> plain_value({"a": 1, "b": "!x"}, keep=lambda v: not str(v).startswith("!"))
    {'a': 1}
    >>> plain_value([float("inf"), np.int64(3)], strict_json=True)
    [None, 3]
    """
    if isinstance(value, dict):
        return {str(k): plain_value(v, keep, strict_json) for k, v in value.items() if keep is None or keep(v)}
    if isinstance(value, (list, tuple)):
        return [plain_value(v, keep, strict_json) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # tensor or numpy scalar
        value = value.item()
    if isinstance(value, float):
        value = float(value)
        return None if strict_json and not math.isfinite(value) else value
    for kind in (int, str):
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def sidecar_path(path, kind):
    """The file written beside ``path`` to describe it: ``<path without extension>.<kind>.json``.

    Example
    -------
    >>> sidecar_path("data/train_noisy.csv", "noise")
    'data/train_noisy.noise.json'
    """
    return f"{os.path.splitext(path)[0]}.{kind}.json"
