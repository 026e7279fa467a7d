"""Residual units of the CIFAR ResNet backbone and of MLAN (Sec. III of the paper).

* :class:`BasicBlock`: He et al.'s CIFAR basic block; an optional attention on the residual branch gives the
  classic SE-ResNet placement used for the paper's Tables 7/14.
* :class:`SingleLevelBlock`: one attention on the block output, fused with backbone feature and residual
  (the single-level structure of Tables 3/11).
* :class:`MLANBlock`: a layer attention per conv (layer level), LA over them (block level) and fusion with the
  block residual; also returns its block attention for BA at the group level.
* :class:`MLANGroup`: a group of :class:`MLANBlock`; BA over its block attentions, fused with the group residual.
"""
from typing import Callable, List, Tuple

import torch
from torch import nn
from timm.layers import DropPath
from timm.models._manipulate import checkpoint

from ..layers import SharedMaskAttention, create_aggregation, create_fusion
from ..layers.aggregation import shared_mask_layer_block_attention

AttnFactory = Callable[[int], nn.Module]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """Shortcut projection: 1x1 conv + BN when shape changes (He et al.'s option B), else identity."""
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ optional attention on the branch) + shortcut, ReLU."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            attn_layer: AttnFactory = None,
            drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.attn = attn_layer(out_chs) if attn_layer is not None else nn.Identity()
        self.downsample = projection(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def conv_path(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the two conv layers: after BN-ReLU (layer 1) and after BN (layer 2)."""
        out1 = self.act1(self.bn1(self.conv1(x)))
        return out1, self.bn2(self.conv2(out1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, out = self.conv_path(x)
        out = self.drop_path(self.attn(out))
        return self.act2(out + self.downsample(x))


class SingleLevelBlock(BasicBlock):
    """Single-level structure: ``ReLU(fusion(x_O, attn(x_O), x_R))``, no layer or group level."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, attn_layer: AttnFactory, fusion: str) -> None:
        super().__init__(in_chs, out_chs, stride, attn_layer)
        self.fusion = create_fusion(fusion, out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, out = self.conv_path(x)
        return self.act2(self.fusion(out, self.attn(out), self.downsample(x)))


class MLANBlock(BasicBlock):
    """Layer level + block level: ``x_A = LA(SMA(out1), SMA(out2))``, ``ReLU(fusion(x_O, x_A, x_R))``.

    Returns ``(block output, block attention x_A)``; the group collects the attentions for BA.
    """

    fused_sma: torch.jit.Final[bool]  # a TorchScript constant: the branch not taken is not compiled

    def __init__(self, in_chs: int, out_chs: int, stride: int, attn_layer: AttnFactory, fusion: str) -> None:
        super().__init__(in_chs, out_chs, stride)
        self.layer_attn = nn.ModuleList([attn_layer(out_chs), attn_layer(out_chs)])
        self.block_attn = create_aggregation(attn_layer(2 * out_chs), 2)
        self.fusion = create_fusion(fusion, out_chs)
        # fast path for 1x1 SMA (not SMAv2): layer + block attention with fewer full-size passes (layers/aggregation)
        self.fused_sma = self.fused_sma_allowed()

    def fused_sma_allowed(self) -> bool:
        """The fused layer+block attention applies when all three attentions are 1x1 SMAs (not SMAv2)."""
        return all(type(m) is SharedMaskAttention and m.pointwise
                   for m in (self.layer_attn[0], self.layer_attn[1], self.block_attn.attn))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out1, out2 = self.conv_path(x)
        if self.fused_sma:
            sma1, sma2, la = self.layer_attn[0].conv, self.layer_attn[1].conv, self.block_attn.attn.conv
            block_attn = shared_mask_layer_block_attention(out1, out2, sma1.weight, sma1.bias, sma2.weight,
                                                           sma2.bias, la.weight, la.bias)
        else:
            layer_attns = [self.layer_attn[0](out1), self.layer_attn[1](out2)]
            block_attn = self.block_attn(layer_attns)
        return self.act2(self.fusion(out2, block_attn, self.downsample(x))), block_attn


class MLANGroup(nn.Module):
    """Group level: ``x_A = BA(block attentions)``, ``ReLU(fusion(x_O, x_A, proj(group input)))``."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            stride: int,
            attn_layer: AttnFactory,
            fusion: str,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            MLANBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, attn_layer, fusion)
            for i in range(depth)
        ])
        self.group_attn = create_aggregation(attn_layer(depth * out_chs), depth)
        self.fusion = create_fusion(fusion, out_chs)
        self.downsample = projection(in_chs, out_chs, stride)
        self.act = nn.ReLU(inplace=True)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        block_attns: List[torch.Tensor] = []
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, attn = checkpoint(block, x)
            else:
                x, attn = block(x)
            block_attns.append(attn)
        group_attn = self.group_attn(block_attns)
        return self.act(self.fusion(x, group_attn, self.downsample(shortcut)))
