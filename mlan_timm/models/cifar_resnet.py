"""CIFAR ResNet-14/20/26/32 backbones, classic attention baselines and MLAN, as timm models.

Backbone (He et al. 2016, the paper's Tables 1 and 8): a 3x3 stem conv (no max-pool), three groups of 2/3/4/5
basic blocks with widths 8/16/32 (CIFAR-10) or 16/32/64 (CIFAR-100), strides 1/2/2, global average pool and a
linear classifier.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, register_model, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ..layers import FUSION_TYPES, create_attention
from ..layers.factory import check_attn_type
from ..layers.shared_mask import check_mask_args
from ..pretrained import load_errors_as_clear_messages, pretrained_cfg_overlay
from .blocks import BasicBlock, MLANGroup, SingleLevelBlock

__all__ = ["CifarResNet", "STRUCTURES", "LEVELS", "DEPTHS", "check_input"]

STRUCTURES = ("plain", "classic", "mlan")
LEVELS = ("multi", "single")
#: ResNet depth -> basic blocks per group (6n + 2 layers).
DEPTHS = {14: (2, 2, 2), 20: (3, 3, 3), 26: (4, 4, 4), 32: (5, 5, 5)}
#: Dataset -> (group widths, classes), the paper's Table 1 (CIFAR-10) and Table 8 (CIFAR-100).
DATASETS = {"cifar10": ((8, 16, 32), 10), "cifar100": ((16, 32, 64), 100)}
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
REDUCTION = 4  # two stride-2 groups


def check_input(x: torch.Tensor, in_chans: int, multiple: int = REDUCTION) -> None:
    """Raise a ValueError naming the problem unless ``x`` is a (B, in_chans, H, W) batch with H, W % multiple == 0."""
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D image batch (B, C, H, W), got a tensor of shape {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)})")
    if x.shape[2] % multiple != 0 or x.shape[3] % multiple != 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(
            f"image height and width must be positive multiples of {multiple} (two stride-2 groups), "
            f"got {x.shape[2]}x{x.shape[3]}; CIFAR models expect 32x32"
        )


torch.fx.wrap("check_input")


class CifarResNet(nn.Module):
    """CIFAR ResNet with no attention (``plain``), attention in every block (``classic``) or MLAN (``mlan``).

    Args:
        layers: basic blocks per group.
        widths: channels per group (the stem has ``widths[0]``).
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        structure: ``plain``, ``classic`` (SE-ResNet placement, Tables 7/14) or ``mlan`` (Sec. III).
        attn: attention for ``classic``/``mlan``: sma, sma_v2, fma, se, cbam, ta or gc.
        fusion: MLAN fusion (eqs. 8-11): plus, concat, conv1x1 or weighted.
        levels: MLAN ``multi`` (layer -> block -> group) or ``single`` (one attention per block, Tables 3/11).
        num_masks: masks N of sma/sma_v2/fma (eq. 2).
        mask_kernel_size: kernel of the mask convs of sma/sma_v2/fma.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of plain/classic blocks (not defined for MLAN's fused blocks).
        global_pool: timm pooling type of the head.
    """

    def __init__(
            self,
            layers: Tuple[int, ...] = (3, 3, 3),
            widths: Tuple[int, ...] = (16, 32, 64),
            num_classes: int = 10,
            in_chans: int = 3,
            structure: str = "mlan",
            attn: Optional[str] = "sma",
            fusion: str = "plus",
            levels: str = "multi",
            num_masks: int = 3,
            mask_kernel_size: int = 1,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self._check_args(
            layers, widths, in_chans, structure, attn, fusion, levels, num_masks, mask_kernel_size, drop_path_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.structure = structure
        self.grad_checkpointing = False

        attn_layer = None
        if structure != "plain":
            attn_layer = partial(create_attention, attn, num_masks=num_masks, mask_kernel_size=mask_kernel_size)

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act1")]

        total_blocks = sum(layers)
        block_idx = 0
        in_chs = widths[0]
        for i, (depth, out_chs) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            if structure == "mlan" and levels == "multi":
                group = MLANGroup(in_chs, out_chs, depth, stride, attn_layer, fusion)
            else:
                blocks = []
                for j in range(depth):
                    block_in, block_stride = (in_chs, stride) if j == 0 else (out_chs, 1)
                    if structure == "mlan":
                        blocks.append(SingleLevelBlock(block_in, out_chs, block_stride, attn_layer, fusion))
                    else:
                        dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                        blocks.append(BasicBlock(block_in, out_chs, block_stride, attn_layer, dpr))
                    block_idx += 1
                group = nn.Sequential(*blocks)
            self.add_module(f"layer{i + 1}", group)
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** i, module=f"layer{i + 1}"))
            in_chs = out_chs

        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self._init_weights()

    @staticmethod
    def _check_args(
            layers, widths, in_chans, structure, attn, fusion, levels, num_masks, mask_kernel_size, drop_path_rate,
    ) -> None:
        if structure not in STRUCTURES:
            raise ValueError(f"unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}")
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise ValueError(f"layers {layers} and widths {widths} must be equally long, with >= 1 block per group")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if structure == "plain":
            if attn is not None:
                raise ValueError(f"attn={attn!r} given for a plain backbone; use a classic (se_, cbam_, ...) "
                                 "or mlan_ model")
        else:
            if attn is None:
                raise ValueError(f"structure={structure!r} needs an attn type")
            check_attn_type(attn)
        if fusion not in FUSION_TYPES:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSION_TYPES)}")
        if levels not in LEVELS:
            raise ValueError(f"unknown levels {levels!r}; choose one of {', '.join(LEVELS)}")
        if structure != "mlan" and (fusion != "plus" or levels != "multi"):
            raise ValueError("fusion and levels apply to MLAN models (mlan_*) only")
        check_mask_args(num_masks, mask_kernel_size)
        if structure == "mlan" and drop_path_rate:
            raise ValueError("drop_path_rate (stochastic depth) is not defined for MLAN's fused blocks; use 0")

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        if coarse:
            return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)")
        return dict(
            stem=r"^conv1|bn1",
            blocks=[
                (r"^layer(\d+)\.(?:blocks\.)?(\d+)", None),
                (r"^layer(\d+)\.(?:group_attn|fusion|downsample)", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for m in self.modules():
            if isinstance(m, MLANGroup):
                m.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def _groups(self) -> List[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def _run_group(self, group: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and isinstance(group, nn.Sequential):
            return checkpoint_seq(group, x)
        return group(x)  # MLANGroup checkpoints its blocks itself

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem (index 0) and each group (1-3), timm's ``forward_intermediates`` contract."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_input(x, self.in_chans)
        take_indices, max_index = feature_take_indices(4, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        groups = self._groups()
        if stop_early:
            groups = groups[:max_index]
        for i, group in enumerate(groups):
            x = self._run_group(group, x)
            if i + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the groups after the last wanted intermediate (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(4, indices)
        for i in range(max_index + 1, 4):
            setattr(self, f"layer{i}", nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans)
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for group in self._groups():
                x = self._run_group(group, x)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------
# Registry: names, pretrained cfgs, entrypoints
# ---------------------------------------------------------------------------------------------------------------

#: Model-name prefix -> (structure, attn).
FAMILIES = {
    "": ("plain", None),
    "mlan_": ("mlan", "sma"),
    "mlan_v2_": ("mlan", "sma_v2"),
    "se_": ("classic", "se"),
    "cbam_": ("classic", "cbam"),
    "ta_": ("classic", "ta"),
    "gc_": ("classic", "gc"),
}
HF_ORG = "mlan-timm"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar100_classes() -> Tuple[str, ...]:
    from .cifar100_classes import CIFAR100_CLASSES
    return CIFAR100_CLASSES


def model_names() -> List[str]:
    """Every registered mlan_timm model name, in a stable order."""
    return [f"{p}resnet{d}_{ds}" for p in FAMILIES for ds in DATASETS for d in DEPTHS]


def parse_model_name(name: str) -> Tuple[str, int, str]:
    """``'mlan_v2_resnet20_cifar100'`` -> ``('mlan_v2_', 20, 'cifar100')``; ValueError for unknown names."""
    for prefix in sorted(FAMILIES, key=len, reverse=True):
        for ds in DATASETS:
            for d in DEPTHS:
                if name == f"{prefix}resnet{d}_{ds}":
                    return prefix, d, ds
    raise ValueError(f"unknown mlan_timm model {name!r}; see mlan_timm.list_models()")


def _cfg(name: str) -> Dict[str, Any]:
    prefix, depth, ds = parse_model_name(name)
    c10 = ds == "cifar10"
    return dict(
        url="",
        hf_hub_id=f"{HF_ORG}/{name}",
        num_classes=DATASETS[ds][1],
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        crop_pct=1.0,
        crop_mode="center",
        interpolation="bilinear",
        mean=CIFAR10_MEAN if c10 else CIFAR100_MEAN,
        std=CIFAR10_STD if c10 else CIFAR100_STD,
        first_conv="conv1",
        classifier="fc",
        label_names=list(CIFAR10_CLASSES if c10 else _cifar100_classes()),
        license="apache-2.0",
        paper_ids="doi:10.1109/ACCESS.2022.3210711",
        paper_name="MLAN: Multi-Level Attention Network",
        origin_url="https://github.com/mlan-timm/mlan-timm",
    )


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in model_names()})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    prefix, depth, ds = parse_model_name(variant)
    structure, attn = FAMILIES[prefix]
    model_args = dict(layers=DEPTHS[depth], widths=DATASETS[ds][0], structure=structure, attn=attn)
    model_args.update(kwargs)
    if pretrained:
        overlay = dict(pretrained_cfg_overlay(variant))
        overlay.update(model_args.pop("pretrained_cfg_overlay", None) or {})
        model_args["pretrained_cfg_overlay"] = overlay
    with load_errors_as_clear_messages(variant):
        return build_model_with_cfg(
            CifarResNet,
            variant,
            pretrained,
            feature_cfg=dict(out_indices=(0, 1, 2, 3)),
            **model_args,
        )


def _register(name: str) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
        return _create(name, pretrained=pretrained, **kwargs)

    prefix, depth, ds = parse_model_name(name)
    structure, attn = FAMILIES[prefix]
    widths = DATASETS[ds][0]
    if structure == "plain":
        what = "plain backbone"
    elif structure == "classic":
        what = f"{attn.upper()} in every block (classic placement)"
    else:
        what = f"MLAN, attention {attn}, multi-level, plus fusion"
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"CIFAR ResNet-{depth} (widths {widths}) for {ds.upper()}: {what}."
    globals()[name] = register_model(entrypoint)


for _name in model_names():
    _register(_name)
