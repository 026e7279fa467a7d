"""Pretrained-weight resolution for mlan_timm models (placeholder API, filled in by the weights work)."""
from contextlib import nullcontext
from typing import Any, ContextManager, Dict


def pretrained_cfg_overlay(variant: str) -> Dict[str, Any]:
    """Return a timm ``pretrained_cfg_overlay`` for ``variant`` (e.g. ``dict(file=...)`` for bundled weights)."""
    return {}


def load_errors_as_clear_messages(variant: str) -> ContextManager:
    """Context manager that turns weight-loading failures into errors naming ``variant`` and the file."""
    return nullcontext()
