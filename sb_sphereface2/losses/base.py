"""What every loss on the cosines of a cosine head shares: the SpeechBrain input check,
the margin as a run-time setting, and the logits of the training-accuracy meter."""

import math

import torch


def flatten_outputs(outputs, targets, num_classes):
    """Validate SpeechBrain-shaped cosines and labels; return [B, C] float32 and [B] long.

    Accepts outputs [B, 1, C] (SpeechBrain's ECAPA ``Classifier``) or [B, C], and
    targets [B, 1] or [B]. Half-precision cosines are promoted to float32; float64
    stays float64.

    Example
    -------
    >>> cos, y = flatten_outputs(torch.zeros(4, 1, 3), torch.tensor([[0], [1], [2], [0]]), 3)
    >>> cos.shape, y.tolist()
    (torch.Size([4, 3]), [0, 1, 2, 0])
    """
    if outputs.dim() == 3 and outputs.shape[1] == 1:
        outputs = outputs.squeeze(1)
    if outputs.dim() != 2 or outputs.shape[1] != num_classes:
        raise ValueError(
            f"expected cosines of shape [B, 1, {num_classes}] or [B, {num_classes}], "
            f"got {tuple(outputs.shape)}"
        )
    if targets.dim() == 2 and targets.shape[1] == 1:
        targets = targets.squeeze(1)
    if targets.dim() != 1 or targets.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"expected labels of shape [{outputs.shape[0]}] or [{outputs.shape[0]}, 1], "
            f"got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point:
        raise ValueError(f"labels must be integers, got dtype {targets.dtype}")
    cos = outputs if outputs.dtype == torch.float64 else outputs.float()
    targets = targets.long()
    # One host synchronisation for the three checks. The sum is finite unless an element
    # is not (or finite ones overflow it: then the exact check below finds none bad); a
    # sum costs a tenth of isfinite's passes over [B, C].
    low, high, total = torch.stack(
        [targets.min().double(), targets.max().double(), cos.sum().double()]
    ).tolist()
    if not math.isfinite(total):
        bad = cos[~torch.isfinite(cos)]
        if bad.numel():
            raise ValueError(f"cosines must be finite, found {bad[0].item()}")
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}], found {int(low if low < 0 else high)}"
        )
    return cos, targets


def margin_logits(cos, labels, scale, margin, start=0):
    """s * (c - m * onehot): the logits of the training-accuracy meter.

    Column k of ``cos`` is class ``start + k``; labels outside the block get no margin.

    Example
    -------
    >>> margin_logits(torch.tensor([[0.5, 0.4, 0.0]]), torch.tensor([0]), 10.0, 0.2)
    tensor([[3., 4., 0.]])
    """
    column = torch.arange(cos.shape[1], device=cos.device)
    onehot = (column == (labels - start).unsqueeze(1)).to(cos.dtype)
    return scale * (cos - margin * onehot)


class CosineMarginLoss(torch.nn.Module):
    """Base of the losses on the cosines of a cosine head (``SphereFace2Loss``,
    ``AAMLoss``): the number of classes, the scale, a margin settable at run time
    (``MarginScheduler`` sets ``loss.margin``; subclasses validate it in
    ``check_margin``) and ``training_logits``.

    Arguments
    ---------
    num_classes : int
        Number of classes C (>= 2).
    scale : float
        Scale s (> 0).

    Example
    -------
    >>> loss = CosineMarginLoss(3, scale=10.0)
    >>> loss.margin = 0.2
    >>> loss.training_logits(torch.tensor([[[0.5, 0.4, 0.0]]]), torch.tensor([[0]]))
    tensor([[[3., 4., 0.]]])
    """

    def __init__(self, num_classes, scale):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.num_classes = num_classes
        self.scale = float(scale)

    def check_margin(self, value):
        """The margin as a float; ValueError if it is not valid for this loss."""
        return float(value)

    @property
    def margin(self):
        """The margin in force (float)."""
        return self._margin

    @margin.setter
    def margin(self, value):
        self._margin = self.check_margin(value)

    def training_logits(self, outputs, targets):
        """Logits for the training-accuracy meter: s * (c - m * onehot), shaped like ``outputs``."""
        cos, labels = flatten_outputs(outputs, targets, self.num_classes)
        return margin_logits(cos, labels, self.scale, self.margin).reshape(outputs.shape)
