"""Structural checks computed once per module structure, not once per forward.

The fast paths decide per forward which formulation applies (``MLANGroup.has_fast_path``,
``MLANBlock.can_merge_first_mask``, ...) from the types and shapes of submodules. Walking the submodules costs a few
microseconds per check through ``nn.Module.__getattr__``, about 1% of a group's forward at batch 1 on CPU. The
answer changes only when a submodule is replaced, so :func:`structure_cached` keeps it until any module in the
process registers a submodule (``torch.nn.modules.module.register_module_module_registration_hook``: assignment,
``add_module``, ``ModuleList`` / ``Sequential`` item assignment, ``append``, ``insert``).
"""
import functools
from typing import Callable, TypeVar

import torch
from torch import nn

__all__ = ["structure_cached", "structure_token"]

_T = TypeVar("_T")


class _Token:
    """The current structure: replaced by a new token whenever any module registers a submodule. A cache entry is
    valid only while it holds the current token (compared by identity, so a copied or unpickled entry never is)."""

    current = object()


def _structure_changed(module: nn.Module, name: str, submodule) -> None:
    _Token.current = object()


torch.nn.modules.module.register_module_module_registration_hook(_structure_changed)


def structure_token() -> object:
    """The current structure token (a new object after every submodule registration in the process)."""
    return _Token.current


def structure_cached(method: Callable[[nn.Module], _T]) -> Callable[[nn.Module], _T]:
    """Decorate a no-argument method whose result depends only on the types and hyper-parameters of the module's
    submodules: computed once, then returned until any submodule is registered anywhere in the process. Not for
    checks that read tensors, devices or grad mode. Under ``torch.compile`` it computes the answer directly, so
    the compiled graph neither guards on the structure token nor writes the cache."""
    key = f"_structure_cache_{method.__name__}"

    @functools.wraps(method)
    def cached(self: nn.Module) -> _T:
        if torch.compiler.is_compiling():  # dynamo guards the module structure itself; no cache writes in a trace
            return method(self)
        entry = self.__dict__.get(key)
        if entry is not None and entry[0] is _Token.current:
            return entry[1]
        value = method(self)
        self.__dict__[key] = (_Token.current, value)
        return value

    return torch.jit.unused(cached)
