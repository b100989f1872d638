"""All-or-nothing file writes and content fingerprints for the data preparation steps.

Every output goes to a temporary file beside its destination and is moved into place
with ``os.replace``, so an interrupted run leaves either the old file or the new one,
never a truncated one. A JSON manifest written last records what the outputs were
made from; a later run with the same inputs finds it and skips the work.
"""

import csv
import hashlib
import json
import os
import shutil


def temporary_path(path):
    """A temporary file name beside ``path`` (same folder, so ``os.replace`` is atomic).

    Example
    -------
    >>> temporary_path("/data/train.csv").startswith("/data/.train.csv.tmp")
    True
    """
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.tmp{os.getpid()}")


def write_text_atomic(path, text):
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and ``os.replace``.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> write_text_atomic(path, "hello\\n")
    >>> open(path).read()
    'hello\\n'
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv_atomic(path, header, rows):
    """Write a CSV file (``header`` then ``rows``) atomically.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> write_csv_atomic(path, ["ID", "duration"], [["a", 1.5], ["b,c", 2.0]])
    >>> open(path).read().splitlines()
    ['ID,duration', 'a,1.5', '"b,c",2.0']
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def copy_atomic(source, destination):
    """Copy a file byte for byte, atomically at the destination."""
    tmp = temporary_path(destination)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    write_text_atomic(path, json.dumps({"inputs": inputs, "outputs": outputs}, indent=1) + "\n")
