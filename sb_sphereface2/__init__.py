"""sb_sphereface2: SphereFace2 binary-classification loss for SpeechBrain speaker verification.

The core, which needs only torch, torchaudio, speechbrain and hyperpyyaml:

- ``losses``: the margins C/A/M, ``SphereFace2Settings``, the SphereFace2 loss (plain,
  lean, sharded), the AAM baseline
- ``models``: the cosine head (plain and sharded), the paper's ResNet34, Kaldi fbank
- ``schedules``: the margin and learning-rate schedules
- ``distributed``: the DDP helpers of the sharded head; ``files``: atomic writes;
  ``errors``: one-line errors

The recipe harness, by pipeline stage (its extra dependencies: ``pip install
sb_sphereface2[recipes]``): ``data`` (preparation, loading), ``training`` (the Brain,
checkpoints, presets), ``scoring``, ``pretrained`` (model folders, export), ``labels``
(label noise, pseudo-labels), ``hparams`` (composing stage files). ``docs/architecture.md``
has the whole map.
"""

import importlib

__version__ = "0.2.0"

# The main classes, importable from the package (``!new:sb_sphereface2.SphereFace2Loss``).
# They load on first use, so that tools which need no torch (data preparation) start fast.
_EXPORTS = {
    "AAMLoss": "sb_sphereface2.losses.aam",
    "MarginScheduler": "sb_sphereface2.schedules.margin",
    "ResNet": "sb_sphereface2.models.resnet",
    "SphereFace2Head": "sb_sphereface2.models.head",
    "SphereFace2Loss": "sb_sphereface2.losses.sphereface2",
    "SphereFace2Settings": "sb_sphereface2.losses.margins",
    "WarmupExponentialLR": "sb_sphereface2.schedules.lr",
    "closed_form_bias": "sb_sphereface2.losses.margins",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
