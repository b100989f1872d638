"""The AAM-softmax baseline behind the same interface as ``SphereFace2Loss``."""

import torch
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from sb_sphereface2.losses.base import CosineMarginLoss, finite_margin, flatten_outputs


def aam_margin(value):
    """``value`` as a float if it is a valid AAM margin, an angle in [0, 1.5) radians.

    Example
    -------
    >>> aam_margin(0.2)
    0.2
    """
    value = finite_margin(value)
    if not 0 <= value < 1.5:
        raise ValueError(f"the AAM margin must be in [0, 1.5) radians, got {value:g}")
    return value


class AAMLoss(CosineMarginLoss):
    """SpeechBrain's ``LogSoftmaxWrapper(AdditiveAngularMargin)`` with a margin that can
    change during training (for ``MarginScheduler``) and the same constructor shape and
    ``forward`` as ``SphereFace2Loss``, so recipes switch losses by one line.

    Arguments
    ---------
    num_classes : int
        Number of training speakers (checked against the cosines).
    scale : float
        Scale s.
    margin : float
        Additive angular margin m at the start, when no ``margin_scheduler`` is given;
        settable as ``loss.margin``.
    margin_scheduler : MarginScheduler, optional
        The schedule that will move the margin (as in ``SphereFace2Loss``).
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

    last_terms = None  # SphereFace2's loss parts have no AAM counterpart

    def __init__(self, num_classes, scale=32.0, margin=0.2, margin_scheduler=None, easy_margin=False):
        self.easy_margin = easy_margin
        super().__init__(num_classes, scale, margin, margin_scheduler)

    @classmethod
    def margin_rule(cls, settings=None):
        """The one rule of an AAM margin: an angle in [0, 1.5) radians."""
        return aam_margin

    def forward(self, outputs, targets, length=None):
        """Loss for cosines [B, 1, C] or [B, C] and labels [B, 1] or [B]."""
        cos, labels = flatten_outputs(outputs, targets, self.num_classes)
        # SpeechBrain's AAM fixes cos(m), sin(m) and its thresholds when built: built
        # here, with the margin in force.
        aam = LogSoftmaxWrapper(
            AdditiveAngularMargin(margin=self.margin, scale=self.scale, easy_margin=self.easy_margin)
        )
        with torch.autocast(device_type=cos.device.type, enabled=False):
            # The wrapper's KL divergence is divided by the number of targets: a batch mean.
            return aam(cos.unsqueeze(1), labels.unsqueeze(1))
