"""The lean (chunked, gradient-in-forward) SphereFace2 loss against the plain autograd form."""

import pytest
import torch

from sb_sphereface2 import SphereFace2Head, SphereFace2Loss, SphereFace2Settings
from sb_sphereface2.losses import negatives
from sb_sphereface2.losses.lean import lean_block_loss
from sb_sphereface2.losses.margins import closed_form_bias
from sb_sphereface2.losses.negatives import COMPILE_MIN_ELEMENTS, compile_wanted
from sb_sphereface2.losses.sphereface2 import class_block_loss

SETTINGS = [("C", 0.2), ("A", 0.15), ("M", 1.5)]


def _settings(margin, scale, lambda_, t, kind, detach):
    """(margin, SphereFace2Settings): the loss arguments after the bias."""
    return margin, SphereFace2Settings(margin_type=kind, scale=scale, lambda_=lambda_, t=t, detach_adjustment=detach)


def sphereface2_loss(cos, labels, bias, margin, settings):
    """The plain loss of all classes, batch mean (the reference)."""
    return class_block_loss(cos, labels, 0, bias, margin, settings, cos.shape[0], implementation="plain")[0]


def lean_sphereface2_loss(cos, labels, bias, margin, settings, **options):
    """The lean loss of all classes, batch mean."""
    return lean_block_loss(cos, labels, 0, bias, margin, settings, cos.shape[0], **options)[0]


def _cosines(batch, classes, dtype, seed):
    """Random cosines with exact +-1, 0 and values just past +-1 (rounding of a matmul)."""
    gen = torch.Generator().manual_seed(seed)
    cos = torch.rand(batch, classes, generator=gen, dtype=dtype) * 2 - 1
    cos[0, :4] = torch.tensor([1.0, -1.0, 0.0, 1.0], dtype=dtype)
    cos[1, :3] = torch.tensor([1.0 + 1e-7, -1.0 - 1e-7, 0.999], dtype=dtype)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    labels[0], labels[1] = 0, 1  # targets at +1 and at -1 - 1e-7
    return cos, labels


def _loss_and_grads(fn, cos, labels, bias, args):
    cos = cos.clone().requires_grad_()
    bias = bias.clone().requires_grad_()
    loss = fn(cos, labels, bias, *args)
    loss.backward()
    return loss.detach(), cos.grad, bias.grad


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


@pytest.mark.parametrize("kind,margin", SETTINGS)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("t", [3.0, 1.0, 2.5])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_lean_equals_plain(kind, margin, detach, t, dtype, tol):
    cos, labels = _cosines(9, 53, dtype, seed=1)
    bias = torch.tensor(closed_form_bias(53, margin, SphereFace2Settings(kind, 32.0, 0.7, t)), dtype=dtype)
    args = _settings(margin, 32.0, 0.7, t, kind, detach)
    ref = _loss_and_grads(sphereface2_loss, cos, labels, bias, args)
    # 1 column, a chunk not dividing C, exactly C, more than C, the default.
    for chunk in (1, 7, 53, 100, None):
        got = _loss_and_grads(
            lambda *a: lean_sphereface2_loss(*a, chunk_columns=chunk), cos, labels, bias, args
        )
        for name, g, r in zip(("loss", "cos grad", "bias grad"), got, ref):
            assert _rel(g, r) < tol, (name, chunk, _rel(g, r))


@pytest.mark.parametrize("kind,margin", SETTINGS)
@pytest.mark.parametrize("detach", [False, True])
def test_analytic_derivatives_equal_per_chunk_autograd(kind, margin, detach):
    cos, labels = _cosines(6, 40, torch.float64, seed=2)
    bias = torch.tensor(3.0, dtype=torch.float64)
    args = _settings(margin, 16.0, 0.7, 3.0, kind, detach)
    analytic = _loss_and_grads(
        lambda *a: lean_sphereface2_loss(*a, chunk_columns=9), cos, labels, bias, args
    )
    autograd = _loss_and_grads(
        lambda *a: lean_sphereface2_loss(*a, chunk_columns=9, derivative="autograd"),
        cos, labels, bias, args,
    )
    for g, r in zip(analytic, autograd):
        assert _rel(g, r) < 1e-12


@pytest.mark.parametrize("kind,margin", SETTINGS)
def test_gradcheck_lean_float64(kind, margin):
    torch.manual_seed(4)
    cos = (torch.rand(3, 7, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    bias = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 6])

    def loss(c, b):
        return lean_sphereface2_loss(c, labels, b, *_settings(margin, 8.0, 0.7, 3.0, kind, False),
                                     chunk_columns=3)

    assert torch.autograd.gradcheck(loss, (cos, bias))


def test_retain_graph_backward_twice_accumulates_the_same_gradient():
    """The saved gradient is scaled in place only when the graph is freed afterwards."""
    cos, labels = _cosines(4, 20, torch.float32, seed=5)
    cos.requires_grad_()
    bias = torch.tensor(2.0, requires_grad=True)
    loss = lean_sphereface2_loss(cos, labels, bias, *_settings(0.2, 32.0, 0.7, 3.0, "C", False))
    (2 * loss).backward(retain_graph=True)
    first = cos.grad.clone()
    (2 * loss).backward()
    torch.testing.assert_close(cos.grad, 2 * first)
    assert bias.grad is not None


def test_no_grad_and_partial_requires_grad():
    cos, labels = _cosines(5, 30, torch.float64, seed=6)
    bias = torch.tensor(1.0, dtype=torch.float64)
    args = (labels, bias, *_settings(0.2, 32.0, 0.7, 3.0, "C", False))
    with torch.no_grad():
        value = lean_sphereface2_loss(cos, *args)
    assert value.item() == pytest.approx(sphereface2_loss(cos, *args).item(), rel=1e-12)
    # Only the bias requires a gradient.
    b = bias.clone().requires_grad_()
    lean_sphereface2_loss(cos, labels, b, *args[2:]).backward()
    b_ref = bias.clone().requires_grad_()
    sphereface2_loss(cos, labels, b_ref, *args[2:]).backward()
    assert b.grad.item() == pytest.approx(b_ref.grad.item(), rel=1e-10)


def test_double_backward_is_refused_on_lean_and_works_on_plain():
    cos, labels = _cosines(3, 10, torch.float64, seed=7)
    for implementation in ("lean", "plain"):
        loss_fn = SphereFace2Loss(10, implementation=implementation).double()
        c = cos.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(c, labels), c, create_graph=True)
        if implementation == "lean":
            with pytest.raises(RuntimeError):
                grad.sum().backward()
        else:
            grad.sum().backward()
            assert torch.isfinite(c.grad).all()


def test_module_default_is_lean_and_matches_plain():
    cos, labels = _cosines(8, 60, torch.float32, seed=8)
    lean_fn, plain_fn = SphereFace2Loss(60), SphereFace2Loss(60, implementation="plain")
    assert lean_fn.implementation == "lean" and "implementation='lean'" in repr(lean_fn)
    results = []
    for fn in (lean_fn, plain_fn):
        c = cos.clone().unsqueeze(1).requires_grad_()
        loss = fn(c, labels.unsqueeze(1))
        loss.backward()
        results.append((loss.detach(), c.grad, fn.bias.grad))
    for g, r in zip(*results):
        assert _rel(g, r) < 1e-5
    with pytest.raises(ValueError, match="implementation"):
        SphereFace2Loss(60, implementation="fast")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,margin", SETTINGS)
def test_lean_finite_under_autocast_with_extreme_cosines(dtype, kind, margin):
    """Autocast head, cosines forced to exactly +-1 in low precision, bias 15."""
    head = SphereFace2Head(16, 300)
    loss_fn = SphereFace2Loss(300, SphereFace2Settings(margin_type=kind), margin=margin, bias_init=15.0)
    emb = torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        cos = head(emb)
        assert cos.dtype == dtype
        signs = torch.where(torch.arange(300) % 2 == 0, 1.0, -1.0).to(dtype)
        cos = cos * 0 + signs
        loss = loss_fn(cos, torch.arange(8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(loss_fn.bias.grad)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lean_half_cosine_tensors_match_plain_in_float32(dtype):
    cos, labels = _cosines(6, 200, torch.float32, seed=9)
    half = cos.to(dtype)
    results = []
    for implementation in ("lean", "plain"):
        fn = SphereFace2Loss(200, implementation=implementation)
        c = half.clone().requires_grad_()
        loss = fn(c, labels)
        loss.backward()
        assert torch.isfinite(loss) and c.grad.dtype == dtype
        assert torch.isfinite(c.grad.float()).all()
        results.append((loss.detach(), c.grad.float()))
    assert _rel(results[0][0], results[1][0]) < 1e-5
    assert _rel(results[0][1], results[1][1]) < 1e-2  # gradients rounded to half


def test_bad_arguments_raise():
    cos = torch.zeros(2, 3)
    args = (torch.tensor([0, 1]), torch.tensor(0.0), *_settings(0.2, 32.0, 0.7, 3.0, "C", False))
    with pytest.raises(ValueError, match="chunk_columns"):
        lean_sphereface2_loss(cos, *args, chunk_columns=0)
    with pytest.raises(ValueError, match="derivative"):
        lean_sphereface2_loss(cos, *args, derivative="numeric")
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        lean_sphereface2_loss(cos[0], *args)


def test_function_promotes_half_cosines_under_autocast():
    cos, labels = _cosines(4, 50, torch.float32, seed=10)
    c = cos.to(torch.bfloat16).requires_grad_()
    bias = torch.tensor(15.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lean_sphereface2_loss(c, labels, bias, *_settings(0.2, 32.0, 0.7, 3.0, "C", False))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert c.grad.dtype == torch.bfloat16 and torch.isfinite(c.grad.float()).all()
    assert torch.isfinite(bias.grad)


# --- blocks of classes (what a shard of the sharded head computes) ---------------------


@pytest.mark.parametrize("kind,margin", SETTINGS)
@pytest.mark.parametrize("detach", [False, True])
def test_lean_blocks_add_up_to_the_plain_loss_of_all_classes(kind, margin, detach):
    """Over a partition of the classes the block losses and their gradients are the
    plain loss of all classes, in float64 to 1e-10 (targets inside and outside blocks)."""
    cos, labels = _cosines(8, 31, torch.float64, seed=11)
    bias = torch.tensor(2.5, dtype=torch.float64)
    args = _settings(margin, 32.0, 0.7, 3.0, kind, detach)
    ref = _loss_and_grads(sphereface2_loss, cos, labels, bias, args)

    def blocks(c, y, b, margin, settings):
        bounds = [0, 5, 6, 19, 31]  # uneven blocks, one of a single class
        return sum(lean_block_loss(c[:, lo:hi], y, lo, b, margin, settings, c.shape[0], chunk_columns=4)[0]
                   for lo, hi in zip(bounds, bounds[1:]))

    got = _loss_and_grads(blocks, cos, labels, bias, args)
    for name, g, r in zip(("loss", "cos grad", "bias grad"), got, ref):
        assert _rel(g, r) < 1e-10, (name, _rel(g, r))


def test_unit_incoming_gradient_with_retained_graph_keeps_the_saved_gradient():
    """loss.backward() skips the scaling pass; a retained graph still gives the same
    gradient on the second backward (the saved buffer is not handed out for mutation)."""
    cos, labels = _cosines(4, 20, torch.float32, seed=12)
    cos.requires_grad_()
    loss = lean_sphereface2_loss(cos, labels, torch.tensor(2.0), *_settings(0.2, 32.0, 0.7, 3.0, "C", False))
    loss.backward(retain_graph=True)
    first = cos.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(cos.grad, 3 * first)


# --- the compiled kernel ----------------------------------------------------------------


def test_compile_setting(monkeypatch):
    monkeypatch.delenv("SB_SPHEREFACE2_COMPILE", raising=False)
    assert compile_wanted("cpu", COMPILE_MIN_ELEMENTS) and not compile_wanted("cpu", COMPILE_MIN_ELEMENTS - 1)
    assert not compile_wanted("cuda", 10**9)  # not measured on GPUs: eager unless forced
    monkeypatch.setenv("SB_SPHEREFACE2_COMPILE", "0")
    assert not compile_wanted("cpu", 10**9)
    monkeypatch.setenv("SB_SPHEREFACE2_COMPILE", "1")
    assert compile_wanted("cpu", 1) and compile_wanted("cuda", 1)


def test_failed_compilation_falls_back_to_eager_silently(monkeypatch, caplog):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setenv("SB_SPHEREFACE2_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(negatives._Compiled, "function", None)
    monkeypatch.setattr(negatives._Compiled, "failed", False)
    cos, labels = _cosines(5, 40, torch.float64, seed=13)
    bias = torch.tensor(1.0, dtype=torch.float64)
    args = _settings(0.2, 32.0, 0.7, 3.0, "C", False)
    with caplog.at_level("WARNING"):
        got = _loss_and_grads(lean_sphereface2_loss, cos, labels, bias, args)
    assert negatives._Compiled.failed and not caplog.records  # nothing above INFO
    ref = _loss_and_grads(sphereface2_loss, cos, labels, bias, args)
    for g, r in zip(got, ref):
        assert _rel(g, r) < 1e-10


COMPILED_CASES = [  # (margin type, margin, detach, t, dtype, tolerance)
    ("C", 0.2, False, 3.0, torch.float64, 1e-10),
    ("A", 0.15, False, 3.0, torch.float64, 1e-10),
    ("M", 1.5, False, 3.0, torch.float64, 1e-10),
    ("A", 0.15, True, 2.5, torch.float64, 1e-10),
    ("C", 0.2, False, 1.0, torch.float64, 1e-10),
    ("C", 0.2, False, 3.0, torch.float32, 1e-5),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind,margin,detach,t,dtype,tol", COMPILED_CASES)
def test_compiled_kernel_equals_plain(monkeypatch, kind, margin, detach, t, dtype, tol):
    """torch.compile of the negatives' kernel: values and gradients of the plain form,
    over chunks of different widths (dynamic shapes), targets masked in the fused loop."""
    import torch._dynamo

    monkeypatch.setenv("SB_SPHEREFACE2_COMPILE", "1")
    monkeypatch.setattr(negatives._Compiled, "function", None)
    monkeypatch.setattr(negatives._Compiled, "failed", False)
    torch._dynamo.reset()  # a fresh compilation per case (no recompile limit reached)
    cos, labels = _cosines(9, 53, dtype, seed=14)
    bias = torch.tensor(closed_form_bias(53, margin, SphereFace2Settings(kind, 32.0, 0.7, t)), dtype=dtype)
    args = _settings(margin, 32.0, 0.7, t, kind, detach)
    ref = _loss_and_grads(sphereface2_loss, cos, labels, bias, args)
    for chunk in (7, None):  # 7 chunks of 7 and one of 4; one chunk of 53
        got = _loss_and_grads(
            lambda *a: lean_sphereface2_loss(*a, chunk_columns=chunk), cos, labels, bias, args
        )
        assert negatives._Compiled.function is not None and not negatives._Compiled.failed
        for name, g, r in zip(("loss", "cos grad", "bias grad"), got, ref):
            assert _rel(g, r) < tol, (name, chunk, _rel(g, r))
    # A new margin (the scheduler changes it every iteration) reuses the compiled code.
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    _loss_and_grads(lean_sphereface2_loss, cos, labels, bias, (margin * 1.1, args[1]))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
