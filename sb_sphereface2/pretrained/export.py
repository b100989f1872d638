"""Export a trained model folder as a SpeechBrain pretrained model, ready for the model hub.

The recipe's ``model_folder`` (written by ``recipes/VoxCeleb/train.py``) already loads with
SpeechBrain's inference classes. :func:`export_model` turns it into a folder to publish:

- ``hyperparams.yaml``: features, embedding model, head and, when a training mean is
  given, ``mean_var_norm_emb`` (a global ``InputNormalization`` holding the training-set
  mean embedding, no variance scaling) so that ``encode_batch(..., normalize=True)``
  returns the mean-subtracted embeddings the recipe scores with. The pretrainer names
  every file by its bare name (``<name>.ckpt``), so the same folder loads from a local
  path and, uploaded as it is, from the hub. No absolute path is written.
- ``embedding_model.ckpt``, ``classifier.ckpt``, ``mean_var_norm_emb.ckpt``,
  ``label_encoder.ckpt`` and ``label_encoder.txt`` (the same text), ``compute_cost.ckpt``
  (the SphereFace2 bias, for fine-tuning) and ``train_hparams.yaml``.
- ``README.md``: a model card with the training configuration, the results table of the
  scoring stage, usage and credits.

The export is written to a temporary folder, loaded with both ``SpeakerRecognition``
and ``EncoderClassifier``, checked against the source model's own embedding of a probe
signal, and only then renamed into place.

Scores: ``SpeakerRecognition.verify_files``/``verify_batch`` take the cosine of the raw
embeddings (SpeechBrain calls ``encode_batch(normalize=False)`` there), which equals the
recipe's scoring with mean subtraction off. The cosine of
``encode_batch(wavs, normalize=True)`` embeddings equals the recipe's default scoring
(training mean subtracted).
"""

import ast
import datetime
import io
import json
import os
import shutil
import tempfile
import warnings

import numpy as np
import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references


__all__ = [
    "MEAN_FILE",
    "check_pretrained_folder",
    "load_model_modules",
    "mean_embedding",
    "training_config",
    "results_table",
    "model_card",
    "export_hparams_yaml",
    "export_model",
    "load_pretrained",
    "init_encoder_from",
]

MEAN_FILE = "mean_var_norm_emb.ckpt"
MODULE_ORDER = ("compute_features", "mean_var_norm", "embedding_model", "mean_var_norm_emb", "classifier")
LOADABLE_ORDER = ("embedding_model", "mean_var_norm_emb", "classifier", "label_encoder")
SOURCE_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "label_encoder.txt")
OPTIONAL_COPIES = ("classifier.ckpt", "compute_cost.ckpt", "train_hparams.yaml")

_HEADER = """\
# ############################################################################
# Speaker-embedding model trained with sb_sphereface2 (SphereFace2 loss / AAM baseline)
# on SpeechBrain. Load with
#   speechbrain.inference.speaker.SpeakerRecognition.from_hparams(source=<folder or hub id>)
# or speechbrain.inference.classifiers.EncoderClassifier. Score by cosine; the training
# head's bias is not a verification threshold. Every file is fetched as <name>.ckpt from
# the source (no paths), so this folder loads offline as it is and from the hub unchanged.
# ############################################################################
"""


def _yaml():
    return ruamel.yaml.YAML()


def _one_line(error):
    return " ".join(str(error).split())


def _load_checkpoint(path):
    """``torch.load`` with a one-line error naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu")
    except Exception as error:  # torch raises several types for damaged files
        raise ValueError(f"{path} is not a readable checkpoint: {_one_line(error)}") from error


def _pretrainer_files(folder):
    """The files the pretrainer of ``folder/hyperparams.yaml`` fetches: ``{loadable: file}``."""
    path = os.path.join(folder, "hyperparams.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            tree = _yaml().load(handle)
    except ruamel.yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid yaml: {_one_line(error)}") from error
    pretrainer = tree.get("pretrainer") if isinstance(tree, dict) else None
    if pretrainer is None or "loadables" not in pretrainer:
        raise ValueError(f"{path} has no pretrainer with loadables")
    paths = pretrainer.get("paths") or {}
    files = {}
    for name in pretrainer["loadables"]:
        given = paths.get(name)
        # A hub folder names its files with paths (often <pretrained_path>/<file>);
        # only the file name matters inside the folder.
        files[name] = os.path.basename(str(getattr(given, "value", given))) if given else f"{name}.ckpt"
    return files


def check_pretrained_folder(folder):
    """Raise one clear error naming what a pretrained folder lacks or what is damaged.

    Checks ``hyperparams.yaml`` (present, valid, a pretrainer with loadables) and that
    every file its pretrainer fetches exists and is not empty.

    Arguments
    ---------
    folder : str
        A pretrained-model folder (ours, or a SpeechBrain hub folder downloaded locally).

    Returns
    -------
    dict
        ``{loadable: file name}``.

    Example
    -------
    >>> check_pretrained_folder("/nonexistent/model")
    Traceback (most recent call last):
    ...
    FileNotFoundError: pretrained model folder not found: /nonexistent/model
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"pretrained model folder not found: {folder}")
    if not os.path.isfile(os.path.join(folder, "hyperparams.yaml")):
        raise FileNotFoundError(f"pretrained model folder {folder} is incomplete: missing hyperparams.yaml")
    files = _pretrainer_files(folder)
    missing = [f for f in files.values() if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"pretrained model folder {folder} is incomplete: missing {', '.join(missing)} "
            "(listed by the pretrainer of hyperparams.yaml)"
        )
    empty = [f for f in files.values() if os.path.getsize(os.path.join(folder, f)) == 0]
    if empty:
        raise ValueError(f"pretrained model folder {folder} is damaged: empty {', '.join(empty)}")
    return files


def load_model_modules(folder, overrides=None):
    """The feature, normalisation and embedding modules of a model folder, loaded directly
    with hyperpyyaml and ``torch.load`` (no SpeechBrain fetching), in eval mode.

    Arguments
    ---------
    folder : str
        A model folder with ``hyperparams.yaml`` and ``embedding_model.ckpt``.
    overrides : dict, optional
        Overrides for ``hyperparams.yaml``.

    Returns
    -------
    dict
        The loaded hyperparameters (``compute_features``, ``mean_var_norm``,
        ``embedding_model``...), ``embedding_model`` holding the checkpoint's weights.
    """
    path = os.path.join(folder, "hyperparams.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model folder {folder} is incomplete: missing hyperparams.yaml")
    with open(path, encoding="utf-8") as handle:
        hparams = load_hyperpyyaml(handle, overrides or {})
    state = _load_checkpoint(os.path.join(folder, "embedding_model.ckpt"))
    try:
        hparams["embedding_model"].load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{os.path.join(folder, 'embedding_model.ckpt')} does not fit the embedding_model of "
            f"{path}: {_one_line(error)[:300]}"
        ) from error
    for name in ("compute_features", "mean_var_norm", "embedding_model"):
        hparams[name].eval()
    return hparams


def mean_embedding(folder, train_embeddings=None, train_csv=None, max_utterances=None, progress=True):
    """The training-set mean embedding, float64 [D], as the scoring stage subtracts it.

    Arguments
    ---------
    folder : str
        The model folder (used to embed ``train_csv``).
    train_embeddings : str, optional
        A training embeddings ``.npz`` (:mod:`sb_sphereface2.scoring.embeddings_io`): its mean is
        exactly the one the scorer (``python -m sb_sphereface2.scoring --train-embeddings``)
        subtracts.
    train_csv : str, optional
        Otherwise a data CSV (``train.csv`` of the recipe's data folder) whose whole
        utterances are embedded one at a time.
    max_utterances : int, optional
        Embed only the first N rows of ``train_csv``.
    progress : bool
        tqdm progress bar while embedding.

    Returns
    -------
    numpy.ndarray
        The mean, float64 [D].
    """
    if (train_embeddings is None) == (train_csv is None):
        raise ValueError("give exactly one of train_embeddings (.npz) or train_csv")
    if train_embeddings is not None:
        from sb_sphereface2.scoring.embeddings_io import load_embeddings

        _, embeddings, _ = load_embeddings(train_embeddings)
        return embeddings.astype(np.float64).mean(axis=0)
    from sb_sphereface2.data.dataio import utterance_dataset
    from sb_sphereface2.scoring.embed import embed_dataset

    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"training CSV not found: {train_csv}")
    hparams = load_model_modules(folder)
    dataset = utterance_dataset(train_csv, hparams.get("sample_rate", 16000))
    if max_utterances is not None:
        dataset = [dataset[i] for i in range(min(max_utterances, len(dataset)))]
    _, embeddings = embed_dataset(
        dataset, hparams["compute_features"], hparams["mean_var_norm"], hparams["embedding_model"],
        progress=progress, desc="training mean embedding",
    )
    return embeddings.astype(np.float64).mean(axis=0)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def training_config(folder):
    """The plain training settings recorded in ``train_hparams.yaml`` of a model folder.

    ``train_hparams.yaml`` is the composed recipe text with two leading comments
    (``# averaged epochs: [...]`` and ``# overrides: '...'``); the overrides are applied
    and references resolved, objects (``!new:``) are left out.

    Arguments
    ---------
    folder : str
        The model folder.

    Returns
    -------
    dict
        Plain values (``model``, ``loss``, ``margin``, ``number_of_epochs``...) plus
        ``averaged_epochs`` when recorded; empty without ``train_hparams.yaml``.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "train_hparams.yaml"), "w").write(
    ...     "# averaged epochs: [3, 4]\\n# overrides: 'lr: 0.5'\\nlr: 0.1\\nrate: !ref <lr>\\n")
    >>> training_config(folder)
    {'lr': 0.5, 'rate': 0.5, 'averaged_epochs': [3, 4]}
    """
    path = os.path.join(folder, "train_hparams.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    overrides, epochs = {}, None
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# overrides:"):
            raw = ast.literal_eval(line[len("# overrides:"):].strip())
            overrides = dict(_yaml().load(raw) or {}) if isinstance(raw, str) else dict(raw or {})
        elif line.startswith("# averaged epochs:"):
            epochs = ast.literal_eval(line[len("# averaged epochs:"):].strip())
    hparams_path = os.path.join(folder, "hyperparams.yaml")
    if "num_classes" not in overrides and os.path.isfile(hparams_path):
        with open(hparams_path, encoding="utf-8") as handle:
            overrides["num_classes"] = (_yaml().load(handle) or {}).get("num_classes", 2)
    # Keys the text declares !PLACEHOLDER and nobody overrode: fill to let it resolve.
    for key in ("data_folder", "pretrained_model", "init_encoder_from", "num_classes"):
        if f"{key}: !PLACEHOLDER" in text and key not in overrides:
            overrides[key] = None
    try:
        resolved = resolve_references(io.StringIO(text), {k: _plain(v) for k, v in overrides.items()})
        tree = _yaml().load(resolved)
    except Exception as error:
        raise ValueError(f"{path}: cannot resolve the training settings: {_one_line(error)[:300]}") from error
    config = {}
    for key, value in tree.items():
        if key == "modules" or getattr(getattr(value, "tag", None), "value", None):
            continue  # objects to build
        config[key] = _plain(value)
    if epochs is not None:
        config["averaged_epochs"] = list(epochs)
    return config


def _read_results(results_json):
    with open(results_json, encoding="utf-8") as handle:
        try:
            document = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{results_json} is not valid JSON: {_one_line(error)}") from error
    results = document.get("results", document) if isinstance(document, dict) else None
    if not isinstance(results, dict) or not results or not all(
        isinstance(v, dict) and "eer_percent" in v for v in results.values()
    ):
        raise ValueError(
            f"{results_json}: expected {{list_name: {{eer_percent, min_dcf_0.01, ...}}}} "
            "as written by sb_sphereface2.scoring.trial_scores.write_results"
        )
    settings = document.get("settings", {}) if "results" in document else {}
    return results, settings


def results_table(results_json):
    """The markdown results table of a scoring stage's ``results.json``.

    Arguments
    ---------
    results_json : str
        ``results.json`` of :func:`sb_sphereface2.scoring.trial_scores.write_results` (or a plain
        ``{list_name: metrics}`` JSON).

    Returns
    -------
    str
        Markdown: a table (list, trials, EER %, minDCF at each prior) and the scoring
        settings when recorded.

    Example
    -------
    >>> import tempfile
    >>> from sb_sphereface2.scoring.trial_scores import evaluate, write_results
    >>> out = tempfile.mkdtemp()
    >>> _ = write_results(out, {"toy": evaluate([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1], p_targets=(0.01,))})
    >>> print(results_table(os.path.join(out, "results.json")).splitlines()[2])
    | toy | 4 | 50.000 | 0.5000 |
    """
    results, settings = _read_results(results_json)
    priors = sorted(
        {k[len("min_dcf_"):] for r in results.values() for k in r
         if k.startswith("min_dcf_") and not k.endswith("_threshold")},
        key=float,
    )
    header = "| trial list | trials | EER (%) | " + " | ".join(f"minDCF (p={p})" for p in priors) + " |"
    rule = "|---|---:|---:|" + "".join("---:|" for _ in priors)
    rows = []
    for name, values in results.items():
        cells = [name, f"{values.get('trials', '')}", f"{values['eer_percent']:.3f}"]
        cells += [f"{values[f'min_dcf_{p}']:.4f}" if values.get(f"min_dcf_{p}") is not None else "" for p in priors]
        rows.append("| " + " | ".join(cells) + " |")
    lines = [header, rule, *rows]
    if settings:
        lines += ["", "Scoring: " + "; ".join(f"{k}: {v}" for k, v in settings.items() if k != "embeddings")]
    return "\n".join(lines)


_CONFIG_ROWS = (
    ("model", "model block"),
    ("loss", "loss block"),
    ("margin", "margin (final)"),
    ("lmf_margin", "large-margin fine-tuning margin"),
    ("emb_dim", "embedding dimension"),
    ("n_mels", "fbank channels"),
    ("crop_seconds", "training crops (s)"),
    ("number_of_epochs", "epochs"),
    ("batch_size", "batch size (per process)"),
    ("lr", "learning rate"),
    ("speed_perturb", "speed perturbation (new speakers)"),
    ("augment", "MUSAN/RIR augmentation"),
    ("num_classes", "training classes"),
    ("averaged_epochs", "averaged epoch checkpoints"),
    ("pretrained_model", "fine-tuned from (stage 1)"),
    ("init_encoder_from", "encoder initialised from"),
    ("data_folder", "training data"),
    ("trial_lists", "trial lists"),
    ("seed", "seed"),
)


def _shown(key, value):
    if key in ("data_folder", "pretrained_model", "init_encoder_from") and isinstance(value, str):
        if os.path.isabs(value) or os.path.exists(value):  # a local path: not on the hub
            return os.path.basename(os.path.normpath(value)) or value
        return value  # a hub id
    if key == "trial_lists" and isinstance(value, list):
        return ", ".join(os.path.basename(str(v)) for v in value) or "none"
    return value


def model_card(name, config, table=None, has_mean=False, needs_plugin=True):
    """The ``README.md`` model card (Hugging Face front matter + markdown).

    Arguments
    ---------
    name : str
        Model name (title of the card).
    config : dict
        :func:`training_config` of the model.
    table : str, optional
        :func:`results_table` of the scoring stage.
    has_mean : bool
        Whether ``mean_var_norm_emb`` (training mean) is included.
    needs_plugin : bool
        Whether ``hyperparams.yaml`` builds ``sb_sphereface2`` classes.

    Returns
    -------
    str
        The card.

    Example
    -------
    >>> card = model_card("toy", {"model": "resnet34", "loss": "sphereface2_c", "margin": 0.2})
    >>> card.startswith("---") and "| loss block | sphereface2_c |" in card
    True
    """
    rows = [f"| {label} | {_shown(key, config[key])} |" for key, label in _CONFIG_ROWS
            if key in config and config[key] not in (None, "", [])]
    loss = str(config.get("loss", ""))
    tags = ["speechbrain", "speaker-verification", "speaker-recognition", "embeddings", "pytorch"]
    if loss.startswith("sphereface2"):
        tags.append("sphereface2")
    lines = ["---", "library_name: speechbrain", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    lines += [f"# {name}", ""]
    lines += [
        f"Speaker-embedding model ({config.get('model', 'see hyperparams.yaml')}) trained with "
        f"the {loss or 'SphereFace2'} loss with sb_sphereface2, a SpeechBrain plugin. "
        "Embeddings are compared by cosine similarity.",
        "",
        "## Training configuration",
        "",
        "| setting | value |",
        "|---|---|",
        *rows,
        "",
        "The complete training hyperparameters are in `train_hparams.yaml`.",
        "",
        "## Results",
        "",
    ]
    if table:
        lines += [table, "", "EER and minDCF (C_miss = C_fa = 1, normalised), cosine scoring.", ""]
    else:
        lines += ["No scoring results were given at export time.", ""]
    install = "pip install speechbrain==1.1.2"
    if needs_plugin:
        install += "\n# and the sb_sphereface2 package: hyperparams.yaml builds its classes"
    normalize = (
        "# Embeddings with the training-set mean subtracted (the recipe's scoring space):\n"
        "emb = model.encode_batch(signal, normalize=True)"
        if has_mean else None
    )
    lines += [
        "## Usage",
        "",
        "```bash",
        install,
        "```",
        "",
        "```python",
        "from speechbrain.inference.speaker import SpeakerRecognition",
        "",
        'model = SpeakerRecognition.from_hparams(source="<this folder or hub id>")',
        'score, same = model.verify_files("enrol.wav", "test.wav")  # cosine, threshold 0.25',
        "",
        "from speechbrain.dataio import audio_io",
        'signal, rate = audio_io.load("utterance.wav")  # 16 kHz mono',
        "emb = model.encode_batch(signal)  # [batch, 1, dim]",
        normalize,
        "```",
        "",
        "`verify_files` scores the cosine of the raw embeddings. The 0.25 threshold is "
        "SpeechBrain's default, not calibrated for this model: pick a threshold on your own "
        "trials (the EER threshold of the scoring stage is in its `results.json`).",
        "",
        "Files: `hyperparams.yaml`, `embedding_model.ckpt`, `classifier.ckpt` (cosine head "
        "over the training speakers), "
        + ("`mean_var_norm_emb.ckpt` (training mean embedding), " if has_mean else "")
        + "`label_encoder.txt`/`.ckpt`, `compute_cost.ckpt` (loss state, for fine-tuning) and "
        "`train_hparams.yaml`.",
        "",
        "## Credits",
        "",
        "- Y. Wen, W. Liu, A. Weller, B. Raj, R. Singh: SphereFace2: Binary Classification is "
        "All You Need for Deep Face Recognition, ICLR 2022.",
        "- B. Han, Z. Chen, Y. Qian: Exploring Binary Classification Loss for Speaker "
        "Verification, ICASSP 2023.",
        "- M. Ravanelli et al.: SpeechBrain: A General-Purpose Speech Toolkit, 2021.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def export_hparams_yaml(source_text, with_mean):
    """``hyperparams.yaml`` of the export from the model folder's one.

    Keeps every definition (features, normalisation, embedding model, head...), drops
    comments, adds ``mean_var_norm_emb`` when ``with_mean``, and writes ``modules`` and a
    ``pretrainer`` with bare file names.

    Arguments
    ---------
    source_text : str
        The model folder's ``hyperparams.yaml``.
    with_mean : bool
        Add the global embedding normalisation (training mean, no variance scaling).

    Returns
    -------
    str
        The yaml text.

    Example
    -------
    >>> text = export_hparams_yaml("x: 1\\nembedding_model: !new:torch.nn.Identity\\n", True)
    >>> "    mean_var_norm_emb: !ref <mean_var_norm_emb>" in text
    True
    """
    yaml = _yaml()
    tree = yaml.load(source_text) or {}
    for key in ("modules", "pretrainer"):
        tree.pop(key, None)
    if "embedding_model" not in tree:
        raise ValueError("hyperparams.yaml has no embedding_model")
    body = ruamel.yaml.comments.CommentedMap()
    for key, value in tree.items():
        body[key] = value
    text = io.StringIO()
    yaml.dump(body, text)
    kept = [line for line in text.getvalue().splitlines() if not line.lstrip().startswith("#")]
    parts = [_HEADER, "\n".join(kept), ""]
    if with_mean:
        parts += [
            "# Training-set mean embedding: encode_batch(..., normalize=True) subtracts it.",
            "mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization",
            "    norm_type: global",
            "    std_norm: False",
            "",
        ]
    if "label_encoder" not in tree:
        parts += ["label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder", ""]
    present = set(tree) | ({"mean_var_norm_emb"} if with_mean else set()) | {"label_encoder"}
    parts.append("modules:")
    parts += [f"    {key}: !ref <{key}>" for key in MODULE_ORDER if key in present]
    parts += [
        "",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
    ]
    parts += [f"        {key}: !ref <{key}>" for key in LOADABLE_ORDER if key in present]
    parts += [
        "    # No paths: each loadable is fetched as <name>.ckpt from the source the folder",
        "    # is loaded from (a local path or a model-hub repository).",
        "",
    ]
    return "\n".join(parts)


def _probe_signal(seconds=3.0, sample_rate=16000):
    """A deterministic, speech-like probe: a few harmonics with a slow pitch glide + noise."""
    generator = torch.Generator().manual_seed(1234)
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    f0 = 120 + 30 * torch.sin(2 * torch.pi * 0.5 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / sample_rate
    wave = sum(torch.sin(k * phase) / k for k in range(1, 8))
    wave = wave + 0.05 * torch.randn(t.shape, generator=generator, dtype=torch.float64)
    return (0.1 * wave).float()


def load_pretrained(folder, cls=None, savedir=None, **kwargs):
    """Load a pretrained folder with a SpeechBrain inference class, after checking it.

    Arguments
    ---------
    folder : str
        A local pretrained folder.
    cls : type, optional
        ``SpeakerRecognition`` (default) or ``EncoderClassifier``.
    savedir : str, optional
        Where SpeechBrain links the fetched files (``None``: used in place).
    **kwargs
        Passed to ``from_hparams`` (``run_opts={"device": "cuda"}``...).

    Returns
    -------
    speechbrain.inference.interfaces.Pretrained
        The loaded model.
    """
    if cls is None:
        from speechbrain.inference.speaker import SpeakerRecognition as cls
    folder = os.path.abspath(os.fspath(folder))
    files = check_pretrained_folder(folder)
    for name, file in files.items():
        if file.endswith(".ckpt") and name != "label_encoder":
            _load_checkpoint(os.path.join(folder, file))  # damaged files: one clear error
    return cls.from_hparams(source=folder, savedir=savedir, **kwargs)


def _verify(out_folder, reference, mean, atol):
    """Load the export with both inference classes and compare with the reference modules."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.inference.speaker import SpeakerRecognition

    from sb_sphereface2.scoring.embed import embed_waveform

    probe = _probe_signal(sample_rate=int(reference.get("sample_rate", 16000)))
    expected = embed_waveform(
        probe, reference["compute_features"], reference["mean_var_norm"], reference["embedding_model"]
    )
    savedir = tempfile.mkdtemp(prefix="sb_sphereface2_verify_")
    try:
        for cls in (SpeakerRecognition, EncoderClassifier):
            model = load_pretrained(out_folder, cls, savedir=os.path.join(savedir, cls.__name__))
            with torch.no_grad():
                got = model.encode_batch(probe[None]).reshape(-1)
                error = (got - expected).abs().max().item()
                if error > atol:
                    raise RuntimeError(
                        f"export check failed: {cls.__name__}.encode_batch differs from the "
                        f"model folder's embedding by {error:.3g} (> {atol:g})"
                    )
                if mean is not None:
                    normalized = model.encode_batch(probe[None], normalize=True)
                    if normalized.numel() != expected.numel():
                        raise ValueError(
                            f"the embedding model returns shape {tuple(model.encode_batch(probe[None]).shape)}; "
                            "mean_var_norm_emb needs [batch, 1, dim] embeddings: export without a training mean"
                        )
                    diff = normalized.reshape(-1) - (expected - torch.as_tensor(mean, dtype=torch.float32))
                    if diff.abs().max().item() > atol:
                        raise RuntimeError("export check failed: encode_batch(normalize=True) does not subtract the training mean")
            del model
    finally:
        shutil.rmtree(savedir, ignore_errors=True)


def export_model(
    model_folder,
    out_folder,
    results_json=None,
    train_embeddings=None,
    train_csv=None,
    mean=None,
    name=None,
    verify=True,
    atol=1e-5,
    progress=True,
):
    """Export a recipe model folder as a pretrained folder ready for the model hub.

    Arguments
    ---------
    model_folder : str
        The recipe's ``model_folder`` (``results/<model>_<loss>/<seed>/model``).
    out_folder : str
        Destination (replaced atomically if it exists; must not be ``model_folder``).
    results_json : str, optional
        The scoring stage's ``results.json``: its table goes into the model card.
    train_embeddings : str, optional
        Training embeddings ``.npz``: its mean becomes ``mean_var_norm_emb``.
    train_csv : str, optional
        Or a training CSV embedded here to get that mean.
    mean : array-like, optional
        Or the mean embedding [D] itself.
    name : str, optional
        Model name for the card (default: the output folder's name).
    verify : bool
        Load the export with ``SpeakerRecognition`` and ``EncoderClassifier`` and compare
        its embedding of a probe signal with the model folder's (before publishing it).
    atol : float
        Tolerance of that comparison.
    progress : bool
        Progress bar when embedding ``train_csv``.

    Returns
    -------
    str
        The exported folder (absolute path).

    Example
    -------
    >>> export_model("/nonexistent/model", "/tmp/out")
    Traceback (most recent call last):
    ...
    FileNotFoundError: model folder not found: /nonexistent/model
    """
    model_folder = os.path.abspath(os.fspath(model_folder))
    out_folder = os.path.abspath(os.fspath(out_folder))
    if not os.path.isdir(model_folder):
        raise FileNotFoundError(f"model folder not found: {model_folder}")
    missing = [f for f in SOURCE_FILES if not os.path.isfile(os.path.join(model_folder, f))]
    if missing:
        raise FileNotFoundError(f"model folder {model_folder} is incomplete: missing {', '.join(missing)}")
    if out_folder == model_folder:
        raise ValueError("out_folder must differ from model_folder")
    if sum(x is not None for x in (train_embeddings, train_csv, mean)) > 1:
        raise ValueError("give at most one of train_embeddings, train_csv, mean")
    if results_json is not None and not os.path.isfile(results_json):
        raise FileNotFoundError(f"results file not found: {results_json}")

    reference = load_model_modules(model_folder)
    if train_embeddings is not None or train_csv is not None:
        mean = mean_embedding(model_folder, train_embeddings, train_csv, progress=progress)
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        dim = int(reference.get("emb_dim", mean.size))
        if mean.size != dim or not np.isfinite(mean).all():
            raise ValueError(f"training mean embedding must be {dim} finite values, got {mean.size}")
    try:
        config = training_config(model_folder)
    except ValueError as error:  # the card is still useful without it
        warnings.warn(f"model card without the training configuration: {error}")
        config = {}
    table = results_table(results_json) if results_json else None

    with open(os.path.join(model_folder, "hyperparams.yaml"), encoding="utf-8") as handle:
        source_text = handle.read()
    hparams_text = export_hparams_yaml(source_text, with_mean=mean is not None)

    os.makedirs(os.path.dirname(out_folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_folder)}.", dir=os.path.dirname(out_folder))
    try:
        with open(os.path.join(tmp, "hyperparams.yaml"), "w", encoding="utf-8") as handle:
            handle.write(hparams_text)
        for file in ("embedding_model.ckpt", "label_encoder.txt") + OPTIONAL_COPIES:
            source = os.path.join(model_folder, file)
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(tmp, file))
        # The pretrainer fetches <name>.ckpt; label_encoder.txt is SpeechBrain's usual name.
        shutil.copyfile(os.path.join(model_folder, "label_encoder.txt"), os.path.join(tmp, "label_encoder.ckpt"))
        if "classifier" in reference and not os.path.isfile(os.path.join(tmp, "classifier.ckpt")):
            raise FileNotFoundError(f"model folder {model_folder} is incomplete: missing classifier.ckpt")
        if mean is not None:
            torch.save(
                {"count": 1, "glob_mean": torch.tensor(mean, dtype=torch.float32),
                 "glob_std": torch.ones(mean.size)},
                os.path.join(tmp, MEAN_FILE),
            )
        card = model_card(
            name or os.path.basename(out_folder), config, table, has_mean=mean is not None,
            needs_plugin="sb_sphereface2" in hparams_text,
        )
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(card + f"\n_Exported {stamp}._\n")
        if verify:
            _verify(tmp, reference, mean, atol)
        os.chmod(tmp, 0o755)
        old = None
        if os.path.exists(out_folder):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_folder)}.old.", dir=os.path.dirname(out_folder))
            os.rmdir(old)
            os.replace(out_folder, old)
        os.replace(tmp, out_folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return out_folder


def init_encoder_from(embedding_model, source, savedir=None):
    """Load only the embedding model of a pretrained speaker model into ``embedding_model``.

    For fine-tuning a pretrained encoder (e.g. ``speechbrain/spkrec-ecapa-voxceleb``, or an
    exported sb_sphereface2 model) on a new speaker set with a new head: nothing else of the
    source (head, label encoder, normalisation) is used. Loading is strict.

    Arguments
    ---------
    embedding_model : torch.nn.Module
        The recipe's embedding model (same architecture as the source's).
    source : str
        A local pretrained folder holding ``embedding_model.ckpt``, or a model-hub id
        (fetched with SpeechBrain's ``fetch`` into ``savedir``).
    savedir : str, optional
        Where a hub download goes.

    Returns
    -------
    str
        The checkpoint file that was loaded.

    Example
    -------
    >>> init_encoder_from(torch.nn.Linear(2, 2), "/nonexistent/folder/")
    Traceback (most recent call last):
    ...
    FileNotFoundError: init_encoder_from: pretrained folder not found: /nonexistent/folder/
    """
    source = os.fspath(source)
    looks_local = os.path.isabs(source) or source.startswith(".") or source.endswith(os.sep) or os.path.exists(source)
    if os.path.isdir(source):
        path = os.path.join(source, "embedding_model.ckpt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"init_encoder_from: {source} has no embedding_model.ckpt")
    elif looks_local:
        raise FileNotFoundError(f"init_encoder_from: pretrained folder not found: {source}")
    else:
        from speechbrain.utils.fetching import fetch

        path = str(fetch("embedding_model.ckpt", source=source, savedir=savedir))
    state = _load_checkpoint(path)
    try:
        embedding_model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"init_encoder_from: {path} does not fit this recipe's embedding_model "
            f"({_one_line(error)[:240]}); choose the matching --model and its sizes "
            "(for speechbrain/spkrec-ecapa-voxceleb: --model=ecapa_tdnn --ecapa_channels=1024 "
            "--emb_dim=192 --n_mels=80)"
        ) from error
    return path
