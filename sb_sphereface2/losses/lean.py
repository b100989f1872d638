"""Lean SphereFace2: loss and gradient in one pass over class chunks.

The plain ``sphereface2_loss`` builds several [B, C] temporaries (adjusted cosines,
logits, both loss terms) and autograd keeps some of them for the backward pass.
Here a ``torch.autograd.Function`` walks the cosines in chunks of classes; for each
chunk it computes the loss terms of the negative classifiers *and* their derivative
with respect to the cosines, writes that derivative into a single [B, C] buffer and
drops everything else. Backward only scales the saved buffer by the incoming
gradient. Peak memory is therefore the cosines plus one [B, C] buffer plus a few
chunk-sized temporaries, and the work is a handful of passes over cache-sized chunks.

The derivatives of the negative similarities are written out by hand below for the
three margin types (``_negative_logits``); they reproduce what autograd computes on
the plain form, including its conventions at the clamp and ``where`` boundaries. The
B positive similarities (one per sample) are differentiated by autograd through the
very functions of ``sphereface2.py``. ``derivative="autograd"`` differentiates each
chunk of negatives with autograd instead (slower, used by the tests as a second
reference).

The loss is computed in the dtype of the cosines (float32 for half-precision
inputs, which ``SphereFace2Loss`` promotes) with autocast disabled, and uses
softplus/sigmoid only, so it stays finite for any finite cosine and bias.
"""

import math

import torch
import torch.nn.functional as F

from sb_sphereface2.losses.margins import _EPS, MARGIN_TYPES

# F.softplus returns its input (and a unit gradient) above this logit.
_SOFTPLUS_THRESHOLD = 20.0


def default_chunk_columns(batch_size, device_type):
    """Number of classes per chunk: about 128k elements on CPU (a few chunk buffers
    stay in a 2 MB L2 cache), about 4M elements on GPUs (few kernel launches).

    Example
    -------
    >>> default_chunk_columns(128, "cpu")
    1024
    """
    elements = 2**17 if device_type == "cpu" else 2**22
    return max(16, elements // max(1, batch_size))


def _power_slope(u, t):
    """|u|^(t-1), so that sign(u)|u|^t = u * |u|^(t-1) and d/du of it is t |u|^(t-1)
    (also what autograd gives on the two-branch odd power of ``similarity_adjustment``)."""
    if float(t).is_integer() and int(t) % 2 == 1:
        return u.pow(t - 1)  # even power: no abs needed (t = 3: one multiply)
    return u.abs().pow_(t - 1)


def _softplus_sum(z):
    """Sum of softplus(z) = max(z, 0) + log1p(exp(-|z|)), as ``F.softplus`` gives it.

    ``torch.log1p`` (hence ``F.softplus``) is not vectorised on CPU and costs about
    ten times ``torch.log``; log1p(x) = log(u) - ((u - 1) - x) / u with u = 1 + x
    (rounded) is accurate to a few ulps and uses only vectorised operations.
    """
    x = z.abs().neg_().exp_()
    u = x + 1
    tail = torch.log(u).sub_((u - 1).sub_(x).div_(u))
    if z.dtype == torch.float64:
        # F.softplus returns z itself above its threshold; in float32 the tail
        # exp(-z) < 2e-9 vanishes against z anyway.
        tail.masked_fill_(z > _SOFTPLUS_THRESHOLD, 0.0)
    return z.clamp(min=0).sum() + tail.sum()


def _negative_logits(c, const, scale, margin, t, margin_type, detach_adjustment, factor):
    """Logits z = scale * h(c) + bias of the negative classifiers on one chunk, and
    ``factor`` * dz/dc (a tensor or a float; None if ``factor`` is None).

    ``const`` is the 0-d tensor ``bias`` (+ ``scale * margin`` for type C, folded in).
    """
    slope_needed = factor is not None and not detach_adjustment
    dv = None  # dv/dc where it is not 1
    if margin_type == "A":
        cos_m, sin_m = math.cos(margin), math.sin(margin)
        # autograd's clamp passes no gradient at its bounds: mirror that exactly
        inside = (c > -1) & (c < 1)
        cc = c.clamp(-1, 1)
        one_minus = 1 - cc * cc
        sin = one_minus.clamp(min=_EPS).sqrt_()
        below = cc < cos_m
        v = torch.where(below, cc * cos_m + sin * sin_m, torch.ones_like(cc))
        if slope_needed:
            # d/dc cos(theta - m) = cos m - sin m * c / sin(theta), zero where clamped
            dsin = torch.where(one_minus > _EPS, cc / sin, torch.zeros_like(cc))
            dv = (cos_m - sin_m * dsin).mul_(below & inside)
        del one_minus, sin, below, inside, cc
    else:
        v = c
    if t == 1:
        z = torch.add(const, v, alpha=scale)
        slope = scale * factor if dv is None else dv.mul_(scale * factor)
    else:
        u = torch.add(const.new_tensor(0.5), v, alpha=0.5)
        power = _power_slope(u, t)
        # g(v) = 2 u |u|^(t-1) - 1, so z = 2 scale u |u|^(t-1) + (const - scale)
        z = torch.addcmul(const - scale, u, power, value=2 * scale)
        del u
        if slope_needed:
            # dz/dv = scale * g'(v) = scale * t |u|^(t-1)
            slope = power.mul_(t * scale * factor)
            if dv is not None:
                slope.mul_(dv)
    if not slope_needed:
        slope = None if factor is None else scale * factor
    return z, slope


def _negative_logits_autograd(c, bias, scale, margin, t, margin_type, detach_adjustment, factor):
    """Same as ``_negative_logits`` through the plain functions, differentiated by autograd."""
    with torch.enable_grad():
        leaf = c.detach().requires_grad_()
        _, neg = MARGIN_TYPES[margin_type](c.new_empty(0), leaf, margin, t)
        if detach_adjustment:
            neg = leaf + (neg - leaf).detach()
        z = scale * neg + bias
        (slope,) = torch.autograd.grad(z, leaf, torch.full_like(z, factor))
    return z.detach(), slope


def _graph_is_freed_after_backward():
    """True inside a backward pass run without ``retain_graph`` (saved tensors are
    released right after it); False when unsure."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if keep_graph is None:
        return False
    try:
        return not keep_graph()
    except RuntimeError:
        return False


class _LeanSphereFace2(torch.autograd.Function):
    """Loss and its gradients in the forward pass; backward scales the saved gradient."""

    @staticmethod
    def forward(ctx, cos, targets, bias, margin, scale, lambda_, t, margin_type, detach_adjustment,
                chunk_columns, derivative):
        batch, num_classes = cos.shape
        need_cos_grad, need_bias_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        need_grad = need_cos_grad or need_bias_grad
        bias = bias.to(cos.dtype)
        neg_weight = (1 - lambda_) / batch

        # --- positives: B values, differentiated by autograd through the plain maths.
        cos_target = cos.gather(1, targets.unsqueeze(1)).squeeze(1)
        with torch.enable_grad():
            ct = cos_target.detach().requires_grad_(need_cos_grad)
            b = bias.detach().requires_grad_(need_bias_grad)
            pos, _ = MARGIN_TYPES[margin_type](ct, cos.new_empty(0), margin, t)
            if detach_adjustment:
                pos = ct + (pos - ct).detach()
            pos_loss = F.softplus(-(scale * pos + b)).sum()
            wrt = [x for x in (ct, b) if x.requires_grad]
            pos_grads = torch.autograd.grad(pos_loss * (lambda_ / batch), wrt) if wrt else ()
        pos_loss = pos_loss.detach()
        pos_grads = list(pos_grads)
        grad_ct = pos_grads.pop(0) if need_cos_grad else None
        grad_bias_pos = pos_grads.pop(0) if need_bias_grad else None

        # --- negatives: chunk by chunk, loss and gradient together.
        const = bias + scale * margin if margin_type == "C" else bias
        grad_cos = torch.empty_like(cos) if need_cos_grad else None
        neg_loss = cos.new_zeros(())
        sig_total = cos.new_zeros(())
        minus_inf = cos.new_tensor(-math.inf)
        for start in range(0, num_classes, chunk_columns):
            stop = min(start + chunk_columns, num_classes)
            c = cos[:, start:stop]
            if derivative == "autograd":
                z, slope = _negative_logits_autograd(
                    c, bias, scale, margin, t, margin_type, detach_adjustment, neg_weight
                )
            else:
                z, slope = _negative_logits(
                    c, const, scale, margin, t, margin_type, detach_adjustment,
                    neg_weight if need_cos_grad else None,
                )
            # The target class is not a negative: z = -inf gives softplus 0, sigmoid 0.
            local = targets - start
            here = (local >= 0) & (local < stop - start)
            index = torch.where(here, local, 0).unsqueeze(1)
            z.scatter_(1, index, torch.where(here.unsqueeze(1), minus_inf, z.gather(1, index)))
            neg_loss += _softplus_sum(z)
            if not need_grad:
                continue
            if z.dtype == torch.float64:
                # Autograd of F.softplus passes a unit gradient above its threshold.
                saturated = z > _SOFTPLUS_THRESHOLD
                sig = z.sigmoid_().masked_fill_(saturated, 1.0)
            else:
                sig = z.sigmoid_()  # equals 1 exactly above the threshold in float32
            if need_bias_grad:
                sig_total += sig.sum()
            if need_cos_grad:
                torch.mul(sig, slope, out=grad_cos[:, start:stop])
            del z, sig, slope

        loss = (lambda_ * pos_loss + (1 - lambda_) * neg_loss) / batch
        if need_cos_grad:
            grad_cos.scatter_(1, targets.unsqueeze(1), grad_ct.unsqueeze(1))
        grad_bias = grad_bias_pos + neg_weight * sig_total if need_bias_grad else None
        ctx.save_for_backward(grad_cos, grad_bias)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grad_cos, grad_bias = ctx.saved_tensors
        if grad_cos is not None:
            if _graph_is_freed_after_backward():
                # The saved buffer dies with this backward pass: scale it in place
                # instead of allocating a second [B, C] buffer.
                grad_cos = grad_cos.mul_(grad_output)
            else:
                grad_cos = grad_cos * grad_output
        return (
            grad_cos,
            None,
            grad_bias * grad_output if grad_bias is not None else None,
        ) + (None,) * 8


def lean_sphereface2_loss(cos, targets, bias, margin, scale, lambda_, t, margin_type,
                          detach_adjustment, chunk_columns=None, derivative="analytic"):
    """The SphereFace2 loss of ``sphereface2_loss`` computed chunk by chunk.

    Same arguments and value as ``sphereface2.sphereface2_loss``; first-order gradients
    with respect to ``cos`` and ``bias`` are computed in the forward pass and kept as a
    single [B, C] buffer. Higher-order gradients are not supported (use the plain form).

    Arguments
    ---------
    cos : torch.Tensor
        Cosines [B, C]; float16/bfloat16 are promoted to float32, and the loss is
        computed with autocast disabled.
    targets : torch.Tensor
        Labels [B] (long).
    bias : torch.Tensor
        0-d bias b.
    margin, scale, lambda_, t : float
        As in ``SphereFace2Loss``.
    margin_type : str
        "C", "A" or "M".
    detach_adjustment : bool
        As in ``SphereFace2Loss``.
    chunk_columns : int or None
        Classes per chunk; None picks ``default_chunk_columns``.
    derivative : str
        "analytic" (hand-written derivatives, the default) or "autograd" (per-chunk
        autograd through the plain functions).

    Returns
    -------
    torch.Tensor
        The scalar loss, mean over the batch.

    Example
    -------
    >>> from sb_sphereface2.losses.sphereface2 import sphereface2_loss
    >>> cos = torch.tensor([[0.9, -0.1, 0.2], [0.3, 0.5, -0.7]])
    >>> args = (torch.tensor([0, 1]), torch.tensor(1.0), 0.2, 32.0, 0.7, 3.0, "C", False)
    >>> lean = lean_sphereface2_loss(cos, *args, chunk_columns=2)
    >>> torch.allclose(lean, sphereface2_loss(cos, *args))
    True
    """
    if cos.dim() != 2:
        raise ValueError(f"expected cosines [B, C], got shape {tuple(cos.shape)}")
    if derivative not in ("analytic", "autograd"):
        raise ValueError(f"derivative must be 'analytic' or 'autograd', got {derivative!r}")
    if chunk_columns is None:
        chunk_columns = default_chunk_columns(cos.shape[0], cos.device.type)
    chunk_columns = int(chunk_columns)
    if chunk_columns < 1:
        raise ValueError(f"chunk_columns must be >= 1, got {chunk_columns}")
    if cos.dtype in (torch.float16, torch.bfloat16):
        cos = cos.float()  # differentiable: the gradient comes back in half precision
    with torch.autocast(device_type=cos.device.type, enabled=False):
        return _LeanSphereFace2.apply(
            cos, targets, bias, float(margin), float(scale), float(lambda_), float(t),
            margin_type, bool(detach_adjustment), chunk_columns, derivative,
        )
