"""Compose a recipe's hyperparameters from a stage file, a model block and a loss block.

A stage file (``hparams/train.yaml``, ``hparams/finetune.yaml``) names its blocks with two
top-level keys::

    model: resnet34          # hparams/models/resnet34.yaml
    loss: sphereface2_c      # hparams/losses/sphereface2_c.yaml

Each block lives once and is written as ordinary hyperpyyaml that may ``!ref`` anything in
the stage file (``<n_mels>``, ``<num_classes>``...) and vice versa: the three texts become one
document before hyperpyyaml loads it. Keys of the stage file override a block's keys of the
same name (fine-tuning changes the schedule of the model block this way). So one command-line
override switches a block (``--model=ecapa_tdnn``, ``--loss=aam``) and a new model x loss
combination needs no new file. A value ending in ``.yaml`` is taken as a path instead.

A stage file may also start from another one with ``base: train.yaml`` (a path relative to
it): the base is composed first (its blocks chosen by the stage's own model/loss keys, if
any) and the stage's own keys override it (fine-tuning is
training with a few keys changed).
"""

import io
import os

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

BLOCK_KEYS = {"model": "models", "loss": "losses"}


def _yaml():
    return ruamel.yaml.YAML()


def _as_mapping(overrides):
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        return dict(_yaml().load(overrides) or {})
    return dict(overrides)


def _block_path(stage_file, kind, name):
    if str(name).endswith(".yaml"):
        candidates = [name, os.path.join(os.path.dirname(stage_file), name)]
    else:
        candidates = [os.path.join(os.path.dirname(stage_file), BLOCK_KEYS[kind], f"{name}.yaml")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    folder = os.path.join(os.path.dirname(stage_file), BLOCK_KEYS[kind])
    known = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
    raise ValueError(f"unknown {kind} {name!r}: no {candidates[-1]} (known: {', '.join(known)})")


def compose_hparams_yaml(stage_file, overrides=None):
    """One hyperpyyaml text from a stage file, its base and the blocks it names.

    Arguments
    ---------
    stage_file : str
        Path of the stage file.
    overrides : str or dict, optional
        Command-line overrides (SpeechBrain's yaml string or a dict); only ``model`` and
        ``loss`` are read here, to pick the blocks.

    Returns
    -------
    str
        The composed document (not yet loaded).

    Example
    -------
    >>> text = compose_hparams_yaml("hparams/train.yaml", {"loss": "aam"})
    >>> "AAMLoss" in text and "SphereFace2Loss" not in text
    True
    """
    merged = _compose(stage_file, _as_mapping(overrides))
    _flatten_aliases(merged)
    out = io.StringIO()
    _yaml().dump(merged, out)
    return out.getvalue()


def _flatten_aliases(tree):
    """Replace top-level ``key: !ref <other>`` by ``other``'s plain value.

    hyperpyyaml resolves references in document order and does not follow a reference
    to a later key that is itself a reference; composition moves keys around (a stage
    overrides a block's ``margin`` with ``!ref <lmf_margin>``), so such chains are
    flattened here.
    """
    for _ in range(len(tree)):
        changed = False
        for key, value in tree.items():
            tag = getattr(getattr(value, "tag", None), "value", None)
            target = str(getattr(value, "value", ""))
            if tag == "!ref" and target.startswith("<") and target.endswith(">"):
                name = target[1:-1]
                if name in tree and getattr(getattr(tree[name], "tag", None), "value", None) in (None, "!ref"):
                    tree[key] = tree[name]
                    changed = True
        if not changed:
            return


def _compose(stage_file, overrides):
    if not os.path.isfile(stage_file):
        raise FileNotFoundError(f"hparams file not found: {stage_file}")
    with open(stage_file, encoding="utf-8") as handle:
        stage = _yaml().load(handle)
    if "base" in stage:
        # A stage's own model/loss keys pick the base's blocks (command-line overrides win).
        base_overrides = {kind: stage[kind] for kind in BLOCK_KEYS if kind in stage}
        base_overrides.update(overrides)
        merged = _compose(os.path.join(os.path.dirname(stage_file), stage.pop("base")), base_overrides)
        for key, value in stage.items():
            merged[key] = value
        return merged
    merged = stage
    seen = {}
    for kind in BLOCK_KEYS:
        if kind not in stage:
            continue
        name = overrides.get(kind, stage[kind])
        path = _block_path(stage_file, kind, name)
        with open(path, encoding="utf-8") as handle:
            block = _yaml().load(handle) or {}
        for key, value in block.items():
            if key in stage:
                continue  # the stage file overrides the block
            if key in seen:
                raise ValueError(f"{path} and {seen[key]} both define {key!r}")
            seen[key] = path
            merged[key] = value
    return merged


def _merge_overrides(overrides, extra):
    merged = _as_mapping(overrides)
    merged.update(extra or {})
    return merged


def load_recipe_hparams(stage_file, overrides=None, **extra):
    """Compose and load a stage file with hyperpyyaml (objects instantiated).

    Arguments
    ---------
    stage_file : str
        Path of the stage file.
    overrides : str or dict, optional
        Command-line overrides.
    **extra
        More overrides, e.g. ``num_classes`` found from the prepared data.

    Returns
    -------
    dict
        The loaded hyperparameters.

    Example
    -------
    >>> import tempfile
    >>> hp = load_recipe_hparams("hparams/train.yaml", {"model": "ecapa_tdnn", "ecapa_channels": 16,
    ...     "data_folder": "/tmp/data", "output_folder": tempfile.mkdtemp()}, num_classes=5)
    >>> type(hp["embedding_model"]).__name__, type(hp["compute_cost"]).__name__
    ('ECAPA_TDNN', 'SphereFace2Loss')
    """
    text = compose_hparams_yaml(stage_file, overrides)
    return load_hyperpyyaml(text, _merge_overrides(overrides, extra))


def peek_hparams(stage_file, overrides=None, **extra):
    """The composed hyperparameters with references resolved but nothing instantiated
    (plain values only: paths, numbers, lists). For data preparation, before the number
    of classes is known.

    Example
    -------
    >>> peek_hparams("hparams/train.yaml", {"data_folder": "/data/vox"})["data_folder"]
    '/data/vox'
    """
    extra.setdefault("num_classes", 2)
    text = compose_hparams_yaml(stage_file, overrides)
    resolved = resolve_references(io.StringIO(text), _merge_overrides(overrides, extra))
    tree = _yaml().load(resolved)
    plain = {}
    for key, value in tree.items():
        if getattr(value, "tag", None) is not None and getattr(value.tag, "value", None):
            continue  # an object to build: not needed here
        plain[key] = _to_plain(value)
    return plain


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value
