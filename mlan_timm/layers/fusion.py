"""Fusion of backbone feature x_O, attention x_A and residual x_R (eqs. 8-11, Table 5/13)."""
import torch
from torch import nn

FUSION_TYPES = ("plus", "concat", "conv1x1", "weighted")


class PlusFusion(nn.Module):
    """Eq. 8: ``x_O + x_A + x_R`` (the paper's default)."""

    def forward(self, x_o: torch.Tensor, x_a: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        return torch.add(x_o, x_a).add_(x_r)  # = x_o + x_a + x_r, one output buffer instead of two


class ConvFusion(nn.Module):
    """Eqs. 9/10: conv (k x k, 3C -> C) + BN over the concatenation ``[x_O, x_A, x_R]``; k = 3 or 1."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3 * channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x_o: torch.Tensor, x_a: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(torch.cat([x_o, x_a, x_r], dim=1)))


class WeightedFusion(nn.Module):
    """Eq. 11: ``w_O x_O + w_A x_A + w_R x_R``; ``w = sigmoid(Linear(GAP([x_O, x_A, x_R])))`` per sample."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * channels, 3)

    def forward(self, x_o: torch.Tensor, x_a: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x_o.mean((2, 3)), x_a.mean((2, 3)), x_r.mean((2, 3))], dim=1)
        w = self.fc(pooled).sigmoid()[:, :, None, None]
        return w[:, 0:1] * x_o + w[:, 1:2] * x_a + w[:, 2:3] * x_r


def create_fusion(fusion: str, channels: int) -> nn.Module:
    """Fusion module by name: one of :data:`FUSION_TYPES`."""
    if fusion == "plus":
        return PlusFusion()
    if fusion == "concat":
        return ConvFusion(channels, kernel_size=3)
    if fusion == "conv1x1":
        return ConvFusion(channels, kernel_size=1)
    if fusion == "weighted":
        return WeightedFusion(channels)
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSION_TYPES)}")
