"""Attention modules by name and level: layer level, LA/BA aggregation level, or the classic placement."""
from timm.layers import create_attn
from torch import nn

from .parallel import ParallelAttention
from .shared_mask import FullMaskAttention, SharedMaskAttention, SharedMaskAttentionV2, check_mask_args
from .triplet import TripletAttention

__all__ = ["ATTN_TYPES", "ATTN_LEVELS", "check_attn_type", "reduced_channels", "create_attention"]

ATTN_TYPES = ("sma", "sma_v2", "fma", "se", "cbam", "ta", "gc")
ATTN_LEVELS = ("layer", "aggregate", "classic")

#: Bottleneck reduction of SE / CBAM / GC: 4 inside the multi-level structure (the reading that reproduces the
#: paper's Tables 6/9 counts), 16 in the classic placement (the authors' SE-ResNet code, Tables 7/14).
REDUCTION = {"layer": 4, "aggregate": 4, "classic": 16}


def check_attn_type(attn: str) -> None:
    if attn not in ATTN_TYPES:
        raise ValueError(f"unknown attn {attn!r}; choose one of {', '.join(ATTN_TYPES)}")


def reduced_channels(channels: int, reduction: int) -> int:
    """``channels // reduction`` as in the authors' SE code, but at least 1 (``8 // 16`` would be 0)."""
    return max(1, channels // reduction)


def _single(attn: str, channels: int, level: str) -> nn.Module:
    """One SE / CBAM / GC / triplet module (timm's ``create_attn`` where timm has it)."""
    if attn == "ta":
        return TripletAttention(channels)
    rd = reduced_channels(channels, REDUCTION[level])
    if attn == "se":
        return create_attn("se", channels, rd_channels=rd, bias=False)
    if attn == "cbam":
        return create_attn("cbam", channels, rd_channels=rd, mlp_bias=True)
    return create_attn("gc", channels, rd_channels=rd, fuse_add=True, fuse_scale=False)


def create_attention(
        attn: str,
        channels: int,
        level: str = "layer",
        num_masks: int = 3,
        mask_kernel_size: int = 3,
) -> nn.Module:
    """Attention ``attn`` for ``channels`` channels at ``level``.

    * sma / sma_v2: an ``num_masks``-mask SMA at every level (eq. 2);
    * fma: one full mask at the layer level, ``num_masks`` full masks at LA/BA;
    * se / cbam / gc / ta: one module at the layer level and in the classic placement, ``num_masks`` parallel
      modules with averaged outputs at LA/BA (:class:`ParallelAttention`).
    """
    check_attn_type(attn)
    check_mask_args(num_masks, mask_kernel_size)
    if level not in ATTN_LEVELS:
        raise ValueError(f"unknown attention level {level!r}; choose one of {', '.join(ATTN_LEVELS)}")
    if attn == "sma":
        return SharedMaskAttention(channels, num_masks, mask_kernel_size)
    if attn == "sma_v2":
        return SharedMaskAttentionV2(channels, num_masks, mask_kernel_size)
    if attn == "fma":
        return FullMaskAttention(channels, num_masks if level == "aggregate" else 1, mask_kernel_size)
    if level == "aggregate":
        return ParallelAttention(_single(attn, channels, level) for _ in range(num_masks))
    return _single(attn, channels, level)
