"""Attention modules by name, for the layer/block/group levels and the classic placement."""
from torch import nn
from timm.layers import create_attn

from .shared_mask import FullMaskAttention, SharedMaskAttention, SharedMaskAttentionV2
from .triplet import TripletAttention

ATTN_TYPES = ("sma", "sma_v2", "fma", "se", "cbam", "ta", "gc")

# Reduction settings of the timm modules, chosen for CIFAR widths (docs/architecture.md, choice A6). timm's SE
# default rd_divisor=8 would round an 8- or 16-channel SE up to 8 hidden units; rd_divisor=1 keeps ratio 1/16.
TIMM_ATTN_KWARGS = {
    "se": dict(rd_ratio=1 / 16, rd_divisor=1),
    "cbam": dict(rd_ratio=1 / 16, rd_divisor=1),
    "gc": dict(rd_ratio=1 / 4, rd_divisor=1, fuse_add=True, fuse_scale=False),
}


def check_attn_type(attn: str) -> None:
    if attn not in ATTN_TYPES:
        raise ValueError(f"unknown attn {attn!r}; choose one of {', '.join(ATTN_TYPES)}")


def create_attention(attn: str, channels: int, num_masks: int = 3, mask_kernel_size: int = 1) -> nn.Module:
    """Attention module ``attn`` for ``channels`` channels; ``num_masks``/``mask_kernel_size`` apply to sma/sma_v2/fma."""
    check_attn_type(attn)
    if attn == "sma":
        return SharedMaskAttention(channels, num_masks, mask_kernel_size)
    if attn == "sma_v2":
        return SharedMaskAttentionV2(channels, num_masks, mask_kernel_size)
    if attn == "fma":
        return FullMaskAttention(channels, num_masks, mask_kernel_size)
    if attn == "ta":
        return TripletAttention(channels)
    return create_attn(attn, channels, **TIMM_ATTN_KWARGS[attn])
