"""torch.hub entry points: ``torch.hub.load('mlan-timm/mlan-timm', 'mlan_resnet20_cifar10', pretrained=True)``.

One callable per model name of the zoo, ``name(pretrained=False, **kwargs)``, built by ``timm.create_model`` (so
kwargs such as ``num_classes``, ``attn`` or ``pretrained_cfg_overlay`` pass straight through).
"""
import timm as _timm

import mlan_timm as _mlan_timm  # noqa: F401  (registers the models with timm)
from mlan_timm.zoo import model_names as _model_names

dependencies = ['torch', 'timm']


def _entrypoint(name):
    def entrypoint(pretrained=False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"timm.create_model({name!r}, pretrained=pretrained, **kwargs)"
    return entrypoint


globals().update({_name: _entrypoint(_name) for _name in _model_names()})
