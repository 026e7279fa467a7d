"""The registered models: one timm entrypoint per name of :func:`mlan_timm.zoo.model_names`.

A model without published weights has one untagged cfg (no ``hf_hub_id``). A model with published weights
(listed in the weights manifest, :func:`mlan_timm.pretrained.published_tags`) gets one cfg per pretrained tag
(``mlan_resnet20_cifar10.paper``) carrying its ``hf_hub_id``; so ``timm.list_models(pretrained=True)`` lists
exactly the models with weights.
"""
from typing import Any, Dict

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .. import zoo
from ..pretrained import load_errors_as_clear_messages, pretrained_cfg_overlay, published_tags, read_manifest
from .cifar_resnet import CifarResNet

__all__ = ["create_cifar_resnet", "default_cfgs"]


def _cfg(name: str, published: bool) -> Dict[str, Any]:
    model_id = zoo.parse_model_name(name)
    data = zoo.DATASETS[model_id.dataset]
    return dict(
        url="",
        hf_hub_id=zoo.hub_repo_id(name) if published else None,
        num_classes=data.num_classes,
        input_size=data.input_size,
        pool_size=(8, 8),
        crop_pct=1.0,
        crop_mode="center",
        interpolation="bilinear",
        mean=data.mean,
        std=data.std,
        first_conv="conv1",
        classifier="fc",
        label_names=list(data.labels),
        license="apache-2.0",
        paper_ids=f"doi:{zoo.DOI}",
        paper_name=zoo.PAPER_TITLE,
        origin_url=zoo.REPO_URL,
    )


def _cfgs() -> Dict[str, Dict[str, Any]]:
    cfgs: Dict[str, Dict[str, Any]] = {}
    manifest = read_manifest()  # once, not once per model
    for name in zoo.model_names():
        tags = published_tags(name, manifest)
        for tag in tags:
            cfgs[f"{name}.{tag}" if tag else name] = _cfg(name, published=True)
        if not tags:
            cfgs[name] = _cfg(name, published=False)  # architecture only: no pretrained tag
    return cfgs


default_cfgs = generate_default_cfgs(_cfgs())


def _num_levels(layers: Any) -> int:
    """Feature levels (stem + one per group); 1 for a malformed ``layers``, which the model's own check refuses."""
    return len(layers) + 1 if isinstance(layers, (list, tuple)) else 1


def _check_out_indices(model_args: Dict[str, Any]) -> None:
    """ValueError naming the valid range when ``features_only`` asks for a feature the model does not have (timm
    would fail with an IndexError inside its feature wrapper)."""
    out_indices = model_args.get("out_indices")
    if not model_args.get("features_only") or out_indices is None:
        return
    n = _num_levels(model_args["layers"])
    if n == 1:
        return
    levels = f"this model has {n} feature levels (0: stem, 1-{n - 1}: groups)"
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):  # timm: an int N means the last N levels
        if not 1 <= out_indices <= n:
            raise ValueError(f"out_indices {out_indices}: {levels}, so an integer (the last N levels) must be in "
                             f"[1, {n}]")
    elif not isinstance(out_indices, (list, tuple)) or any(
            isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in out_indices):
        raise ValueError(f"out_indices {out_indices!r}: {levels}, so indices must be in [{-n}, {n - 1}]")


def create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """Build ``variant`` (a zoo name) with timm's ``build_model_with_cfg``; ``kwargs`` override its defaults."""
    model_id = zoo.parse_model_name(variant)
    family = zoo.FAMILIES[model_id.family]
    model_args: Dict[str, Any] = dict(
        layers=(zoo.DEPTHS[model_id.depth],) * 3,
        widths=zoo.DATASETS[model_id.dataset].widths,
        structure=family.structure,
        attn=family.attn,
    )
    model_args.update(kwargs)
    _check_out_indices(model_args)
    if pretrained:
        overlay = dict(pretrained_cfg_overlay(variant))
        overlay.update(model_args.pop("pretrained_cfg_overlay", None) or {})
        model_args["pretrained_cfg_overlay"] = overlay
    with load_errors_as_clear_messages(variant):
        return build_model_with_cfg(
            CifarResNet,
            variant,
            pretrained,
            feature_cfg=dict(out_indices=tuple(range(_num_levels(model_args["layers"]))), flatten_sequential=True),
            **model_args,
        )


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
        return create_cifar_resnet(name, pretrained=pretrained, **kwargs)

    model_id = zoo.parse_model_name(name)
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"CIFAR ResNet-{model_id.depth} (widths {zoo.DATASETS[model_id.dataset].widths}) for "
                          f"{model_id.dataset.upper()}: {zoo.FAMILIES[model_id.family].what}.")
    globals()[name] = register_model(entrypoint)


for _name in zoo.model_names():
    _register(_name)
