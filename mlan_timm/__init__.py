"""mlan-timm: the Multi-Level Attention Network (MLAN, IEEE Access 2022) as timm models.

Importing this package registers every model with timm, e.g. ``timm.create_model("mlan_resnet20_cifar10")``.
The command-line tools live in :mod:`mlan_timm.tools` and are not imported here.
"""
from .models import CifarResNet
from .version import __version__
from .zoo import model_names

__all__ = ["CifarResNet", "__version__", "list_models", "model_names"]


def list_models() -> list:
    """Names of all models this package registers with timm."""
    return model_names()
