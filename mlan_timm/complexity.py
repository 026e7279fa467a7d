"""Model size and cost: one definition of params and MACs for benchmarks, tables, exports and evaluation.

* ``count_params``: ``sum(p.numel() for p in model.parameters())``;
* ``count_macs``: multiply-accumulates for one image, from ``torch.utils.flop_counter.FlopCounterMode``
  (FLOPs / 2), in eval mode at batch 1.
"""
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ['count_params', 'count_macs']


def count_params(model: nn.Module) -> int:
    """Sum of ``p.numel()`` over ``model.parameters()``."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> int:
    """MACs for one image of ``input_size`` (FlopCounterMode FLOPs / 2, eval mode, batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=p.device if p is not None else 'cpu',
                    dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2
