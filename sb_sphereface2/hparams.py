"""Compose a recipe's hyperparameters from a stage file, a model block and a loss block.

A stage file (``hparams/train.yaml``, ``hparams/finetune.yaml``) names its blocks with
top-level keys::

    model: resnet34          # hparams/models/resnet34.yaml
    loss: sphereface2_c      # hparams/losses/sphereface2_c.yaml

and a model block names its features block (``features: kaldi_fbank`` ->
``hparams/features/kaldi_fbank.yaml``), which ``--features=fbank`` switches.

Each block lives once and is ordinary hyperpyyaml that may ``!ref`` anything in the stage
file (``<n_mels>``, ``<num_classes>``...) and vice versa: the texts become one document.
Keys of the stage file override a block's keys of the same name (fine-tuning changes the
schedule of the model block this way), so one command-line override switches a block
(``--model=ecapa_tdnn``, ``--loss=aam``) and a new model x loss combination needs no new
file. A value ending in ``.yaml`` is taken as a path instead. A stage file may start from
another one with ``base: train.yaml`` (a path relative to it): the base is composed first
and the stage's own keys override it.

The composed document has the command-line overrides written into it, so it is
self-contained: plain ``hyperpyyaml.load_hyperpyyaml`` loads it with no overrides, and
every run folder keeps it as ``hyperparams.yaml``. Print it without running anything::

    python -m sb_sphereface2.hparams hparams/train.yaml --loss=aam --batch_size=128

An override naming a key that the composed document does not have is an error that
names the nearest known keys.
"""

import difflib
import io
import os
import sys

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from sb_sphereface2.errors import fail, one_line
from sb_sphereface2.files import plain_value

BLOCK_KEYS = {"model": "models", "loss": "losses", "features": "features"}


class HparamsError(ValueError):
    """The hyperparameters cannot be composed or are wrong: the command line or the stage
    file must change (recipes exit with code 2)."""


class UnknownKeyError(HparamsError):
    """An override names a key that the hyperparameters do not have."""


def ruamel_yaml():
    """The round-trip yaml reader and writer of the hparams files (keeps tags and order)."""
    return ruamel.yaml.YAML()


def parse_overrides(overrides):
    """Overrides as a dict, from SpeechBrain's command-line yaml string or a mapping.

    Example
    -------
    >>> parse_overrides("lr: 0.5\\nmodel: ecapa_tdnn\\n")
    {'lr': 0.5, 'model': 'ecapa_tdnn'}
    >>> parse_overrides("lr: 0.5\\nlr: 0.1\\n")
    Traceback (most recent call last):
    ...
    sb_sphereface2.hparams.HparamsError: command-line overrides: found duplicate key "lr" with value "0.1" (original value: "0.5")
    """
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        try:
            return dict(ruamel_yaml().load(overrides) or {})
        except ruamel.yaml.YAMLError as error:  # a key given twice, a value that is not yaml
            problem = getattr(error, "problem", None) or " ".join(str(error).split())
            raise HparamsError(f"command-line overrides: {problem}") from None
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
    raise HparamsError(f"unknown {kind} {name!r}: no {candidates[-1]} (known: {', '.join(known)})")


def _compose_tree(stage_file, overrides):
    """The merged mapping of a stage file, its base and its blocks (overrides not applied)."""
    if not os.path.isfile(stage_file):
        raise FileNotFoundError(f"hparams file not found: {stage_file}")
    with open(stage_file, encoding="utf-8") as handle:
        try:
            stage = ruamel_yaml().load(handle)
        except ruamel.yaml.YAMLError as error:
            raise HparamsError(f"{stage_file} is not valid yaml: {' '.join(str(error).split())}") from None
    if not isinstance(stage, dict):
        raise HparamsError(f"{stage_file}: expected a mapping of hyperparameters")
    if "base" in stage:
        # A stage's own model/loss keys pick the base's blocks (command-line overrides win).
        base_overrides = {kind: stage[kind] for kind in BLOCK_KEYS if kind in stage}
        base_overrides.update({k: v for k, v in overrides.items() if k in BLOCK_KEYS})
        merged = _compose_tree(os.path.join(os.path.dirname(stage_file), stage.pop("base")), base_overrides)
        for key, value in stage.items():
            merged[key] = value
        return merged
    merged, own_keys = stage, set(stage)
    seen = {}
    for kind in BLOCK_KEYS:  # in order: a model block may name its features block
        if kind not in merged and kind not in overrides:
            continue
        name = overrides.get(kind, merged.get(kind))
        path = _block_path(stage_file, kind, name)
        with open(path, encoding="utf-8") as handle:
            block = ruamel_yaml().load(handle) or {}
        for key, value in block.items():
            if key in own_keys:
                continue  # the stage file overrides the block
            if key in seen:
                raise HparamsError(f"{path} and {seen[key]} both define {key!r}")
            seen[key] = path
            merged[key] = value
    return merged


def _apply_overrides(tree, overrides, where=""):
    """Write ``overrides`` into ``tree``: mappings merge key by key, anything else replaces."""
    for key, value in overrides.items():
        if key not in tree:
            known = [str(k) for k in tree]
            near = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UnknownKeyError(f"unknown hyperparameter '{where}{key}'{hint}")
        if isinstance(value, dict) and isinstance(tree[key], dict) and _tag(tree[key]) is None:
            _apply_overrides(tree[key], value, where=f"{where}{key}.")
        else:
            tree[key] = value


def _tag(value):
    return getattr(getattr(value, "tag", None), "value", None)


def _untagged(value):
    return not _tag(value)


def _flatten_aliases(tree):
    """Replace top-level ``key: !ref <other>`` by ``other``'s value when ``other`` is a plain
    value or itself an alias.

    hyperpyyaml resolves references in document order and does not follow a reference
    to a later key that is itself a reference; composition moves keys around (a stage
    overrides a block's ``margin`` with ``!ref <lmf_margin>``), so such chains are
    flattened here.
    """
    for _ in range(len(tree)):
        changed = False
        for key, value in tree.items():
            target = str(getattr(value, "value", ""))
            if _tag(value) == "!ref" and target.startswith("<") and target.endswith(">"):
                name = target[1:-1]
                if name in tree and _tag(tree[name]) in (None, "!ref"):
                    tree[key] = tree[name]
                    changed = True
        if not changed:
            return


def compose_hparams_yaml(stage_file, overrides=None):
    """One self-contained hyperpyyaml text: a stage file, its base and blocks, overrides applied.

    Arguments
    ---------
    stage_file : str
        Path of the stage file.
    overrides : str or dict, optional
        Overrides (SpeechBrain's command-line yaml string, or a dict). ``model`` and
        ``loss`` pick the blocks; every other key must exist in the composed document.

    Returns
    -------
    str
        The composed document; ``load_hyperpyyaml`` loads it with no overrides.

    Example
    -------
    >>> text = compose_hparams_yaml("hparams/train.yaml", {"loss": "aam", "batch_size": 128})
    >>> "AAMLoss" in text and "SphereFace2Loss" not in text and "batch_size: 128" in text
    True
    """
    overrides = parse_overrides(overrides)
    tree = _compose_tree(stage_file, overrides)
    _apply_overrides(tree, overrides)
    _flatten_aliases(tree)
    out = io.StringIO()
    ruamel_yaml().dump(tree, out)
    return out.getvalue()


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
    text = compose_hparams_yaml(stage_file, {**parse_overrides(overrides), **extra})
    return load_hyperpyyaml(text)


def peek_hparams(stage_file, overrides=None, **extra):
    """The composed hyperparameters with references resolved but nothing instantiated
    (plain values only: paths, numbers, lists). For checks and data preparation, before
    anything is built.

    Example
    -------
    >>> peek_hparams("hparams/train.yaml", {"data_folder": "/data/vox"})["data_folder"]
    '/data/vox'
    """
    tree = _resolved_tree(stage_file, overrides, extra)
    return plain_value(dict(tree), keep=_untagged)


def peek_object(stage_file, key, overrides=None, **extra):
    """The tag and the plain arguments of the object that ``key`` builds (``key: !new:...``),
    references resolved, nothing instantiated: for checks of its values before any work.

    Returns
    -------
    (str, dict)
        The tag (``"!new:sb_sphereface2.SphereFace2Loss"``) and the arguments with plain
        values (tagged arguments left out); ``(None, {})`` when ``key`` holds no object.

    Example
    -------
    >>> tag, args = peek_object("hparams/train.yaml", "loss_settings", {"loss": "sphereface2_a"})
    >>> tag, args["margin_type"], args["scale"]
    ('!new:sb_sphereface2.SphereFace2Settings', 'A', 32.0)
    """
    node = _resolved_tree(stage_file, overrides, extra).get(key)
    tag = _tag(node)
    if tag is None or not isinstance(node, dict):
        return tag, {}
    return tag, plain_value(dict(node), keep=_untagged)


def _resolved_tree(stage_file, overrides, extra):
    overrides = {**parse_overrides(overrides), **extra}
    text = compose_hparams_yaml(stage_file, overrides)
    try:
        return ruamel_yaml().load(resolve_references(io.StringIO(text)))
    except ValueError as error:  # hyperpyyaml: 'The reference "x" is not valid'
        blocks = ", ".join(f"--{kind}={overrides[kind]}" for kind in BLOCK_KEYS if kind in overrides)
        raise HparamsError(f"{stage_file}{' with ' + blocks if blocks else ''}: {one_line(error)} "
                           "(a key this stage refers to is not defined by the chosen blocks)") from None


def main(argv=None):
    """``python -m sb_sphereface2.hparams STAGE.yaml [--key=value ...]``: print the composed
    hyperparameters (what a run with these arguments would use) to stdout."""
    import speechbrain as sb

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m sb_sphereface2.hparams STAGE.yaml [--key=value ...]\n"
              "Print the stage file composed with its model and loss blocks and the overrides.")
        return 0 if argv else 2
    try:
        stage_file, _, overrides = sb.parse_arguments(argv)
        sys.stdout.write(compose_hparams_yaml(stage_file, overrides))
    except (ValueError, FileNotFoundError) as error:
        return fail(error, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
