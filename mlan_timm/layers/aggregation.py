"""LA and BA (eqs. 4-7): aggregate ``p`` same-shape attentions into one with an attention module.

LA takes the ``p = 2`` layer attentions of a basic block, BA the ``p`` block attentions of a group. The ``p``
C-channel inputs are concatenated (p*C channels) and passed through an attention module built for p*C channels;
the p*C-channel result is brought back to C channels by averaging its ``p`` parts (docs/architecture.md, choice A2).
"""
from typing import List

import torch
from torch import nn

from .shared_mask import SharedMaskAttention


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


class SharedMaskAggregation(nn.Module):
    """LA/BA with a shared-mask attention (SMA, SMAv2): same result as :class:`AttentionAggregation`.

    A shared mask over a concatenation multiplies every part alike, so the mean of the masked parts is the mask
    times the mean of the parts: ``mean_i(M * x_i) = M * mean_i(x_i)``. The p*C-channel product is never built.
    """

    def __init__(self, attn: SharedMaskAttention, num_inputs: int) -> None:
        super().__init__()
        if num_inputs < 1:
            raise ValueError(f"num_inputs must be >= 1, got {num_inputs}")
        self.attn = attn
        self.num_inputs = num_inputs

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
