"""Initialise a recipe's modules from a pretrained model (SpeechBrain's ``Pretrainer``,
every file loaded strictly).

- :func:`initialise_from_model_folder`: stage 2 (large-margin fine-tuning) starts from
  stage 1's model folder: embedding model, head and loss state (the SphereFace2 bias).
- :func:`initialise_encoder_from`: fine-tuning a pretrained speaker model on new
  speakers: only its embedding model, from a local folder or a model-hub id (e.g.
  ``speechbrain/spkrec-ecapa-voxceleb``); the head is new.
"""

import os
import re

from sb_sphereface2.errors import one_line
from sb_sphereface2.pretrained.checkpoint import CheckpointError, load_strictly
from sb_sphereface2.pretrained.folder import HPARAMS_FILE, pretrainer_files

__all__ = ["initialise_from_pretrained", "initialise_from_model_folder", "initialise_encoder_from"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _has_state(module):
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def initialise_from_pretrained(modules, source, savedir=None):
    """Load ``<name>.ckpt`` of ``source`` into each of ``modules``, strictly.

    A ``Pretrainer`` collects the files (a local folder is read in place; a hub id is
    fetched into ``savedir``) and loads them with
    :func:`sb_sphereface2.pretrained.checkpoint.load_strictly`.

    Arguments
    ---------
    modules : dict
        ``{name: module}``; the file of ``name`` is ``<name>.ckpt`` (or, in a local folder
        with a ``hyperparams.yaml``, the file its pretrainer names).
    source : str
        A local folder or a model-hub id (``owner/name``).
    savedir : str, optional
        Where files fetched from the hub are linked.

    Returns
    -------
    dict
        ``{name: the file loaded}``.

    Example
    -------
    >>> import torch
    >>> initialise_from_pretrained({"embedding_model": torch.nn.Linear(2, 2)}, "/nonexistent/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: pretrained model not found: /nonexistent/folder is not a folder (nor a model-hub id)
    """
    from speechbrain.utils.parameter_transfer import Pretrainer

    source = os.fspath(source)
    pretrainer = Pretrainer(loadables=dict(modules), custom_hooks={name: load_strictly for name in modules})
    if os.path.isdir(source):
        listed = pretrainer_files(source) if os.path.isfile(os.path.join(source, HPARAMS_FILE)) else {}
        files = {name: listed.get(name, f"{name}.ckpt") for name in modules}
        missing = [f for f in files.values() if not os.path.isfile(os.path.join(source, f))]
        if missing:
            raise FileNotFoundError(f"pretrained model {source} has no {', '.join(missing)}")
        pretrainer.add_paths({name: os.path.join(os.path.abspath(source), f) for name, f in files.items()})
    elif not _HUB_ID.match(source) or os.path.exists(source):
        raise FileNotFoundError(f"pretrained model not found: {source} is not a folder (nor a model-hub id)")
    else:
        pretrainer.set_collect_in(savedir)
    try:
        paths = pretrainer.collect_files(default_source=source)
    except (OSError, ValueError) as error:  # hub errors: not found, offline...
        raise FileNotFoundError(
            f"cannot fetch {', '.join(f'{n}.ckpt' for n in modules)} from the model hub {source}: "
            f"{one_line(error, 160)}"
        ) from error
    pretrainer.load_collected()
    return {name: str(path) for name, path in paths.items()}


def initialise_from_model_folder(hparams, folder):
    """Stage 2 from stage 1: load the embedding model, the head and the loss state of a
    model folder into the recipe's modules, strictly.

    A module without parameters or buffers (a loss without a learnt bias) is skipped; a
    head sharded across processes takes its rows of the saved full head.

    Arguments
    ---------
    hparams : dict
        The recipe's hyperparameters (``embedding_model``, ``classifier``, ``compute_cost``).
    folder : str
        Stage 1's model folder.

    Returns
    -------
    dict
        ``{name: the file loaded}``.

    Example
    -------
    >>> import torch
    >>> from hyperpyyaml import load_hyperpyyaml
    >>> text = open(getfixture("tiny_model_folder") / "hyperparams.yaml").read()
    >>> hparams = load_hyperpyyaml(text)
    >>> hparams["compute_cost"] = torch.nn.Identity()  # a loss without state: skipped
    >>> sorted(initialise_from_model_folder(hparams, getfixture("tiny_model_folder")))
    ['classifier', 'embedding_model']
    """
    modules = {name: hparams[name] for name in ("embedding_model", "classifier", "compute_cost")
               if name in hparams and _has_state(hparams[name])}
    return initialise_from_pretrained(modules, folder)


def initialise_encoder_from(embedding_model, source, savedir=None):
    """Load only the embedding model of a pretrained speaker model, strictly.

    For fine-tuning a pretrained encoder (e.g. ``speechbrain/spkrec-ecapa-voxceleb``, or a
    model exported by this package) on a new speaker set with a new head: nothing else of
    the source (head, label encoder, normalisation) is used.

    Arguments
    ---------
    embedding_model : torch.nn.Module
        The recipe's embedding model (same architecture as the source's).
    source : str
        A local folder holding ``embedding_model.ckpt``, or a model-hub id.
    savedir : str, optional
        Where a hub download is linked.

    Returns
    -------
    str
        The checkpoint file that was loaded.

    Example
    -------
    >>> import torch
    >>> initialise_encoder_from(torch.nn.Linear(2, 2), getfixture("tiny_model_folder"))
    Traceback (most recent call last):
    ...
    sb_sphereface2.pretrained.checkpoint.CheckpointError: .../embedding_model.ckpt does not fit the Linear it is loaded into: missing 2 keys (weight, bias); unexpected ... keys (...); choose the matching --model and its sizes ...
    """
    try:
        paths = initialise_from_pretrained({"embedding_model": embedding_model}, source, savedir)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}; choose the matching --model and its sizes (for speechbrain/spkrec-ecapa-voxceleb: "
            "--model=ecapa_tdnn --ecapa_channels=1024 --emb_dim=192 --n_mels=80)"
        ) from error
    return paths["embedding_model"]
