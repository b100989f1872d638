"""The negative binary classifiers of one chunk of classes: loss terms and gradient.

``negative_terms`` is the elementwise kernel of the lean loss (:mod:`lean`): for a
chunk of cosines it computes the negative logits z = s * h(c) + b (h: g and the margin
of type C, A or M, the maths of :mod:`margins`), the sum of softplus(z), the sum of
sigmoid(z) and the gradient sigmoid(z) * dz/dc, in one function written without
in-place operations. It is where the time goes (B x C elements, against B positives):
on CPU, for large problems, it runs compiled by ``torch.compile``, one fused loop per
row instead of some twenty passes over the chunk; when compilation is not possible (no
C compiler, an unsupported platform) it runs eagerly, with the same results.
``SB_SPHEREFACE2_COMPILE=0`` turns compilation off, ``=1`` forces it for any size and
device (``compile_wanted``).

The derivatives dz/dc are written out by hand; they reproduce what autograd computes
on the functions of :mod:`margins`, including its conventions at the clamp and
``where`` boundaries. ``negative_terms_autograd`` computes the same outputs with
autograd through those functions (slower; the tests' second reference).
"""

import logging
import math
import os

import torch
import torch.nn.functional as F

from sb_sphereface2.losses.margins import _EPS

logger = logging.getLogger(__name__)

# F.softplus returns its input (and a unit gradient) above this logit.
_SOFTPLUS_THRESHOLD = 20.0
# Problems smaller than this (B x C elements) are not worth a compilation (seconds to a
# minute, once per process): below it the loss is a small part of the step anyway.
COMPILE_MIN_ELEMENTS = 2**19


def _power_slope(u, t):
    """|u|^(t-1), so that sign(u)|u|^t = u * |u|^(t-1) and d/du of it is t |u|^(t-1)
    (also what autograd gives on the two-branch odd power of ``similarity_adjustment``)."""
    if t == 3:
        return u * u
    if float(t).is_integer() and int(t) % 2 == 1:
        return u.pow(t - 1)  # even power: no abs needed
    return u.abs().pow(t - 1)


def _log1p_of_small(x):
    """log(1 + x) for x in [0, 1] from vectorised operations only.

    ``torch.log1p`` is not vectorised on CPU (about ten times ``torch.log``, compiled
    or not); log1p(x) = log(v) - ((v - 1) - x) / v with v = 1 + x (rounded) is
    accurate to a few ulps.
    """
    v = x + 1
    return torch.log(v) - ((v - 1) - x) / v


def negative_terms(c, local_targets, const, cos_m, sin_m, slope_factor, settings,
                   need_sigmoid_sum, need_slope, out=None):
    """The negative binary classifiers of one chunk of classes: their loss and gradient.

    Column k of ``c`` is a class; row i's target class, if it is in the chunk, is column
    ``local_targets[i]`` and is skipped (it is a positive). With z = scale * h(c) + bias
    the negative logits (h: g and the margin of the margin type), this returns the sum
    of softplus(z), the number of z > 0 (active negative classifiers), the sum of
    sigmoid(z) (the bias gradient, up to a factor) and sigmoid(z) * ``slope_factor`` *
    dz/dc (the cosine gradient).

    Arguments
    ---------
    c : torch.Tensor
        Cosines [B, K].
    local_targets : torch.Tensor
        [B] long: column of the row's target class, or any index outside [0, K).
    const : torch.Tensor
        0-d: the bias, plus scale * margin for type C.
    cos_m, sin_m : torch.Tensor
        0-d: cos and sin of the margin (type A only).
    slope_factor : torch.Tensor
        0-d factor of the gradient (the weight of the negatives in the loss).
    settings : SphereFace2Settings
        Scale, t, margin type; with ``detach_adjustment`` the gradient is that of
        scale * c (g and the margin a constant offset).
    need_sigmoid_sum, need_slope : bool
        Which of the last two outputs to compute (None otherwise).
    out : torch.Tensor or None
        Where to write the gradient ([B, K]; a new tensor if None).

    Returns
    -------
    tuple
        (sum of softplus(z), number of z > 0, sum of sigmoid(z) or None, gradient [B, K]
        or None).

    Example
    -------
    >>> from sb_sphereface2.losses.margins import SphereFace2Settings
    >>> c = torch.tensor([[0.5, -0.5]])
    >>> one, zero = torch.tensor(1.0), torch.tensor(0.0)
    >>> settings = SphereFace2Settings(margin_type="M", scale=2.0, t=1.0)
    >>> loss, active, sig, grad = negative_terms(c, torch.tensor([1]), zero, one, zero, one,
    ...                                          settings, True, True)
    >>> round(loss.item(), 4), active.item(), round(sig.item(), 4), grad.tolist()
    (1.3133, 1, 0.7311, [[1.4621171951293945, 0.0]])
    """
    scale, t, margin_type = settings.scale, settings.t, settings.margin_type
    # Written without in-place operations: compiled, it becomes one loop per row.
    slope_wanted = need_slope and not settings.detach_adjustment
    dv = None  # dv/dc where it is not 1
    if margin_type == "A":
        # autograd's clamp passes no gradient at its bounds: mirror that exactly
        inside = (c > -1) & (c < 1)
        cc = c.clamp(-1, 1)
        one_minus = 1 - cc * cc
        sin = one_minus.clamp(min=_EPS).sqrt()
        below = cc < cos_m
        v = torch.where(below, cc * cos_m + sin * sin_m, 1.0)
        if slope_wanted:
            # d/dc cos(theta - m) = cos m - sin m * c / sin(theta), zero where clamped
            dsin = torch.where(one_minus > _EPS, cc / sin, 0.0)
            dv = (cos_m - sin_m * dsin) * (below & inside)
    else:
        v = c
    slope = None
    if t == 1:
        z = v * scale + const
        if slope_wanted and dv is not None:
            slope = dv * (slope_factor * scale)
    else:
        u = v * 0.5 + 0.5
        power = _power_slope(u, t)
        # g(v) = 2 u |u|^(t-1) - 1, so z = 2 scale u |u|^(t-1) + (const - scale)
        z = u * power * (2 * scale) + (const - scale)
        if slope_wanted:
            # dz/dv = scale * g'(v) = scale * t |u|^(t-1)
            slope = power * (slope_factor * (t * scale))
            if dv is not None:
                slope = slope * dv
    if need_slope and slope is None:
        slope = slope_factor * scale  # dz/dc is the constant scale

    # The target class is not a negative: z = -inf gives softplus 0, sigmoid 0.
    z = _mask_targets(z, local_targets)
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)); row sums first (one loop when compiled).
    terms = z.clamp(min=0) + _log1p_of_small(torch.exp(-z.abs()))
    # F.softplus returns z itself, and autograd a unit gradient, above its threshold;
    # in float32 the difference (exp(-z) < 2e-9) vanishes against z anyway.
    exact_threshold = z.dtype == torch.float64
    if exact_threshold:
        terms = torch.where(z > _SOFTPLUS_THRESHOLD, z, terms)
    softplus_sum = terms.sum(1).sum()
    active = (z > 0).sum(1).sum()
    if not (need_sigmoid_sum or need_slope):
        return softplus_sum, active, None, None
    sig = torch.sigmoid(z)
    if exact_threshold:
        sig = torch.where(z > _SOFTPLUS_THRESHOLD, 1.0, sig)
    sigmoid_sum = sig.sum(1).sum() if need_sigmoid_sum else None
    if not need_slope:
        return softplus_sum, active, sigmoid_sum, None
    return softplus_sum, active, sigmoid_sum, torch.mul(sig, slope, out=out)


def _mask_targets(z, local_targets, in_place=True):
    """z with -inf at (i, local_targets[i]) where that column is in range (in place
    when eager and ``in_place``)."""
    columns = z.shape[1]
    if torch.compiler.is_compiling() or not in_place:
        # compiled: a fused comparison, no buffer
        column = torch.arange(columns, device=z.device)
        return torch.where(column == local_targets.unsqueeze(1), -math.inf, z)
    # eager: B writes instead of a [B, K] mask
    here = (local_targets >= 0) & (local_targets < columns)
    index = torch.where(here, local_targets, 0).unsqueeze(1)
    return z.scatter_(1, index, torch.where(here.unsqueeze(1), -math.inf, z.gather(1, index)))


def negative_terms_autograd(c, local_targets, bias, margin, settings, slope_factor):
    """The outputs of ``negative_terms`` (all four) through the plain functions of
    ``margins``, differentiated by autograd; ``bias`` and ``margin`` as in the loss,
    ``slope_factor`` a float."""
    with torch.enable_grad():
        leaf = c.detach().requires_grad_()
        _, neg = settings.similarities(c.new_empty(0), leaf, margin)
        if settings.detach_adjustment:
            neg = leaf + (neg - leaf).detach()
        z = _mask_targets(settings.scale * neg + bias, local_targets, in_place=False)
        terms = F.softplus(z)
        (grad,) = torch.autograd.grad(terms, leaf, torch.full_like(terms, slope_factor))
    z = z.detach()
    sig = torch.where(z > _SOFTPLUS_THRESHOLD, 1.0, z.sigmoid())
    return terms.detach().sum(), (z > 0).sum(), sig.sum(), grad


def compile_wanted(device_type, elements):
    """Whether ``negative_terms`` should run compiled: on CPU for problems of at least
    ``COMPILE_MIN_ELEMENTS``; environment variable ``SB_SPHEREFACE2_COMPILE``: "0"
    never, "1" always (any device and size), unset or "auto" as described.

    Example
    -------
    >>> compile_wanted("cpu", 10) if os.environ.get("SB_SPHEREFACE2_COMPILE") is None else False
    False
    """
    setting = os.environ.get("SB_SPHEREFACE2_COMPILE", "auto").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    return device_type == "cpu" and elements >= COMPILE_MIN_ELEMENTS


class _Compiled:
    """``negative_terms`` compiled on first use; eager for good if compilation fails."""

    function = None
    failed = False


def compiled_negative_terms(*args):
    """``negative_terms(*args)``, compiled (the first call compiles: seconds to a
    minute); eagerly, and from then on always eagerly, if compilation fails."""
    if not _Compiled.failed:
        try:
            if _Compiled.function is None:
                _Compiled.function = torch.compile(negative_terms, dynamic=True)
            return _Compiled.function(*args)
        except Exception as error:  # no compiler, unsupported platform, ...
            _Compiled.failed = True
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            logger.info("torch.compile of the SphereFace2 loss failed (%s): running eagerly", first_line)
    return negative_terms(*args)
