"""Optional Triton kernels for MLAN's attention in CUDA inference, off by default.

In eager CUDA inference each shared-mask attention costs a cuDNN conv with NCHW/NHWC transposes, a sigmoid, a mean
and a multiply, and every block adds a concatenation, a 1x1 conv, two adds and a ReLU: many small kernels, each
costing its launch and a pass over memory (benchmarks/results/profile_cuda.json). Two Triton kernels
(``_triton_src.py``) replace them:

* :func:`layer_attention_pair`: a block's two layer attentions (SMA's masks, sigmoid and mean, eqs. 1-3, and the
  product with the input) in one launch, written into the two halves of LA's input (no ``torch.cat``);
* :func:`attend_project_fuse`: an aggregation attention (LA or BA: its shared mask), the 1x1 projection (choice
  A2), the plus fusion (eq. 8) and the ReLU in one launch, the mask applied after the projection (it is shared
  over channels); for LA it also writes the block attention into its slice of BA's input.

:meth:`..models.blocks.MLANGroup.forward_gpu_kernels` runs a group with them: 2 kernels per block and 1 per group
besides the backbone's (MLAN-20: 17 launches; tests/test_cuda.py counts them). They apply to float32
CUDA tensors in inference (no autograd) outside autocast, tracing, scripting, ``torch.compile`` and dispatch modes,
for groups of plain SMAs with plus fusion; everything else runs PyTorch's operators (the fallback), with the same
values up to float32 rounding (tests/test_gpu_kernels.py runs the kernels in Triton's interpreter on CPU machines
and compiled on GPU machines; tests/test_cuda.py checks MLAN-20 on a GPU).

Enable with :func:`enable_gpu_kernels` or ``MLAN_TIMM_GPU_KERNELS=1`` for the process, or per model with
``model.set_fast_paths(True, gpu_kernels=True)``. They are off by default until a GPU run has measured them
(``mlan-bench`` times ``?gpu_kernels=True`` beside the default on CUDA; docs/gpu-runbook.md). Without Triton, or if
compiling a kernel fails, it warns once and PyTorch's operators run.
"""
import functools
import warnings
from typing import Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .switches import check_switch, env_switch

__all__ = [
    "ENV_VAR", "GpuKernelsFailed", "enable_gpu_kernels", "gpu_kernels_apply", "gpu_kernels_enabled",
    "gpu_kernels_available", "gpu_kernels_status", "layer_attention_pair", "attend_project_fuse", "mark_failed",
    "triton_version",
]

#: Environment variable that switches the kernels on at import ("1", "true", "yes", "on").
ENV_VAR = "MLAN_TIMM_GPU_KERNELS"


class _State:
    enabled = env_switch(ENV_VAR)
    error: Optional[str] = None  # why the kernels are unavailable (Triton missing, a kernel failed to compile)
    on_cpu = False  # tests only: also apply to CPU tensors (Triton imported with TRITON_INTERPRET=1 runs them)


@functools.lru_cache(maxsize=None)
def triton_version() -> Optional[str]:
    """Triton's version, or None where it cannot be imported (checked once per process)."""
    try:
        import triton
    except Exception:  # not installed, or broken: the kernels are unavailable
        return None
    return triton.__version__


class GpuKernelsFailed(RuntimeError):
    """A kernel could not be built or launched here (warned once; the kernels stay off in this process)."""


def _launch(kernel_name: str, grid, *args, **meta) -> None:
    """Launch ``_triton_src.<kernel_name>`` (compiled on first use for these constexprs); a failure is recorded
    and warned once (:func:`mark_failed`), then raised as :class:`GpuKernelsFailed`."""
    try:
        from . import _triton_src

        getattr(_triton_src, kernel_name)[grid](*args, **meta)
    except Exception as exc:  # e.g. Triton cannot compile for this GPU: say why once, then PyTorch's operators
        mark_failed(exc)
        raise GpuKernelsFailed(_State.error) from exc


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _check_4d(name: str, t: torch.Tensor, like: Optional[torch.Tensor] = None, channels: Optional[int] = None) -> None:
    if t.dim() != 4 or t.dtype != torch.float32:
        raise ValueError(f"{name} must be a 4-d float32 tensor (B, C, H, W), got {tuple(t.shape)} {t.dtype}")
    if like is not None and (t.device != like.device or t.shape[0] != like.shape[0] or t.shape[2:] != like.shape[2:]
                             or (channels is not None and t.shape[1] != channels)):
        raise ValueError(f"{name} has shape {tuple(t.shape)} on {t.device}; expected "
                         f"({like.shape[0]}, {channels if channels is not None else 'C'}, {like.shape[2]}, "
                         f"{like.shape[3]}) on {like.device}")


def _mask_args(name: str, weight: torch.Tensor, bias: Optional[torch.Tensor], channels: int, device: torch.device):
    """An SMA's conv weight (N, C, k, k), k odd, and bias as contiguous float32 (zeros for no bias), ValueError
    naming ``name`` otherwise; and (N, NP, k) for the kernels."""
    if weight.dim() != 4 or weight.shape[1] != channels or weight.shape[2] != weight.shape[3] \
            or weight.shape[2] % 2 == 0:
        raise ValueError(f"{name} must be (N, {channels}, k, k) with k odd, got {tuple(weight.shape)}")
    n = weight.shape[0]
    bias = torch.zeros(n, device=device) if bias is None else bias.detach().to(torch.float32)
    return weight.detach().to(torch.float32).contiguous(), bias.contiguous(), (n, _pow2(n), weight.shape[2])


def _channel_step(n_pow2: int, channels: int, block: int) -> int:
    """Channels per step of the mask convs: the [NP, CB, BLOCK] product within 4096 values."""
    return max(1, min(_pow2(channels), 4096 // (n_pow2 * block)))


def layer_attention_pair(x1: torch.Tensor, x2: torch.Tensor, weight1: torch.Tensor, bias1: Optional[torch.Tensor],
                         weight2: torch.Tensor, bias2: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """A block's two layer attentions (SMA, eqs. 1-3) in one launch: ``T_1(x1) = x1 * M(x1)`` into channels
    ``[0, C)`` of ``out`` and ``T_2(x2)`` into ``[C, 2C)``, each mask from its own convs (``weight`` (N, C, k, k),
    k odd, 'same' zero padding; both of one shape). ``out`` (B, 2C, H, W) may have any strides; returns it."""
    _check_4d("x1", x1)
    _check_4d("x2", x2, x1, x1.shape[1])
    b, c, h, w = x1.shape
    _check_4d("out", out, x1, 2 * c)
    weight1, bias1, shape1 = _mask_args("weight1", weight1, bias1, c, x1.device)
    weight2, bias2, shape2 = _mask_args("weight2", weight2, bias2, c, x1.device)
    if shape1 != shape2:
        raise ValueError(f"the two layer attentions' convs differ in shape: {tuple(weight1.shape)} and "
                         f"{tuple(weight2.shape)}")
    n, np_, k = shape1
    block = min(128, max(16, _pow2(h * w)))
    _launch("layer_attention_pair_kernel", (-(-h * w // block), b, 2), x1, x2, weight1, bias1, weight2, bias2, out,
            c, h, w, *x1.stride(), *x2.stride(), *out.stride(), N=n, NP=np_, K=k, CB=_channel_step(np_, c, block),
            BLOCK=block)
    return out


def attend_project_fuse(src: torch.Tensor, mask_weight: torch.Tensor, mask_bias: Optional[torch.Tensor],
                        proj_weight: torch.Tensor, feature: torch.Tensor, residual: torch.Tensor,
                        attn_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """An aggregation attention over a concatenation ``src`` (B, K, H, W): LA (eq. 5) or BA (eq. 7), an SMA with
    ``mask_weight`` (N, K, k, k), then the 1x1 projection ``proj_weight`` (C, K) or (C, K, 1, 1) back to C channels
    (choice A2), the plus fusion (eq. 8) and the ReLU, in one launch:
    ``ReLU(feature + conv1x1(src * M) + residual)``, computed as ``M * conv1x1(src)`` (the mask is shared over
    channels). With ``attn_out`` (B, K, H, W, any strides, e.g. a block's slice of BA's input) also writes the
    attention ``src * M`` there. Returns a new tensor shaped like ``feature``; the projection uses TF32 exactly when
    PyTorch's cuDNN convolutions may (``torch.backends.cudnn.allow_tf32``)."""
    _check_4d("src", src)
    b, kin, h, w = src.shape
    mask_weight, mask_bias, (n, np_, k) = _mask_args("mask_weight", mask_weight, mask_bias, kin, src.device)
    proj_weight = proj_weight.detach().to(torch.float32).flatten(1).contiguous()
    c = proj_weight.shape[0]
    if proj_weight.shape[1] != kin:
        raise ValueError(f"proj_weight has {proj_weight.shape[1]} input channels, src {kin}")
    _check_4d("feature", feature, src, c)
    _check_4d("residual", residual, src, c)
    if attn_out is not None:
        _check_4d("attn_out", attn_out, src, kin)
    out = torch.empty_like(feature)
    attn = attn_out if attn_out is not None else out
    block = min(64, max(16, _pow2(h * w)))
    tf32 = src.device.type == "cuda" and torch.backends.cudnn.allow_tf32
    _launch("attend_project_fuse_kernel", (-(-h * w // block), b), src, mask_weight, mask_bias, proj_weight, feature,
            residual, out, attn, kin, c, h, w, *src.stride(), *feature.stride(), *residual.stride(), *out.stride(),
            *attn.stride(), N=n, NP=np_, K=k, CB=_channel_step(np_, kin, block), CP=max(16, _pow2(c)), KB=16,
            BLOCK=block, STORE_ATTN=attn_out is not None, PRECISION="tf32" if tf32 else "ieee")
    return out


def enable_gpu_kernels(enabled: bool = True) -> None:
    """Switch the kernels on or off (the default) for this process; a model's own setting overrides it."""
    _State.enabled = check_switch(enabled, "enable_gpu_kernels(enabled)")


def gpu_kernels_enabled() -> bool:
    """Whether the kernels are asked for process-wide (:func:`enable_gpu_kernels` or the environment variable);
    a model's own setting (``set_fast_paths(gpu_kernels=...)``) overrides it."""
    return _State.enabled


def mark_failed(exc: Exception) -> None:
    """Record that a kernel failed (e.g. Triton could not compile it here), warn once, and stop using them."""
    lines = str(exc).strip().splitlines()
    _State.error = f"{type(exc).__name__}: {lines[-1] if lines else repr(exc)}"
    warnings.warn(f"mlan_timm GPU kernels failed, using PyTorch's operators: {_State.error}", RuntimeWarning,
                  stacklevel=3)


def gpu_kernels_available() -> bool:
    """Whether the kernels can run here: Triton imports and no kernel has failed in this process."""
    return triton_version() is not None and _State.error is None


def gpu_kernels_status() -> str:
    """One line for machine descriptions: ``available (Triton <version>), ...`` with who uses them, or
    ``unavailable: <why>``."""
    if triton_version() is None:
        return "unavailable: Triton cannot be imported"
    if _State.error is not None:
        return f"unavailable: {_State.error}"
    return f"available (Triton {triton_version()}), " + (
        f"ON process-wide ({ENV_VAR} or enable_gpu_kernels): every MLAN model without gpu_kernels=False uses them"
        if _State.enabled else "used only by the models built with gpu_kernels=True")


def gpu_kernels_apply(x: torch.Tensor, enabled: Optional[bool] = None) -> bool:
    """Whether the kernels should run MLAN's attention over ``x`` (and tensors of its kind).

    ``enabled``: a model's own setting (``set_fast_paths(gpu_kernels=...)``); None follows the process-wide one.
    Applies to 4-d float32 CUDA tensors outside tracing, scripting, compiling, Python dispatch modes
    (``FlopCounterMode`` counts op by op) and CUDA autocast; the caller checks autograd and the group's structure.
    """
    if not (_State.enabled if enabled is None else enabled) or isinstance(x, torch.fx.Proxy):
        return False
    if x.device.type != "cuda" and not (_State.on_cpu and x.device.type == "cpu"):
        return False
    if x.dtype != torch.float32 or x.dim() != 4:
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    if _get_current_dispatch_mode() is not None or torch.is_autocast_enabled(x.device.type):
        return False
    return gpu_kernels_available()
