"""Fusion of backbone feature x_O, attention x_A and residual x_R (eqs. 8-11, Tables 5/13)."""
import torch
from torch import nn

__all__ = ["FUSION_TYPES", "PlusFusion", "ConvFusion", "WeightedFusion", "create_fusion"]

FUSION_TYPES = ("plus", "concat", "conv1x1", "weighted")


class PlusFusion(nn.Module):
    """Eq. 8: ``x_O + x_A + x_R`` (the paper's default); no parameters."""

    def forward(self, x_o: torch.Tensor, x_a: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        return x_o + x_a + x_r


class ConvFusion(nn.Module):
    """Eqs. 9/10: a k x k conv (3C -> C, with bias) over the concatenation ``[x_O, x_A, x_R]``; k = 3 or 1.

    Parameters: ``3 C^2 k^2 + C`` (the counts of Tables 5/13 have no BN here, docs/architecture.md A10).
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3 * channels, channels, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, x_o: torch.Tensor, x_a: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x_o, x_a, x_r], dim=1))


class WeightedFusion(nn.Module):
    """Eq. 11: ``w_1 x_O + w_2 x_A + w_3 x_R``; ``w = sigmoid(Linear(GAP([x_O, x_A, x_R])))`` per sample.

    Parameters: ``9 C + 3``.
    """

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
