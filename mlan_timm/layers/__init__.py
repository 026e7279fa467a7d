"""Attention, aggregation and fusion layers of MLAN."""
from .aggregation import AttentionAggregation, SharedMaskAggregation, create_aggregation
from .factory import ATTN_TYPES, create_attention
from .fusion import FUSION_TYPES, ConvFusion, PlusFusion, WeightedFusion, create_fusion
from .shared_mask import FullMaskAttention, SharedMaskAttention, SharedMaskAttentionV2
from .triplet import TripletAttention

__all__ = [
    "ATTN_TYPES", "FUSION_TYPES", "AttentionAggregation", "ConvFusion", "FullMaskAttention", "PlusFusion",
    "SharedMaskAggregation", "SharedMaskAttention", "SharedMaskAttentionV2", "TripletAttention", "WeightedFusion",
    "create_aggregation", "create_attention", "create_fusion",
]
