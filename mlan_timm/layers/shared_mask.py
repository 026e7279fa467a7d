"""Mask attentions of MLAN: SMA (eqs. 1-3), SMAv2 (Fig. 6) and the full-mask baseline FMA (Table 4/12).

All three compute ``N`` sigmoid masks with ``N`` parallel convolutions and multiply the input by their mean. The
``N`` convolutions are stored as one ``nn.Conv2d`` with ``N`` (SMA, SMAv2) or ``N * C`` (FMA) output channels:
the same parameters and the same function as ``N`` separate convolutions, computed in one kernel call.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight`` (N, C, 1, 1), computed as a batched matmul on CPU.

    Fast path (benchmarks, docs/benchmarks.md): oneDNN's CPU kernel for a 1x1 conv with only a few output channels
    (the N = 3 mask convs) was measured ~20x slower than this matmul on CIFAR shapes; the function is the same
    (tests/test_fast_paths.py compares it with ``F.conv2d``).
    """
    if x.is_cuda:  # cuDNN's 1x1 conv is the faster one on GPUs (the bmm measured 0.79x in the train step)
        return F.conv2d(x, weight, bias)
    # bmm with the weight expanded over the batch reads x in place; torch.matmul(w, x) would copy x transposed
    y = torch.bmm(weight.flatten(1).expand(x.shape[0], -1, -1), x.flatten(2))  # (B, N, H*W)
    if bias is not None:
        y = y + bias.view(1, -1, 1)
    return y.reshape(x.shape[0], weight.shape[0], x.shape[2], x.shape[3])


# fx traces pointwise_conv as one call: its device branch is decided when the traced graph runs
torch.fx.wrap("pointwise_conv")


def check_mask_args(num_masks: int, kernel_size: int) -> None:
    """ValueError unless ``num_masks`` is an int >= 1 and ``kernel_size`` an odd int >= 1."""
    if not isinstance(num_masks, int) or num_masks < 1:
        raise ValueError(f"num_masks must be an integer >= 1, got {num_masks!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"mask_kernel_size must be an odd integer >= 1 (keeps H x W), got {kernel_size!r}")


class SharedMaskAttention(nn.Module):
    """SMA, eqs. 1-3: ``M = mean_n sigmoid(conv_n(x))`` with each ``conv_n: C -> 1``; returns ``x * M``.

    The single-channel mask (B, 1, H, W) is shared by, i.e. broadcast over, all channels of ``x``.
    """

    def __init__(self, channels: int, num_masks: int = 3, kernel_size: int = 1) -> None:
        super().__init__()
        check_mask_args(num_masks, kernel_size)
        self.channels = channels
        self.num_masks = num_masks
        self.conv = nn.Conv2d(channels, num_masks, kernel_size, padding=kernel_size // 2, bias=True)
        self.pointwise = kernel_size == 1  # use the matmul fast path of the 1x1 mask convs

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The ``N`` mask logits ``conv_n(x)``, shape (B, N, H, W)."""
        if self.pointwise:
            return pointwise_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(x)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The shared mask, shape (B, 1, H, W), values in (0, 1)."""
        return self.logits(x).sigmoid().mean(1, keepdim=True)

    def mask_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Straightforward eqs. 1-2 (``nn.Conv2d``), the reference of the fast path in :meth:`mask`."""
        return self.conv(x).sigmoid().mean(1, keepdim=True)

    def mask_of_concat(self, xs: List[torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        """``self.mask(torch.cat(xs, 1))`` without building the concatenation; ``total`` is the sum of ``xs``.

        A 1x1 conv over a concatenation is the sum of the convs of its parts with the matching weight slices.
        """
        if not self.pointwise:
            return self.mask(torch.cat(xs, 1))
        c = xs[0].shape[1]
        y = pointwise_conv(xs[0], self.conv.weight[:, 0:c], self.conv.bias)
        for i in range(1, len(xs)):
            y = y + pointwise_conv(xs[i], self.conv.weight[:, i * c:(i + 1) * c], None)
        return y.sigmoid().mean(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


class SharedMaskAttentionV2(SharedMaskAttention):
    """SMAv2, Fig. 6: average ``x`` over channels first, then ``N`` convs ``1 -> 1``; returns ``x * M``."""

    def __init__(self, channels: int, num_masks: int = 3, kernel_size: int = 1) -> None:
        super().__init__(1, num_masks, kernel_size)
        self.channels = channels  # kept for repr/introspection; the convs see one channel

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_of_channel_mean(x.mean(1, keepdim=True))

    def logits_of_channel_mean(self, m: torch.Tensor) -> torch.Tensor:
        bias = self.conv.bias
        if self.pointwise and bias is not None:
            # a 1 -> N 1x1 conv is a per-mask affine map of the channel mean
            return m * self.conv.weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        return self.conv(m)

    def mask_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.mean(1, keepdim=True)).sigmoid().mean(1, keepdim=True)

    def mask_of_concat(self, xs: List[torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        # the channel mean of cat(xs) is the channel mean of their sum, divided by the number of parts
        m = total.mean(1, keepdim=True)
        if len(xs) > 1:
            m = m / len(xs)
        return self.logits_of_channel_mean(m).sigmoid().mean(1, keepdim=True)


class FullMaskAttention(nn.Module):
    """FMA, the ablation baseline of Table 4/12: ``N`` convs ``C -> C`` give full (B, C, H, W) masks."""

    def __init__(self, channels: int, num_masks: int = 3, kernel_size: int = 1) -> None:
        super().__init__()
        check_mask_args(num_masks, kernel_size)
        self.channels = channels
        self.num_masks = num_masks
        self.conv = nn.Conv2d(channels, num_masks * channels, kernel_size, padding=kernel_size // 2, bias=True)
        self.pointwise = kernel_size == 1  # use the matmul fast path of the 1x1 mask convs

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the ``N`` full masks, shape (B, C, H, W)."""
        if self.pointwise:
            m = pointwise_conv(x, self.conv.weight, self.conv.bias).sigmoid()
        else:
            m = self.conv(x).sigmoid()
        return m.unflatten(1, (self.num_masks, self.channels)).mean(1)

    def mask_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Straightforward ``nn.Conv2d`` version of :meth:`mask`."""
        return self.conv(x).sigmoid().unflatten(1, (self.num_masks, self.channels)).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)
