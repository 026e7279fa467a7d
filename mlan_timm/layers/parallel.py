"""``N`` parallel attention modules with averaged outputs: how the baselines enter LA and BA (Tables 6/9).

SMA's ``N`` masks are averaged (eq. 2); to give SE, CBAM, GC, triplet attention and FMA the same role at the block
and group levels, LA and BA use ``N`` parallel copies of the module and average their outputs. This is the reading
that reproduces the paper's parameter counts of the multi-level SE/CBAM/GC/TA/FMA models (docs/architecture.md,
choice A6). For a mask attention, the mean of ``N`` single-mask outputs equals one ``N``-mask module.
"""
from typing import Iterable

import torch
from torch import nn

__all__ = ["ParallelAttention"]


class ParallelAttention(nn.Module):
    """``mean_n attn_n(x)`` over parallel attention modules of one input shape."""

    def __init__(self, branches: Iterable[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        if len(self.branches) < 1:
            raise ValueError("ParallelAttention needs at least one branch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out / len(self.branches) if len(self.branches) > 1 else out
