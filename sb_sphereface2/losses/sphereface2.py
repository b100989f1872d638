"""``SphereFace2Loss``: the SphereFace2 loss as a SpeechBrain ``compute_cost``.

The margins and g are in :mod:`sb_sphereface2.losses.margins`; this module turns them
into the loss

    L = mean_i [ lambda * softplus(-z+_i) + (1 - lambda) * sum_{j != y_i} softplus(z-_ij) ]

either directly (``sphereface2_loss``, eager autograd) or chunk by chunk with the
gradient computed in the forward pass (:mod:`sb_sphereface2.losses.lean`, the default).
"""

import torch
import torch.nn.functional as F

from sb_sphereface2.losses.lean import lean_sphereface2_loss
from sb_sphereface2.losses.margins import MARGIN_TYPES, check_margin, closed_form_bias


def sphereface2_loss(cos, targets, bias, margin, scale, lambda_, t, margin_type, detach_adjustment):
    """The SphereFace2 loss on a [B, C] float cosine matrix, mean over the batch.

    This is the direct (eager) form of the formula in the module docstring.

    Example
    -------
    >>> cos = torch.tensor([[0.9, -0.1, 0.2]])
    >>> loss = sphereface2_loss(cos, torch.tensor([0]), torch.tensor(0.0), 0.2, 32.0, 0.7, 3.0, "C", False)
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """
    index = targets.unsqueeze(1)
    cos_target = cos.gather(1, index).squeeze(1)
    pos, neg = MARGIN_TYPES[margin_type](cos_target, cos, margin, t)
    if detach_adjustment:
        # Original SphereFace2: g and the margin enter as a constant offset; the
        # gradient sees plain s * c.
        pos = cos_target + (pos - cos_target).detach()
        neg = cos + (neg - cos).detach()
    pos_loss = F.softplus(-(scale * pos + bias))
    neg_loss = F.softplus(scale * neg + bias).scatter(1, index, 0.0).sum(dim=1)
    return (lambda_ * pos_loss + (1 - lambda_) * neg_loss).mean()


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
    # One host synchronisation for all three checks.
    low, high, finite = torch.stack(
        [targets.min().float(), targets.max().float(), torch.isfinite(cos).all().float()]
    ).tolist()
    if finite != 1.0:
        bad = cos[~torch.isfinite(cos)][0].item()
        raise ValueError(f"cosines must be finite, found {bad}")
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}], found {int(low if low < 0 else high)}"
        )
    return cos, targets


class SphereFace2Loss(torch.nn.Module):
    """SphereFace2 loss, a drop-in ``compute_cost`` for SpeechBrain speaker recipes.

    Takes the cosines of a cosine classifier head (SpeechBrain's ECAPA ``Classifier``
    or ``SphereFace2Head``) and the speaker labels. The loss is computed in float32,
    with autocast off, whatever the precision of the model.

    Arguments
    ---------
    num_classes : int
        Number of training speakers C (>= 2).
    scale : float
        Scale s of the logits.
    margin : float
        Margin m; settable at run time as ``loss.margin`` (the ``MarginScheduler`` does).
        For type M it is the angle multiplier (>= 1).
    lambda_ : float
        Weight of the positive term, in (0, 1); 1 - lambda_ weighs the negatives.
    t : float
        Exponent of the similarity adjustment g, t >= 1 (1 turns it off).
    margin_type : str
        "C" (additive cosine), "A" (additive angular) or "M" (multiplicative angular).
    bias_init : str or float
        "closed_form" for the balancing bias of ``closed_form_bias``, or a number.
    detach_adjustment : bool
        If True, g and the margin are a detached offset (original SphereFace2); the
        default differentiates through them (speaker-verification paper).
    implementation : str
        "lean" (default): ``lean.lean_sphereface2_loss``, loss and gradient in one pass
        over class chunks, one [B, C] buffer kept for backward, first-order gradients
        only. "plain": ``sphereface2_loss`` through autograd (supports double backward).

    Returns
    -------
    torch.Tensor
        From ``forward``: the scalar loss, mean over the batch.

    Example
    -------
    >>> loss_fn = SphereFace2Loss(num_classes=10, margin=0.2)
    >>> cosines = torch.rand(4, 1, 10) * 2 - 1
    >>> labels = torch.tensor([[1], [3], [5], [7]])
    >>> loss = loss_fn(cosines, labels)
    >>> loss.shape
    torch.Size([])
    >>> loss_fn.margin = 0.3
    >>> loss_fn.training_logits(cosines, labels).shape
    torch.Size([4, 1, 10])
    """

    def __init__(
        self,
        num_classes,
        scale=32.0,
        margin=0.2,
        lambda_=0.7,
        t=3.0,
        margin_type="C",
        bias_init="closed_form",
        detach_adjustment=False,
        implementation="lean",
    ):
        super().__init__()
        if implementation not in ("lean", "plain"):
            raise ValueError(f"implementation must be 'lean' or 'plain', got {implementation!r}")
        self.implementation = implementation
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"margin_type must be one of C, A, M, got {margin_type!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not 0 < float(lambda_) < 1:
            raise ValueError(f"lambda_ must be in (0, 1), got {lambda_}")
        if not float(t) >= 1:
            raise ValueError(f"t must be >= 1, got {t}")
        if not float(scale) > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.num_classes = num_classes
        self.scale = float(scale)
        self.lambda_ = float(lambda_)
        self.t = float(t)
        self.margin_type = margin_type
        self.detach_adjustment = bool(detach_adjustment)
        self.margin = margin
        if bias_init == "closed_form":
            bias = closed_form_bias(
                num_classes, self.scale, self.margin, self.lambda_, self.t, margin_type
            )
        else:
            try:
                bias = float(bias_init)
            except (TypeError, ValueError):
                raise ValueError(
                    f"bias_init must be 'closed_form' or a number, got {bias_init!r}"
                ) from None
        self.bias = torch.nn.Parameter(torch.tensor(bias, dtype=torch.float32))

    @property
    def margin(self):
        """The margin in force (float)."""
        return self._margin

    @margin.setter
    def margin(self, value):
        self._margin = check_margin(value, self.margin_type)

    def forward(self, outputs, targets, length=None):
        """Loss for cosines ``outputs`` [B, 1, C] or [B, C] and labels ``targets``.

        ``length`` is accepted for SpeechBrain's ``compute_cost`` signature and unused.
        """
        cos, targets = flatten_outputs(outputs, targets, self.num_classes)
        loss_function = lean_sphereface2_loss if self.implementation == "lean" else sphereface2_loss
        with torch.autocast(device_type=cos.device.type, enabled=False):
            return loss_function(
                cos,
                targets,
                self.bias.to(cos.dtype),
                self.margin,
                self.scale,
                self.lambda_,
                self.t,
                self.margin_type,
                self.detach_adjustment,
            )

    def training_logits(self, outputs, targets):
        """Logits for the training-accuracy meter: s * (c - m * onehot), shaped like ``outputs``."""
        cos, labels = flatten_outputs(outputs, targets, self.num_classes)
        onehot = F.one_hot(labels, self.num_classes).to(cos.dtype)
        return (self.scale * (cos - self.margin * onehot)).reshape(outputs.shape)

    def extra_repr(self):
        return (
            f"num_classes={self.num_classes}, scale={self.scale}, margin={self.margin}, "
            f"lambda_={self.lambda_}, t={self.t}, margin_type={self.margin_type!r}, "
            f"detach_adjustment={self.detach_adjustment}, "
            f"implementation={self.implementation!r}"
        )
