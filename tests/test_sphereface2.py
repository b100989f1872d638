"""SphereFace2 loss against an independent implementation written element by element from
the formulas of the SphereFace2 papers (Wen et al., ICLR 2022; Han et al., ICASSP 2023)."""

import math

import pytest
import torch

from sb_sphereface2 import MarginScheduler, SphereFace2Head, SphereFace2Loss, SphereFace2Settings, closed_form_bias


# ---------------------------------------------------------------------------
# Independent reference: element by element, float64, straight from the formulas.
# ---------------------------------------------------------------------------
def ref_g(x, t):
    return 2.0 * ((x + 1.0) / 2.0) ** t - 1.0


def ref_positive(c, m, t, kind):
    theta = math.acos(max(-1.0, min(1.0, c)))
    if kind == "C":
        return ref_g(c, t) - m
    if kind == "A":
        if theta + m <= math.pi:
            return ref_g(math.cos(theta + m), t)
        return ref_g(c - (1 + math.cos(math.pi - m)), t)
    k = math.floor(m * theta / math.pi)
    return ref_g((-1) ** k * math.cos(m * theta) - 2 * k, t)


def ref_negative(c, m, t, kind):
    theta = math.acos(max(-1.0, min(1.0, c)))
    if kind == "C":
        return ref_g(c, t) + m
    if kind == "A":
        return ref_g(math.cos(max(theta - m, 0.0)), t)
    return ref_g(c, t)


def ref_softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def reference_loss(cos, labels, bias, margin, scale, lam, t, kind):
    total = 0.0
    for i, row in enumerate(cos.tolist()):
        y = int(labels[i])
        for j, c in enumerate(row):
            if j == y:
                total += lam * ref_softplus(-(scale * ref_positive(c, margin, t, kind) + bias))
            else:
                total += (1 - lam) * ref_softplus(scale * ref_negative(c, margin, t, kind) + bias)
    return total / len(labels)


def reference_gradient(cos, labels, bias, margin, scale, lam, t, kind, detach, h=1e-6):
    """Central finite differences of the reference (or the plain s*c gradient when detached)."""
    grad = torch.zeros_like(cos)
    flat = cos.clone()
    for idx in range(cos.numel()):
        i, j = divmod(idx, cos.shape[1])
        y = int(labels[i])
        if detach:
            c = cos[i, j].item()
            if j == y:
                z = scale * ref_positive(c, margin, t, kind) + bias
                grad[i, j] = -lam * scale * torch.sigmoid(torch.tensor(-z)).item()
            else:
                z = scale * ref_negative(c, margin, t, kind) + bias
                grad[i, j] = (1 - lam) * scale * torch.sigmoid(torch.tensor(z)).item()
            grad[i, j] /= len(labels)
            continue
        plus, minus = flat.clone(), flat.clone()
        plus[i, j] += h
        minus[i, j] -= h
        f_plus = reference_loss(plus, labels, bias, margin, scale, lam, t, kind)
        f_minus = reference_loss(minus, labels, bias, margin, scale, lam, t, kind)
        grad[i, j] = (f_plus - f_minus) / (2 * h)
    return grad


SETTINGS = [("C", 0.2), ("A", 0.15), ("M", 1.7)]


@pytest.mark.parametrize("kind,margin", SETTINGS)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("implementation", ["lean", "plain"])
def test_matches_independent_reference(kind, margin, detach, implementation):
    torch.manual_seed(0)
    B, C = 5, 7
    # Keep cosines away from +-1 and from the kinks of the piecewise definitions.
    cos = (torch.rand(B, C, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    labels = torch.randint(0, C, (B,))
    loss_fn = SphereFace2Loss(
        C, SphereFace2Settings(margin_type=kind, scale=16.0, detach_adjustment=detach), margin=margin,
        bias_init=1.5, implementation=implementation,
    ).double()
    loss = loss_fn(cos.unsqueeze(1), labels.unsqueeze(1))
    loss.backward()

    expected = reference_loss(cos.detach(), labels, 1.5, margin, 16.0, 0.7, 3.0, kind)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    # The loss's parts, as the training log shows them, from the same element-by-element sums.
    terms = {name: value.item() for name, value in loss_fn.last_terms.items()}
    positive = sum(0.7 * ref_softplus(-(16.0 * ref_positive(c, margin, 3.0, kind) + 1.5))
                   for row, y in zip(cos.tolist(), labels.tolist()) for j, c in enumerate(row) if j == y) / B
    active = sum(16.0 * ref_negative(c, margin, 3.0, kind) + 1.5 > 0
                 for row, y in zip(cos.tolist(), labels.tolist()) for j, c in enumerate(row) if j != y)
    assert terms["positive_term"] == pytest.approx(positive, rel=1e-10)
    assert terms["negative_term"] == pytest.approx(expected - positive, rel=1e-10)
    assert terms["negative_active"] == pytest.approx(active / (B * (C - 1)), rel=1e-12)
    assert terms["bias"] == 1.5
    grad = reference_gradient(cos.detach(), labels, 1.5, margin, 16.0, 0.7, 3.0, kind, detach)
    torch.testing.assert_close(cos.grad, grad, rtol=1e-5, atol=1e-7)


def test_bias_gradient_matches_reference():
    torch.manual_seed(1)
    cos = torch.rand(4, 6, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 6, (4,))
    loss_fn = SphereFace2Loss(6, bias_init=-2.0).double()
    loss_fn(cos, labels).backward()
    h = 1e-6
    f = lambda b: reference_loss(cos, labels, b, 0.2, 32.0, 0.7, 3.0, "C")  # noqa: E731
    assert loss_fn.bias.grad.item() == pytest.approx((f(-2.0 + h) - f(-2.0 - h)) / (2 * h), rel=1e-5)


@pytest.mark.parametrize("kind,margin", SETTINGS)
def test_gradcheck_float64(kind, margin):
    """gradcheck compares with finite differences, so it applies to the differentiated
    form only; the detached form is checked against its own reference above."""
    torch.manual_seed(2)
    cos = (torch.rand(3, 5, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    labels = torch.tensor([0, 2, 4])
    loss_fn = SphereFace2Loss(5, SphereFace2Settings(margin_type=kind, scale=8.0), margin=margin, bias_init=0.5).double()
    assert torch.autograd.gradcheck(lambda c, b: _loss_with_bias(loss_fn, c, b, labels),
                                    (cos, loss_fn.bias.detach().clone().requires_grad_()))


def _loss_with_bias(loss_fn, cos, bias, labels):
    from sb_sphereface2.losses.sphereface2 import plain_block_loss

    return plain_block_loss(cos, labels, 0, bias, loss_fn.margin, loss_fn.settings, cos.shape[0])[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,margin", SETTINGS)
def test_finite_under_autocast_at_extremes(dtype, kind, margin):
    """Cosines exactly at +-1 and a large bias: loss and gradients stay finite."""
    head = SphereFace2Head(8, 6)
    loss_fn = SphereFace2Loss(6, SphereFace2Settings(margin_type=kind), margin=margin, bias_init=15.0)
    emb = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        cos = head(emb)
        # Force exact +-1 cosines in the low-precision dtype.
        extremes = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 1.0]).to(cos.dtype)
        cos = cos * 0 + extremes
        loss = loss_fn(cos, torch.tensor([0, 1, 2, 3]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(loss_fn.bias.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_under_autocast_random_with_closed_form_bias(dtype):
    torch.manual_seed(3)
    head = SphereFace2Head(32, 500)
    loss_fn = SphereFace2Loss(500)
    emb = torch.randn(16, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        loss = loss_fn(head(emb), torch.randint(0, 500, (16,)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
    assert torch.isfinite(head.weight.grad).all()


def test_closed_form_bias_worked_values():
    assert closed_form_bias(17982, 0.2) == pytest.approx(8.65, abs=0.005)
    assert closed_form_bias(5994, 0.2) == pytest.approx(9.75, abs=0.005)
    loss_fn = SphereFace2Loss(17982, margin=0.2)
    assert loss_fn.bias.item() == pytest.approx(8.65, abs=0.005)


@pytest.mark.parametrize("kind,margin", SETTINGS)
def test_closed_form_bias_balances_initial_loss(kind, margin):
    """At cosine 0 the positive and negative gradients of the loss balance the bias:
    dL/db = 0 by construction (up to the float32 rounding of the stored bias), while
    a zero bias is far from balanced."""
    C = 1000
    cos = torch.zeros(2, C, dtype=torch.float64)
    grads = []
    for bias_init in ("closed_form", 0.0):
        loss_fn = SphereFace2Loss(C, SphereFace2Settings(margin_type=kind), margin=margin, bias_init=bias_init).double()
        loss_fn(cos, torch.tensor([0, 1])).backward()
        grads.append(abs(loss_fn.bias.grad.item()))
    assert grads[0] < 1e-5
    assert grads[1] > 0.1


def test_accepts_speechbrain_classifier_output():
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier

    classifier = Classifier(input_size=16, lin_neurons=16, out_neurons=9)
    loss_fn = SphereFace2Loss(9)
    emb = torch.randn(4, 1, 16)
    loss = loss_fn(classifier(emb), torch.tensor([[1], [2], [3], [4]]), torch.ones(4))
    loss.backward()
    assert torch.isfinite(loss)
    assert classifier.weight.grad is not None


def test_head_matches_speechbrain_classifier_weights():
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier

    classifier = Classifier(input_size=16, lin_neurons=16, out_neurons=9)
    head = SphereFace2Head(16, 9)
    head.load_state_dict(classifier.state_dict())
    emb = torch.randn(3, 1, 16)
    torch.testing.assert_close(head(emb), classifier(emb))
    torch.testing.assert_close(head(emb.squeeze(1)), classifier(emb))


@pytest.mark.parametrize("kind,final,ramp_start", [("C", 0.2, 1), ("C", 0.2, 20), ("A", 0.15, 1), ("M", 1.5, 20)])
def test_margin_and_bias_at_the_start_are_the_schedules_value_at_iteration_0(kind, final, ramp_start):
    """The one bias rule: the loss starts at the margin its schedule gives at iteration 0
    (the final margin when the ramp is done before the first epoch) and takes the
    closed-form bias there."""
    initial = 1.0 if kind == "M" else 0.0
    schedule = MarginScheduler(final_margin=final, initial_margin=initial, start_epoch=ramp_start,
                               fix_epoch=ramp_start + (ramp_start > 1) * 20)
    settings = SphereFace2Settings(margin_type=kind)
    loss_fn = SphereFace2Loss(100, settings, margin_scheduler=schedule)
    start = final if ramp_start == 1 else initial
    assert loss_fn.margin == start
    assert loss_fn.bias.item() == pytest.approx(closed_form_bias(100, start, settings), rel=1e-6)


def test_a_schedule_whose_margins_the_loss_refuses_is_an_error_when_built():
    with pytest.raises(ValueError, match="margin_scheduler.final_margin: the type C margin must be >= 0"):
        SphereFace2Loss(10, margin_scheduler=MarginScheduler(final_margin=-0.1, start_epoch=2, fix_epoch=3))
    with pytest.raises(ValueError, match="margin_scheduler.initial_margin: the type M margin"):
        SphereFace2Loss(10, SphereFace2Settings(margin_type="M"), margin_scheduler=MarginScheduler(final_margin=1.5))


def test_margin_is_settable():
    loss_fn = SphereFace2Loss(4, margin=0.0)
    cos = torch.rand(2, 4) * 2 - 1
    labels = torch.tensor([0, 1])
    before = loss_fn(cos, labels).item()
    loss_fn.margin = 0.3
    assert loss_fn(cos, labels).item() > before


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(num_classes=10, lambda_=1.0), "lambda_"),
        (dict(num_classes=10, lambda_=0.0), "lambda_"),
        (dict(num_classes=10, t=0.5), "t must be"),
        (dict(num_classes=10, margin_type="X"), "margin_type"),
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=10, margin_type="M", margin=0.4), "multiplier"),
        (dict(num_classes=10, margin=-0.1), "type C margin must be >= 0"),
        (dict(num_classes=10, margin=float("nan")), "finite"),
        (dict(num_classes=10, bias_init="zero"), "bias_init"),
    ],
)
def test_bad_hparams_raise(kwargs, needle):
    fields = {k: kwargs.pop(k) for k in ("lambda_", "t", "margin_type") if k in kwargs}
    with pytest.raises(ValueError, match=needle):
        SphereFace2Loss(settings=SphereFace2Settings(**fields), **kwargs)


def test_finite_cosines_whose_sum_overflows_pass_the_check():
    from sb_sphereface2.losses.base import flatten_outputs

    big = torch.full((2, 3), 3e38)  # finite in float32, their sum is not
    cos, _ = flatten_outputs(big, torch.tensor([0, 1]), 3)
    assert torch.equal(cos, big)


def test_bad_inputs_raise():
    loss_fn = SphereFace2Loss(5)
    cos = torch.zeros(2, 1, 5)
    with pytest.raises(ValueError, match="labels must be in"):
        loss_fn(cos, torch.tensor([[0], [5]]))
    with pytest.raises(ValueError, match="labels must be in"):
        loss_fn(cos, torch.tensor([[-1], [0]]))
    with pytest.raises(ValueError, match="finite, found nan"):
        loss_fn(torch.full((2, 1, 5), float("nan")), torch.tensor([[0], [1]]))
    one_inf = torch.zeros(2, 1, 5)
    one_inf[1, 0, 3] = -float("inf")
    with pytest.raises(ValueError, match="finite, found -inf"):
        loss_fn(one_inf, torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="shape"):
        loss_fn(torch.zeros(2, 1, 4), torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="integers"):
        loss_fn(cos, torch.tensor([[0.0], [1.0]]))
    with pytest.raises(ValueError, match="margin"):
        loss_fn.margin = "big"
