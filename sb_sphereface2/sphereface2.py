"""SphereFace2: C one-vs-rest binary classifiers on cosine similarities.

All of the maths of the loss lives in this file:

* ``similarity_adjustment`` is g(c) = 2((c + 1)/2)^t - 1;
* ``additive_cosine`` (type C), ``additive_angular`` (type A) and
  ``multiplicative_angular`` (type M) are the three margin types; each maps the
  target-class cosines and all cosines to the adjusted similarities of the
  positive and the negative binary classifiers;
* ``closed_form_bias`` is the bias that balances the initial loss;
* ``SphereFace2Loss`` is the loss as a SpeechBrain ``compute_cost``.

For sample i with label y_i, logits are z = s * sim + b and

    L = mean_i [ lambda * softplus(-z+_i) + (1 - lambda) * sum_{j != y_i} softplus(z-_ij) ]

Reference: Y. Wen et al., "SphereFace2: Binary Classification is All You Need for Deep
Face Recognition", ICLR 2022; B. Han et al., "Exploring Binary Classification Loss for
Speaker Verification", ICASSP 2023.
"""

import math

import torch
import torch.nn.functional as F

# Clamp distance from +-1 where sqrt(1 - c^2) or acos(c) meets its infinite slope.
_EPS = 1e-6


def similarity_adjustment(cos, t):
    """g(c) = 2 * ((c + 1) / 2)**t - 1, the similarity adjustment of SphereFace2.

    Beyond c < -1 (reached only by the monotone continuations of types A and M)
    the power is continued as an odd function so that g stays monotone and finite.

    Arguments
    ---------
    cos : torch.Tensor
        Cosine similarities (any shape).
    t : float
        Exponent, t >= 1; t = 1 is the identity.

    Returns
    -------
    torch.Tensor
        g(cos), same shape.

    Example
    -------
    >>> similarity_adjustment(torch.tensor([-1.0, 0.0, 1.0]), 3.0)
    tensor([-1.0000, -0.7500,  1.0000])
    """
    if t == 1:
        return cos
    u = (cos + 1) / 2
    odd_power = torch.where(u >= 0, u.clamp(min=0) ** t, -((-u).clamp(min=0) ** t))
    return 2 * odd_power - 1


def additive_cosine(cos_target, cos_all, margin, t):
    """Type C: g(c) - m for the target class, g(c) + m for every class.

    Arguments
    ---------
    cos_target : torch.Tensor
        Cosines with the target class, [B].
    cos_all : torch.Tensor
        Cosines with all classes, [B, C].
    margin : float
        Additive cosine margin m.
    t : float
        Exponent of the similarity adjustment.

    Returns
    -------
    tuple of torch.Tensor
        Adjusted similarities of the positive [B] and the negative [B, C] classifiers.

    Example
    -------
    >>> pos, neg = additive_cosine(torch.tensor([0.5]), torch.tensor([[0.5, 0.0]]), 0.2, 1.0)
    >>> pos, neg
    (tensor([0.3000]), tensor([[0.7000, 0.2000]]))
    """
    return similarity_adjustment(cos_target, t) - margin, similarity_adjustment(cos_all, t) + margin


def additive_angular(cos_target, cos_all, margin, t):
    """Type A: g(cos(theta + m)) for the target, g(cos(max(theta - m, 0))) for every class.

    Past theta + m > pi the positive similarity continues as c - (1 + cos(pi - m)),
    which keeps it monotone in theta.

    Arguments
    ---------
    cos_target : torch.Tensor
        Cosines with the target class, [B].
    cos_all : torch.Tensor
        Cosines with all classes, [B, C].
    margin : float
        Additive angular margin m in radians.
    t : float
        Exponent of the similarity adjustment.

    Returns
    -------
    tuple of torch.Tensor
        Adjusted similarities of the positive [B] and the negative [B, C] classifiers.

    Example
    -------
    >>> pos, neg = additive_angular(torch.tensor([0.0]), torch.tensor([[0.0]]), math.pi / 6, 1.0)
    >>> round(pos.item(), 4), round(neg.item(), 4)
    (-0.5, 0.5)
    """
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    # cos(pi - m): the cosine at which theta + m reaches pi.
    turn = math.cos(math.pi - margin)

    c = cos_target.clamp(-1, 1)
    sin = torch.sqrt((1 - c * c).clamp(min=_EPS))
    pos = torch.where(c > turn, c * cos_m - sin * sin_m, c - (1 + turn))

    c = cos_all.clamp(-1, 1)
    sin = torch.sqrt((1 - c * c).clamp(min=_EPS))
    neg = torch.where(c < cos_m, c * cos_m + sin * sin_m, torch.ones_like(c))
    return similarity_adjustment(pos, t), similarity_adjustment(neg, t)


def multiplicative_angular(cos_target, cos_all, margin, t):
    """Type M: g(psi(theta)) for the target, g(c) for every class.

    psi(theta) = (-1)^k cos(m theta) - 2k with k = floor(m theta / pi) is cos(m theta)
    made monotone past theta = pi / m (the SphereFace construction). Here the margin
    is a multiplier, m >= 1 (1.5 to 1.7 in the face-recognition paper).

    Arguments
    ---------
    cos_target : torch.Tensor
        Cosines with the target class, [B].
    cos_all : torch.Tensor
        Cosines with all classes, [B, C].
    margin : float
        Multiplicative angular margin m >= 1.
    t : float
        Exponent of the similarity adjustment.

    Returns
    -------
    tuple of torch.Tensor
        Adjusted similarities of the positive [B] and the negative [B, C] classifiers.

    Example
    -------
    >>> pos, neg = multiplicative_angular(torch.tensor([0.0]), torch.tensor([[0.0]]), 2.0, 1.0)
    >>> round(pos.item(), 4), round(neg.item(), 4)
    (-1.0, 0.0)
    """
    theta = torch.acos(cos_target.clamp(-1 + _EPS, 1 - _EPS))
    m_theta = margin * theta
    k = torch.floor(m_theta / math.pi)
    sign = 1 - 2 * torch.remainder(k, 2)
    psi = sign * torch.cos(m_theta) - 2 * k
    return similarity_adjustment(psi, t), similarity_adjustment(cos_all, t)


MARGIN_TYPES = {
    "C": additive_cosine,
    "A": additive_angular,
    "M": multiplicative_angular,
}


def check_margin(margin, margin_type):
    """Raise ValueError when ``margin`` is not valid for ``margin_type``; return it as float.

    Example
    -------
    >>> check_margin(0.2, "C")
    0.2
    """
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise ValueError(f"margin must be a number, got {margin!r}") from None
    if not math.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin}")
    if margin_type == "A" and not 0 <= margin < math.pi:
        raise ValueError(f"type A margin must be in [0, pi) radians, got {margin}")
    if margin_type == "M" and margin < 1:
        raise ValueError(f"type M margin is a multiplier and must be >= 1, got {margin}")
    return margin


def closed_form_bias(num_classes, scale=32.0, margin=0.2, lambda_=0.7, t=3.0, margin_type="C"):
    """The bias b that balances the initial loss (original SphereFace2 initialisation).

    At initialisation all cosines are near 0; with a_y and a_n the scaled positive and
    negative similarities at cosine 0 and z = lambda / ((1 - lambda)(C - 1)),

        b = log(2z) - a_n - log(1 - z + sqrt((1 - z)^2 + 4z exp(a_y - a_n)))

    Arguments
    ---------
    num_classes : int
        Number of classes C.
    scale, margin, lambda_, t : float
        As in ``SphereFace2Loss``.
    margin_type : str
        "C", "A" or "M".

    Returns
    -------
    float
        The bias.

    Example
    -------
    >>> round(closed_form_bias(17982, scale=32.0, margin=0.2), 2)
    8.65
    >>> round(closed_form_bias(5994, scale=32.0, margin=0.2), 2)
    9.75
    """
    zero = torch.zeros(1, dtype=torch.float64)
    pos, neg = MARGIN_TYPES[margin_type](zero, zero[None], margin, t)
    a_y, a_n = scale * pos.item(), scale * neg.item()
    z = lambda_ / ((1 - lambda_) * (num_classes - 1))
    root = math.sqrt((1 - z) ** 2 + 4 * z * math.exp(a_y - a_n))
    return math.log(2 * z) - a_n - math.log(1 - z + root)


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
        if self.implementation == "lean":
            from sb_sphereface2.lean import lean_sphereface2_loss as loss_function
        else:
            loss_function = sphereface2_loss
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
