"""sb_sphereface2: SphereFace2 binary-classification loss for SpeechBrain speaker verification."""

from sb_sphereface2.head import SphereFace2Head
from sb_sphereface2.margin_scheduler import MarginScheduler
from sb_sphereface2.sphereface2 import SphereFace2Loss, closed_form_bias

__all__ = ["SphereFace2Head", "SphereFace2Loss", "MarginScheduler", "closed_form_bias"]
__version__ = "0.1.0"
