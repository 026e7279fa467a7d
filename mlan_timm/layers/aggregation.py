"""LA and BA (eqs. 4-7): aggregate ``p`` same-shape attentions into one with an attention module.

LA takes the ``p = 2`` layer attentions of a basic block, BA the ``p`` block attentions of a group. The ``p``
C-channel inputs are concatenated (p*C channels) and passed through an attention module built for p*C channels;
the p*C-channel result is brought back to C channels by averaging its ``p`` parts (docs/architecture.md, choice A2).
"""
from typing import List, Optional

import torch
from torch import nn

from .shared_mask import SharedMaskAttention, pointwise_conv

torch.fx.wrap("pointwise_conv")  # a leaf call under fx, as in shared_mask.py


class AttentionAggregation(nn.Module):
    """Generic LA/BA: ``mean_i(attn(cat(x_1..x_p)))_i`` for any attention module (SE, CBAM, GC, TA, FMA)."""

    def __init__(self, attn: nn.Module, num_inputs: int) -> None:
        super().__init__()
        if num_inputs < 1:
            raise ValueError(f"num_inputs must be >= 1, got {num_inputs}")
        self.attn = attn
        self.num_inputs = num_inputs

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        y = self.attn(torch.cat(xs, dim=1))
        return y.unflatten(1, (self.num_inputs, -1)).mean(1)


class SharedMaskAggregation(AttentionAggregation):
    """LA/BA with a shared-mask attention (SMA, SMAv2): same result as :class:`AttentionAggregation`.

    A shared mask over a concatenation multiplies every part alike, so the mean of the masked parts is the mask
    times the mean of the parts: ``mean_i(M * x_i) = M * mean_i(x_i)``. The p*C-channel product is never built.
    """

    def __init__(self, attn: SharedMaskAttention, num_inputs: int) -> None:
        super().__init__(attn, num_inputs)

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        # fast path: the p*C-channel concatenation is not built (SharedMaskAttention.mask_of_concat), and the
        # 1/p of the mean is applied to the (B, 1, H, W) mask instead of the (B, C, H, W) sum
        total = xs[0]
        for i in range(1, len(xs)):
            total = total + xs[i]
        mask = self.attn.mask_of_concat(xs, total)
        if len(xs) > 1:
            mask = mask / len(xs)
        return mask * total

    def forward_reference(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """Straightforward version of :meth:`forward` (concatenate, mask, average the parts)."""
        x = torch.cat(xs, dim=1)
        mean = x.unflatten(1, (self.num_inputs, -1)).mean(1)
        return self.attn.mask_reference(x) * mean


def create_aggregation(attn: nn.Module, num_inputs: int) -> nn.Module:
    """LA/BA module for ``attn`` (built for ``num_inputs * C`` channels), using the shared-mask shortcut if it applies."""
    if isinstance(attn, SharedMaskAttention):
        return SharedMaskAggregation(attn, num_inputs)
    return AttentionAggregation(attn, num_inputs)



def shared_mask_layer_block_attention(
        out1: torch.Tensor,
        out2: torch.Tensor,
        w1: torch.Tensor,
        b1: Optional[torch.Tensor],
        w2: torch.Tensor,
        b2: Optional[torch.Tensor],
        w_la: torch.Tensor,
        b_la: Optional[torch.Tensor],
) -> torch.Tensor:
    """``LA([SMA1(out1), SMA2(out2)])`` for 1x1 SMAs with fewer full-size passes (fast path of MLANBlock).

    ``w1``/``b1``, ``w2``/``b2``: the two layer SMAs' mask convs (N, C, 1, 1); ``w_la``/``b_la``: the LA SMA's
    (N, 2C, 1, 1). With ``m_i`` the layer masks (B, 1, H, W), the LA logits over ``cat(m1 * out1, m2 * out2)`` are
    ``m1 * (W_a @ out1) + m2 * (W_b @ out2) + b`` (a 1x1 conv commutes with a mask shared over channels), so one
    matmul per layer output gives both its layer-mask and its LA logits; the block attention is
    ``M / 2 * (m1 * out1 + m2 * out2)``, and the layer attentions are never materialised.
    Reference: ``SharedMaskAggregation([SMA1(out1), SMA2(out2)])`` (tests/test_fast_paths.py).
    """
    b, c, h, w = out1.shape[0], out1.shape[1], out1.shape[2], out1.shape[3]
    n1, n2 = w1.shape[0], w2.shape[0]
    w_la = w_la.flatten(1)
    # through pointwise_conv, so the device choice (bmm on CPU, cuDNN on CUDA) is made in one place
    y1 = pointwise_conv(out1, torch.cat([w1.flatten(1), w_la[:, 0:c]], 0)[:, :, None, None], None).flatten(2)
    y2 = pointwise_conv(out2, torch.cat([w2.flatten(1), w_la[:, c:2 * c]], 0)[:, :, None, None], None).flatten(2)
    l1, l2, logits = y1[:, 0:n1], y2[:, 0:n2], None
    if b1 is not None:
        l1 = l1 + b1.view(1, -1, 1)
    if b2 is not None:
        l2 = l2 + b2.view(1, -1, 1)
    m1 = l1.sigmoid().mean(1, keepdim=True)  # (B, 1, HW)
    m2 = l2.sigmoid().mean(1, keepdim=True)
    logits = m1 * y1[:, n1:] + m2 * y2[:, n2:]
    if b_la is not None:
        logits = logits + b_la.view(1, -1, 1)
    mask = logits.sigmoid().mean(1, keepdim=True) * 0.5  # the 1/2 of the LA mean folded into the mask
    s1 = (mask * m1).view(b, 1, h, w)
    s2 = (mask * m2).view(b, 1, h, w)
    return torch.addcmul(out1 * s1, out2, s2)
