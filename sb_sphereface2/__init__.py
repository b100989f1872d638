"""sb_sphereface2: SphereFace2 binary-classification loss for SpeechBrain speaker verification.

Module map (one concept per module):

- ``sphereface2``: the loss maths (g, margin types C/A/M, closed-form bias, SphereFace2Loss)
- ``head``: SphereFace2Head, the cosine classifier head
- ``margin_scheduler``, ``lr_schedule``: per-iteration schedules
- ``aam``: the AAM-softmax baseline behind the same interface
- ``resnet``: the paper's ResNet34 lobe (length-aware)
- ``data_prep``, ``dataio``, ``augment_csv``, ``synthetic_corpus``: data
- ``trials``, ``embedding``, ``embeddings_io``, ``metrics``, ``score_norm``, ``calibration``,
  ``scoring``, ``plots``, ``score`` (CLI): verification scoring
- ``recipe_hparams``, ``model_folder``: recipe hyperparameters and pretrained-model folders
- ``lean``: the chunked loss + gradient used by SphereFace2Loss by default
- ``sharded``: class weights split across DDP processes
- ``label_noise``, ``pseudo_labels``, ``corpus_split``: noisy and pseudo labels, splits
- ``export``: hub-ready pretrained folders, encoder initialisation from one
"""

from sb_sphereface2.aam import AAMLoss
from sb_sphereface2.head import SphereFace2Head
from sb_sphereface2.lr_schedule import WarmupExponentialLR
from sb_sphereface2.margin_scheduler import MarginScheduler
from sb_sphereface2.resnet import ResNet
from sb_sphereface2.sphereface2 import SphereFace2Loss, closed_form_bias

__all__ = [
    "AAMLoss",
    "MarginScheduler",
    "ResNet",
    "SphereFace2Head",
    "SphereFace2Loss",
    "WarmupExponentialLR",
    "closed_form_bias",
]
__version__ = "0.1.0"
