"""Speed-motivated fast paths give the same outputs and gradients as the straightforward reference code.

Fast paths (see docs/benchmarks.md for the measured effect):
* 1x1 mask convs as a batched matmul (``pointwise_conv``) instead of ``nn.Conv2d`` (oneDNN is slow for N=3 outputs);
* SMAv2's 1 -> N 1x1 conv as an affine map;
* LA/BA with a shared mask: no p*C concatenation (the conv splits over the parts, the mean is a running sum).
"""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import mlan_timm  # noqa: F401
from mlan_timm.layers import (
    FullMaskAttention, SharedMaskAggregation, SharedMaskAttention, SharedMaskAttentionV2, create_aggregation,
    create_attention,
)
from mlan_timm.layers.reference import fused_block_attention, reference_paths
from mlan_timm.layers.shared_mask import pointwise_conv


def _randomize(module: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


@pytest.mark.parametrize("shape,n", [((2, 16, 8, 8), 3), ((3, 5, 4, 6), 1), ((1, 24, 32, 32), 3)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_equals_conv2d(shape, n, bias, channels_last):
    torch.manual_seed(0)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, shape[1], 1, 1)
    b = torch.randn(n) if bias else None
    torch.testing.assert_close(pointwise_conv(x, w, b), F.conv2d(x, w, b))


@pytest.mark.parametrize("cls", [SharedMaskAttention, SharedMaskAttentionV2, FullMaskAttention])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_mask_fast_path_equals_reference_with_gradients(cls, kernel_size):
    m = _randomize(cls(8, 3, kernel_size))
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    fast = m.mask(x)
    ref = m.mask_reference(x)
    torch.testing.assert_close(fast, ref)
    g = torch.randn_like(fast)
    gf = torch.autograd.grad(fast, [x, m.conv.weight, m.conv.bias], g)
    gr = torch.autograd.grad(ref, [x, m.conv.weight, m.conv.bias], g)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("attn", ["sma", "sma_v2"])
@pytest.mark.parametrize("num_inputs", [1, 2, 5])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_shared_mask_aggregation_skips_concat_but_matches(attn, num_inputs, kernel_size):
    inner = _randomize(create_attention(attn, 8 * num_inputs, num_masks=3, mask_kernel_size=kernel_size))
    agg = create_aggregation(inner, num_inputs)
    assert isinstance(agg, SharedMaskAggregation)
    xs = [torch.randn(2, 8, 6, 6, requires_grad=True) for _ in range(num_inputs)]
    fast, ref = agg(xs), agg.forward_reference(xs)
    torch.testing.assert_close(fast, ref)
    # and the generic definition: attention of the concatenation, averaged over the parts
    generic = torch.stack(inner.forward(torch.cat(xs, 1)).chunk(num_inputs, 1)).mean(0)
    torch.testing.assert_close(fast, generic)
    g = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, xs + [inner.conv.weight], g),
                    torch.autograd.grad(ref, xs + [inner.conv.weight], g)):
        torch.testing.assert_close(a, b)


def test_concat_is_not_built_for_shared_mask_aggregation(monkeypatch):
    inner = create_attention("sma", 24, num_masks=3)
    agg = create_aggregation(inner, 3)
    calls = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: calls.append(1) or real_cat(*a, **k))
    agg([torch.randn(2, 8, 4, 4) for _ in range(3)])
    assert calls == []


@pytest.mark.parametrize("name,kwargs", [
    ("mlan_resnet14_cifar10", {}),
    ("mlan_v2_resnet14_cifar10", {}),
    ("mlan_resnet14_cifar10", {"attn": "fma"}),
    ("mlan_resnet14_cifar10", {"levels": "single"}),
    ("mlan_resnet14_cifar100", {"fusion": "weighted"}),
])
def test_model_fast_equals_reference_forward_and_backward(name, kwargs):
    # float64, so that the comparison checks the maths rather than float32 rounding through train-mode BN
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for train in (False, True):
        model.train(train)
        model.zero_grad()
        out_fast = model(x)
        out_fast.square().sum().backward()
        g_fast = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        with reference_paths(model):
            out_ref = model(x)
            out_ref.square().sum().backward()
        g_ref = [p.grad.clone() for p in model.parameters()]
        torch.testing.assert_close(out_fast, out_ref)
        for a, b in zip(g_fast, g_ref):
            torch.testing.assert_close(a, b)


def test_plus_fusion_in_place_sum_matches_with_gradients():
    from mlan_timm.layers import PlusFusion

    xs = [torch.randn(2, 4, 5, 5, requires_grad=True) for _ in range(3)]
    out = PlusFusion()(*xs)
    torch.testing.assert_close(out, xs[0] + xs[1] + xs[2])
    out.sum().backward()
    for x in xs:
        torch.testing.assert_close(x.grad, torch.ones_like(x))
    assert all(x.grad is not None for x in xs) and xs[0].data_ptr() != out.data_ptr()


@pytest.mark.parametrize("num_masks", [1, 3])
def test_fused_layer_block_attention_equals_la_of_smas(num_masks):
    from mlan_timm.layers.aggregation import shared_mask_layer_block_attention

    torch.manual_seed(0)
    sma1, sma2 = _randomize(SharedMaskAttention(8, num_masks)), _randomize(SharedMaskAttention(8, num_masks))
    la = create_aggregation(_randomize(SharedMaskAttention(16, num_masks)), 2)
    out1 = torch.randn(3, 8, 6, 5, dtype=torch.float64, requires_grad=True)
    out2 = torch.randn(3, 8, 6, 5, dtype=torch.float64, requires_grad=True)
    for m in (sma1, sma2, la):
        m.double()
    fused = shared_mask_layer_block_attention(out1, out2, sma1.conv.weight, sma1.conv.bias, sma2.conv.weight,
                                              sma2.conv.bias, la.attn.conv.weight, la.attn.conv.bias)
    ref = la.forward_reference([sma1.forward(out1), sma2.forward(out2)])
    torch.testing.assert_close(fused, ref)
    params = [out1, out2] + [p for m in (sma1, sma2, la) for p in m.parameters()]
    g = torch.randn_like(fused)
    for a, b in zip(torch.autograd.grad(fused, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs,fused", [({}, True), ({"attn": "sma_v2"}, False), ({"mask_kernel_size": 3}, False),
                                          ({"attn": "cbam"}, False), ({"fusion": "concat"}, True)])
def test_fused_path_is_used_only_where_it_applies(kwargs, fused):
    model = timm.create_model("mlan_resnet14_cifar10", **kwargs)
    flags = [m.fused_sma for m in model.modules() if hasattr(m, "fused_sma")]
    assert flags and all(f == fused for f in flags)


def test_fused_model_float32_matches_unfused():
    torch.manual_seed(0)
    model = timm.create_model("mlan_resnet20_cifar10").eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
        with fused_block_attention(model, enabled=False):
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_reference_paths_restores_the_fast_methods():
    before = {cls: dict(vars(cls)) for cls in (SharedMaskAttention, SharedMaskAttentionV2, FullMaskAttention,
                                               SharedMaskAggregation)}
    with reference_paths():
        assert SharedMaskAttentionV2.mask is SharedMaskAttentionV2.mask_reference
        assert SharedMaskAggregation.forward is SharedMaskAggregation.forward_reference
    assert {cls: dict(vars(cls)) for cls in before} == before


def test_reference_paths_also_unfuses_the_given_models_block_attention():
    model = timm.create_model("mlan_resnet14_cifar10")
    v2 = timm.create_model("mlan_v2_resnet14_cifar10")
    flags = lambda m: {b.fused_sma for b in m.modules() if hasattr(b, "fused_sma")}  # noqa: E731
    assert flags(model) == {True} and flags(v2) == {False}
    with reference_paths(model, v2):
        assert flags(model) == {False} and flags(v2) == {False}
    assert flags(model) == {True} and flags(v2) == {False}
    with fused_block_attention(v2, enabled=True):  # SMAv2 blocks cannot use the 1x1-SMA fusion
        assert flags(v2) == {False}
