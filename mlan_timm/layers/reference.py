"""Switch the speed fast paths back to their straightforward reference implementations.

Used by the equivalence tests (tests/test_fast_paths.py) and the before/after benchmark
(benchmarks/fast_path_speedup.py); never needed for normal use.
"""
import contextlib
from typing import Iterator

from .aggregation import SharedMaskAggregation
from .shared_mask import FullMaskAttention, SharedMaskAttention, SharedMaskAttentionV2

_SWAPS = (
    (SharedMaskAttention, "mask", "mask_reference"),
    (SharedMaskAttentionV2, "mask", "mask_reference"),
    (FullMaskAttention, "mask", "mask_reference"),
    (SharedMaskAggregation, "forward", "forward_reference"),
)


@contextlib.contextmanager
def reference_paths() -> Iterator[None]:
    """Within the block, every mask/aggregation fast path runs its reference method (class-level, restored)."""
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in _SWAPS]  # None: inherited, not own
    for cls, name, ref in _SWAPS:
        setattr(cls, name, getattr(cls, ref))
    try:
        yield
    finally:
        for cls, name, own in saved:
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
