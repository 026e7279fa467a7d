"""Triplet attention (Misra et al., WACV 2021), a baseline of Tables 6/7/9/14; timm has no implementation."""
import torch
from torch import nn


class _ZPoolGate(nn.Module):
    """Max and mean over dim 1 -> k x k conv (2 -> 1) + BN -> sigmoid gate applied to the input."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * self.bn(self.conv(pooled)).sigmoid()


class TripletAttention(nn.Module):
    """Three gates on the (C, W), (H, C) and (H, W) planes, obtained by rotating the tensor; outputs averaged."""

    def __init__(self, channels: int = 0, kernel_size: int = 7) -> None:
        super().__init__()
        self.channels = channels  # not needed by the module; accepted for a uniform attention signature
        self.gate_cw = _ZPoolGate(kernel_size)
        self.gate_hc = _ZPoolGate(kernel_size)
        self.gate_hw = _ZPoolGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_cw = self.gate_cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # pool over H
        out_hc = self.gate_hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # pool over W
        out_hw = self.gate_hw(x)  # pool over C
        return (out_cw + out_hc + out_hw) / 3.0
