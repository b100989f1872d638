"""Lean SphereFace2: the loss of a block of classes and its gradient in one pass.

The plain form (``sphereface2.plain_block_loss``) builds several [B, C] temporaries
(adjusted cosines, logits, both loss terms) and autograd keeps some of them for the
backward pass. Here a ``torch.autograd.Function`` walks the cosines in chunks of
classes; for each chunk ``negatives.negative_terms`` computes the loss terms of the
negative classifiers *and* their derivative with respect to the cosines (compiled on
CPU for large problems), writes the derivative into a single [B, C] buffer and drops
everything else. Backward only scales the saved buffer by the incoming gradient. Peak
memory is the cosines plus one [B, C] buffer plus chunk-sized temporaries.

The B positive similarities (at most one per sample) are differentiated by autograd
through the very functions of :mod:`margins`. ``derivative="autograd"`` differentiates
each chunk of negatives with autograd as well (slower; the tests' second reference).

The loss is computed in the dtype of the cosines (float32 for half-precision inputs)
with autocast disabled, and uses softplus/sigmoid only, so it stays finite for any
finite cosine and bias.
"""

import math

import torch
import torch.nn.functional as F

from sb_sphereface2.losses.negatives import (
    compile_wanted,
    compiled_negative_terms,
    negative_terms,
    negative_terms_autograd,
)


def default_chunk_columns(batch_size, device_type, compiled=False):
    """Number of classes per chunk: eagerly, about 128k elements on CPU (the chunk
    temporaries stay in a 1 MB L2 cache) and 4M on GPUs (few kernel launches); compiled,
    16M (in effect the whole head: the fused kernel keeps no chunk temporaries).

    Example
    -------
    >>> default_chunk_columns(128, "cpu")
    1024
    """
    if compiled:
        elements = 2**24
    else:
        elements = 2**17 if device_type == "cpu" else 2**22
    return max(16, elements // max(1, batch_size))


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


def _positive_terms(cos_target, here, bias, margin, settings, weight, need_cos_grad, need_bias_grad):
    """Sum of softplus(-z+) over the samples whose target is ``here``, and the gradients
    of ``weight`` times it (autograd through the functions of ``margins``: B values)."""
    with torch.enable_grad():
        ct = cos_target.detach().requires_grad_(need_cos_grad)
        b = bias.detach().requires_grad_(need_bias_grad)
        pos, _ = settings.similarities(ct, ct.new_empty(0), margin)
        if settings.detach_adjustment:
            pos = ct + (pos - ct).detach()
        loss = torch.where(here, F.softplus(-(settings.scale * pos + b)), 0.0).sum()
        wrt = [x for x in (ct, b) if x.requires_grad]
        grads = list(torch.autograd.grad(loss * weight, wrt)) if wrt else []
    grad_ct = grads.pop(0) if need_cos_grad else None
    grad_bias = grads.pop(0) if need_bias_grad else None
    return loss.detach(), grad_ct, grad_bias


class _LeanBlockLoss(torch.autograd.Function):
    """Loss and its gradients in the forward pass; backward scales the saved gradient.

    Returns the loss and its ``terms`` (not differentiable): [positive part, negative
    part, number of active negative classifiers]."""

    @staticmethod
    def forward(ctx, cos, bias, targets, start, margin, settings, normaliser, chunk_columns, derivative):
        num_classes = cos.shape[1]
        need_cos_grad, need_bias_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        lambda_, scale = settings.lambda_, settings.scale
        bias = bias.to(cos.dtype)
        local = targets - start
        here = (local >= 0) & (local < num_classes)
        index = torch.where(here, local, 0).unsqueeze(1)

        # --- positives: at most B values, differentiated by autograd.
        pos_loss, grad_ct, grad_bias_pos = _positive_terms(
            cos.gather(1, index).squeeze(1), here, bias, margin, settings, lambda_ / normaliser,
            need_cos_grad, need_bias_grad,
        )

        # --- negatives: chunk by chunk, loss and gradient together.
        neg_weight = (1 - lambda_) / normaliser
        const = bias + scale * margin if settings.margin_type == "C" else bias
        cos_m = cos.new_tensor(math.cos(margin))
        sin_m = cos.new_tensor(math.sin(margin))
        slope_factor = cos.new_tensor(neg_weight)
        compiled = derivative == "analytic" and compile_wanted(cos.device.type, cos.numel())
        if chunk_columns is None:
            chunk_columns = default_chunk_columns(cos.shape[0], cos.device.type, compiled)
        if derivative == "autograd":
            def terms(c, local_targets, out):
                results = negative_terms_autograd(c, local_targets, bias, margin, settings, neg_weight)
                if out is not None:
                    out.copy_(results[3])
                return results
        else:
            run = compiled_negative_terms if compiled else negative_terms

            def terms(c, local_targets, out):
                return run(c, local_targets, const, cos_m, sin_m, slope_factor, settings,
                           need_bias_grad, need_cos_grad, out)
        grad_cos = torch.empty_like(cos) if need_cos_grad else None
        neg_loss = cos.new_zeros(())
        active = cos.new_zeros(())
        sig_total = cos.new_zeros(())
        for first in range(0, num_classes, chunk_columns):
            last = min(first + chunk_columns, num_classes)
            out = grad_cos[:, first:last] if need_cos_grad else None
            softplus_sum, active_sum, sigmoid_sum, _ = terms(cos[:, first:last], local - first, out)
            neg_loss += softplus_sum
            active += active_sum
            if need_bias_grad:
                sig_total += sigmoid_sum

        loss = (lambda_ * pos_loss + (1 - lambda_) * neg_loss) / normaliser
        parts = torch.stack([lambda_ * pos_loss / normaliser, (1 - lambda_) * neg_loss / normaliser, active])
        if need_cos_grad:
            kept = grad_cos.gather(1, index).squeeze(1)  # rows whose target is elsewhere
            grad_cos.scatter_(1, index, torch.where(here, grad_ct, kept).unsqueeze(1))
        grad_bias = grad_bias_pos + neg_weight * sig_total if need_bias_grad else None
        ctx.save_for_backward(grad_cos, grad_bias)
        ctx.mark_non_differentiable(parts)
        return loss, parts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, _grad_parts):
        grad_cos, grad_bias = ctx.saved_tensors
        unit = grad_output.device.type == "cpu" and grad_output.item() == 1.0
        if grad_cos is not None and not unit:  # (loss.backward(): no pass over [B, C])
            if _graph_is_freed_after_backward():
                # The saved buffer dies with this backward pass: scale it in place
                # instead of allocating a second [B, C] buffer.
                grad_cos = grad_cos.mul_(grad_output)
            else:
                grad_cos = grad_cos * grad_output
        grad_bias = grad_bias * grad_output if grad_bias is not None else None
        # One gradient per input of forward: cos and bias are differentiable.
        return grad_cos, grad_bias, None, None, None, None, None, None, None


def lean_block_loss(cos, targets, start, bias, margin, settings, normaliser, chunk_columns=None,
                    derivative="analytic"):
    """The SphereFace2 loss terms of the classes [start, start + K), chunk by chunk.

    Same arguments and value as ``sphereface2.class_block_loss``; first-order gradients
    with respect to ``cos`` and ``bias`` are computed in the forward pass and kept as a
    single [B, K] buffer. Higher-order gradients are not supported (use the plain form).

    Arguments
    ---------
    cos : torch.Tensor
        Cosines [B, K] with classes start .. start + K - 1; float16/bfloat16 are
        promoted to float32, and the loss is computed with autocast disabled.
    targets : torch.Tensor
        Global class labels [B] (long).
    start : int
        Class of column 0.
    bias : torch.Tensor
        0-d bias b.
    margin : float
        The margin in force.
    settings : SphereFace2Settings
        Margin type, scale, lambda, t, detach.
    normaliser : float
        The sum of the terms is divided by it (B for the batch mean).
    chunk_columns : int or None
        Classes per chunk; None picks ``default_chunk_columns``.
    derivative : str
        "analytic" (hand-written derivatives, the default) or "autograd" (per-chunk
        autograd through the plain functions).

    Returns
    -------
    tuple
        The scalar loss and its terms ([3], not differentiable: the positive part, the
        negative part, the number of negative logits above 0).

    Example
    -------
    >>> from sb_sphereface2.losses.margins import SphereFace2Settings
    >>> cos, y = torch.tensor([[0.9, -0.1, 0.2], [0.3, 0.5, -0.7]]), torch.tensor([0, 2])
    >>> args = (torch.tensor(1.0), 0.2, SphereFace2Settings(), 2)
    >>> whole, terms = lean_block_loss(cos, y, 0, *args)
    >>> parts = lean_block_loss(cos[:, :2], y, 0, *args)[0] + lean_block_loss(cos[:, 2:], y, 2, *args)[0]
    >>> torch.allclose(whole, parts), torch.allclose(terms[:2].sum(), whole)
    (True, True)
    """
    if cos.dim() != 2:
        raise ValueError(f"expected cosines [B, C], got shape {tuple(cos.shape)}")
    if derivative not in ("analytic", "autograd"):
        raise ValueError(f"derivative must be 'analytic' or 'autograd', got {derivative!r}")
    if chunk_columns is not None:
        chunk_columns = int(chunk_columns)
        if chunk_columns < 1:
            raise ValueError(f"chunk_columns must be >= 1, got {chunk_columns}")
    if cos.dtype in (torch.float16, torch.bfloat16):
        cos = cos.float()  # differentiable: the gradient comes back in half precision
    with torch.autocast(device_type=cos.device.type, enabled=False):
        return _LeanBlockLoss.apply(cos, bias, targets, int(start), float(margin), settings,
                                    float(normaliser), chunk_columns, derivative)
