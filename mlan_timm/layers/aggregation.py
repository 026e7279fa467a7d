"""LA and BA (eqs. 4-7): aggregate ``p`` attentions into one by attention over their concatenation.

LA takes the two layer attentions of a block (eqs. 4-5), BA the ``p`` block attentions of a group (eqs. 6-7).
The inputs are concatenated along channels and passed through an attention module; its output keeps the
concatenation's shape (SMA's output has its input's shape, eq. 5): a block attention has 2C channels, a group
attention 2pC. Bringing it back to C channels is the job of the block / group (a 1x1 projection,
docs/architecture.md choice A2).
"""
from typing import List

import torch
from torch import nn

__all__ = ["AttentionAggregation"]


class AttentionAggregation(nn.Module):
    """``attn(cat(x_1 .. x_p))`` (eqs. 4-7) for any attention module built for the concatenated width."""

    def __init__(self, attn: nn.Module, num_inputs: int) -> None:
        super().__init__()
        if num_inputs < 1:
            raise ValueError(f"num_inputs must be >= 1, got {num_inputs}")
        self.attn = attn
        self.num_inputs = num_inputs

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        if len(xs) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} attentions to aggregate, got {len(xs)}")
        return self.attn(torch.cat(xs, dim=1) if len(xs) > 1 else xs[0])
