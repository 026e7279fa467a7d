"""The CIFAR ResNet network of the paper (Fig. 1, Tables 1 and 8): plain backbone, classic attention or MLAN.

A 3x3 stem conv + BN + ReLU (no max-pool); groups of basic blocks with widths ``widths`` and strides 1, 2, 2, ...;
global average pooling and a linear classifier. Group 1 is ``n`` blocks; every later group is a D block (stride 2,
no attention) followed by ``n - 1`` blocks. The registered names and their configs live in ``registry.py``.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models._features import feature_take_indices
from torch import nn

from ..layers import FUSION_TYPES, check_attn_type, check_mask_args, create_attention
from ..layers.switches import check_switch
from .blocks import BasicBlock, MLANGroup, PlainGroup, SingleLevelBlock

__all__ = ["CifarResNet", "STRUCTURES", "LEVELS", "check_input"]

STRUCTURES = ("plain", "classic", "mlan")
LEVELS = ("multi", "single")


def check_input(x: torch.Tensor, in_chans: int, multiple: int) -> None:
    """ValueError naming the problem unless ``x`` is a float (B, in_chans, H, W) batch with H, W multiples of
    ``multiple`` (the network's total stride)."""
    if not torch.is_floating_point(x):
        raise ValueError(f"expected a floating-point image batch (normalised, e.g. with timm's transforms), "
                         f"got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D image batch (B, C, H, W), got a tensor of shape {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)})")
    if x.shape[2] % multiple != 0 or x.shape[3] % multiple != 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(
            f"image height and width must be positive multiples of {multiple} (the network's total stride), "
            f"got {x.shape[2]}x{x.shape[3]}; CIFAR models expect 32x32"
        )


torch.fx.wrap("check_input")


class InputCheck(nn.Module):
    """Identity that raises :func:`check_input`'s errors. The model's first child, so that timm's ``features_only``
    wrapper, which runs the children in order instead of ``forward_features``, checks its input too."""

    def __init__(self, in_chans: int, multiple: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_chans, self.multiple)
        return x

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, multiple={self.multiple}"


def _classifier(num_features: int, num_classes: int, global_pool: str) -> Tuple[nn.Module, nn.Module]:
    """timm's ``create_classifier``; ValueError naming ``global_pool`` where timm would fail an assert."""
    try:
        return create_classifier(num_features, num_classes, pool_type=global_pool)
    except AssertionError as e:
        raise ValueError(f"global_pool {global_pool!r}: {e} (e.g. 'avg', 'max', 'avgmax', 'catavgmax' or '')") from e


def _check_num_classes(num_classes) -> None:
    """ValueError unless ``num_classes`` is an integer >= 0 (0: no classifier)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")


class CifarResNet(nn.Module):
    """CIFAR ResNet with no attention (``plain``), attention in every block (``classic``) or MLAN (``mlan``).

    Args:
        layers: basic blocks ``n`` per group (ResNet-(6n+2) has three groups of n).
        widths: channels per group (the stem has ``widths[0]``); same length as ``layers``.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        structure: ``plain``, ``classic`` (SE-ResNet placement, Tables 7/14) or ``mlan`` (Sec. III).
        attn: attention for ``classic``/``mlan``: sma, sma_v2, fma, se, cbam, ta or gc.
        fusion: MLAN fusion (eqs. 8-11): plus, concat, conv1x1 or weighted.
        levels: MLAN ``multi`` (layer -> block -> group) or ``single`` (one attention per block, Tables 3/11).
        num_masks: masks N of sma/sma_v2/fma (eq. 2); parallel modules of the baselines at LA/BA.
        mask_kernel_size: kernel of the mask convs of sma/sma_v2/fma (3 reproduces the paper's counts).
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
            mask_kernel_size: int = 3,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
    ) -> None:
        super().__init__()
        layers, widths = (tuple(v) if isinstance(v, (list, tuple)) else v for v in (layers, widths))  # checked below
        self._check_args(layers, widths, num_classes, in_chans, structure, attn, fusion, levels, num_masks,
                         mask_kernel_size, drop_rate, drop_path_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.structure = structure
        self.reduction = 2 ** (len(layers) - 1)
        self.grad_checkpointing = False

        attn_layer = None
        if structure != "plain":
            attn_layer = partial(create_attention, attn, num_masks=num_masks, mask_kernel_size=mask_kernel_size)

        self.input_check = InputCheck(in_chans, self.reduction)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act1")]

        dpr = [drop_path_rate * i / max(sum(layers) - 1, 1) for i in range(sum(layers))]
        groups: List[nn.Module] = []
        in_chs = widths[0]
        for i, (n, chs) in enumerate(zip(layers, widths)):
            # groups after the first start with a D block (stride 2, no attention): Fig. 1
            down = BasicBlock(in_chs, chs, 2) if i > 0 else None
            num_blocks = n - 1 if i > 0 else n
            block_dpr = dpr[sum(layers[:i]):sum(layers[:i + 1])]
            if structure == "mlan" and levels == "multi" and num_blocks > 0:
                group = MLANGroup(down, chs, num_blocks, attn_layer, fusion)
            elif structure == "mlan":
                group = PlainGroup(down, [SingleLevelBlock(chs, attn_layer, fusion) for _ in range(num_blocks)])
            else:
                if down is not None:
                    down = BasicBlock(in_chs, chs, 2, attn_layer, block_dpr[0])
                group = PlainGroup(down, [BasicBlock(chs, chs, 1, attn_layer, block_dpr[j + (i > 0)])
                                          for j in range(num_blocks)])
            groups.append(group)
            self.feature_info.append(dict(num_chs=chs, reduction=2 ** i, module=f"groups.{i}"))
            in_chs = chs
        self.groups = nn.Sequential(*groups)

        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool, self.fc = _classifier(self.num_features, num_classes, global_pool)
        self._init_weights()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """Unpickling a whole model saved before ``input_check`` existed adds it, as the model's first child."""
        super().__setstate__(state)
        if "input_check" not in self._modules:
            modules = list(self._modules.items())
            self._modules.clear()
            self._modules["input_check"] = InputCheck(self.in_chans, self.reduction)
            self._modules.update(modules)

    @staticmethod
    def _check_args(layers, widths, num_classes, in_chans, structure, attn, fusion, levels, num_masks,
                    mask_kernel_size, drop_rate, drop_path_rate) -> None:
        if structure not in STRUCTURES:
            raise ValueError(f"unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}")
        for name, value in (("layers", layers), ("widths", widths)):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{name} must be a list or tuple with one entry per group, got {value!r}")
        if not layers or len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must be non-empty and equally long "
                             "(one entry per group)")
        if any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be integers >= 1 (basic blocks per group), got {layers}")
        if any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be integers >= 1 (channels per group), got {widths}")
        _check_num_classes(num_classes)
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
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
        for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")
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
            return dict(stem=r"^conv1|bn1", blocks=r"^groups\.(\d+)")
        return dict(
            stem=r"^conv1|bn1",
            blocks=[
                (r"^groups\.(\d+)\.down_block", (-1,)),  # before the group's blocks
                (r"^groups\.(\d+)\.blocks\.(\d+)", None),
                (r"^groups\.(\d+)\.(?:group_attn|attn_proj|fusion)", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for group in self.groups:
            group.grad_checkpointing = enable

    @torch.jit.ignore
    def set_fast_paths(self, enable: bool = True, cpu_kernels: Optional[bool] = None,
                       gpu_kernels: Optional[bool] = None) -> None:
        """Switch this model's fast paths (on by default) on or off; off runs the equations as written.

        The fast path is :class:`MLANGroup`'s: on CPU the concatenation-free block and group attention for
        shared-mask LA/BA, on GPUs the concatenated formulation (and in CUDA inference the Triton kernels); it
        computes the same function (tests/test_models.py compares outputs and gradients).
        ``cpu_kernels``: whether the fast path runs its mask convs (and, in inference, each block's whole attention)
        with the compiled CPU kernels (:mod:`mlan_timm.layers.cpu_kernels`) where they apply; None (the default)
        follows the process-wide setting (``enable_cpu_kernels`` or ``MLAN_TIMM_CPU_KERNELS=1``, off by default).
        ``gpu_kernels``: whether CUDA inference runs the attention in the Triton kernels
        (:mod:`mlan_timm.layers.gpu_kernels`) where they apply; None follows the process-wide setting
        (``enable_gpu_kernels`` or ``MLAN_TIMM_GPU_KERNELS=1``, off by default).
        """
        enable = check_switch(enable, "set_fast_paths(enable)")
        cpu_kernels = check_switch(cpu_kernels, "set_fast_paths(cpu_kernels)", allow_none=True)
        gpu_kernels = check_switch(gpu_kernels, "set_fast_paths(gpu_kernels)", allow_none=True)
        for m in self.modules():
            if isinstance(m, MLANGroup):
                m.fast_path = enable
                m.cpu_kernels = cpu_kernels
                m.gpu_kernels = gpu_kernels

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = _classifier(self.num_features, num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem (index 0) and each group (1..G), timm's ``forward_intermediates`` contract."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        x = self.input_check(x)
        take_indices, max_index = feature_take_indices(len(self.groups) + 1, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        groups = self.groups[:max_index] if stop_early else self.groups
        for i, group in enumerate(groups):
            x = group(x)
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
        take_indices, max_index = feature_take_indices(len(self.groups) + 1, indices)
        self.groups = self.groups[:max_index]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_check(x)
        x = self.act1(self.bn1(self.conv1(x)))
        return self.groups(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

