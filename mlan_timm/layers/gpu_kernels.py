"""Optional Triton kernels for MLAN's attention in CUDA inference, off by default.

In eager CUDA inference each shared-mask attention costs a cuDNN conv with NCHW/NHWC transposes, a sigmoid, a mean
and a multiply, and every block adds a concatenation, a 1x1 conv, two adds and a ReLU: about 20 small kernels per
block, each costing its launch and a pass over memory (docs/benchmarks.md, the CUDA profile). Two Triton kernels
(``_triton_src.py``) replace them:

* :func:`shared_mask`: SMA's masks, sigmoid and mean (eqs. 1-3) in one pass, optionally writing ``x * M`` into a
  channel slice of a larger buffer (so LA and BA read their concatenations without a ``torch.cat``);
* :func:`project_fuse`: the 1x1 projection (choice A2), the plus fusion (eq. 8) and the ReLU in one pass, with the
  group attention's shared mask applied after the projection.

:meth:`..models.blocks.MLANGroup.forward_gpu_kernels` runs a group with them: 4 kernels per block and 2 per
group besides the backbone's. They apply to float32 CUDA tensors in inference (no autograd) outside autocast,
tracing, scripting, ``torch.compile`` and dispatch modes, for groups of plain SMAs with plus fusion; everything
else runs PyTorch's operators (the fallback), with the same values up to float32 rounding (tests/test_gpu_kernels.py
runs the kernels in Triton's interpreter on CPU; tests/test_cuda.py compiles them on a GPU).

Enable with :func:`enable_gpu_kernels` or ``MLAN_TIMM_GPU_KERNELS=1`` for the process, or per model with
``model.set_fast_paths(True, gpu_kernels=True)``. They are off by default until a GPU run has measured them: the
H100 session that tested them (all of tests/test_gpu_kernels.py passed there, compiled) timed the benchmarks
without them (docs/benchmarks.md; ``mlan-bench`` times ``?gpu_kernels=True`` beside the default on CUDA). Without
Triton, or if compiling a kernel fails, it warns once and PyTorch's operators run.
"""
import contextlib
import functools
import os
import warnings
from types import SimpleNamespace
from typing import Iterator, Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = [
    "ENV_VAR", "GpuKernelsFailed", "enable_gpu_kernels", "gpu_kernels_apply", "gpu_kernels_enabled",
    "gpu_kernels_available", "gpu_kernels_status", "mark_failed", "project_fuse", "shared_mask", "triton_version",
]

#: Environment variable that switches the kernels on at import ("1", "true", "yes", "on").
ENV_VAR = "MLAN_TIMM_GPU_KERNELS"


def _switched_on(value: Optional[str]) -> bool:
    """Whether an environment value switches the kernels on ("1", "true", "yes", "on", any case)."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class _State:
    enabled = _switched_on(os.environ.get(ENV_VAR))
    error: Optional[str] = None  # why the kernels are unavailable (Triton missing, a kernel failed to compile)
    on_cpu = False  # tests only: also apply to CPU tensors, run in Triton's interpreter


@functools.lru_cache(maxsize=None)
def triton_version() -> Optional[str]:
    """Triton's version, or None where it cannot be imported (checked once per process)."""
    try:
        import triton
    except Exception:  # not installed, or broken: the kernels are unavailable
        return None
    return triton.__version__


@contextlib.contextmanager
def _interpret(on: bool) -> Iterator[None]:
    """``TRITON_INTERPRET`` set to ``on`` while building or launching (Triton reads it when it wraps a function)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@functools.lru_cache(maxsize=None)
def _build(interpret: bool) -> SimpleNamespace:
    """The ``triton.jit``-wrapped kernels: compiled for CUDA, or for Triton's interpreter (CPU tensors)."""
    import triton

    from . import _triton_src

    with _interpret(interpret):
        return SimpleNamespace(sma=triton.jit(_triton_src.sma_kernel),
                               project_fuse=triton.jit(_triton_src.project_fuse_kernel))


class GpuKernelsFailed(RuntimeError):
    """A kernel could not be built or launched here (warned once; the kernels stay off in this process)."""


def _launch(kernel_name: str, device: torch.device, grid, *args, **meta) -> None:
    interpret = device.type != "cuda"
    try:
        with _interpret(interpret) if interpret else contextlib.nullcontext():
            getattr(_build(interpret), kernel_name)[grid](*args, **meta)
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


def shared_mask(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SMA's shared mask (eqs. 1-3): ``mean_n sigmoid(conv_n(x) + bias_n)``, (B, 1, H, W) float32, for the ``N``
    convs ``C -> 1`` in ``weight`` (N, C, k, k), k odd, 'same' zero padding. With ``out`` (B, C, H, W, any
    strides, e.g. a channel slice of a concatenation buffer) also writes ``x * mask`` there."""
    _check_4d("x", x)
    if weight.dim() != 4 or weight.shape[1] != x.shape[1] or weight.shape[2] != weight.shape[3] \
            or weight.shape[2] % 2 == 0:
        raise ValueError(f"weight must be (N, {x.shape[1]}, k, k) with k odd, got {tuple(weight.shape)}")
    b, c, h, w = x.shape
    n, k = weight.shape[0], weight.shape[2]
    if out is not None:
        _check_4d("out", out, x, c)
    weight = weight.detach().to(torch.float32).contiguous()
    bias = (torch.zeros(n, device=x.device) if bias is None else bias.detach().to(torch.float32)).contiguous()
    mask = torch.empty(b, 1, h, w, device=x.device, dtype=torch.float32)
    target = mask if out is None else out
    np_, block = _pow2(n), min(128, max(16, _pow2(h * w)))
    cb = max(1, min(_pow2(c), 4096 // (np_ * block)))
    _launch("sma", x.device, (-(-h * w // block), b), x, weight, bias, mask, target, c, h, w, *x.stride(),
            *target.stride(), N=n, NP=np_, K=k, CB=cb, BLOCK=block, APPLY=out is not None)
    return mask


def project_fuse(src: torch.Tensor, weight: torch.Tensor, feature: torch.Tensor, residual: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``ReLU(feature + [mask *] conv1x1(src) + residual)``: a 1x1 projection (``weight`` (C, K) or (C, K, 1, 1),
    no bias) with plus fusion (eq. 8) and ReLU; ``mask`` (B, 1, H, W) multiplies the projection (a shared mask
    commutes with it). ``src`` (B, K, H, W) and the others may have any strides. Returns a new tensor shaped
    like ``feature``; the projection uses TF32 exactly when PyTorch's cuDNN convolutions may
    (``torch.backends.cudnn.allow_tf32``)."""
    _check_4d("src", src)
    weight = weight.detach().to(torch.float32).flatten(1).contiguous()
    c, kin = weight.shape
    if kin != src.shape[1]:
        raise ValueError(f"weight has {kin} input channels, src {src.shape[1]}")
    _check_4d("feature", feature, src, c)
    _check_4d("residual", residual, src, c)
    if mask is not None:
        _check_4d("mask", mask, src, 1)
        mask = mask.contiguous()
    b, _, h, w = src.shape
    out = torch.empty_like(feature)
    cp, block = max(16, _pow2(c)), 64
    tf32 = src.device.type == "cuda" and torch.backends.cudnn.allow_tf32
    _launch("project_fuse", src.device, (-(-h * w // block), b), src, weight, mask if mask is not None else out,
            feature, residual, out, kin, c, h, w, *src.stride(), *feature.stride(), *residual.stride(),
            *out.stride(), CP=cp, KB=16, BLOCK=block, HAS_MASK=mask is not None,
            PRECISION="tf32" if tf32 else "ieee")
    return out


def enable_gpu_kernels(enabled: bool = True) -> None:
    """Switch the kernels on or off (the default) for this process; a model's own setting overrides it."""
    _State.enabled = bool(enabled)


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
    if x.dtype != torch.float32 or x.dim() != 4 or _State.error is not None:
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    if _get_current_dispatch_mode() is not None or torch.is_autocast_enabled(x.device.type):
        return False
    return triton_version() is not None
