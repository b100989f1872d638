"""The AAM-softmax baseline behind the same interface as ``SphereFace2Loss``."""

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from sb_sphereface2.losses.sphereface2 import flatten_outputs


class AAMLoss(torch.nn.Module):
    """SpeechBrain's ``LogSoftmaxWrapper(AdditiveAngularMargin)`` with a margin that can
    change during training (for ``MarginScheduler``) and the same ``forward`` /
    ``training_logits`` interface as ``SphereFace2Loss``, so recipes switch losses by
    one line.

    Arguments
    ---------
    num_classes : int
        Number of training speakers (checked against the cosines).
    scale : float
        Scale s.
    margin : float
        Additive angular margin m; settable as ``loss.margin``.
    easy_margin : bool
        As in SpeechBrain's ``AdditiveAngularMargin``.

    Returns
    -------
    torch.Tensor
        From ``forward``: the scalar loss, mean over the batch.

    Example
    -------
    >>> loss_fn = AAMLoss(num_classes=5, margin=0.2, scale=30.0)
    >>> cos = torch.rand(3, 1, 5) * 2 - 1
    >>> loss = loss_fn(cos, torch.tensor([[0], [1], [2]]))
    >>> loss_fn.margin = 0.5
    >>> bool(loss_fn(cos, torch.tensor([[0], [1], [2]])) > loss)
    True
    """

    def __init__(self, num_classes, scale=32.0, margin=0.2, easy_margin=False):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.num_classes = num_classes
        self.scale = float(scale)
        self.easy_margin = easy_margin
        self.margin = margin

    @property
    def margin(self):
        """The margin in force (float)."""
        return self._margin

    @margin.setter
    def margin(self, value):
        value = float(value)
        if not 0 <= value < 1.5:
            raise ValueError(f"AAM margin must be in [0, 1.5) radians, got {value}")
        self._margin = value
        # SpeechBrain's AAM precomputes cos(m), sin(m) and its thresholds: rebuild it.
        self._wrapper = LogSoftmaxWrapper(
            AdditiveAngularMargin(margin=value, scale=self.scale, easy_margin=self.easy_margin)
        )

    def forward(self, outputs, targets, length=None):
        """Loss for cosines [B, 1, C] or [B, C] and labels [B, 1] or [B]."""
        cos, labels = flatten_outputs(outputs, targets, self.num_classes)
        with torch.autocast(device_type=cos.device.type, enabled=False):
            # The wrapper's KL divergence is divided by the number of targets: a batch mean.
            return self._wrapper(cos.unsqueeze(1), labels.unsqueeze(1))

    def training_logits(self, outputs, targets):
        """Logits for the training-accuracy meter: s * (c - m * onehot)."""
        cos, labels = flatten_outputs(outputs, targets, self.num_classes)
        onehot = F.one_hot(labels, self.num_classes).to(cos.dtype)
        return (self.scale * (cos - self.margin * onehot)).reshape(outputs.shape)
