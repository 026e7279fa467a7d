"""MLAN and baseline CIFAR ResNets, registered as timm models on import."""
from .cifar_resnet import CifarResNet, model_names, parse_model_name

__all__ = ["CifarResNet", "model_names", "parse_model_name"]
