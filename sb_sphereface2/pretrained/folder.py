"""A trained model as a SpeechBrain pretrained-model folder.

The folder holds ``hyperparams.yaml`` (modules ``compute_features``, ``mean_var_norm``,
``embedding_model``, ``classifier`` and a ``pretrainer`` naming the files by bare file
name), ``embedding_model.ckpt``, ``classifier.ckpt``, ``label_encoder.txt`` and, for
SphereFace2, ``compute_cost.ckpt`` (the learnt bias, for fine-tuning). Bare file names
make the same folder load from a local path or, uploaded as it is, from the model hub:

    from speechbrain.inference.speaker import SpeakerRecognition
    model = SpeakerRecognition.from_hparams(source="results/.../model")
"""

import io
import os
import shutil

import ruamel.yaml
import ruamel.yaml.tag
import torch
from hyperpyyaml import resolve_references

from sb_sphereface2.hparams import compose_hparams_yaml, parse_overrides

CHECKPOINT_FILES = {
    "embedding_model": "embedding_model.ckpt",
    "classifier": "classifier.ckpt",
}
REQUIRED_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "classifier.ckpt", "label_encoder.ckpt")

_HEADER = """\
# ############################################################################
# Speaker-embedding model trained with sb_sphereface2 (SphereFace2 / AAM baseline).
# Load with speechbrain.inference.speaker.SpeakerRecognition.from_hparams(source=<folder>)
# or EncoderClassifier. Score by cosine; the training head is not a verification threshold.
# ############################################################################
"""


def inference_hparams_yaml(stage_file, overrides=None, **extra):
    """``hyperparams.yaml`` text for the inference classes, from a recipe's stage file.

    The feature, normalisation, embedding-model and head definitions are taken from
    the composed training hyperparameters with every reference resolved.

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
        The yaml text.

    Example
    -------
    >>> text = inference_hparams_yaml("hparams/train.yaml", {"data_folder": "x"}, num_classes=7)
    >>> "embedding_model: !new:sb_sphereface2.models.resnet.ResNet" in text
    True
    """
    composed = compose_hparams_yaml(stage_file, {**parse_overrides(overrides), **extra})
    resolved = resolve_references(io.StringIO(composed))
    yaml = ruamel.yaml.YAML()
    tree = yaml.load(resolved)
    out = {
        "sample_rate": tree["sample_rate"],
        "n_mels": tree["n_mels"],
        "emb_dim": tree["emb_dim"],
        "num_classes": tree["num_classes"],
    }
    for key in ("compute_features", "mean_var_norm", "embedding_model", "classifier"):
        out[key] = tree[key]
    # A head sharded across DDP processes is saved whole: inference uses the plain head.
    tag = getattr(out["classifier"], "tag", None)
    if tag is not None and tag.value == "!new:sb_sphereface2.losses.sharded.ShardedSphereFace2Head":
        out["classifier"].yaml_set_ctag(ruamel.yaml.tag.Tag(suffix="!new:sb_sphereface2.SphereFace2Head"))
    text = io.StringIO()
    yaml.dump(out, text)
    modules = "\n".join(
        f"    {key}: !ref <{key}>"
        for key in ("compute_features", "mean_var_norm", "embedding_model", "classifier")
    )
    return (
        _HEADER
        + text.getvalue()
        + "\nlabel_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder\n"
        + f"\nmodules:\n{modules}\n"
        + "\npretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
        + "    loadables:\n"
        + "        embedding_model: !ref <embedding_model>\n"
        + "        classifier: !ref <classifier>\n"
        + "        label_encoder: !ref <label_encoder>\n"
        + "    # No paths: each loadable is fetched as <name>.ckpt from the source the\n"
        + "    # folder is loaded from (a local path or a model-hub repository).\n"
    )


def write_model_folder(folder, hparams_text, state_dicts, label_encoder_file, extra_files=None):
    """Write a pretrained-model folder atomically (a temporary folder renamed into place).

    Arguments
    ---------
    folder : str
        Destination (replaced if it exists).
    hparams_text : str
        ``hyperparams.yaml`` (see :func:`inference_hparams_yaml`).
    state_dicts : dict
        ``{"embedding_model": ..., "classifier": ..., "compute_cost": ...}`` saved as
        ``<name>.ckpt``.
    label_encoder_file : str
        The training label encoder, copied as ``label_encoder.txt``.
    extra_files : dict, optional
        ``{file name: text}`` written beside (model card, training yaml...).

    Returns
    -------
    str
        The folder.

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
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{folder}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "hyperparams.yaml"), "w", encoding="utf-8") as handle:
        handle.write(hparams_text)
    for name, state in state_dicts.items():
        torch.save(state, os.path.join(tmp, f"{name}.ckpt"))
    # label_encoder.ckpt is what the pretrainer fetches; label_encoder.txt the same text
    # under SpeechBrain's usual name.
    shutil.copyfile(label_encoder_file, os.path.join(tmp, "label_encoder.txt"))
    shutil.copyfile(label_encoder_file, os.path.join(tmp, "label_encoder.ckpt"))
    for name, text in (extra_files or {}).items():
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
            handle.write(text)
    old = f"{folder}.old{os.getpid()}"
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def check_model_folder(folder):
    """Raise a one-line error naming what a model folder lacks.

    Example
    -------
    >>> check_model_folder("/nonexistent/model")
    Traceback (most recent call last):
    ...
    FileNotFoundError: model folder not found: /nonexistent/model
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"model folder {folder} is incomplete: missing {', '.join(missing)}")
