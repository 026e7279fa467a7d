"""Residual units of the CIFAR ResNet backbone and of MLAN (Sec. III, Fig. 1 of the paper).

* :class:`BasicBlock`: He et al.'s CIFAR basic block. With an attention it is the classic SE-ResNet placement
  (after the second BN, before the residual addition; Tables 7/14). Without, it is also MLAN's D block.
* :class:`SingleLevelBlock`: one layer attention on the block output, fused with the backbone feature and the
  block residual (the single-level structure of Tables 3/11).
* :class:`MLANBlock`: layer attentions of both conv layers, LA over them (block attention, 2C channels), a 1x1
  projection to C channels and the fusion with the block residual; also returns its block attention.
* :class:`MLANGroup`: optional D block, then MLAN blocks; BA over their block attentions (group attention,
  2pC channels), a 1x1 projection to C channels and the fusion with the group residual.
* :class:`PlainGroup`: optional D block, then a sequence of blocks (backbone, classic and single-level models).

Groups 2 and 3 start with a D block (Fig. 1: "the down-sample block whose first layer stride is 2"), kept as
``down_block`` in every structure, followed by ``blocks``; so the backbone's state-dict keys
(``groups.1.down_block.conv1.weight``, ``groups.1.blocks.0.conv1.weight``, ...) are the same in the plain, classic
and MLAN models, and an MLAN model loads its backbone's weights with ``strict=False``.
"""
from types import ModuleType
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models._manipulate import checkpoint, checkpoint_seq
from torch import nn

from ..layers import (
    AttentionAggregation,
    PlusFusion,
    SharedMaskAttention,
    cpu_kernels,
    create_fusion,
    fused_block_attention,
    gpu_kernels,
    pointwise_conv,
)
from ..layers.fast_ops import KERNEL_GRAD_WEIGHT_SIZES
from .structure import structure_cached

__all__ = [
    "STREAMING_MIN_BATCH", "STREAMING_MIN_PLANE", "AttnFactory", "BasicBlock", "SingleLevelBlock", "MLANBlock",
    "MLANGroup", "PlainGroup",
]

#: Batch size from which :class:`MLANGroup`'s fast path streams (concatenation-free); below it, it concatenates.
#: Picked from interleaved CPU timings of both formulations during development (no project command reproduces
#: them); docs/benchmarks.md times the fast path against the reference at batch 1 and 128; tests of both in
#: tests/test_models.py.
STREAMING_MIN_BATCH = 4

#: Pixels per channel plane of a group's blocks (after its D block) from which its CPU fast path streams; on smaller
#: planes the concatenated formulation is faster (fewer, larger operators). Streaming's speed-up over concatenating
#: on 2 cores at batch 128, inference and train step of R20/R32 on both datasets: 32x32 planes 1.09-1.21, 16x16
#: 1.00-1.11, 8x8 0.91-1.00 (``python benchmarks/mlan_group_formulations.py --train --models`` with the four
#: models; docs/architecture.md, "Fast paths").
STREAMING_MIN_PLANE = 256

#: ``(channels, level) -> attention module``; level is "layer", "aggregate" or "classic" (layers.create_attention).
AttnFactory = Callable[[int, str], nn.Module]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def attn_projection(in_chs: int, out_chs: int) -> nn.Conv2d:
    """1x1 conv, no bias: a block attention (2C) or group attention (2pC) back to C channels (choice A2)."""
    return nn.Conv2d(in_chs, out_chs, 1, bias=False)


def shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """Block shortcut: 1x1 conv + BN when the shape changes (He et al.'s option B), else identity."""
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ optional classic attention) + shortcut, ReLU."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            attn_layer: Optional[AttnFactory] = None,
            drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.attn = attn_layer(out_chs, "classic") if attn_layer is not None else nn.Identity()
        self.downsample = shortcut(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def conv_layers(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the two conv layers: after BN-ReLU (layer 1) and after BN (layer 2, the block's x_O)."""
        out1 = self.act1(self.bn1(self.conv1(x)))
        return out1, self.bn2(self.conv2(out1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, out = self.conv_layers(x)
        return self.act2(self.drop_path(self.attn(out)) + self.downsample(x))


class SingleLevelBlock(BasicBlock):
    """Single-level structure (Tables 3/11): ``ReLU(F(x_O, A(x_O), x_R))``, no LA, BA or group level."""

    def __init__(self, channels: int, attn_layer: AttnFactory, fusion: str) -> None:
        super().__init__(channels, channels)
        self.attn = attn_layer(channels, "layer")
        self.fusion = create_fusion(fusion, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, out = self.conv_layers(x)
        return self.act2(self.fusion(out, self.attn(out), x))


class MLANBlock(BasicBlock):
    """Layer + block level: ``b = LA(T(o1), T(o2))`` (2C), ``x_A = conv1x1(b)``, ``ReLU(F(o2, x_A, x))``.

    Returns ``(block output, block attention b)``; the group concatenates the ``b`` of its blocks for BA.
    """

    def __init__(self, channels: int, attn_layer: AttnFactory, fusion: str) -> None:
        super().__init__(channels, channels)
        del self.attn  # the layer attentions below replace the classic one
        self.layer_attn = nn.ModuleList([attn_layer(channels, "layer"), attn_layer(channels, "layer")])
        self.block_attn = AttentionAggregation(attn_layer(2 * channels, "aggregate"), 2)
        self.attn_proj = attn_projection(2 * channels, channels)
        self.fusion = create_fusion(fusion, channels)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        out1, out2 = self.conv_layers(x)
        block_attn = self.block_attn([self.layer_attn[0](out1), self.layer_attn[1](out2)])
        return self.act2(self.fusion(out2, self.attn_proj(block_attn), x)), block_attn

    @torch.jit.unused
    def forward_small_batch(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for the fast path at small batch: the concatenations kept, conv2 and the first layer
        attention's mask convs as one conv (:meth:`conv2_and_first_layer_mask`); the reference forward where they
        cannot merge (nothing else differs)."""
        if not self.can_merge_first_mask():
            return self.forward(x)
        out1 = self.act1(self.bn1(self.conv1(x)))
        out2, mask1 = self.conv2_and_first_layer_mask(out1)
        block_attn = self.block_attn([out1 * mask1, self.layer_attn[1](out2)])
        return self.act2(self.fusion(out2, self.attn_proj(block_attn), x)), block_attn

    @structure_cached
    def can_merge_first_mask(self) -> bool:
        """Whether conv2 and T_1's mask convs can run as one conv: T_1 is a plain SMA with conv2's kernel."""
        sma = self.layer_attn[0]
        return type(sma) is SharedMaskAttention and sma.conv.kernel_size == self.conv2.kernel_size

    def conv2_and_first_layer_mask(self, out1: torch.Tensor,
                                   kernels: Optional[ModuleType] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(bn2(conv2(out1)), T_1's mask of out1)`` for the fast paths.

        conv2 and the first layer attention's mask convs read the same tensor: without autograd, when that attention
        is a plain SMA with conv2's kernel, they run as one conv with ``C + N`` outputs (one pass over ``out1``).
        With autograd (or under FX tracing) they stay two, so that conv2's gradient costs what the backbone's does;
        ``kernels``: the compiled CPU kernels for the mask convs then (:func:`..layers.same_conv`).
        """
        sma = self.layer_attn[0]
        merge = not isinstance(out1, torch.fx.Proxy) and not (
            torch.is_grad_enabled() and (out1.requires_grad or self.conv2.weight.requires_grad))
        if merge and self.can_merge_first_mask():
            c = self.conv2.out_channels
            both = F.conv2d(out1, torch.cat([self.conv2.weight, sma.conv.weight], 0), None, padding=self.conv2.padding)
            return self.bn2(both[:, :c]), sma.mask_from_partials(both[:, c:])
        return self.bn2(self.conv2(out1)), sma.mask_from_partials(sma.mask_partial(out1, 0, kernels))

    @structure_cached
    def can_fuse(self) -> bool:
        """Whether :meth:`forward_fused` applies: plain SMAs of one mask shape everywhere, plus fusion."""
        t1, t2, la = self.layer_attn[0], self.layer_attn[1], self.block_attn.attn
        return type(self.fusion) is PlusFusion and all(
            type(a) is SharedMaskAttention and a.conv.kernel_size == t1.conv.kernel_size
            and a.num_masks == t1.num_masks for a in (t1, t2, la))

    @torch.jit.unused
    def forward_fused(self, kernels: ModuleType, x: torch.Tensor, group_attn: SharedMaskAttention,
                      group_proj: torch.Tensor, offset: int, group_logits: torch.Tensor, group_proj_sum: torch.Tensor,
                      first: bool, group_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`forward_streaming` for inference with the compiled CPU kernels (:mod:`..layers.cpu_kernels`):
        the backbone's convs and BNs in PyTorch as in :class:`BasicBlock`, then the whole attention of the block
        (T_1, T_2, LA, BA's partial convs, both projections and the fusion) in one kernel, image by image.
        Adds BA's partial logits to ``group_logits`` and this block's share of the group projection to
        ``group_proj_sum`` (sets them if ``first``); returns the block output, or, given the ``group_input`` (last
        block of a group with plus fusion), the group's output ``ReLU(y + M_g * g_A + group_input)``."""
        out1, out2 = self.conv_layers(x)
        return kernels.mlan_block_forward(
            out1, out2, x, *self.fused_weights(group_attn, group_proj, offset), group_logits, group_proj_sum, first,
            group_input is not None, x if group_input is None else group_input, group_attn.conv.bias, None)

    def fused_weights(self, group_attn: SharedMaskAttention, group_proj: torch.Tensor,
                      offset: int) -> Tuple[torch.Tensor, ...]:
        """The kernels' weight arguments: T_1, T_2 and LA weights and biases, this block's columns of BA's weight,
        the block projection and this block's columns of the group projection (both 2-d)."""
        c = self.conv2.out_channels
        t1, t2, la = self.layer_attn[0], self.layer_attn[1], self.block_attn.attn
        return (t1.conv.weight, t1.conv.bias, t2.conv.weight, t2.conv.bias, la.conv.weight, la.conv.bias,
                group_attn.conv.weight[:, offset:offset + 2 * c], self.attn_proj.weight.flatten(1),
                group_proj[:, offset:offset + 2 * c].flatten(1))

    @torch.jit.unused
    def forward_streaming(self, x: torch.Tensor, group_attn: SharedMaskAttention, group_proj: torch.Tensor,
                          offset: int, kernels: Optional[ModuleType] = None, fused: bool = False
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` for a shared-mask LA, handing the group what BA needs instead of the block attention.

        With ``b = M * cat(a1, a2) = cat(b1, b2)`` (M: LA's mask, shared over channels):
        ``conv1x1(b) = P1 b1 + P2 b2``, and the group's BA and projection see ``b`` at channels
        ``[offset, offset + 2C)`` of their input only through ``group_attn.mask_partial`` and the weight slice
        ``group_proj[:, offset:offset + 2C]``. Returns
        ``(block output, BA partial, this block's share of conv1x1(g) before BA's mask)``; no 2C-channel tensor
        is built. The block's and the group's 1x1 projections of both parts run as one :func:`pointwise_conv`;
        ``kernels``: the compiled CPU kernels for the mask convs (None: PyTorch's); with ``fused`` (the group
        checked :meth:`MLANGroup.fusable`), the whole attention runs in them, forward and backward
        (:func:`..layers.fused_block_attention`).
        Reference: :meth:`forward` + :class:`MLANGroup`'s concatenation (tests/test_models.py).
        """
        if fused and kernels is not None:
            out1, out2 = self.conv_layers(x)
            return fused_block_attention(kernels, out1, out2, x, *self.fused_weights(group_attn, group_proj, offset))
        out1 = self.act1(self.bn1(self.conv1(x)))
        out2, mask1 = self.conv2_and_first_layer_mask(out1, kernels)
        la1 = self.layer_attn[1]
        a1, a2 = out1 * mask1, out2 * la1.mask_from_partials(la1.mask_partial(out2, 0, kernels))
        la, c = self.block_attn.attn, a1.shape[1]
        mask = la.mask_from_partials(la.mask_partial(a1, 0, kernels) + la.mask_partial(a2, c, kernels))
        b1, b2 = a1 * mask, a2 * mask  # the two halves of the block attention b
        w = torch.cat([self.attn_proj.weight, group_proj[:, offset:offset + 2 * c]], 0).flatten(1)
        block_proj, group_proj_part = pointwise_conv([b1, b2], [w[:, :c], w[:, c:]]).split(c, 1)
        group_partial = group_attn.mask_partial(b1, offset, kernels) + group_attn.mask_partial(b2, offset + c, kernels)
        return self.act2(self.fusion(out2, block_proj, x)), group_partial, group_proj_part


class PlainGroup(nn.Module):
    """A group: optional D block (``down_block``), then ``blocks`` in sequence (plain, classic, single-level)."""

    def __init__(self, down_block: Optional[nn.Module], blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.down_block = down_block if down_block is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down_block(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MLANGroup(nn.Module):
    """Group level: optional D block, then ``p`` MLAN blocks; ``g = BA(b_1 .. b_p)`` (2pC channels),
    ``g_A = conv1x1(g)``, output ``ReLU(F(y_p, g_A, x_G))`` with ``x_G`` the group input after the D block.

    Fast path (``fast_path``, on by default; one switch per model: ``CifarResNet.set_fast_paths``), when LA and BA
    are shared-mask attentions (SMA, SMAv2); same function and gradients as the reference (tested):

    * from :data:`STREAMING_MIN_BATCH` samples on, on CPU planes of at least :data:`STREAMING_MIN_PLANE` pixels
      (:meth:`streams`), the block and group attentions are never concatenated or masked at full width. A mask
      shared over channels commutes with the 1x1 projections, and a conv over a concatenation is the sum of convs
      over its parts, so ``g_A = M_g * sum_i M_i * P_i(a_i)`` with ``M_g`` from
      per-part partial convs (:meth:`MLANBlock.forward_streaming`): a fraction of the memory traffic;
    * below it, the concatenations stay (fewer, larger convs: at batch 1 on CPU a conv over fewer than 20,480
      input values runs im2col, and per-op overhead dominates), with :meth:`MLANBlock.forward_small_batch`; on
      smaller planes, with the reference blocks;
    * with the compiled CPU kernels (``cpu_kernels``; :mod:`..layers.cpu_kernels`), at every batch size: each
      block's whole attention in one kernel call (:meth:`MLANBlock.forward_fused` in inference,
      :func:`..layers.fused_block_attention` with autograd) where :meth:`fusable`, else the streaming path with
      the kernels for its mask convs;
    * on GPUs (any device but the CPU) the concatenations stay at every batch size (the streaming path's extra
      small kernels cost more than the traffic they save there: docs/architecture.md, "Fast paths"), and in CUDA
      inference the Triton kernels (``gpu_kernels``; :mod:`..layers.gpu_kernels`) run the attention where
      :meth:`gpu_kernels_fit` (:meth:`forward_gpu_kernels`).
    """

    def __init__(
            self,
            down_block: Optional[nn.Module],
            channels: int,
            num_blocks: int,
            attn_layer: AttnFactory,
            fusion: str,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"an MLAN group needs at least one MLAN block, got {num_blocks}")
        self.down_block = down_block if down_block is not None else nn.Identity()
        self.blocks = nn.ModuleList([MLANBlock(channels, attn_layer, fusion) for _ in range(num_blocks)])
        self.group_attn = AttentionAggregation(attn_layer(2 * num_blocks * channels, "aggregate"), num_blocks)
        self.attn_proj = attn_projection(2 * num_blocks * channels, channels)
        self.fusion = create_fusion(fusion, channels)
        self.act = nn.ReLU(inplace=True)
        self.grad_checkpointing = False
        self.fast_path = True
        self.cpu_kernels: Optional[bool] = None  # None: the process-wide setting (layers.cpu_kernels)
        self.gpu_kernels: Optional[bool] = None  # None: the process-wide setting (layers.gpu_kernels)

    @structure_cached
    def has_fast_path(self) -> bool:
        """Whether the concatenation-free path applies: LA and BA are shared-mask attentions."""
        return isinstance(self.group_attn.attn, SharedMaskAttention) and all(
            isinstance(b.block_attn.attn, SharedMaskAttention) for b in self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path and not torch.jit.is_scripting() and self.has_fast_path():
            if not isinstance(x, torch.fx.Proxy):
                out = self.try_gpu_kernels(x)
                if out is not None:
                    return out
                if x.device.type != "cpu":  # GPUs: the concatenated formulation at every batch size
                    return self.forward_concatenated(x, small_batch=x.shape[0] < STREAMING_MIN_BATCH)
            # FX traces the streaming path; the fused kernels are the fastest formulation at every batch size, and
            # with the kernels for its mask convs the streaming path is used from STREAMING_MIN_BATCH on, any plane
            if isinstance(x, torch.fx.Proxy) or self.streams(x) or (self.kernels(x) is not None and (
                    x.shape[0] >= STREAMING_MIN_BATCH or self.fusable())):
                return self.forward_streaming(x)
            return self.forward_concatenated(x, small_batch=x.shape[0] < STREAMING_MIN_BATCH)
        return self.forward_reference(x)

    def streams(self, x: torch.Tensor) -> bool:
        """Whether the library fast path (no compiled kernels) streams over the group input ``x``: at least
        :data:`STREAMING_MIN_BATCH` samples and :data:`STREAMING_MIN_PLANE` pixels per plane after the D block."""
        if x.shape[0] < STREAMING_MIN_BATCH:  # the batch first: at batch 1 this runs in every group's forward
            return False
        stride = getattr(getattr(self.down_block, "conv1", None), "stride", (1, 1))
        plane = -(-x.shape[2] // stride[0]) * -(-x.shape[3] // stride[1])  # a 3x3 conv, padding 1: ceil(H / s)
        return plane >= STREAMING_MIN_PLANE

    @torch.jit.unused
    def forward_streaming(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path (see the class docstring)."""
        x = self.down_block(x)
        group_input = x
        ba, c = self.group_attn.attn, x.shape[1]
        kernels = None if isinstance(x, torch.fx.Proxy) else self.kernels(x)
        fused = kernels is not None and self.fusable()
        if fused and not self.needs_autograd(x):  # inference: the kernels' fused forward, block by block
            partial = x.new_empty(x.shape[0], ba.num_masks, *x.shape[2:])
            proj = torch.empty_like(x, memory_format=torch.contiguous_format)
            fuse_group = type(self.fusion) is PlusFusion  # then the last block's kernel ends the group too
            last = len(self.blocks) - 1
            for i, block in enumerate(self.blocks):
                x = block.forward_fused(kernels, x, ba, self.attn_proj.weight, 2 * c * i, partial, proj, i == 0,
                                        group_input if fuse_group and i == last else None)
            if fuse_group:
                return x
            return self.act(self.fusion(x, ba.mask_from_partials(partial) * proj, group_input))
        # otherwise the streaming path; with the kernels, each block's attention fused, forward and backward, where
        # the backward kernel's weight gradients apply (mask kernels up to 7x7)
        fused = fused and self.mask_kernel_size() in KERNEL_GRAD_WEIGHT_SIZES
        partial, proj = None, None
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing:
                x, p, q = checkpoint(block.forward_streaming, x, ba, self.attn_proj.weight, 2 * c * i, kernels, fused)
            else:
                x, p, q = block.forward_streaming(x, ba, self.attn_proj.weight, 2 * c * i, kernels, fused)
            partial = p if partial is None else partial + p
            proj = q if proj is None else proj + q
        group_attn = ba.mask_from_partials(partial) * proj
        return self.act(self.fusion(x, group_attn, group_input))

    @torch.jit.unused
    def try_gpu_kernels(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """:meth:`forward_gpu_kernels` where the Triton kernels apply (:meth:`gpu_kernels_fit`, inference,
        :func:`..layers.gpu_kernels.gpu_kernels_apply`), else None; also None, after a one-time warning, if a kernel
        fails to compile here (PyTorch's operators from then on)."""
        if not (gpu_kernels.gpu_kernels_apply(x, self.gpu_kernels) and self.gpu_kernels_fit()
                and not self.needs_autograd(x)):
            return None
        try:
            return self.forward_gpu_kernels(x)
        except gpu_kernels.GpuKernelsFailed:
            return None

    @torch.jit.unused
    def forward_gpu_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Inference with the Triton kernels (:mod:`..layers.gpu_kernels`): per block, one launch writes the layer
        attentions ``T_1(o1)``, ``T_2(o2)`` into the halves of a 2C buffer (LA's input, no ``torch.cat``), and one
        runs LA over it, writes the block attention ``b`` into its slice of the group's 2pC buffer (BA's input)
        and computes ``ReLU(o2 + conv1x1(b) + x)``; per group, one launch runs BA over that buffer, the group's
        projection and fusion. Same values as :meth:`forward_reference` up to float32 rounding
        (tests/test_gpu_kernels.py)."""
        x = self.down_block(x)
        group_input = x
        b, c, h, w = x.shape
        group_cat = x.new_empty(b, 2 * len(self.blocks) * c, h, w)
        for i, block in enumerate(self.blocks):
            out1, out2 = block.conv_layers(x)
            t1, t2, la = block.layer_attn[0].conv, block.layer_attn[1].conv, block.block_attn.attn.conv
            block_cat = gpu_kernels.layer_attention_pair(out1, out2, t1.weight, t1.bias, t2.weight, t2.bias,
                                                         x.new_empty(b, 2 * c, h, w))
            x = gpu_kernels.attend_project_fuse(block_cat, la.weight, la.bias, block.attn_proj.weight, out2, x,
                                                attn_out=group_cat[:, 2 * c * i:2 * c * (i + 1)])
        ba = self.group_attn.attn.conv
        return gpu_kernels.attend_project_fuse(group_cat, ba.weight, ba.bias, self.attn_proj.weight, x, group_input)

    @structure_cached
    def gpu_kernels_fit(self) -> bool:
        """Whether :meth:`forward_gpu_kernels` applies: T_1, T_2, LA and BA plain SMAs (any mask count and odd
        kernel size; T_1 and T_2 of one shape, they share a launch), plus fusion in the group and its blocks."""
        return type(self.group_attn.attn) is SharedMaskAttention and type(self.fusion) is PlusFusion and all(
            type(b.fusion) is PlusFusion
            and all(type(a) is SharedMaskAttention for a in (b.layer_attn[0], b.layer_attn[1], b.block_attn.attn))
            and b.layer_attn[0].conv.weight.shape == b.layer_attn[1].conv.weight.shape
            for b in self.blocks)

    def kernels(self, x: torch.Tensor) -> Optional[ModuleType]:
        """The compiled CPU kernels for this group's mask convs over ``x`` (:func:`..layers.cpu_kernels.kernels_for`
        with this group's ``cpu_kernels`` setting), or None for PyTorch's convolutions."""
        return cpu_kernels.kernels_for(x, self.cpu_kernels)

    def needs_autograd(self, x: torch.Tensor) -> bool:
        """Whether this forward records autograd: grad mode on and ``x`` or any parameter of the group (a partly
        frozen model too) requires grad."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    @structure_cached
    def fusable(self) -> bool:
        """Whether the kernels may run each block's whole attention (:meth:`MLANBlock.forward_fused` in inference,
        :func:`..layers.fused_block_attention` with autograd, mask kernel sizes 1 to 7): every block
        :meth:`MLANBlock.can_fuse`, BA a plain SMA of the blocks' mask shape."""
        ba, first = self.group_attn.attn, self.blocks[0].layer_attn[0]
        return (type(ba) is SharedMaskAttention and all(b.can_fuse() for b in self.blocks)
                and ba.conv.kernel_size == first.conv.kernel_size and ba.num_masks == first.num_masks)

    def mask_kernel_size(self) -> int:
        """The mask kernel size of BA (for a :meth:`fusable` group, every mask conv's)."""
        return self.group_attn.attn.conv.kernel_size[0]

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Eqs. 4-11 as written: concatenate, attend, project."""
        return self.forward_concatenated(x, small_batch=False)

    def forward_concatenated(self, x: torch.Tensor, small_batch: bool) -> torch.Tensor:
        """Concatenate, attend, project; the blocks run :meth:`MLANBlock.forward_small_batch` if ``small_batch``,
        else their reference forward."""
        x = self.down_block(x)
        group_input = x
        block_attns: List[torch.Tensor] = []
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, attn = checkpoint(block.forward_small_batch if small_batch else block, x)
            elif small_batch:
                x, attn = block.forward_small_batch(x)
            else:
                x, attn = block(x)
            block_attns.append(attn)
        group_attn = self.attn_proj(self.group_attn(block_attns))
        return self.act(self.fusion(x, group_attn, group_input))
