"""Reading checkpoint files and loading them strictly, with one-line errors naming the file.

SpeechBrain's default parameter transfer (``torch_parameter_transfer``) loads a state dict
with ``strict=False`` and only logs a warning per missing key: a wrong or damaged file
becomes a randomly initialised model. :func:`load_strictly` is the loading hook of every
model folder this package writes (``Pretrainer(custom_hooks=...)`` in its
``hyperparams.yaml``) and of every loading path of the package: every key present, no
unknown key, same shapes, or a ``CheckpointError`` whose message is one line naming the
file and the first offending keys.
"""

import os
import re

import torch

from sb_sphereface2.errors import one_line

__all__ = ["CheckpointError", "read_checkpoint", "load_strictly"]

# How many offending keys an error message names.
_SHOWN_KEYS = 3


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit what it is loaded into."""


def _named(path):
    """The file a path stands for (SpeechBrain links fetched files into its savedir)."""
    return os.path.realpath(os.fspath(path))


def read_checkpoint(path):
    """The object stored in a checkpoint file (``torch.load`` on the CPU, with SpeechBrain's
    key-patching hooks), or a one-line error naming the file.

    Arguments
    ---------
    path : str
        The checkpoint file.

    Returns
    -------
    object
        Usually a state dict.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "embedding_model.ckpt")
    >>> _ = open(path, "wb").close()
    >>> read_checkpoint(path)
    Traceback (most recent call last):
    ...
    sb_sphereface2.pretrained.checkpoint.CheckpointError: .../embedding_model.ckpt is empty (0 bytes): not a checkpoint
    """
    from speechbrain.utils.checkpoints import torch_patched_state_dict_load

    name = _named(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"checkpoint not found: {name}")
    if os.path.getsize(name) == 0:
        raise CheckpointError(f"{name} is empty (0 bytes): not a checkpoint")
    try:
        return torch_patched_state_dict_load(name, "cpu")
    except Exception as error:  # torch raises several types for a damaged file
        first = one_line(error, 400).split(". ")[0]
        raise CheckpointError(f"{name} is not a readable checkpoint (truncated or damaged?): {first[:160]}") from error


def _keys(keys):
    keys = list(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (", ..." if len(keys) > _SHOWN_KEYS else "")
    return f"{len(keys)} {'key' if len(keys) == 1 else 'keys'} ({shown})"


def _mismatch(path, target, missing, unexpected):
    parts = []
    if missing:
        parts.append(f"missing {_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected {_keys(unexpected)}")
    return CheckpointError(f"{_named(path)} does not fit the {target} it is loaded into: {'; '.join(parts)}")


def _load_module(module, state, path):
    if not isinstance(state, dict):
        raise CheckpointError(f"{_named(path)} holds a {type(state).__name__}, not a state dict")
    try:
        result = module.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as error:  # shape mismatches
        detail = one_line(error, 1000).replace("Error(s) in loading state_dict for ", "")
        detail = re.sub(r"torch\.Size\((\[[^\]]*\])\)", r"\1", detail.split(": ", 1)[-1])
        raise CheckpointError(
            f"{_named(path)} does not fit the {type(module).__name__} it is loaded into: {detail[:240]}"
        ) from error
    if result.missing_keys or result.unexpected_keys:
        raise _mismatch(path, type(module).__name__, result.missing_keys, result.unexpected_keys)


def _load_statistics(normalization, state, path):
    """InputNormalization keeps its statistics outside its state dict (its own hook)."""
    expected = set(normalization._statistics_dict())
    if not isinstance(state, dict) or set(state) != expected:
        found = set(state) if isinstance(state, dict) else set()
        raise _mismatch(path, "InputNormalization statistics", sorted(expected - found), sorted(found - expected))
    normalization._load_statistics_dict(state)


def _load_label_encoder(encoder, path):
    name = _named(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"label encoder not found: {name}")
    try:
        encoder.load(name)
    except Exception as error:  # CategoricalEncoder raises KeyError/SyntaxError on bad text
        raise CheckpointError(f"{name} is not a label encoder file: {one_line(error, 120)}") from error
    if len(encoder) == 0:
        raise CheckpointError(f"{name} is not a label encoder file: no labels")


def load_strictly(obj, path, end_of_epoch=False):
    """Load the file ``path`` into ``obj``: every parameter present, no unknown one.

    The signature of SpeechBrain's loading hooks, so that ``hyperparams.yaml`` can name it
    in ``Pretrainer(custom_hooks=...)``. Handles ``torch.nn.Module`` (state dict, strict),
    ``InputNormalization`` (its statistics) and ``CategoricalEncoder`` (a label file).

    Arguments
    ---------
    obj : torch.nn.Module or speechbrain.dataio.encoder.CategoricalEncoder
        What to load into.
    path : str
        The file.
    end_of_epoch : bool
        Unused (part of SpeechBrain's load-hook signature).

    Raises
    ------
    CheckpointError
        One line naming the file and the first missing / unexpected keys (or why it
        cannot be read).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "classifier.ckpt")
    >>> torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    >>> load_strictly(torch.nn.Linear(4, 3), path)
    >>> load_strictly(torch.nn.Bilinear(4, 4, 3), path)
    Traceback (most recent call last):
    ...
    sb_sphereface2.pretrained.checkpoint.CheckpointError: .../classifier.ckpt does not fit the Bilinear it is loaded into: size mismatch for weight: ...
    >>> load_strictly(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    Traceback (most recent call last):
    ...
    sb_sphereface2.pretrained.checkpoint.CheckpointError: .../classifier.ckpt does not fit the Sequential it is loaded into: missing 2 keys (0.weight, 0.bias); unexpected 2 keys (weight, bias)
    """
    del end_of_epoch
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.processing.features import InputNormalization

    if isinstance(obj, CategoricalEncoder):
        _load_label_encoder(obj, path)
        return
    state = read_checkpoint(path)
    if isinstance(obj, InputNormalization):
        _load_statistics(obj, state, path)
    elif isinstance(obj, torch.nn.Module):
        _load_module(obj, state, path)
    else:
        raise TypeError(f"load_strictly cannot load {type(obj).__name__} (from {_named(path)})")
