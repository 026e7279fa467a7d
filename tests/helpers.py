"""Plain helpers shared by several test modules (pytest puts tests/ on sys.path: ``from helpers import ...``)."""
import torch


def randomize_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Give every BN layer non-trivial statistics and affine parameters, so that eval-mode comparisons exercise
    them; returns ``module`` (its mode unchanged)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return module
