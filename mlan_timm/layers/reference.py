"""Switch the speed fast paths back to their straightforward reference implementations.

Used by the equivalence tests (tests/test_fast_paths.py) and the before/after benchmarks
(benchmarks/fast_path_speedup.py, benchmarks/fused_block_ab.py); never needed for normal use.
"""
import contextlib
from typing import Iterator, List, Tuple

from torch import nn

from .aggregation import SharedMaskAggregation
from .shared_mask import FullMaskAttention, SharedMaskAttention, SharedMaskAttentionV2

_SWAPS = (
    (SharedMaskAttention, "mask", "mask_reference"),
    (SharedMaskAttentionV2, "mask", "mask_reference"),
    (FullMaskAttention, "mask", "mask_reference"),
    (SharedMaskAggregation, "forward", "forward_reference"),
)


def set_fused_block_attention(model: nn.Module, enabled: bool) -> List[Tuple[nn.Module, bool]]:
    """Set MLANBlock's fused layer+block attention (``fused_sma``) of ``model``; returns the previous flags.

    Enabling only affects blocks whose attentions allow it (1x1 SMA, :meth:`MLANBlock.fused_sma_allowed`).
    """
    saved = [(m, m.fused_sma) for m in model.modules() if hasattr(m, "fused_sma")]
    for m, _ in saved:
        m.fused_sma = enabled and m.fused_sma_allowed()
    return saved


@contextlib.contextmanager
def fused_block_attention(*models: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, the fused layer+block attention of ``models`` is ``enabled``; restored on exit."""
    saved = [flag for model in models for flag in set_fused_block_attention(model, enabled)]
    try:
        yield
    finally:
        for m, flag in saved:
            m.fused_sma = flag


@contextlib.contextmanager
def reference_paths(*models: nn.Module) -> Iterator[None]:
    """Within the block every fast path runs its reference: the mask/aggregation methods (class-level, all
    instances) and, for the given ``models``, MLANBlock's unfused layer attentions + LA."""
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in _SWAPS]  # None: inherited, not own
    for cls, name, ref in _SWAPS:
        setattr(cls, name, getattr(cls, ref))
    try:
        with fused_block_attention(*models, enabled=False):
            yield
    finally:
        for cls, name, own in saved:
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
