"""The model card of an exported model: the training configuration recorded in a model
folder, the results table of the scoring stage, and the ``README.md`` built from them."""

import ast
import io
import json
import os

from hyperpyyaml import resolve_references

from sb_sphereface2.errors import one_line
from sb_sphereface2.files import plain_value
from sb_sphereface2.hparams import ruamel_yaml
from sb_sphereface2.pretrained.folder import HPARAMS_FILE, TRAINING_HPARAMS_FILE

__all__ = ["training_hparams_text", "training_config", "results_table", "model_card"]


def training_hparams_text(stage_file, overrides, averaged_epochs, num_classes):
    """``train_hparams.yaml`` of a model folder: the composed recipe hyperparameters, the
    overrides and the number of classes written in, after a comment line recording the
    averaged epochs (read by :func:`training_config`).

    Arguments
    ---------
    stage_file : str
        The recipe's stage file.
    overrides : str or dict
        The overrides the recipe ran with.
    averaged_epochs : list of int
        The epochs averaged into the model.
    num_classes : int
        The number of training classes.

    Returns
    -------
    str
        The text.

    Example
    -------
    >>> import tempfile
    >>> text = training_hparams_text("hparams/train.yaml", {"lr": 0.5, "data_folder": "x"}, [4, 3], 7)
    >>> text.splitlines()[0]
    '# averaged epochs: [3, 4]'
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "train_hparams.yaml"), "w").write(text)
    >>> config = training_config(folder)
    >>> config["lr"], config["num_classes"], config["averaged_epochs"]
    (0.5, 7, [3, 4])
    """
    from sb_sphereface2.hparams import compose_hparams_yaml, parse_overrides

    epochs = sorted(int(epoch) for epoch in averaged_epochs)
    composed = compose_hparams_yaml(stage_file, {**parse_overrides(overrides), "num_classes": num_classes})
    return f"# averaged epochs: {epochs}\n" + composed


def training_config(folder):
    """The plain training settings recorded in ``train_hparams.yaml`` of a model folder.

    ``train_hparams.yaml`` is the composed recipe text after a comment
    ``# averaged epochs: [...]`` (:func:`training_hparams_text`). References are resolved,
    objects (``!new:``) are left out.

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
    ...     "# averaged epochs: [3, 4]\\nlr: 0.1\\nrate: !ref <lr>\\n")
    >>> training_config(folder)
    {'lr': 0.1, 'rate': 0.1, 'averaged_epochs': [3, 4]}
    """
    path = os.path.join(folder, TRAINING_HPARAMS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    overrides, epochs = {}, None
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# averaged epochs:"):
            epochs = ast.literal_eval(line[len("# averaged epochs:"):].strip())
    hparams_path = os.path.join(folder, HPARAMS_FILE)
    if "num_classes" not in overrides and os.path.isfile(hparams_path):
        with open(hparams_path, encoding="utf-8") as handle:
            overrides["num_classes"] = (ruamel_yaml().load(handle) or {}).get("num_classes", 2)
    # Keys the text declares !PLACEHOLDER and nobody overrode: fill to let it resolve.
    for key in ("data_folder", "pretrained_model", "init_encoder_from", "num_classes"):
        if f"{key}: !PLACEHOLDER" in text and key not in overrides:
            overrides[key] = None
    try:
        resolved = resolve_references(io.StringIO(text), {k: plain_value(v) for k, v in overrides.items()})
        tree = ruamel_yaml().load(resolved)
    except Exception as error:
        raise ValueError(f"{path}: cannot resolve the training settings: {one_line(error, 300)}") from error
    config = {}
    for key, value in tree.items():
        if key == "modules" or getattr(getattr(value, "tag", None), "value", None):
            continue  # objects to build
        config[key] = plain_value(value)
    if epochs is not None:
        config["averaged_epochs"] = list(epochs)
    return config


def _read_results(results_json):
    with open(results_json, encoding="utf-8") as handle:
        try:
            document = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{results_json} is not valid JSON: {one_line(error)}") from error
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
    >>> from sb_sphereface2.scoring.metrics import evaluate
    >>> from sb_sphereface2.scoring.reports import write_results
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
