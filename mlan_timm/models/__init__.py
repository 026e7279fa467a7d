"""MLAN and baseline CIFAR ResNets (network in ``cifar_resnet``, units in ``blocks``), registered with timm on import
(``registry``)."""
from .cifar_resnet import CifarResNet, check_input
from .registry import create_cifar_resnet

__all__ = ["CifarResNet", "check_input", "create_cifar_resnet"]
