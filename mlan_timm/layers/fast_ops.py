"""Convolutions of MLAN's fast paths: the same functions as ``F.conv2d``, computed the way that is fast on CPU.

MLAN's attention is made of convolutions with few output channels (the ``N = 3`` mask convs) and 1x1 projections
over the full 32x32 resolution. On CPU (oneDNN, NCHW) both hit slow kernels (docs/benchmarks.md, "Why the attention
costs more than its MACs", times each case side by side):

* oneDNN's input gradient ("backward-data") of a ``C -> 3`` conv is several times slower than the same values
  computed as a forward conv of the output gradient with the flipped, transposed kernel, which :func:`same_conv`
  does;
* a 1x1 conv reorders its input and output to oneDNN's blocked layout and back; at 32x32 a batched matrix product
  over the pixels (:func:`pointwise_conv`) is faster, forward and backward.

Only the fast paths use these (``MLANGroup.forward_streaming``); the reference path keeps ``nn.Conv2d``, and
tests/test_layers.py checks values and gradients against ``F.conv2d``.
"""
from types import ModuleType
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["same_conv", "pointwise_conv", "fused_block_attention"]


#: Kernel sizes whose weight gradient the compiled CPU kernels compute (others use PyTorch's).
KERNEL_GRAD_WEIGHT_SIZES = (1, 3, 5, 7)


class _SameConv(torch.autograd.Function):
    """Stride-1 conv with 'same' padding whose input gradient is a forward conv (no oneDNN backward-data); with
    ``kernels`` (the compiled CPU kernels), their forward and weight gradient replace PyTorch's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: int,
                kernels: Optional[ModuleType]):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.kernels = kernels
        ctx.bias_dtype = bias.dtype if bias is not None else None
        if kernels is None:
            return F.conv2d(x, weight, bias, padding=padding)
        return _add_bias(kernels.conv_same(x, weight), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        grad_x = grad_w = grad_b = None
        # under autocast the forward ran in grad's (lower) precision: compute in it, return each input's dtype
        if ctx.needs_input_grad[0]:
            # d/dx conv(x, w) = conv(grad, w flipped in space, in/out swapped): the transposed conv at stride 1
            w_t = weight.to(grad.dtype).flip(2, 3).transpose(0, 1)
            grad_x = F.conv2d(grad, w_t, padding=p).to(x.dtype)
        if ctx.needs_input_grad[1]:
            if ctx.kernels is not None and weight.shape[-1] in KERNEL_GRAD_WEIGHT_SIZES:
                grad_w = ctx.kernels.conv_same_grad_weight(x, grad.contiguous(), weight.shape[-1])
            else:
                grad_w = torch.nn.grad.conv2d_weight(x.to(grad.dtype), weight.shape, grad, padding=p)
            grad_w = grad_w.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3)).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None


def _add_bias(out: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


def same_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
              kernels: Optional[ModuleType] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2)`` for an odd square kernel ``k``, stride 1, one group.

    On CPU, with gradients, the input gradient is computed as a forward conv (see the module docstring). With
    ``kernels`` (the compiled CPU kernels, :func:`.cpu_kernels.kernels_for` of ``x``), they compute the forward and
    the weight gradient; elsewhere, or without autograd, it is ``F.conv2d`` itself.
    """
    k = weight.shape[-1]
    if isinstance(x, torch.fx.Proxy):  # FX symbolic tracing (timm's feature extraction) records the plain conv
        return F.conv2d(x, weight, bias, padding=k // 2)
    if weight.dtype != torch.float32:
        kernels = None
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if x.device.type == "cpu" and needs_grad:
        return _SameConv.apply(x, weight, bias, k // 2, kernels)
    if kernels is not None:
        return _add_bias(kernels.conv_same(x, weight), bias)
    return F.conv2d(x, weight, bias, padding=k // 2)


def pointwise_conv(xs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i conv1x1(xs[i], weights[i])`` without bias, each weight 2-d (out, in_i): a 1x1 conv over the
    concatenation of ``xs``, computed as batched matrix products over the pixels accumulated in place
    (``baddbmm``), without building the concatenation.

    Channels-last inputs keep the conv (oneDNN does not reorder those), and so does FX symbolic tracing.
    """
    if len(xs) != len(weights) or not xs:
        raise ValueError(f"pointwise_conv needs one weight per input, got {len(xs)} inputs, {len(weights)} weights")
    if any(isinstance(x, torch.fx.Proxy) for x in xs) or not all(x.is_contiguous() for x in xs):
        return sum(F.conv2d(x, w[:, :, None, None]) for x, w in zip(xs, weights))
    b, size = xs[0].shape[0], xs[0].shape[2:]
    out = torch.bmm(weights[0].expand(b, -1, -1), xs[0].flatten(2))
    for x, w in zip(xs[1:], weights[1:]):
        # in place: no copy of the running sum; in-place ops skip autocast, so match the sum's dtype explicitly
        out.baddbmm_(w.to(out.dtype).expand(b, -1, -1), x.flatten(2).to(out.dtype))
    return out.unflatten(2, size)


class _FusedBlockAttention(torch.autograd.Function):
    """An MLAN block's attention (SMA everywhere, plus fusion) in the compiled CPU kernels, forward and backward:
    ``kernels.mlan_block_forward`` saves the three masks and the 3 N sigmoids per image, and
    ``kernels.mlan_block_backward`` recomputes the rest image by image."""

    @staticmethod
    def forward(ctx, kernels: ModuleType, out1: torch.Tensor, out2: torch.Tensor, x: torch.Tensor, *weights):
        t1_w, t1_b = weights[0], weights[1]
        n, _, h, w = out1.shape
        o = t1_w.shape[0]
        group_logits = out1.new_empty(n, o, h, w)
        group_proj = torch.empty_like(out1, memory_format=torch.contiguous_format)
        saved = out1.new_empty(n, 3 + 3 * o, h, w)
        out = kernels.mlan_block_forward(out1, out2, x, *weights, group_logits, group_proj, True, False, x, t1_b,
                                         saved)
        ctx.kernels = kernels
        t2_w, la_w, ba_w, proj_w, gproj_w = weights[2], weights[4], weights[6], weights[7], weights[8]
        ctx.save_for_backward(out1, out2, out, saved, t1_w, t2_w, la_w, ba_w, proj_w, gproj_w)
        return out, group_logits, group_proj

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: torch.Tensor, d_logits: torch.Tensor, d_proj: torch.Tensor):
        out1, out2, out, saved, t1_w, t2_w, la_w, ba_w, proj_w, gproj_w = ctx.saved_tensors
        grads = ctx.kernels.mlan_block_backward(out1, out2, out, saved, d_out, d_logits, d_proj, t1_w, t2_w, la_w,
                                                ba_w, proj_w, gproj_w)
        return (None, *grads)


def fused_block_attention(kernels: ModuleType, out1: torch.Tensor, out2: torch.Tensor, x: torch.Tensor,
                          t1_w: torch.Tensor, t1_b: torch.Tensor, t2_w: torch.Tensor, t2_b: torch.Tensor,
                          la_w: torch.Tensor, la_b: torch.Tensor, ba_w: torch.Tensor, proj_w: torch.Tensor,
                          gproj_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An MLAN block's attention after its conv layers, differentiable, in the compiled CPU kernels: returns
    ``(ReLU(out2 + P_block b + x), BA's logits of b without bias, P_group b)`` with ``b`` the block attention
    (T_1, T_2 on the layer outputs, LA over them; ``ba_w`` and ``gproj_w``: the group's BA weights and projection
    columns of this block). Same function as ``MLANBlock.forward_streaming`` (tests/test_cpu_kernels.py)."""
    return _FusedBlockAttention.apply(kernels, out1, out2, x, t1_w, t1_b, t2_w, t2_b, la_w, la_b, ba_w, proj_w,
                                      gproj_w)
