"""mlan-timm: the Multi-Level Attention Network (MLAN, IEEE Access 2022) as timm models.

Importing this package registers every model with timm, e.g. ``timm.create_model("mlan_resnet20_cifar10")``.
"""
from .version import __version__
from .models import CifarResNet, model_names

__all__ = ["CifarResNet", "__version__", "list_models", "model_names"]


def list_models() -> list:
    """Names of all models this package registers with timm."""
    return model_names()
