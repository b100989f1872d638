"""A model folder's whole embedding computation as one module: padded waveforms and their
relative lengths in, embeddings out (front end, per-utterance mean normalisation, model).

``EmbeddingPipeline(wavs [B, T], wav_lens [B]) -> [B, D]`` is what SpeechBrain's
``EncoderClassifier.encode_batch`` computes, with one difference for batches of unequal
lengths: the lengths given to the mean normalisation and to the model are the *frame*
fractions of the features (the frames each waveform fills entirely, for the Kaldi fbank
``1 + (L - window) // shift``; for SpeechBrain's centred ``Fbank`` ``1 + L // hop``), not
the sample fractions. With them a length-aware model (this package's ResNet) gives a padded
utterance the embedding it has alone; a model that ignores lengths or pads its
convolutions by reflection (SpeechBrain's ResNet lobe, ECAPA-TDNN) still depends on the
padding, as it does in SpeechBrain (:func:`padding_changes_embeddings` measures it).
The same module is exported to ONNX (:mod:`sb_sphereface2.pretrained.onnx_export`), so
the graph holds the front end too.
"""

import torch

from sb_sphereface2.models.features import KaldiFbank

__all__ = ["EmbeddingPipeline", "pipeline_of_folder", "torch_embedder", "padding_changes_embeddings"]


def _frame_counts(compute_features, samples):
    """Frames the front end computes from ``samples`` [B] (int64) valid samples, or None
    when the front end is not one this module knows."""
    if isinstance(compute_features, KaldiFbank):
        return 1 + torch.div(samples - compute_features.window_size, compute_features.window_shift,
                             rounding_mode="floor")
    stft = getattr(compute_features, "compute_STFT", None)
    if stft is not None and getattr(stft, "center", False):
        return 1 + torch.div(samples, stft.hop_length, rounding_mode="floor")
    return None


class EmbeddingPipeline(torch.nn.Module):
    """Waveforms to embeddings with a model folder's modules (in eval mode).

    Arguments
    ---------
    compute_features, mean_var_norm, embedding_model : torch.nn.Module
        The model folder's modules.

    Example
    -------
    >>> from sb_sphereface2.pretrained.folder import load_model_folder
    >>> hparams = load_model_folder(getfixture("tiny_model_folder"))
    >>> pipeline = EmbeddingPipeline(hparams["compute_features"], hparams["mean_var_norm"], hparams["embedding_model"])
    >>> wavs = torch.randn(2, 16000) * 0.1
    >>> wavs[1, 9000:] = 0
    >>> both = pipeline(wavs, torch.tensor([1.0, 9000 / 16000]))
    >>> alone = pipeline(wavs[1:, :9000], torch.ones(1))
    >>> both.shape, bool((both[1] - alone[0]).abs().max() < 1e-5)
    (torch.Size([2, 32]), True)
    """

    def __init__(self, compute_features, mean_var_norm, embedding_model):
        super().__init__()
        self.compute_features = compute_features
        self.mean_var_norm = mean_var_norm
        self.embedding_model = embedding_model
        self.eval()

    def forward(self, wavs, wav_lens):
        """Embeddings [B, D] (float32) of ``wavs`` [B, T] with relative lengths ``wav_lens`` [B]."""
        feats, lens = self.features(wavs, wav_lens)
        embeddings = self.embedding_model(feats, lens)
        return embeddings.reshape(wavs.shape[0], -1).float()

    def features(self, wavs, wav_lens):
        """The front end alone: normalised features [B, frames, n_mels] and the frame
        fractions [B] the model takes (what ``forward`` gives ``embedding_model``)."""
        feats = self.compute_features(wavs)
        samples = torch.round(wav_lens.to(torch.float64) * wavs.shape[1]).long()
        frames = _frame_counts(self.compute_features, samples)
        if frames is None:
            exact = wav_lens.to(torch.float64)
        else:
            exact = (frames.to(torch.float64) / feats.shape[1]).clamp(max=1.0)
        # In float64: SpeechBrain's padding mask keeps frames below lengths * T - 1e-6, and
        # a float32 fraction times T can exceed the frame count by more than that.
        return self.mean_var_norm(feats, exact), exact.to(wav_lens.dtype)


def pipeline_of_folder(folder, device="cpu"):
    """The :class:`EmbeddingPipeline` of a model folder (loaded strictly), and its hparams.

    Returns
    -------
    tuple
        ``(pipeline, hparams)``.

    Example
    -------
    >>> pipeline, hparams = pipeline_of_folder(getfixture("tiny_model_folder"))
    >>> hparams["sample_rate"], pipeline(torch.zeros(1, 8000), torch.ones(1)).shape
    (16000, torch.Size([1, 32]))
    """
    from sb_sphereface2.pretrained.folder import load_model_folder

    hparams = load_model_folder(folder)
    pipeline = EmbeddingPipeline(hparams["compute_features"], hparams["mean_var_norm"], hparams["embedding_model"])
    return pipeline.to(device), hparams


def torch_embedder(pipeline, device="cpu"):
    """``embed(wavs, wav_lens) -> numpy [B, D]`` of an
    :class:`sb_sphereface2.pretrained.pipeline.EmbeddingPipeline` (or any module of that
    signature) on ``device``.

    Example
    -------
    >>> embed = torch_embedder(pipeline_of_folder(getfixture("tiny_model_folder"))[0])
    >>> embed(torch.zeros(1, 4000), torch.ones(1)).dtype
    dtype('float32')
    """
    pipeline = pipeline.to(device).eval()

    @torch.no_grad()
    def embed(wavs, wav_lens):
        return pipeline(torch.as_tensor(wavs).to(device), torch.as_tensor(wav_lens).to(device)).cpu().numpy()

    return embed


@torch.no_grad()
def padding_changes_embeddings(embed, sample_rate=16000, seconds=(1.0, 1.5)):
    """Largest change of a short utterance's unit-normalised embedding when it is padded in
    a batch with a longer one (0 for a model that honours the lengths).

    Arguments
    ---------
    embed : callable
        ``embed(wavs [B, T] float32 tensor, wav_lens [B]) -> [B, D]`` (tensor or numpy).
    sample_rate : int
        Of the probe signals.
    seconds : tuple of float
        Lengths of the short and the long probe.

    Returns
    -------
    float

    Example
    -------
    >>> pipeline, _ = pipeline_of_folder(getfixture("tiny_model_folder"))
    >>> padding_changes_embeddings(pipeline) < 1e-5
    True
    """
    generator = torch.Generator().manual_seed(0)
    short, long = (int(s * sample_rate) for s in seconds)
    wavs = 0.1 * torch.randn(2, long, generator=generator)
    wavs[1, short:] = 0
    both = torch.as_tensor(embed(wavs, torch.tensor([1.0, short / long])))
    alone = torch.as_tensor(embed(wavs[1:, :short].contiguous(), torch.ones(1)))
    unit = torch.nn.functional.normalize
    return float((unit(both[1:], dim=-1) - unit(alone, dim=-1)).abs().max())
