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

from sb_sphereface2 import _compat
from sb_sphereface2.losses.aam import AAMLoss
from sb_sphereface2.losses.margins import closed_form_bias
from sb_sphereface2.losses.sphereface2 import SphereFace2Loss
from sb_sphereface2.models.head import SphereFace2Head
from sb_sphereface2.models.resnet import ResNet
from sb_sphereface2.training.lr_schedule import WarmupExponentialLR
from sb_sphereface2.training.margin_scheduler import MarginScheduler

_compat.install(__name__)

__all__ = [
    "AAMLoss",
    "MarginScheduler",
    "ResNet",
    "SphereFace2Head",
    "SphereFace2Loss",
    "WarmupExponentialLR",
    "closed_form_bias",
]
__version__ = "0.2.0"
