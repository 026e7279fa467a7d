"""Mask attentions of MLAN: SMA (eqs. 1-3), SMAv2 (Fig. 6) and the full-mask baseline FMA (Tables 4/12).

All three compute ``N`` sigmoid masks with ``N`` parallel convolutions and multiply the input by their mean. The
``N`` convolutions are stored as one ``nn.Conv2d`` with ``N`` (SMA, SMAv2) or ``N * C`` (FMA) output channels:
the same parameters and the same function as ``N`` separate convolutions, in one kernel call
(``tests/test_layers.py`` checks the equivalence). Mask convolutions are 3x3 with bias by default, the reading
that reproduces the paper's parameter counts (docs/architecture.md, choice A1).
"""
from types import ModuleType
from typing import Optional

import torch
from torch import nn

from .fast_ops import same_conv

__all__ = ["check_mask_args", "SharedMaskAttention", "SharedMaskAttentionV2", "FullMaskAttention"]


def check_mask_args(num_masks: int, kernel_size: int) -> None:
    """ValueError unless ``num_masks`` is an int >= 1 and ``kernel_size`` an odd int >= 1."""
    if isinstance(num_masks, bool) or not isinstance(num_masks, int) or num_masks < 1:
        raise ValueError(f"num_masks must be an integer >= 1, got {num_masks!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"mask_kernel_size must be an odd integer >= 1 (keeps H x W), got {kernel_size!r}")


class SharedMaskAttention(nn.Module):
    """SMA, eqs. 1-3: ``M = mean_n sigmoid(conv_n(x))`` with each ``conv_n: C -> 1``; returns ``x * M``.

    The single-channel mask (B, 1, H, W) is shared by, i.e. broadcast over, all channels of ``x``.
    Parameters: ``N (C k^2 + 1)``.
    """

    def __init__(self, channels: int, num_masks: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        check_mask_args(num_masks, kernel_size)
        self.channels = channels
        self.num_masks = num_masks
        self.conv = nn.Conv2d(channels, num_masks, kernel_size, padding=kernel_size // 2, bias=True)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The shared mask ``M_mean`` (eq. 2), shape (B, 1, H, W), values in (0, 1)."""
        return self.conv(x).sigmoid().mean(1, keepdim=True)

    def mask_partial(self, part: torch.Tensor, offset: int, kernels: Optional[ModuleType] = None) -> torch.Tensor:
        """What channels ``[offset, offset + C)`` of a concatenated input contribute to its mask: the mask convs
        restricted to those channels (no bias). Summed over all parts, :meth:`mask_from_partials` gives
        ``mask(cat(parts))`` without building the concatenation (a conv over a concatenation is the sum of the
        convs over its parts). ``kernels``: the compiled CPU kernels to compute it with (:func:`.same_conv`)."""
        c = part.shape[1]
        weight = self.conv.weight[:, offset:offset + c].contiguous()  # a strided slice is slow in oneDNN
        return same_conv(part, weight, kernels=kernels)

    def mask_from_partials(self, total: torch.Tensor) -> torch.Tensor:
        """The mask from the sum of :meth:`mask_partial` over every part of the input."""
        bias = self.conv.bias
        logits = total if bias is None else total + bias.view(1, -1, 1, 1)
        return logits.sigmoid().mean(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


class SharedMaskAttentionV2(SharedMaskAttention):
    """SMAv2, Fig. 6: average ``x`` over channels first, then ``N`` convs ``1 -> 1``; returns ``x * M``.

    Parameters: ``N (k^2 + 1)``, whatever the width.
    """

    def __init__(self, channels: int, num_masks: int = 3, kernel_size: int = 3) -> None:
        super().__init__(1, num_masks, kernel_size)
        self.channels = channels  # the width it is applied to; the convs see one channel

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.mean(1, keepdim=True)).sigmoid().mean(1, keepdim=True)

    def mask_partial(self, part: torch.Tensor, offset: int, kernels: Optional[ModuleType] = None) -> torch.Tensor:
        """A part's channel sum: summed over the parts it is the concatenation's channel sum."""
        return part.sum(1, keepdim=True)

    def mask_from_partials(self, total: torch.Tensor) -> torch.Tensor:
        return same_conv(total / self.channels, self.conv.weight, self.conv.bias).sigmoid().mean(1, keepdim=True)


class FullMaskAttention(nn.Module):
    """FMA, the ablation baseline of Tables 4/12: ``N`` convs ``C -> C`` give full (B, C, H, W) masks.

    Parameters: ``N C (C k^2 + 1)``.
    """

    def __init__(self, channels: int, num_masks: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        check_mask_args(num_masks, kernel_size)
        self.channels = channels
        self.num_masks = num_masks
        self.conv = nn.Conv2d(channels, num_masks * channels, kernel_size, padding=kernel_size // 2, bias=True)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the ``N`` full masks, shape (B, C, H, W)."""
        m = self.conv(x).sigmoid()
        return m if self.num_masks == 1 else m.unflatten(1, (self.num_masks, self.channels)).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)
