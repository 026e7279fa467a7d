"""Attention, aggregation and fusion layers of MLAN (eqs. 1-11)."""
from . import cpu_kernels, gpu_kernels
from .aggregation import AttentionAggregation
from .factory import ATTN_LEVELS, ATTN_TYPES, check_attn_type, create_attention, reduced_channels
from .fast_ops import fused_block_attention, pointwise_conv, same_conv
from .fusion import FUSION_TYPES, ConvFusion, PlusFusion, WeightedFusion, create_fusion
from .parallel import ParallelAttention
from .shared_mask import FullMaskAttention, SharedMaskAttention, SharedMaskAttentionV2, check_mask_args
from .triplet import TripletAttention

__all__ = [
    "ATTN_LEVELS", "ATTN_TYPES", "FUSION_TYPES", "AttentionAggregation", "ConvFusion", "FullMaskAttention",
    "ParallelAttention", "PlusFusion", "SharedMaskAttention", "SharedMaskAttentionV2", "TripletAttention",
    "WeightedFusion", "check_attn_type", "check_mask_args", "cpu_kernels", "create_attention", "create_fusion",
    "fused_block_attention", "gpu_kernels", "pointwise_conv", "reduced_channels", "same_conv",
]
