"""``SphereFace2Loss``: the SphereFace2 loss as a SpeechBrain ``compute_cost``.

The margins and g are in :mod:`sb_sphereface2.losses.margins`; this module turns them
into the loss

    L = (1/B) sum_i [ lambda * softplus(-z+_i) + (1 - lambda) * sum_{j != y_i} softplus(z-_ij) ]

``class_block_loss`` is the one entry point for the terms of a block of classes: the
whole head (``SphereFace2Loss``) is the block [0, C), a shard of a sharded head
(:mod:`sb_sphereface2.losses.sharded`) is its rows. It evaluates them either directly
(``implementation="plain"``: eager autograd, higher-order gradients) or chunk by chunk
with the gradient computed in the forward pass (``"lean"``, the default,
:mod:`sb_sphereface2.losses.lean`).
"""

import torch
import torch.nn.functional as F

from sb_sphereface2.losses.base import CosineMarginLoss, flatten_outputs
from sb_sphereface2.losses.lean import lean_block_loss
from sb_sphereface2.losses.margins import MARGIN_TYPES, check_margin, closed_form_bias

IMPLEMENTATIONS = ("lean", "plain")


def plain_block_loss(cos, targets, start, bias, margin, scale, lambda_, t, margin_type,
                     detach_adjustment, normaliser):
    """The SphereFace2 loss terms of the classes [start, start + K), written directly
    (eager autograd; supports higher-order gradients). Arguments as ``class_block_loss``.

    Example
    -------
    >>> cos, y = torch.tensor([[0.9, -0.1, 0.2], [0.3, 0.5, -0.7]]), torch.tensor([0, 2])
    >>> args = (torch.tensor(1.0), 0.2, 32.0, 0.7, 3.0, "C", False, 2)
    >>> parts = plain_block_loss(cos[:, :1], y, 0, *args) + plain_block_loss(cos[:, 1:], y, 1, *args)
    >>> torch.allclose(parts, plain_block_loss(cos, y, 0, *args))
    True
    """
    local = targets - start
    here = (local >= 0) & (local < cos.shape[1])
    index = torch.where(here, local, 0).unsqueeze(1)
    cos_target = cos.gather(1, index).squeeze(1)
    pos, neg = MARGIN_TYPES[margin_type](cos_target, cos, margin, t)
    if detach_adjustment:
        # Original SphereFace2: g and the margin enter as a constant offset; the
        # gradient sees plain s * c.
        pos = cos_target + (pos - cos_target).detach()
        neg = cos + (neg - cos).detach()
    pos_loss = torch.where(here, F.softplus(-(scale * pos + bias)), 0.0)
    is_target = torch.arange(cos.shape[1], device=cos.device) == local.unsqueeze(1)
    neg_loss = F.softplus(scale * neg + bias).masked_fill(is_target, 0.0).sum(dim=1)
    return (lambda_ * pos_loss + (1 - lambda_) * neg_loss).sum() / normaliser


def class_block_loss(cos, targets, start, bias, margin, scale, lambda_, t, margin_type,
                     detach_adjustment, normaliser, implementation="lean"):
    """The SphereFace2 loss terms of one block of classes, summed over the batch and
    divided by ``normaliser``.

    Column k of ``cos`` is class ``start + k``. Samples whose target is in the block get
    their positive term and all other columns as negatives; the other samples get every
    column as a negative. Over the blocks of a partition of the classes the values add
    up to the loss of all classes; with ``start`` = 0, all C columns and ``normaliser``
    = B it is the loss of the module docstring.

    Arguments
    ---------
    cos : torch.Tensor
        Cosines [B, K].
    targets : torch.Tensor
        Global class labels [B] (long).
    start : int
        Class index of column 0.
    bias : torch.Tensor
        0-d bias.
    margin, scale, lambda_, t, margin_type, detach_adjustment
        As in ``SphereFace2Loss``.
    normaliser : float
        The sum is divided by it (B for the batch mean).
    implementation : str
        "lean" (``lean.lean_block_loss``) or "plain" (``plain_block_loss``).

    Returns
    -------
    torch.Tensor
        Scalar.

    Example
    -------
    >>> cos, y = torch.rand(3, 5, dtype=torch.float64) * 2 - 1, torch.tensor([0, 3, 4])
    >>> args = (torch.tensor(1.0, dtype=torch.float64), 0.2, 32.0, 0.7, 3.0, "C", False, 3)
    >>> lean = class_block_loss(cos[:, :2], y, 0, *args) + class_block_loss(cos[:, 2:], y, 2, *args)
    >>> plain = class_block_loss(cos, y, 0, *args, implementation="plain")
    >>> torch.allclose(lean, plain, rtol=1e-12, atol=0)
    True
    """
    if implementation == "lean":
        return lean_block_loss(cos, targets, start, bias, margin, scale, lambda_, t, margin_type,
                               detach_adjustment, normaliser)
    if implementation == "plain":
        return plain_block_loss(cos, targets, start, bias, margin, scale, lambda_, t, margin_type,
                                detach_adjustment, normaliser)
    raise ValueError(f"implementation must be 'lean' or 'plain', got {implementation!r}")


def sphereface2_loss(cos, targets, bias, margin, scale, lambda_, t, margin_type, detach_adjustment):
    """The SphereFace2 loss of all classes of a [B, C] cosine matrix, mean over the batch,
    in its plain form (``class_block_loss`` of the block [0, C)).

    Example
    -------
    With zero cosines, t = 1, no margin and no bias every logit is 0: the loss is
    (0.7 + 0.3 (C - 1)) log 2 = 0.901091 for C = 3.

    >>> cos = torch.zeros(2, 3)
    >>> loss = sphereface2_loss(cos, torch.tensor([0, 2]), torch.tensor(0.0), 0.0, 32.0, 0.7, 1.0, "C", False)
    >>> round(loss.item(), 6)
    0.901091
    """
    return plain_block_loss(cos, targets, 0, bias, margin, scale, lambda_, t, margin_type,
                            detach_adjustment, cos.shape[0])


class SphereFace2Loss(CosineMarginLoss):
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
        For type M it is the angle multiplier (>= 1). The closed-form bias is evaluated
        at the margin given here (give the margin in force when training starts).
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
        "lean" (default): ``lean.lean_block_loss``, loss and gradient in one pass over
        class chunks, one [B, C] buffer kept for backward, first-order gradients only.
        "plain": ``plain_block_loss`` through autograd (supports double backward).

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
        super().__init__(num_classes, scale)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be 'lean' or 'plain', got {implementation!r}")
        self.implementation = implementation
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"margin_type must be one of C, A, M, got {margin_type!r}")
        if not 0 < float(lambda_) < 1:
            raise ValueError(f"lambda_ must be in (0, 1), got {lambda_}")
        if not float(t) >= 1:
            raise ValueError(f"t must be >= 1, got {t}")
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

    def check_margin(self, value):
        return check_margin(value, self.margin_type)

    def block_loss(self, cos, targets, start, bias, normaliser):
        """``class_block_loss`` with this loss's settings, autocast off."""
        with torch.autocast(device_type=cos.device.type, enabled=False):
            return class_block_loss(
                cos, targets, start, bias.to(cos.dtype), self.margin, self.scale, self.lambda_,
                self.t, self.margin_type, self.detach_adjustment, normaliser, self.implementation,
            )

    def forward(self, outputs, targets, length=None):
        """Loss for cosines ``outputs`` [B, 1, C] or [B, C] and labels ``targets``.

        ``length`` is accepted for SpeechBrain's ``compute_cost`` signature and unused.
        """
        cos, targets = flatten_outputs(outputs, targets, self.num_classes)
        return self.block_loss(cos, targets, 0, self.bias, normaliser=cos.shape[0])

    def extra_repr(self):
        return (
            f"num_classes={self.num_classes}, scale={self.scale}, margin={self.margin}, "
            f"lambda_={self.lambda_}, t={self.t}, margin_type={self.margin_type!r}, "
            f"detach_adjustment={self.detach_adjustment}, "
            f"implementation={self.implementation!r}"
        )
