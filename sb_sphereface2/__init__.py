"""sb_sphereface2: SphereFace2 binary-classification loss for SpeechBrain speaker verification.

The package map (``docs/architecture.md`` has the whole picture):

- ``losses``: the margins C/A/M and the SphereFace2 loss (plain, lean, sharded), AAM
- ``models``: the cosine head and the paper's ResNet34
- ``training``: margin and learning-rate schedules, the recipe's Brain
- ``data``: preparation, data loading, augmentation CSVs, trial lists
- ``scoring``: embeddings, metrics, score normalisation, calibration, plots, the scorer CLI
- ``pretrained``: model folders (write, check, load), export, encoder initialisation
- ``labels``: label-noise injection and pseudo-labels
- ``hparams``: composing a stage file with its model and loss blocks
- ``files``: atomic writes and content fingerprints
"""

import importlib

from sb_sphereface2 import _compat

_compat.install(__name__)

# The main classes, importable from the package (``!new:sb_sphereface2.SphereFace2Loss``).
# They load on first use, so that tools which need no torch (data preparation) start fast.
_EXPORTS = {
    "AAMLoss": "sb_sphereface2.losses.aam",
    "MarginScheduler": "sb_sphereface2.training.margin_scheduler",
    "ResNet": "sb_sphereface2.models.resnet",
    "SphereFace2Head": "sb_sphereface2.models.head",
    "SphereFace2Loss": "sb_sphereface2.losses.sphereface2",
    "WarmupExponentialLR": "sb_sphereface2.training.lr_schedule",
    "closed_form_bias": "sb_sphereface2.losses.margins",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.2.0"


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
