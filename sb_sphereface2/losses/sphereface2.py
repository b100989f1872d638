"""``SphereFace2Loss``: the SphereFace2 loss as a SpeechBrain ``compute_cost``.

The margins, g, the settings and the bias are in :mod:`sb_sphereface2.losses.margins`;
this module turns them into the loss

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
from sb_sphereface2.losses.margins import SphereFace2Settings, closed_form_bias

IMPLEMENTATIONS = ("lean", "plain")
TERM_NAMES = ("positive_term", "negative_term", "negative_active")


def plain_block_loss(cos, targets, start, bias, margin, settings, normaliser):
    """The SphereFace2 loss terms of the classes [start, start + K), written directly
    (eager autograd; supports higher-order gradients). Arguments and value as
    ``class_block_loss``.

    Example
    -------
    >>> cos, y = torch.tensor([[0.9, -0.1, 0.2], [0.3, 0.5, -0.7]]), torch.tensor([0, 2])
    >>> args = (torch.tensor(1.0), 0.2, SphereFace2Settings(), 2)
    >>> parts = plain_block_loss(cos[:, :1], y, 0, *args)[0] + plain_block_loss(cos[:, 1:], y, 1, *args)[0]
    >>> torch.allclose(parts, plain_block_loss(cos, y, 0, *args)[0])
    True
    """
    local = targets - start
    here = (local >= 0) & (local < cos.shape[1])
    index = torch.where(here, local, 0).unsqueeze(1)
    cos_target = cos.gather(1, index).squeeze(1)
    pos, neg = settings.similarities(cos_target, cos, margin)
    if settings.detach_adjustment:
        # Original SphereFace2: g and the margin enter as a constant offset; the
        # gradient sees plain s * c.
        pos = cos_target + (pos - cos_target).detach()
        neg = cos + (neg - cos).detach()
    pos_loss = torch.where(here, F.softplus(-(settings.scale * pos + bias)), 0.0)
    is_target = torch.arange(cos.shape[1], device=cos.device) == local.unsqueeze(1)
    neg_logits = (settings.scale * neg + bias).masked_fill(is_target, float("-inf"))
    neg_loss = F.softplus(neg_logits).sum(dim=1)
    lambda_ = settings.lambda_
    loss = (lambda_ * pos_loss + (1 - lambda_) * neg_loss).sum() / normaliser
    parts = torch.stack([lambda_ * pos_loss.sum() / normaliser, (1 - lambda_) * neg_loss.sum() / normaliser,
                         (neg_logits > 0).sum().to(cos.dtype)]).detach()
    return loss, parts


def class_block_loss(cos, targets, start, bias, margin, settings, normaliser, implementation="lean"):
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
    margin : float
        The margin in force.
    settings : SphereFace2Settings
        Margin type, scale, lambda, t, detach.
    normaliser : float
        The sum is divided by it (B for the batch mean).
    implementation : str
        "lean" (``lean.lean_block_loss``) or "plain" (``plain_block_loss``).

    Returns
    -------
    tuple
        The scalar loss, and its terms ([3], detached): the positive part
        (lambda sum softplus(-z+) / normaliser), the negative part
        ((1 - lambda) sum softplus(z-) / normaliser) and the number of negative logits
        above 0.

    Example
    -------
    >>> cos, y = torch.rand(3, 5, dtype=torch.float64) * 2 - 1, torch.tensor([0, 3, 4])
    >>> args = (torch.tensor(1.0, dtype=torch.float64), 0.2, SphereFace2Settings(), 3)
    >>> lean = class_block_loss(cos[:, :2], y, 0, *args)[0] + class_block_loss(cos[:, 2:], y, 2, *args)[0]
    >>> plain, terms = class_block_loss(cos, y, 0, *args, implementation="plain")
    >>> torch.allclose(lean, plain, rtol=1e-12, atol=0), torch.allclose(terms[:2].sum(), plain)
    (True, True)
    """
    if implementation == "lean":
        return lean_block_loss(cos, targets, start, bias, margin, settings, normaliser)
    if implementation == "plain":
        return plain_block_loss(cos, targets, start, bias, margin, settings, normaliser)
    raise ValueError(f"implementation must be 'lean' or 'plain', got {implementation!r}")


class SphereFace2Loss(CosineMarginLoss):
    """SphereFace2 loss, a drop-in ``compute_cost`` for SpeechBrain speaker recipes.

    Takes the cosines of a cosine classifier head (SpeechBrain's ECAPA ``Classifier``
    or ``SphereFace2Head``) and the speaker labels. The loss is computed in float32,
    with autocast off, whatever the precision of the model.

    Arguments
    ---------
    num_classes : int
        Number of training speakers C (>= 2).
    settings : SphereFace2Settings
        Margin type, scale s, lambda, t and whether g is detached (default: type C,
        s = 32, lambda = 0.7, t = 3, differentiated: the speaker paper's).
    margin : float
        The margin at the start, when no ``margin_scheduler`` is given; settable at run
        time as ``loss.margin``. For type M it is the angle multiplier (>= 1).
    margin_scheduler : MarginScheduler, optional
        The schedule that will move the margin: the margin at the start is its value at
        iteration 0 (its initial and final margins are checked here).
    bias_init : str or float
        "closed_form": the balancing bias of ``closed_form_bias`` at the margin at the
        start; or a number.
    implementation : str
        "lean" (default): ``lean.lean_block_loss``, loss and gradient in one pass over
        class chunks, one [B, C] buffer kept for backward, first-order gradients only.
        "plain": ``plain_block_loss`` through autograd (supports double backward).

    Returns
    -------
    torch.Tensor
        From ``forward``: the scalar loss, mean over the batch. After each forward,
        ``last_terms`` holds its parts as detached 0-d tensors (no host
        synchronisation): ``bias``, ``positive_term`` and ``negative_term`` (their sum
        is the loss) and ``negative_active`` (the share of negative logits above 0).

    Example
    -------
    >>> from sb_sphereface2 import MarginScheduler
    >>> schedule = MarginScheduler(final_margin=0.2, start_epoch=1, fix_epoch=1)
    >>> loss_fn = SphereFace2Loss(num_classes=10, margin_scheduler=schedule)
    >>> loss_fn.margin, round(loss_fn.bias.item(), 3) == round(closed_form_bias(10, 0.2), 3)
    (0.2, True)
    >>> cosines = torch.rand(4, 1, 10) * 2 - 1
    >>> loss = loss_fn(cosines, torch.tensor([[1], [3], [5], [7]]))
    >>> loss.shape, sorted(loss_fn.last_terms)
    (torch.Size([]), ['bias', 'negative_active', 'negative_term', 'positive_term'])
    """

    def __init__(
        self,
        num_classes,
        settings=SphereFace2Settings(),
        margin=0.2,
        margin_scheduler=None,
        bias_init="closed_form",
        implementation="lean",
    ):
        if not isinstance(settings, SphereFace2Settings):
            raise ValueError(f"settings must be a SphereFace2Settings, got {type(settings).__name__}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be 'lean' or 'plain', got {implementation!r}")
        self.settings = settings
        self.implementation = implementation
        super().__init__(num_classes, settings.scale, margin, margin_scheduler)
        if bias_init == "closed_form":
            bias = closed_form_bias(num_classes, self.margin, settings)
        else:
            try:
                bias = float(bias_init)
            except (TypeError, ValueError):
                raise ValueError(
                    f"bias_init must be 'closed_form' or a number, got {bias_init!r}"
                ) from None
        self.bias = torch.nn.Parameter(torch.tensor(bias, dtype=torch.float32))
        self.last_terms = None

    @classmethod
    def margin_rule(cls, settings=None):
        """``settings.check_margin``: the rule of the margin type."""
        return (settings or SphereFace2Settings()).check_margin

    def block_loss(self, cos, targets, start, bias, normaliser, negatives):
        """``class_block_loss`` with this loss's settings, autocast off; keeps its terms
        in ``last_terms`` (``negatives``: the number of negative logits of the block)."""
        with torch.autocast(device_type=cos.device.type, enabled=False):
            loss, parts = class_block_loss(
                cos, targets, start, bias.to(cos.dtype), self.margin, self.settings, normaliser,
                self.implementation,
            )
        self.last_terms = {
            "bias": bias.detach(),
            TERM_NAMES[0]: parts[0],
            TERM_NAMES[1]: parts[1],
            TERM_NAMES[2]: parts[2] / max(1, negatives),
        }
        return loss

    def forward(self, outputs, targets, length=None):
        """Loss for cosines ``outputs`` [B, 1, C] or [B, C] and labels ``targets``.

        ``length`` is accepted for SpeechBrain's ``compute_cost`` signature and unused.
        """
        cos, targets = flatten_outputs(outputs, targets, self.num_classes)
        return self.block_loss(cos, targets, 0, self.bias, normaliser=cos.shape[0],
                               negatives=cos.shape[0] * (self.num_classes - 1))

    def extra_repr(self):
        return f"num_classes={self.num_classes}, margin={self.margin}, {self.settings}, implementation={self.implementation!r}"
