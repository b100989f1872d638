"""Tests of the length-aware ResNet speaker-embedding lobe."""

import math

import pytest
import torch

from sb_sphereface2.models.resnet import ResNet


def tiny_resnet(**overrides):
    settings = dict(input_size=16, channels=(4, 8, 8, 16), num_blocks=(2, 1, 2, 1), lin_neurons=24)
    settings.update(overrides)
    return ResNet(**settings)


def randomise_batch_norm(model, generator):
    """Give every BatchNorm non-trivial running statistics and affine parameters, so that
    eval-mode BN shifts padded positions away from zero unless the model masks them."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.5)


def expected_parameter_count(input_size, channels, num_blocks, lin_neurons):
    """Parameter count written out independently: convs (no bias), BN (weight+bias),
    1x1 projections where a stage changes shape, and the final linear layer."""
    total = 9 * channels[0] + 2 * channels[0]  # stem conv + BN
    in_ch = channels[0]
    freq = input_size
    for stage, (out_ch, count) in enumerate(zip(channels, num_blocks)):
        stride = 1 if stage == 0 else 2
        for i in range(count):
            total += 9 * in_ch * out_ch + 2 * out_ch + 9 * out_ch * out_ch + 2 * out_ch
            if (i == 0 and stride == 2) or in_ch != out_ch:
                total += in_ch * out_ch + 2 * out_ch
            in_ch = out_ch
        if stride == 2:
            freq = math.ceil(freq / 2)
    pooled = 2 * in_ch * freq
    return total + pooled * lin_neurons + lin_neurons


def test_paper_resnet34_has_6_63_million_parameters():
    model = ResNet()
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameter_count(80, (32, 64, 128, 256), (3, 4, 6, 3), 256)
    assert round(count / 1e6, 2) == 6.63
    assert len(model.blocks) == 16  # 3 + 4 + 6 + 3 basic blocks


def test_output_shape_like_ecapa():
    model = ResNet()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 200, 80), lengths=torch.tensor([1.0, 0.5]))
    assert out.shape == (2, 1, 256)
    assert torch.isfinite(out).all()


def test_padding_does_not_change_eval_embeddings():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = tiny_resnet()
    randomise_batch_norm(model, generator)
    model.eval()
    frame_counts = [37, 29, 16, 9, 1]  # odd, even and tiny lengths, through three stride-2 stages
    max_len = max(frame_counts)
    utterances = [torch.randn(n, 16, generator=generator) for n in frame_counts]
    batch = torch.zeros(len(utterances), max_len, 16)
    for i, u in enumerate(utterances):
        batch[i, : len(u)] = u
        batch[i, len(u):] = 100.0  # garbage in the padding must not leak
    lengths = torch.tensor(frame_counts, dtype=torch.float) / max_len
    with torch.no_grad():
        batched = model(batch, lengths)
        alone = torch.cat([model(u.unsqueeze(0)) for u in utterances])
    assert torch.allclose(batched, alone, atol=1e-5, rtol=0)


def test_without_masking_padding_would_matter():
    """The exactness test above can fail: feeding the padded batch as full-length
    utterances gives different embeddings."""
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = tiny_resnet()
    randomise_batch_norm(model, generator)
    model.eval()
    short = torch.randn(1, 20, 16, generator=generator)
    padded = torch.cat([short, torch.zeros(1, 12, 16)], dim=1)
    with torch.no_grad():
        alone = model(short)
        ignored = model(padded)  # no lengths: padding counted as speech
        honoured = model(padded, torch.tensor([20 / 32]))
    assert not torch.allclose(alone, ignored, atol=1e-3)
    assert torch.allclose(alone, honoured, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    model = tiny_resnet()
    model.train()
    out = model(torch.randn(4, 40, 16), lengths=torch.tensor([1.0, 0.8, 0.5, 0.3]))
    out.pow(2).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_bad_inputs():
    with pytest.raises(ValueError, match="features"):
        tiny_resnet()(torch.randn(2, 30, 15))
    with pytest.raises(ValueError, match="strides"):
        tiny_resnet(strides=(1, 3, 2, 2))
    with pytest.raises(ValueError, match="one entry per stage"):
        tiny_resnet(num_blocks=(1, 1, 1))
