"""The maths of SphereFace2: similarity adjustment, the three margin types, the bias.

* ``similarity_adjustment`` is g(c) = 2((c + 1)/2)^t - 1;
* ``additive_cosine`` (type C), ``additive_angular`` (type A) and
  ``multiplicative_angular`` (type M) map the target-class cosines and all cosines to
  the adjusted similarities of the positive and the negative binary classifiers;
* ``SphereFace2Settings`` is one configuration (margin type, scale, lambda, t, detach)
  with the one rule of a valid margin for its type;
* ``closed_form_bias`` is the bias that balances the initial loss.

For sample i with label y_i the logits are z = s * sim + b and the loss is

    L = mean_i [ lambda * softplus(-z+_i) + (1 - lambda) * sum_{j != y_i} softplus(z-_ij) ]

(``sb_sphereface2.losses.sphereface2``). References: Y. Wen et al., "SphereFace2: Binary
Classification is All You Need for Deep Face Recognition", ICLR 2022 (types C, A, M, the
closed-form bias); B. Han, Z. Chen, Y. Qian, "Exploring Binary Classification Loss for
Speaker Verification", ICASSP 2023 (types C and A for speakers, s = 32, lambda = 0.7, t = 3).
"""


import math
from dataclasses import dataclass

import torch

from sb_sphereface2.losses.base import finite_number

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


@dataclass(frozen=True)
class SphereFace2Settings:
    """One SphereFace2 configuration: what the loss, its kernels and the bias need besides
    the margin (which a ``MarginScheduler`` moves during training).

    Arguments
    ---------
    margin_type : str
        "C" (additive cosine), "A" (additive angular) or "M" (multiplicative angular).
    scale : float
        Scale s of the logits (> 0).
    lambda_ : float
        Weight of the positive term, in (0, 1); 1 - lambda_ weighs the negatives.
    t : float
        Exponent of the similarity adjustment g, t >= 1 (1 turns it off).
    detach_adjustment : bool
        If True, g and the margin are a detached offset (original SphereFace2); the
        default differentiates through them (speaker-verification paper).

    Example
    -------
    >>> settings = SphereFace2Settings(margin_type="A")
    >>> settings.check_margin(0.15)
    0.15
    >>> settings.check_margin(-0.1)
    Traceback (most recent call last):
    ...
    ValueError: the type A margin must be in [0, pi) radians, got -0.1
    """

    margin_type: str = "C"
    scale: float = 32.0
    lambda_: float = 0.7
    t: float = 3.0
    detach_adjustment: bool = False

    def __post_init__(self):
        if self.margin_type not in MARGIN_TYPES:
            raise ValueError(f"margin_type must be one of C, A, M, got {self.margin_type!r}")
        for name, low, high in (("scale", 0.0, math.inf), ("lambda_", 0.0, 1.0)):
            value = finite_number(name, getattr(self, name))
            if not low < value < high:
                bounds = f"> {low:g}" if high == math.inf else f"in ({low:g}, {high:g})"
                raise ValueError(f"{name} must be {bounds}, got {value:g}")
            object.__setattr__(self, name, value)
        t = finite_number("t", self.t)
        if not t >= 1:
            raise ValueError(f"t must be >= 1, got {t:g}")
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "detach_adjustment", bool(self.detach_adjustment))

    def check_margin(self, margin):
        """``margin`` as a float if it is valid for this margin type; ValueError otherwise.

        The one rule of a SphereFace2 margin: type C an additive cosine margin >= 0,
        type A an angle in [0, pi), type M an angle multiplier >= 1 (1: no margin).
        """
        margin = finite_number("margin", margin)
        allowed = {
            "C": (margin >= 0, "the type C margin must be >= 0"),
            "A": (0 <= margin < math.pi, "the type A margin must be in [0, pi) radians"),
            "M": (margin >= 1, "the type M margin is an angle multiplier and must be >= 1"),
        }
        ok, rule = allowed[self.margin_type]
        if not ok:
            raise ValueError(f"{rule}, got {margin:g}")
        return margin

    def similarities(self, cos_target, cos_all, margin):
        """The adjusted similarities (positive [B], negative [B, C]) of this margin type."""
        return MARGIN_TYPES[self.margin_type](cos_target, cos_all, margin, self.t)


def closed_form_bias(num_classes, margin, settings=SphereFace2Settings()):
    """The bias b that balances the initial loss (original SphereFace2 initialisation).

    At initialisation all cosines are near 0; with a_y and a_n the scaled positive and
    negative similarities at cosine 0 and z = lambda / ((1 - lambda)(C - 1)),

        b = log(2z) - a_n - log(1 - z + sqrt((1 - z)^2 + 4z exp(a_y - a_n)))

    The loss computes it at the margin in force at its first iteration
    (``SphereFace2Loss``: the margin scheduler's value at iteration 0).

    Arguments
    ---------
    num_classes : int
        Number of classes C.
    margin : float
        The margin in force when training starts.
    settings : SphereFace2Settings
        Scale, lambda, t and margin type.

    Returns
    -------
    float
        The bias.

    Example
    -------
    >>> round(closed_form_bias(17982, 0.2), 2)
    8.65
    >>> round(closed_form_bias(5994, 0.2), 2)
    9.75
    """
    zero = torch.zeros(1, dtype=torch.float64)
    pos, neg = settings.similarities(zero, zero[None], settings.check_margin(margin))
    a_y, a_n = settings.scale * pos.item(), settings.scale * neg.item()
    z = settings.lambda_ / ((1 - settings.lambda_) * (num_classes - 1))
    root = math.sqrt((1 - z) ** 2 + 4 * z * math.exp(a_y - a_n))
    return math.log(2 * z) - a_n - math.log(1 - z + root)
