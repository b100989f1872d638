"""ONNX export of a model folder's whole embedding computation, and running it with
onnxruntime.

The exported graph is :class:`sb_sphereface2.pretrained.pipeline.EmbeddingPipeline`:
inputs ``wavs`` (float32 [batch, samples], 16 kHz mono in [-1, 1], zero-padded) and
``wav_lens`` (float32 [batch], the relative lengths, 1.0 for the longest), output
``embeddings`` (float32 [batch, dim], not normalised). The feature front end (Kaldi fbank
or SpeechBrain ``Fbank``) and the per-utterance mean normalisation are in the graph; batch
and time axes are dynamic. ``torch.onnx.export(..., dynamo=True)``, opset 18. The export
is checked against torch on probe signals (one alone, and a batch of unequal lengths)
before it is put in place: a failed check leaves no file.
"""

import contextlib
import os
import tempfile
from unittest import mock

import numpy as np
import torch

from sb_sphereface2.files import copy_atomic

__all__ = ["ONNX_FILE", "OPSET", "export_onnx", "OnnxEmbedder", "probe_batch"]

ONNX_FILE = "embedding_model.onnx"
OPSET = 18


def probe_batch(sample_rate=16000, seconds=(3.0, 1.3, 0.7), seed=0):
    """A zero-padded batch of noise-like probes of unequal lengths: ``(wavs, wav_lens)``.

    Example
    -------
    >>> wavs, lens = probe_batch()
    >>> tuple(wavs.shape), [round(x, 3) for x in lens.tolist()]
    ((3, 48000), [1.0, 0.433, 0.233])
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = [int(s * sample_rate) for s in seconds]
    wavs = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        wavs[row, :length] = 0.1 * torch.randn(length, generator=generator)
    return wavs, torch.tensor(lengths, dtype=torch.float32) / max(lengths)


def _length_to_mask(length, max_len=None, dtype=None, device=None):
    """``speechbrain.dataio.dataio.length_to_mask`` without ``len(length)`` (which fixes
    the batch size of an exported graph): the same mask, by broadcasting."""
    if max_len is None:
        max_len = length.max().long().item()
    mask = torch.arange(max_len, device=length.device, dtype=length.dtype)[None, :] < length.unsqueeze(1)
    return torch.as_tensor(mask, dtype=dtype or length.dtype, device=device or length.device)


@contextlib.contextmanager
def _exportable():
    """SpeechBrain's ECAPA-TDNN masks with ``length_to_mask``, which reads the batch size as
    a Python number; while exporting, its module uses :func:`_length_to_mask`."""
    with mock.patch("speechbrain.lobes.models.ECAPA_TDNN.length_to_mask", _length_to_mask):
        yield


def _max_unit_difference(a, b):
    a = torch.nn.functional.normalize(torch.as_tensor(np.asarray(a)), dim=-1)
    b = torch.nn.functional.normalize(torch.as_tensor(np.asarray(b)), dim=-1)
    return float((a - b).abs().max())


def export_onnx(model_folder, out=None, atol=1e-4):
    """Export a model folder's embedding pipeline to ONNX, checked against torch.

    Arguments
    ---------
    model_folder : str
        A model folder (:mod:`sb_sphereface2.pretrained.folder`).
    out : str, optional
        The ``.onnx`` file (default ``MODEL_FOLDER/embedding_model.onnx``).
    atol : float
        Largest difference of unit-normalised embeddings accepted on the probes.

    Returns
    -------
    str
        The written file (absolute path).

    Example
    -------
    >>> export_onnx("/nonexistent/model")  # tests/test_onnx_export.py exports every model block
    Traceback (most recent call last):
    ...
    FileNotFoundError: model folder not found: /nonexistent/model
    """
    from sb_sphereface2.pretrained.pipeline import pipeline_of_folder

    out = os.path.abspath(out or os.path.join(model_folder, ONNX_FILE))
    pipeline, hparams = pipeline_of_folder(model_folder)
    wavs, lens = probe_batch(int(hparams.get("sample_rate", 16000)))
    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=800)
    with tempfile.TemporaryDirectory(prefix="sb_sphereface2_onnx_") as tmp:
        path = os.path.join(tmp, ONNX_FILE)
        with torch.no_grad(), _exportable():
            program = torch.onnx.export(
                pipeline, (wavs, lens), dynamo=True, opset_version=OPSET, input_names=["wavs", "wav_lens"],
                output_names=["embeddings"], dynamic_shapes={"wavs": {0: batch, 1: time}, "wav_lens": {0: batch}},
                external_data=False, verbose=False,
            )
            program.save(path, external_data=False)
            embedder = OnnxEmbedder(path)
            for probe in ((wavs, lens), (wavs[1:2, : int(lens[1] * wavs.shape[1])], torch.ones(1))):
                error = _max_unit_difference(embedder(*probe), pipeline(*probe))
                if not error <= atol:
                    raise RuntimeError(f"ONNX export check failed: onnxruntime differs from torch by "
                                       f"{error:.3g} (> {atol:g}) on a probe batch")
        copy_atomic(path, out)
    return out


class OnnxEmbedder:
    """An exported embedding pipeline run by onnxruntime (CPU by default).

    Arguments
    ---------
    path : str
        The ``.onnx`` file of :func:`export_onnx`.
    threads : int, optional
        onnxruntime's intra-op threads (default: its own choice).
    providers : list of str, optional
        onnxruntime execution providers (default ``["CPUExecutionProvider"]``).

    Calling it with ``(wavs [B, T], wav_lens [B])`` (tensors or arrays) returns the
    embeddings, float32 numpy [B, D].
    """

    def __init__(self, path, threads=None, providers=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.path = os.fspath(path)
        self.session = onnxruntime.InferenceSession(self.path, options,
                                                    providers=providers or ["CPUExecutionProvider"])

    def __call__(self, wavs, wav_lens):
        inputs = {"wavs": np.ascontiguousarray(np.asarray(wavs, dtype=np.float32)),
                  "wav_lens": np.ascontiguousarray(np.asarray(wav_lens, dtype=np.float32))}
        return self.session.run(["embeddings"], inputs)[0]
