"""Embeddings files: one ``.npz`` holding utterance IDs, embeddings and, optionally, speakers,
durations and the model that made them.

Arrays: ``ids`` (unicode strings [N]), ``embeddings`` (float32 [N, D]) and optionally
``speakers`` (unicode strings [N]), ``durations`` (float64 seconds [N]) and ``model`` (a
JSON string ``{"folder", "embedding_model_sha256"}``). IDs follow
:func:`sb_sphereface2.data.trials.utterance_id` (path relative to the dataset root, no
extension), so trial lists index them directly. Files are written atomically and read
without pickle.
"""

import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from sb_sphereface2.files import atomic_write

__all__ = ["Embeddings", "save_embeddings", "read_embeddings", "load_embeddings"]


@dataclass
class Embeddings:
    """The content of an embeddings file.

    Arguments
    ---------
    ids : list of str
        Utterance IDs [N].
    embeddings : numpy.ndarray
        float32 [N, D].
    speakers : list of str or None
        Speaker of each utterance [N].
    durations : numpy.ndarray or None
        Duration in seconds of each embedded signal [N].
    model : dict or None
        ``{"folder", "embedding_model_sha256"}`` of the model that made the embeddings.
    path : str
        The file.
    """

    ids: list
    embeddings: np.ndarray
    speakers: list = None
    durations: np.ndarray = None
    model: dict = None
    path: str = None


def _validate(path, ids, embeddings, speakers, durations=None):
    if durations is not None and (durations.shape != (len(ids),) or not np.all(durations > 0)):
        raise ValueError(f"{path}: durations must be {len(ids)} positive numbers, one per ID")
    if embeddings.ndim != 2:
        raise ValueError(f"{path}: embeddings must be [N, D], got shape {embeddings.shape}")
    if len(ids) != embeddings.shape[0]:
        raise ValueError(f"{path}: {len(ids)} IDs but {embeddings.shape[0]} embeddings")
    if speakers is not None and len(speakers) != len(ids):
        raise ValueError(f"{path}: {len(ids)} IDs but {len(speakers)} speaker labels")
    unique, counts = np.unique(np.asarray(ids, dtype=str), return_counts=True)
    if unique.size != len(ids):
        duplicated = unique[counts > 1]
        raise ValueError(
            f"{path}: {duplicated.size} duplicate utterance IDs, e.g. {str(duplicated[0])!r}"
        )
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"{path}: {int(bad.sum())} embeddings contain NaN or inf, "
            f"first is row {first} ({ids[first]!r})"
        )


def save_embeddings(path, ids, embeddings, speakers=None, durations=None, model=None):
    """Write an embeddings file atomically (a temporary file renamed into place).

    Arguments
    ---------
    path : str or os.PathLike
        Destination ``.npz`` file.
    ids : sequence of str
        Utterance IDs [N], distinct.
    embeddings : numpy.ndarray or torch.Tensor
        Embeddings [N, D] (stored as float32; [N, 1, D] is squeezed).
    speakers : sequence of str, optional
        Speaker of each utterance [N] (needed for a speaker-mean cohort).
    durations : sequence of float, optional
        Duration in seconds of each embedded signal [N] (a quality measure).
    model : dict, optional
        ``{"folder", "embedding_model_sha256"}``: the model that made the embeddings.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.npz")
    >>> save_embeddings(path, ["a/x/1", "b/y/1"], np.eye(2), speakers=["a", "b"])
    >>> ids, emb, spk = load_embeddings(path)
    >>> ids, emb.dtype, spk
    (['a/x/1', 'b/y/1'], dtype('float32'), ['a', 'b'])
    """
    path = os.fspath(path)
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim == 3 and embeddings.shape[1] == 1:
        embeddings = embeddings[:, 0]
    ids = [str(i) for i in ids]
    speakers = None if speakers is None else [str(s) for s in speakers]
    durations = None if durations is None else np.asarray(durations, dtype=np.float64)
    _validate(path, ids, embeddings, speakers, durations)
    arrays = {"ids": np.asarray(ids, dtype=str), "embeddings": embeddings}
    if speakers is not None:
        arrays["speakers"] = np.asarray(speakers, dtype=str)
    if durations is not None:
        arrays["durations"] = durations
    if model is not None:
        arrays["model"] = np.asarray(json.dumps(model, sort_keys=True))
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


def read_embeddings(path):
    """Read an embeddings file written by :func:`save_embeddings`, with everything it holds.

    Arguments
    ---------
    path : str or os.PathLike
        The ``.npz`` file.

    Returns
    -------
    Embeddings

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a readable ``.npz``, lacks ``ids``/``embeddings``, or has
        duplicate IDs, non-finite rows or bad durations (the message names the file).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.npz")
    >>> save_embeddings(path, ["a/1", "b/1"], np.eye(2), durations=[3.5, 4.0],
    ...                 model={"folder": "/m", "embedding_model_sha256": "00"})
    >>> e = read_embeddings(path)
    >>> e.durations.tolist(), e.model, e.speakers
    ([3.5, 4.0], {'embedding_model_sha256': '00', 'folder': '/m'}, None)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"embeddings file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not an .npz archive (a plain .npy array?)")
        with archive:
            missing = {"ids", "embeddings"} - set(archive.files)
            if missing:
                raise ValueError(
                    f"{path}: not an embeddings file, missing arrays {sorted(missing)} "
                    f"(has {sorted(archive.files)})"
                )
            ids = [str(i) for i in archive["ids"].tolist()]
            embeddings = np.asarray(archive["embeddings"], dtype=np.float32)
            speakers = archive["speakers"].tolist() if "speakers" in archive.files else None
            durations = (np.asarray(archive["durations"], dtype=np.float64)
                         if "durations" in archive.files else None)
            model = json.loads(str(archive["model"])) if "model" in archive.files else None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path}: corrupt or unreadable embeddings file ({error})") from error
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(f"{path}: corrupt or unreadable embeddings file ({error})") from error
    if speakers is not None:
        speakers = [str(s) for s in speakers]
    _validate(path, ids, embeddings, speakers, durations)
    return Embeddings(ids, embeddings, speakers, durations, model, path)


def load_embeddings(path):
    """Read the IDs, embeddings and speakers of a file written by :func:`save_embeddings`.

    Arguments
    ---------
    path : str or os.PathLike
        The ``.npz`` file.

    Returns
    -------
    ids : list of str
        Utterance IDs [N].
    embeddings : numpy.ndarray
        float32 [N, D].
    speakers : list of str or None
        Speaker labels [N], if the file has them.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a readable ``.npz``, lacks ``ids``/``embeddings``, or has
        duplicate IDs or non-finite rows (the message names the file).

    Example
    -------
    >>> load_embeddings("/nonexistent/emb.npz")
    Traceback (most recent call last):
    ...
    FileNotFoundError: embeddings file not found: /nonexistent/emb.npz
    """
    content = read_embeddings(path)
    return content.ids, content.embeddings, content.speakers
