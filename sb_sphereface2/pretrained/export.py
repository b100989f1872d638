"""Export a trained model folder as a SpeechBrain pretrained model, ready for the model hub.

The recipe's ``model_folder`` (written by ``recipes/VoxCeleb/train.py``) already loads with
SpeechBrain's inference classes. :func:`export_model` turns it into a folder to publish:

- ``hyperparams.yaml`` (:func:`sb_sphereface2.pretrained.folder.model_folder_yaml`):
  features, embedding model, head and, when a training mean is given,
  ``mean_var_norm_emb`` (a global ``InputNormalization`` holding the training-set mean
  embedding, no variance scaling) so that ``encode_batch(..., normalize=True)`` returns
  the mean-subtracted embeddings the recipe scores with. No path is written, and every
  file is loaded strictly.
- the checkpoints (``embedding_model``, ``classifier``, ``mean_var_norm_emb``,
  ``compute_cost``: the SphereFace2 bias, for fine-tuning), ``label_encoder.txt`` and
  ``train_hparams.yaml``.
- ``README.md``: a model card (:mod:`sb_sphereface2.pretrained.card`).

The source folder is loaded strictly first (a wrong or damaged file stops the export with
one line naming it). The export is written into a temporary folder, loaded with both
``SpeakerRecognition`` and ``EncoderClassifier``, checked against the source model's
embedding of a probe signal, and only then put in place: a failed export leaves an
earlier one at the destination as it was.

Scores: ``SpeakerRecognition.verify_files``/``verify_batch`` take the cosine of the raw
embeddings (SpeechBrain calls ``encode_batch(normalize=False)`` there), which equals the
recipe's scoring with mean subtraction off. The cosine of
``encode_batch(wavs, normalize=True)`` embeddings equals the recipe's default scoring
(training mean subtracted).
"""

import datetime
import functools
import os
import shutil
import tempfile
import warnings

import numpy as np
import torch

from sb_sphereface2.pretrained.card import model_card, results_table, training_config
from sb_sphereface2.pretrained.folder import (
    HPARAMS_FILE,
    TRAINING_HPARAMS_FILE,
    check_model_folder,
    load_model_folder,
    model_folder_yaml,
    write_model_folder,
)

__all__ = ["mean_embedding", "export_model"]


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
        utterances are embedded by the extractor (:mod:`sb_sphereface2.scoring.extract`).
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
    from sb_sphereface2.data.utterance_sources import csv_utterances
    from sb_sphereface2.scoring.extract import embedder_of_folder, extract

    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"training CSV not found: {train_csv}")
    embed, rate = embedder_of_folder(folder)
    utterances = csv_utterances(train_csv, rate)
    if max_utterances is not None:
        utterances = utterances[:max_utterances]
    result = extract(utterances, embed, rate, exact=True, progress=progress, desc="training mean embedding")
    return result.embeddings.astype(np.float64).mean(axis=0)


def _probe_signal(seconds=3.0, sample_rate=16000):
    """A deterministic, speech-like probe: a few harmonics with a slow pitch glide + noise."""
    generator = torch.Generator().manual_seed(1234)
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    f0 = 120 + 30 * torch.sin(2 * torch.pi * 0.5 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / sample_rate
    wave = sum(torch.sin(k * phase) / k for k in range(1, 8))
    wave = wave + 0.05 * torch.randn(t.shape, generator=generator, dtype=torch.float64)
    return (0.1 * wave).float()


def _verify(folder, reference, mean, atol):
    """Load ``folder`` with both inference classes (``from_hparams``, as users will) and
    compare its embeddings of a probe signal with the reference modules'."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.inference.speaker import SpeakerRecognition

    from sb_sphereface2.pretrained.pipeline import EmbeddingPipeline

    probe = _probe_signal(sample_rate=int(reference.get("sample_rate", 16000)))
    pipeline = EmbeddingPipeline(reference["compute_features"], reference["mean_var_norm"], reference["embedding_model"])
    with torch.no_grad():
        expected = pipeline(probe[None], torch.ones(1))[0]
    savedir = tempfile.mkdtemp(prefix="sb_sphereface2_verify_")
    try:
        for cls in (SpeakerRecognition, EncoderClassifier):
            model = cls.from_hparams(source=folder, savedir=os.path.join(savedir, cls.__name__))
            with torch.no_grad():
                raw = model.encode_batch(probe[None])
                error = (raw.reshape(-1) - expected).abs().max().item()
                if error > atol:
                    raise RuntimeError(
                        f"export check failed: {cls.__name__}.encode_batch differs from the "
                        f"model folder's embedding by {error:.3g} (> {atol:g})"
                    )
                if mean is None:
                    continue
                normalized = model.encode_batch(probe[None], normalize=True)
                if normalized.numel() != expected.numel():
                    raise ValueError(
                        f"the embedding model returns shape {tuple(raw.shape)}; mean_var_norm_emb "
                        "needs [batch, 1, dim] embeddings: export without a training mean"
                    )
                diff = normalized.reshape(-1) - (expected - torch.as_tensor(mean, dtype=torch.float32))
                if diff.abs().max().item() > atol:
                    raise RuntimeError("export check failed: encode_batch(normalize=True) does not subtract the training mean")
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
        Destination (replaced only once the export is complete and verified; must not be
        ``model_folder``).
    results_json : str, optional
        The scoring stage's ``results.json``: its table goes into the model card.
    train_embeddings : str, optional
        Training embeddings ``.npz``: its mean becomes ``mean_var_norm_emb``.
    train_csv : str, optional
        Or a training CSV embedded here to get that mean.
    mean : array-like, optional
        Or the mean embedding [D] itself. Without any of the three, the mean of a source
        folder that has ``mean_var_norm_emb`` is kept.
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
    >>> import tempfile
    >>> out = export_model(getfixture("tiny_model_folder"), os.path.join(tempfile.mkdtemp(), "export"))
    >>> from speechbrain.inference.speaker import SpeakerRecognition
    >>> SpeakerRecognition.from_hparams(source=out).encode_batch(torch.zeros(1, 16000)).shape
    torch.Size([1, 1, 32])
    """
    model_folder = os.path.abspath(os.fspath(model_folder))
    out_folder = os.path.abspath(os.fspath(out_folder))
    if out_folder == model_folder:
        raise ValueError("out_folder must differ from model_folder")
    if sum(x is not None for x in (train_embeddings, train_csv, mean)) > 1:
        raise ValueError("give at most one of train_embeddings, train_csv, mean")
    if results_json is not None and not os.path.isfile(results_json):
        raise FileNotFoundError(f"results file not found: {results_json}")

    files = check_model_folder(model_folder)
    if "label_encoder" not in files:
        raise ValueError(f"{model_folder}/{HPARAMS_FILE} loads no label_encoder: nothing to export as label_encoder.txt")
    reference = load_model_folder(model_folder)
    if train_embeddings is not None or train_csv is not None:
        mean = mean_embedding(model_folder, train_embeddings, train_csv, progress=progress)
    elif mean is None and "mean_var_norm_emb" in files:
        mean = reference["mean_var_norm_emb"].glob_mean
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

    with open(os.path.join(model_folder, HPARAMS_FILE), encoding="utf-8") as handle:
        hparams_text = model_folder_yaml(handle.read(), with_mean=mean is not None)
    checkpoints = {key: os.path.join(model_folder, files[key])
                   for key in ("embedding_model", "classifier") if key in files}
    if os.path.isfile(os.path.join(model_folder, "compute_cost.ckpt")):
        checkpoints["compute_cost"] = os.path.join(model_folder, "compute_cost.ckpt")
    if mean is not None:
        checkpoints["mean_var_norm_emb"] = {
            "count": 1, "glob_mean": torch.tensor(mean, dtype=torch.float32), "glob_std": torch.ones(mean.size)
        }
    card = model_card(
        name or os.path.basename(out_folder), config, table, has_mean=mean is not None,
        needs_plugin="sb_sphereface2" in hparams_text,
    )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    extra = {"README.md": card + f"\n_Exported {stamp}._\n"}
    training = os.path.join(model_folder, TRAINING_HPARAMS_FILE)
    if os.path.isfile(training):
        with open(training, encoding="utf-8") as handle:
            extra[TRAINING_HPARAMS_FILE] = handle.read()
    check = functools.partial(_verify, reference=reference, mean=mean, atol=atol) if verify else None
    return write_model_folder(
        out_folder, hparams_text, checkpoints, os.path.join(model_folder, files["label_encoder"]),
        extra_files=extra, check=check,
    )
