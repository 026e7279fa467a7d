"""Behaviour of the MLAN layers: exact equivalences from the paper's equations, shapes, gradients, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlan_timm.layers import (
    ATTN_TYPES,
    AttentionAggregation,
    ConvFusion,
    FullMaskAttention,
    ParallelAttention,
    PlusFusion,
    SharedMaskAttention,
    SharedMaskAttentionV2,
    TripletAttention,
    WeightedFusion,
    create_attention,
    create_fusion,
    pointwise_conv,
    same_conv,
)

torch.manual_seed(0)


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module.eval()


@pytest.mark.parametrize("num_masks", [1, 3, 5])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_sma_equals_mean_of_single_mask_smas(num_masks, kernel_size):
    """Eq. 2-3: SMA with N masks == mean over n of the single-mask SMA built from the n-th conv."""
    x = torch.randn(2, 6, 8, 8)
    sma = _randomize(SharedMaskAttention(6, num_masks, kernel_size))
    singles = []
    for n in range(num_masks):
        single = SharedMaskAttention(6, 1, kernel_size)
        single.conv.weight.data.copy_(sma.conv.weight[n:n + 1])
        single.conv.bias.data.copy_(sma.conv.bias[n:n + 1])
        singles.append(single(x))
    torch.testing.assert_close(sma(x), torch.stack(singles).mean(0))


def test_sma_mask_is_shared_over_channels():
    x = torch.randn(2, 5, 6, 6).abs() + 0.1
    sma = _randomize(SharedMaskAttention(5, 3, 3))
    ratio = sma(x) / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert sma.mask(x).shape == (2, 1, 6, 6)
    assert ((0 < sma.mask(x)) & (sma.mask(x) < 1)).all()


def test_sma_v2_on_constant_over_channels_input():
    """Fig. 6: the channel mean of an input constant over channels is that constant map."""
    plane = torch.randn(2, 1, 8, 8)
    x = plane.expand(2, 7, 8, 8).contiguous()
    v2 = _randomize(SharedMaskAttentionV2(7, 3, 3))
    expected = x * v2.conv(plane).sigmoid().mean(1, keepdim=True)
    torch.testing.assert_close(v2(x), expected)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_sma_v2_equals_sma_with_weights_averaged_over_channels(kernel_size):
    """conv(mean_c x) with weight w == conv(x) with weight w / C on every channel, so SMAv2 is a tied SMA."""
    channels = 6
    x = torch.randn(3, channels, 8, 8)
    v2 = _randomize(SharedMaskAttentionV2(channels, 4, kernel_size))
    sma = SharedMaskAttention(channels, 4, kernel_size)
    sma.conv.weight.data.copy_(v2.conv.weight.expand(-1, channels, -1, -1) / channels)
    sma.conv.bias.data.copy_(v2.conv.bias)
    torch.testing.assert_close(v2(x), sma(x))


def test_fma_masks_are_full_and_average_n_convs():
    x = torch.randn(2, 4, 6, 6)
    fma = _randomize(FullMaskAttention(4, 2, 3))
    assert fma.mask(x).shape == x.shape
    m = fma.conv(x).sigmoid()
    torch.testing.assert_close(fma(x), x * (m[:, :4] + m[:, 4:]) / 2)


@pytest.mark.parametrize("cls,expected", [
    (SharedMaskAttention, lambda c, n, k: n * (c * k * k + 1)),
    (SharedMaskAttentionV2, lambda c, n, k: n * (k * k + 1)),
    (FullMaskAttention, lambda c, n, k: n * c * (c * k * k + 1)),
])
@pytest.mark.parametrize("channels,num_masks,kernel_size", [(8, 3, 1), (16, 3, 3), (64, 5, 1)])
def test_mask_attention_parameter_counts(cls, expected, channels, num_masks, kernel_size):
    module = cls(channels, num_masks, kernel_size)
    assert sum(p.numel() for p in module.parameters()) == expected(channels, num_masks, kernel_size)


@pytest.mark.parametrize("attn", ATTN_TYPES)
@pytest.mark.parametrize("num_inputs", [1, 2, 5])
def test_aggregation_is_attention_of_the_concatenation(attn, num_inputs):
    """Eqs. 4-7: LA/BA == attn(cat(xs)), keeping the concatenation's p*C channels (eq. 5)."""
    xs = [torch.randn(2, 8, 6, 6) for _ in range(num_inputs)]
    inner = _randomize(create_attention(attn, 8 * num_inputs, "aggregate"))
    agg = AttentionAggregation(inner, num_inputs).eval()
    out = agg(xs)
    assert out.shape == (2, 8 * num_inputs, 6, 6)
    torch.testing.assert_close(out, inner(torch.cat(xs, 1)))


def test_aggregation_of_sma_masks_every_part_with_one_shared_mask():
    """A shared mask over the concatenation multiplies each of the p parts by the same (B, 1, H, W) mask."""
    xs = [torch.randn(2, 4, 5, 5) for _ in range(3)]
    sma = _randomize(SharedMaskAttention(12))
    out = AttentionAggregation(sma, 3)(xs)
    mask = sma.mask(torch.cat(xs, 1))
    for part, x in zip(out.chunk(3, dim=1), xs):
        torch.testing.assert_close(part, x * mask)


def test_aggregation_checks_the_number_of_inputs():
    agg = AttentionAggregation(nn.Identity(), 2)
    with pytest.raises(ValueError, match="expected 2 attentions to aggregate, got 3"):
        agg([torch.zeros(1, 1, 2, 2)] * 3)


@pytest.mark.parametrize("attn", ["se", "cbam", "gc", "ta"])
def test_baselines_at_la_and_ba_are_parallel_modules_averaged(attn):
    """At the aggregation level the baselines are N = num_masks parallel modules, outputs averaged."""
    module = _randomize(create_attention(attn, 16, "aggregate", num_masks=3))
    assert isinstance(module, ParallelAttention) and len(module.branches) == 3
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(module(x), sum(b(x) for b in module.branches) / 3)
    single = create_attention(attn, 16, "layer")
    assert sum(p.numel() for p in module.parameters()) == 3 * sum(p.numel() for p in single.parameters())


def test_parallel_single_mask_smas_equal_one_multi_mask_sma():
    """The mean of N single-mask SMA outputs is the N-mask SMA (eq. 2): LA/BA's two readings agree for SMA."""
    sma = _randomize(SharedMaskAttention(6, 3))
    singles = []
    for n in range(3):
        single = SharedMaskAttention(6, 1)
        single.conv.weight.data.copy_(sma.conv.weight[n:n + 1])
        single.conv.bias.data.copy_(sma.conv.bias[n:n + 1])
        singles.append(single)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(ParallelAttention(singles)(x), sma(x))


def test_fma_has_one_full_mask_per_layer_and_n_at_la_ba():
    """The reading of Tables 4/12's counts: layer level one C->C conv, LA/BA num_masks of them."""
    assert create_attention("fma", 8, "layer").num_masks == 1
    assert create_attention("fma", 8, "aggregate", num_masks=3).num_masks == 3
    assert create_attention("sma", 8, "layer").num_masks == 3


def test_aggregation_rejects_no_inputs():
    with pytest.raises(ValueError, match="num_inputs"):
        AttentionAggregation(nn.Identity(), 0)


@pytest.mark.parametrize("attn", ATTN_TYPES)
def test_attentions_keep_shape_and_pass_gradients(attn):
    module = create_attention(attn, 16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{attn}: {name} got no gradient"


@pytest.mark.parametrize("level,channels,hidden", [
    ("classic", 8, 1), ("classic", 16, 1), ("classic", 32, 2), ("classic", 64, 4), ("classic", 40, 2),
    ("layer", 8, 2), ("layer", 64, 16), ("layer", 6, 1),
])
def test_se_hidden_width_is_floor_division_with_at_least_one_unit(level, channels, hidden):
    """Authors' SE: Linear(C, C // 16, bias=False) classic (reduction 4 in the multi-level structure); C // 16
    is 0 at C = 8, so at least one hidden unit."""
    se = create_attention("se", channels, level)
    assert se.fc1.out_channels == hidden
    assert se.fc1.bias is None and se.fc2.bias is None


def test_triplet_attention_gates_each_plane():
    ta = _randomize(TripletAttention(4))
    x = torch.randn(2, 4, 6, 5)
    # each branch is its gate applied in a rotated frame; the output is their mean
    expected = (ta.gate_cw(x.transpose(1, 2)).transpose(1, 2) + ta.gate_hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
                + ta.gate_hw(x)) / 3
    torch.testing.assert_close(ta(x), expected)
    assert sum(p.numel() for p in ta.parameters()) == 3 * (2 * 49 + 2)


def test_plus_fusion_is_the_sum():
    a, b, c = torch.randn(3, 2, 4, 5, 5)
    torch.testing.assert_close(PlusFusion()(a, b, c), a + b + c)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_fusion_can_express_the_sum(kernel_size):
    """With identity-like weights and zero bias, concat + conv reduces to plus fusion."""
    c = 4
    fusion = ConvFusion(c, kernel_size).eval()
    with torch.no_grad():
        fusion.conv.weight.zero_()
        fusion.conv.bias.zero_()
        for part in range(3):
            for ch in range(c):
                fusion.conv.weight[ch, part * c + ch, kernel_size // 2, kernel_size // 2] = 1.0
    a, b, r = torch.randn(3, 2, c, 6, 6)
    torch.testing.assert_close(fusion(a, b, r), a + b + r)
    assert sum(p.numel() for p in fusion.parameters()) == 3 * c * c * kernel_size ** 2 + c


def test_weighted_fusion_uses_sigmoid_weights_per_sample():
    c = 3
    fusion = WeightedFusion(c)
    with torch.no_grad():
        fusion.fc.weight.zero_()
        fusion.fc.bias.copy_(torch.tensor([0.0, 100.0, -100.0]))  # weights 0.5, 1, 0
    a, b, r = torch.randn(3, 2, c, 4, 4)
    torch.testing.assert_close(fusion(a, b, r), 0.5 * a + b, atol=1e-6, rtol=1e-5)
    assert sum(p.numel() for p in fusion.parameters()) == 9 * c + 3


def test_weighted_fusion_weights_come_from_each_samples_pooled_features():
    """Eq. 11 by hand: each sample's weights from the global averages of its own three inputs."""
    c = 3
    torch.manual_seed(0)
    fusion = WeightedFusion(c)
    with torch.no_grad():
        fusion.fc.weight.copy_(torch.randn(3, 3 * c))
    a, b, r = torch.randn(3, 2, c, 4, 4)
    b[1] += 2.0  # the second sample's x_A has another mean: its weights differ from the first's
    out = fusion(a, b, r)
    for i in range(2):
        pooled = torch.cat([a[i].mean((1, 2)), b[i].mean((1, 2)), r[i].mean((1, 2))])
        w = torch.sigmoid(fusion.fc.weight @ pooled + fusion.fc.bias)
        torch.testing.assert_close(out[i], w[0] * a[i] + w[1] * b[i] + w[2] * r[i])
    w0 = torch.sigmoid(fusion.fc(torch.cat([a.mean((2, 3)), b.mean((2, 3)), r.mean((2, 3))], 1)))
    assert not torch.allclose(w0[0], w0[1], atol=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_masks=0), "num_masks"),
    (dict(num_masks=2.5), "num_masks"),
    (dict(mask_kernel_size=2), "mask_kernel_size"),
    (dict(mask_kernel_size=0), "mask_kernel_size"),
])
def test_bad_mask_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_attention("sma", 8, **kwargs)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown attn 'eca'.*sma"):
        create_attention("eca", 8)
    with pytest.raises(ValueError, match="unknown attention level 'block'"):
        create_attention("sma", 8, "block")
    with pytest.raises(ValueError, match="unknown fusion 'max'.*plus"):
        create_fusion("max", 8)


@pytest.mark.parametrize("kernel_size,bias", [(3, True), (3, False), (1, True), (5, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_conv_equals_conv2d_values_and_gradients(kernel_size, bias, channels_last):
    """The fast paths' conv (input gradient as a forward conv) is F.conv2d with 'same' padding, gradients too."""
    x = torch.randn(3, 5, 9, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 5, kernel_size, kernel_size)
    b = torch.randn(3) if bias else None
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    g = torch.randn(3, 3, 9, 9)
    out = same_conv(*leaves)
    ref = F.conv2d(*ref_leaves, padding=kernel_size // 2)
    torch.testing.assert_close(out, ref)
    out.backward(g)
    ref.backward(g)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-5)


def test_same_conv_without_autograd_is_conv2d():
    x, w = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3)
    with torch.no_grad():
        assert torch.equal(same_conv(x, w), F.conv2d(x, w, padding=1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_is_a_1x1_conv_over_the_concatenation(channels_last):
    xs = [torch.randn(2, c, 5, 7) for c in (3, 4)]
    if channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    w = torch.randn(6, 7)
    leaves = [t.requires_grad_() for t in (*xs, w)]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = pointwise_conv(leaves[:2], [leaves[2][:, :3], leaves[2][:, 3:]])
    ref = F.conv2d(torch.cat(ref_leaves[:2], 1), ref_leaves[2][:, :, None, None])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-5)


def test_pointwise_conv_needs_one_weight_per_input():
    with pytest.raises(ValueError, match="one weight per input, got 2 inputs, 1 weights"):
        pointwise_conv([torch.randn(1, 2, 3, 3)] * 2, [torch.randn(4, 2)])


def test_fast_ops_under_bf16_autocast_return_each_input_its_dtype():
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = same_conv(x, w, b)
        ref = F.conv2d(x, w, b, padding=1)
        proj = pointwise_conv([x, x], [w[:, :, 1, 1], w[:, :, 0, 0]])
    assert out.dtype == ref.dtype == proj.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    (out.float().sum() + proj.float().sum()).backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
