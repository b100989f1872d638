"""A trained model as a SpeechBrain pretrained-model folder: its layout, its
``hyperparams.yaml``, writing, checking and loading it.

The folder holds ``hyperparams.yaml`` (modules ``compute_features``, ``mean_var_norm``,
``embedding_model``, ``classifier``, optionally ``mean_var_norm_emb``, and a
``pretrainer`` naming no path), ``embedding_model.ckpt``, ``classifier.ckpt``,
``label_encoder.txt`` (and the same text as ``label_encoder.ckpt``, the name the
pretrainer fetches) and, for SphereFace2, ``compute_cost.ckpt`` (the learnt bias, for
fine-tuning). Without paths, each file is fetched as ``<name>.ckpt`` from wherever the
folder is loaded from: a local path, or the model hub after uploading the folder as it is::

    from speechbrain.inference.speaker import SpeakerRecognition
    model = SpeakerRecognition.from_hparams(source="results/.../model")

The pretrainer names :func:`sb_sphereface2.pretrained.checkpoint.load_strictly` as the
loading hook of every file, so SpeechBrain's ``from_hparams`` loads strictly too. Other
folders (a SpeechBrain hub folder) may name no hook: ``from_hparams`` loads them with
SpeechBrain's default, non-strict transfer; :func:`load_model_folder` and
:func:`load_for_inference` load every folder strictly.
"""

import io
import os

import ruamel.yaml
import ruamel.yaml.tag

from sb_sphereface2.files import atomic_folder, copy_atomic, torch_save_atomic, write_text_atomic
from sb_sphereface2.errors import one_line
from sb_sphereface2.pretrained.checkpoint import load_strictly

HPARAMS_FILE = "hyperparams.yaml"
TRAINING_HPARAMS_FILE = "train_hparams.yaml"
LABEL_ENCODER_FILE = "label_encoder.txt"
MEAN_FILE = "mean_var_norm_emb.ckpt"
# Modules and pretrainer loadables, in the order they are written.
MODULE_ORDER = ("compute_features", "mean_var_norm", "embedding_model", "mean_var_norm_emb", "classifier")
LOADABLE_ORDER = ("embedding_model", "mean_var_norm_emb", "classifier", "label_encoder")
STRICT_HOOK = "!name:sb_sphereface2.pretrained.checkpoint.load_strictly"
_GENERATED = ("modules", "pretrainer", "label_encoder", "mean_var_norm_emb")
_PLAIN_HEAD = "!new:sb_sphereface2.SphereFace2Head"
_SHARDED_HEAD = "!new:sb_sphereface2.models.sharded_head.ShardedSphereFace2Head"

_HEADER = """\
# ############################################################################
# Speaker-embedding model trained with sb_sphereface2 (SphereFace2 loss / AAM baseline)
# on SpeechBrain. Load with
#   speechbrain.inference.speaker.SpeakerRecognition.from_hparams(source=<folder or hub id>)
# or speechbrain.inference.classifiers.EncoderClassifier. Score by cosine; the training
# head's bias is not a verification threshold. Every file is fetched as <name>.ckpt from
# the source (no paths) and loaded strictly (a wrong or damaged file is an error).
# ############################################################################
"""


def model_folder_yaml(definitions, with_mean=False):
    """The ``hyperparams.yaml`` of a model folder, from its module definitions.

    Keeps every definition (features, normalisation, embedding model, head, sizes) without
    comments, and writes ``label_encoder``, ``mean_var_norm_emb`` (when ``with_mean``:
    the training mean embedding, no variance scaling), ``modules`` and a ``pretrainer``
    with bare file names and the strict loading hook. Definitions of those generated keys
    in ``definitions`` are replaced.

    Arguments
    ---------
    definitions : str
        Yaml text: a recipe's resolved definitions or another folder's ``hyperparams.yaml``.
    with_mean : bool
        Add ``mean_var_norm_emb`` (its file is ``mean_var_norm_emb.ckpt``).

    Returns
    -------
    str
        The yaml text.

    Example
    -------
    >>> from hyperpyyaml import load_hyperpyyaml
    >>> text = model_folder_yaml("n: 3\\nembedding_model: !new:torch.nn.Linear [!ref <n>, 2]\\n")
    >>> hparams = load_hyperpyyaml(text)
    >>> sorted(hparams["modules"]), sorted(hparams["pretrainer"].custom_hooks)
    (['embedding_model'], ['embedding_model', 'label_encoder'])
    """
    yaml = ruamel.yaml.YAML()
    try:
        tree = yaml.load(definitions) or {}
    except ruamel.yaml.YAMLError as error:
        raise ValueError(f"model definitions are not valid yaml: {one_line(error)}") from error
    if "embedding_model" not in tree:
        raise ValueError("model definitions have no embedding_model")
    body = ruamel.yaml.comments.CommentedMap((k, v) for k, v in tree.items() if k not in _GENERATED)
    text = io.StringIO()
    yaml.dump(body, text)
    kept = [line for line in text.getvalue().splitlines() if not line.lstrip().startswith("#")]
    parts = [_HEADER + "\n".join(kept).rstrip(), ""]
    if with_mean:
        parts += [
            "# Training-set mean embedding: encode_batch(..., normalize=True) subtracts it.",
            "mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization",
            "    norm_type: global",
            "    std_norm: False",
            "",
        ]
    parts += ["label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder", ""]
    present = set(body) | {"label_encoder"} | ({"mean_var_norm_emb"} if with_mean else set())
    loadables = [key for key in LOADABLE_ORDER if key in present]
    parts.append("modules:")
    parts += [f"    {key}: !ref <{key}>" for key in MODULE_ORDER if key in present]
    parts += ["", "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer", "    loadables:"]
    parts += [f"        {key}: !ref <{key}>" for key in loadables]
    parts += ["    # Every key present, none unknown: a wrong or damaged file is a one-line error.",
              "    custom_hooks:"]
    parts += [f"        {key}: {STRICT_HOOK}" for key in loadables]
    parts += ["    # No paths: each loadable is fetched as <name>.ckpt from the source the folder",
              "    # is loaded from (a local path or a model-hub repository).", ""]
    return "\n".join(parts)


def inference_hparams_yaml(stage_file, overrides=None, **extra):
    """``hyperparams.yaml`` of the model folder a recipe's training writes.

    The sizes and the feature, normalisation, embedding-model and head definitions are
    taken from the composed training hyperparameters with every reference resolved; a
    head sharded across processes is saved whole and defined as the plain head.

    Arguments
    ---------
    stage_file : str
        The recipe's stage file (``hparams/train.yaml``...).
    overrides : str or dict
        The overrides the recipe ran with.
    **extra
        More overrides (``num_classes``).

    Returns
    -------
    str
        The yaml text (see :func:`model_folder_yaml`).

    Example
    -------
    >>> from hyperpyyaml import load_hyperpyyaml
    >>> text = inference_hparams_yaml("hparams/train.yaml", {"data_folder": "x", "emb_dim": 8,
    ...     "resnet_channels": [2, 2, 2, 2], "resnet_blocks": [1, 1, 1, 1]}, num_classes=7)
    >>> hparams = load_hyperpyyaml(text)
    >>> type(hparams["embedding_model"]).__name__, tuple(hparams["classifier"].weight.shape)
    ('ResNet', (7, 8))
    """
    from hyperpyyaml import resolve_references

    from sb_sphereface2.hparams import compose_hparams_yaml, parse_overrides

    composed = compose_hparams_yaml(stage_file, {**parse_overrides(overrides), **extra})
    resolved = resolve_references(io.StringIO(composed))
    yaml = ruamel.yaml.YAML()
    tree = yaml.load(resolved)
    keys = ("sample_rate", "n_mels", "emb_dim", "num_classes", "compute_features", "mean_var_norm",
            "embedding_model", "classifier")
    out = ruamel.yaml.comments.CommentedMap((key, tree[key]) for key in keys)
    tag = getattr(out["classifier"], "tag", None)
    if tag is not None and tag.value == _SHARDED_HEAD:
        out["classifier"].yaml_set_ctag(ruamel.yaml.tag.Tag(suffix=_PLAIN_HEAD))
    text = io.StringIO()
    yaml.dump(out, text)
    return model_folder_yaml(text.getvalue())


def write_model_folder(folder, hparams_text, checkpoints, label_encoder_file, extra_files=None, check=None):
    """Write a model folder all at once (``sb_sphereface2.files.atomic_folder``): it
    replaces ``folder`` only when every file is written and ``check`` passed; otherwise
    an existing ``folder`` is left as it was.

    Arguments
    ---------
    folder : str
        Destination.
    hparams_text : str
        ``hyperparams.yaml`` (:func:`model_folder_yaml`).
    checkpoints : dict
        ``{name: state dict or path of a file to copy}``, written as ``<name>.ckpt``.
    label_encoder_file : str
        The training label encoder, copied as ``label_encoder.txt`` and
        ``label_encoder.ckpt``.
    extra_files : dict, optional
        ``{file name: text}`` written beside (model card, training yaml...).
    check : callable, optional
        Called with the temporary folder before it replaces ``folder``.

    Returns
    -------
    str
        The folder (absolute path).

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> enc = os.path.join(tmp, "enc.txt")
    >>> _ = open(enc, "w").write("'a' => 0\\n================\\n'starting_index' => 0\\n")
    >>> out = write_model_folder(os.path.join(tmp, "model"), "x: 1\\n", {"embedding_model": {}}, enc)
    >>> sorted(os.listdir(out))
    ['embedding_model.ckpt', 'hyperparams.yaml', 'label_encoder.ckpt', 'label_encoder.txt']
    """
    folder = os.path.abspath(os.fspath(folder))
    with atomic_folder(folder) as tmp:
        write_text_atomic(os.path.join(tmp, HPARAMS_FILE), hparams_text)
        for name, state in checkpoints.items():
            target = os.path.join(tmp, f"{name}.ckpt")
            if isinstance(state, (str, os.PathLike)):
                copy_atomic(state, target)
            else:
                torch_save_atomic(state, target)
        copy_atomic(label_encoder_file, os.path.join(tmp, LABEL_ENCODER_FILE))
        copy_atomic(label_encoder_file, os.path.join(tmp, "label_encoder.ckpt"))
        for name, text in (extra_files or {}).items():
            write_text_atomic(os.path.join(tmp, name), text)
        if check is not None:
            check(tmp)
    return folder


def pretrainer_files(folder):
    """``{loadable: file name}`` fetched by the pretrainer of ``folder/hyperparams.yaml``
    (read as yaml, nothing built).

    Example
    -------
    >>> pretrainer_files(getfixture("tiny_model_folder"))["label_encoder"]
    'label_encoder.ckpt'
    """
    path = os.path.join(folder, HPARAMS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ruamel.yaml.YAML().load(handle)
    except ruamel.yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid yaml: {one_line(error)}") from error
    pretrainer = tree.get("pretrainer") if isinstance(tree, dict) else None
    if pretrainer is None or "loadables" not in pretrainer:
        raise ValueError(f"{path} has no pretrainer with loadables")
    paths = pretrainer.get("paths") or {}
    files = {}
    for name in pretrainer["loadables"]:
        given = paths.get(name)
        # Hub folders name files with paths (<pretrained_path>/<file>): inside the folder
        # only the file name matters.
        files[str(name)] = os.path.basename(str(getattr(given, "value", given))) if given else f"{name}.ckpt"
    return files


def check_model_folder(folder):
    """Raise a one-line error naming what a model folder lacks or what is empty.

    Checks ``hyperparams.yaml`` (present, valid yaml, a pretrainer with loadables) and
    that every file its pretrainer fetches exists and is not empty. Works for the folders
    of this package and for SpeechBrain hub folders downloaded locally.

    Arguments
    ---------
    folder : str
        The folder.

    Returns
    -------
    dict
        ``{loadable: file name}``.

    Example
    -------
    >>> check_model_folder("/nonexistent/model")
    Traceback (most recent call last):
    ...
    FileNotFoundError: model folder not found: /nonexistent/model
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not os.path.isfile(os.path.join(folder, HPARAMS_FILE)):
        raise FileNotFoundError(f"model folder {folder} is incomplete: missing {HPARAMS_FILE}")
    files = pretrainer_files(folder)
    missing = [f for f in files.values() if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"model folder {folder} is incomplete: missing {', '.join(missing)} "
            f"(fetched by the pretrainer of {HPARAMS_FILE})"
        )
    empty = [os.path.join(folder, f) for f in files.values() if os.path.getsize(os.path.join(folder, f)) == 0]
    if empty:
        raise ValueError(f"{empty[0]} is empty (0 bytes): the model folder is damaged")
    return files


def load_model_folder(folder, overrides=None):
    """The hyperparameters of a model folder with every pretrainer file loaded strictly
    (SpeechBrain's ``Pretrainer`` with :func:`load_strictly` as every hook), in eval mode.

    Arguments
    ---------
    folder : str
        A model folder (this package's or a SpeechBrain hub folder, local).
    overrides : dict, optional
        Overrides for ``hyperparams.yaml``.

    Returns
    -------
    dict
        ``compute_features``, ``mean_var_norm``, ``embedding_model``, ``modules``... as
        ``hyperparams.yaml`` defines them, holding the folder's weights.

    Example
    -------
    >>> load_model_folder(getfixture("tiny_model_folder"))["classifier"].weight.shape
    torch.Size([12, 32])
    """
    from hyperpyyaml import load_hyperpyyaml

    folder = os.path.abspath(os.fspath(folder))
    files = check_model_folder(folder)
    path = os.path.join(folder, HPARAMS_FILE)
    with open(path, encoding="utf-8") as handle:
        try:
            hparams = load_hyperpyyaml(handle, overrides or {})
        except Exception as error:  # unknown class, bad argument...: the yaml's fault
            raise ValueError(f"{path} does not build: {one_line(error)}") from error
    pretrainer = hparams["pretrainer"]
    pretrainer.add_paths({name: os.path.join(folder, file) for name, file in files.items()})
    pretrainer.add_custom_hooks({name: load_strictly for name in pretrainer.loadables})
    pretrainer.collect_files(default_source=folder)
    pretrainer.load_collected()
    for module in hparams.get("modules", {}).values():
        module.eval()
    return hparams


def load_for_inference(folder, cls=None, device="cpu", **kwargs):
    """A SpeechBrain inference object over a local model folder, loaded strictly.

    What ``cls.from_hparams(source=folder)`` gives, but every file loaded with
    :func:`load_strictly` whatever the folder's ``hyperparams.yaml`` says (hub folders
    included) and nothing linked into a savedir.

    Arguments
    ---------
    folder : str
        A local model folder.
    cls : type, optional
        ``SpeakerRecognition`` (default) or ``EncoderClassifier``.
    device : str
        Where the modules go (``run_opts={"device": device}``).
    **kwargs
        More arguments of ``cls`` (``freeze_params``...).

    Returns
    -------
    speechbrain.inference.interfaces.Pretrained
        The model.

    Example
    -------
    >>> import torch
    >>> model = load_for_inference(getfixture("tiny_model_folder"))
    >>> model.encode_batch(torch.zeros(1, 16000)).shape
    torch.Size([1, 1, 32])
    """
    if cls is None:
        from speechbrain.inference.speaker import SpeakerRecognition as cls
    hparams = load_model_folder(folder)
    return cls(modules=hparams["modules"], hparams=hparams, run_opts={"device": device}, **kwargs)
