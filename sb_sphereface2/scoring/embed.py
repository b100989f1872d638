"""Embeddings of whole utterances, independent of batching."""

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def embed_waveform(wav, compute_features, mean_var_norm, embedding_model):
    """Embedding [D] of one waveform [T], the way SpeechBrain's ``EncoderClassifier.encode_batch``
    computes it for a batch of one (fbank -> sentence mean normalisation -> model).

    Arguments
    ---------
    wav : torch.Tensor
        One waveform [T] (or [1, T]).
    compute_features, mean_var_norm, embedding_model : torch.nn.Module
        The recipe's modules (in eval mode).

    Returns
    -------
    torch.Tensor
        The embedding, float32 [D], on the waveform's device.

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.processing.features import InputNormalization
    >>> from sb_sphereface2.models.resnet import ResNet
    >>> model = ResNet(input_size=24, channels=(4, 4, 8, 8), num_blocks=(1, 1, 1, 1), lin_neurons=16).eval()
    >>> embed_waveform(torch.randn(16000), Fbank(n_mels=24), InputNormalization(norm_type="sentence", std_norm=False), model).shape
    torch.Size([16])
    """
    wavs = wav.reshape(1, -1)
    lens = torch.ones(1, device=wavs.device)
    feats = compute_features(wavs)
    feats = mean_var_norm(feats, lens)
    return embedding_model(feats, lens).reshape(-1).float()


@torch.no_grad()
def embed_dataset(dataset, compute_features, mean_var_norm, embedding_model, device="cpu", progress=True, desc="embedding"):
    """Embed every utterance of a dataset one at a time, so that no padding ever changes
    an embedding, whatever the model.

    Arguments
    ---------
    dataset : iterable of dict
        Items with ``id`` and ``sig`` (e.g. ``sb_sphereface2.data.dataio.utterance_dataset``).
    compute_features, mean_var_norm, embedding_model : torch.nn.Module
        The recipe's modules; they are put in eval mode.
    device : str
        Where to compute.
    progress : bool
        Show a tqdm progress bar.
    desc : str
        Progress bar label.

    Returns
    -------
    tuple
        (ids list, embeddings float32 numpy [N, D]).

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.processing.features import InputNormalization
    >>> from sb_sphereface2.models.resnet import ResNet
    >>> model = ResNet(input_size=24, channels=(4, 4, 8, 8), num_blocks=(1, 1, 1, 1), lin_neurons=16)
    >>> items = [{"id": "a", "sig": torch.randn(8000)}, {"id": "b", "sig": torch.randn(12000)}]
    >>> ids, emb = embed_dataset(items, Fbank(n_mels=24), InputNormalization(norm_type="sentence", std_norm=False), model, progress=False)
    >>> ids, emb.shape
    (['a', 'b'], (2, 16))
    """
    for module in (compute_features, mean_var_norm, embedding_model):
        module.eval()
    ids, rows = [], []
    for item in tqdm(dataset, desc=desc, disable=not progress, unit="utt"):
        wav = item["sig"].to(device)
        ids.append(item["id"])
        rows.append(embed_waveform(wav, compute_features, mean_var_norm, embedding_model).cpu())
    if not rows:
        raise ValueError("no utterances to embed")
    return ids, torch.stack(rows).numpy().astype(np.float32)
