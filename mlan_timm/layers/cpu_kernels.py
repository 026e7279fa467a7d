"""Optional compiled CPU kernels for MLAN's attention (``csrc/small_conv.cpp``), off by default.

oneDNN pads a convolution's output channels to its SIMD width, so a ``C -> 3`` mask conv costs about what a
``C -> 16`` one does (docs/benchmarks.md, "per-call conv costs"). ``small_conv.cpp`` holds a direct SIMD
convolution whose cost follows the MACs (built for AVX-512, or for AVX2 + FMA where that is what the CPU has:
:data:`ISAS`), and, built on it, each MLAN block's whole attention in one call, forward
(``mlan_block_forward``) and backward (``mlan_block_backward``), image by image. MLAN's fast path uses them when
they are enabled and apply (``MLANGroup.forward_streaming``, :func:`.fast_ops.fused_block_attention`,
:func:`.fast_ops.same_conv`); everything else, and every case they do not cover, stays on PyTorch's operators (the
fallback), with the same values up to float32 rounding (tests/test_cpu_kernels.py).

Enable with :func:`enable_cpu_kernels` or ``MLAN_TIMM_CPU_KERNELS=1`` (which the ``mlan-*`` tools inherit), or per
model with ``model.set_fast_paths(True, cpu_kernels=True)``. The first use compiles the extension with
``torch.utils.cpp_extension`` (a C++ compiler and ninja; cached under ``TORCH_EXTENSIONS_DIR``, keyed by the
source's hash and the instruction set). Without AVX-512 or AVX2, or if the build fails, it warns once and PyTorch's
operators are used.
"""
import hashlib
import warnings
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .switches import check_switch, env_switch

__all__ = [
    "ENV_VAR", "ISAS", "SOURCE", "build_extension", "cpu_kernels_enabled", "cpu_kernels_status", "enable_cpu_kernels",
    "kernel_isa", "kernels_for", "load_cpu_kernels", "load_error", "load_tried", "source_id", "use_module",
]

#: Environment variable that enables the kernels at import ("1", "true", "yes", "on").
ENV_VAR = "MLAN_TIMM_CPU_KERNELS"
#: The C++ source, shipped in the wheel.
SOURCE = Path(__file__).parent / "csrc" / "small_conv.cpp"
#: The instruction sets the kernels are built for, by PyTorch's CPU capability
#: (``torch.backends.cpu.get_cpu_capability()``): (name, compiler flags, float32 lanes per vector). The planes the
#: kernels take have ``H * W`` a multiple of the lanes.
ISAS: Dict[str, Tuple[str, Tuple[str, ...], int]] = {
    "AVX512": ("AVX-512", ("-mavx512f", "-mavx2", "-mfma"), 16),
    "AVX2": ("AVX2", ("-mavx2", "-mfma"), 8),
}
_MIN_WIDTH = min(width for _, _, width in ISAS.values())


class _State:
    enabled = env_switch(ENV_VAR)
    module: Optional[ModuleType] = None
    width = 0  # the loaded module's lanes per vector
    error: Optional[str] = None  # why the kernels are unavailable, once a load was tried


def _source_digest(source: Optional[Path] = None) -> str:
    return hashlib.sha256((SOURCE if source is None else source).read_bytes()).hexdigest()[:12]


def source_id() -> str:
    """``small_conv.cpp <hash>``: the source the kernels are built from (the hash also keys the build cache)."""
    return f"{SOURCE.name} {_source_digest()}"


def load_tried() -> bool:
    """Whether :func:`load_cpu_kernels` ran in this process (successfully or not)."""
    return _State.module is not None or _State.error is not None


def load_error() -> Optional[str]:
    """Why the kernels are unavailable here, once a load was tried; None otherwise."""
    return _State.error


def _unavailable_reason() -> Optional[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ISAS:
        return f"this CPU (PyTorch capability {capability}) has neither AVX-512 nor AVX2"
    return None


def kernel_isa() -> Optional[str]:
    """The name of the instruction set of the loaded kernels (``AVX-512``, ``AVX2``); None if none is loaded."""
    return next((name for name, _, width in ISAS.values() if width == _State.width), None)


def _build_error(exc: Exception) -> str:
    """The compiler's error lines of a failed build (up to 3), else the exception's last line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and "build stopped" not in ln]
    return " | ".join(errors[:3]) if errors else (lines[-1] if lines else repr(exc))


def build_extension(source: Optional[Path] = None, isa: Optional[str] = None) -> ModuleType:
    """Compile (or load from ``TORCH_EXTENSIONS_DIR``'s cache, keyed by the source's hash and the instruction set)
    the extension from ``source``: :data:`SOURCE` (None), or another version of it (``benchmarks/cpu_kernels_ab.py``
    times two). ``isa``: a key of :data:`ISAS`; None: this CPU's (PyTorch's capability). Raises what the build
    raises, and ValueError for an instruction set the kernels are not built for."""
    from torch.utils.cpp_extension import load

    isa = torch.backends.cpu.get_cpu_capability() if isa is None else isa
    if isa not in ISAS:
        raise ValueError(f"the CPU kernels are built for {' or '.join(ISAS)}, not {isa!r}")
    source = SOURCE if source is None else Path(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CUDA runtime" and the like: not ours to report
        return load(f"mlan_timm_small_conv_{isa.lower()}_{_source_digest(source)}", [str(source)],
                    extra_cflags=["-O3", *ISAS[isa][1], "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


def use_module(module: ModuleType) -> Optional[ModuleType]:
    """Make ``module`` (from :func:`build_extension`) the kernels every model uses from now on; returns the one it
    replaces (None if none was loaded). For A/B timings of two builds in one process, and the tests of each
    instruction set's build."""
    width = module.vector_width()
    if width not in {w for _, _, w in ISAS.values()}:
        raise ValueError(f"{module.__name__} was built without AVX-512 or AVX2 (vector width {width})")
    previous, _State.module, _State.width, _State.error = _State.module, module, width, None
    return previous


def load_cpu_kernels() -> Optional[ModuleType]:
    """The compiled extension (built on first call), or None with a one-time warning saying why not."""
    if load_tried():
        return _State.module
    reason = _unavailable_reason()
    if reason is None:
        name, _, width = ISAS[torch.backends.cpu.get_cpu_capability()]
        try:
            module = build_extension()
            if module.vector_width() != width:
                reason = f"the extension was built without {name}"
            else:
                use_module(module)
        except Exception as exc:  # no compiler, no ninja, read-only cache...: fall back, say why
            reason = f"building {SOURCE.name} failed ({type(exc).__name__}: {_build_error(exc)})"
    if reason is not None:
        _State.error = reason
        warnings.warn(f"mlan_timm CPU kernels unavailable, using PyTorch's convolutions: {reason}", RuntimeWarning,
                      stacklevel=2)
    return _State.module


def enable_cpu_kernels(enabled: bool = True) -> bool:
    """Switch the kernels on or off for this process; when switching on, build them now.

    Returns whether they are in use (False when disabled, or enabled but unavailable on this machine).
    """
    _State.enabled = check_switch(enabled, "enable_cpu_kernels(enabled)")
    return cpu_kernels_enabled() and load_cpu_kernels() is not None


def cpu_kernels_enabled() -> bool:
    """Whether the kernels are asked for process-wide (:func:`enable_cpu_kernels` or the environment variable);
    a model's own setting (``set_fast_paths(cpu_kernels=...)``) overrides it."""
    return _State.enabled


def cpu_kernels_status() -> str:
    """One line for machine descriptions: ``off``, ``on (AVX-512, small_conv.cpp <hash>)`` (or AVX2) or why
    unavailable."""
    if not _State.enabled:
        return "off"
    if load_cpu_kernels() is None:
        return f"requested but unavailable: {_State.error}"
    return f"on ({kernel_isa()}, {source_id()})"


def kernels_for(x: torch.Tensor, enabled: Optional[bool] = None) -> Optional[ModuleType]:
    """The extension if it should compute MLAN's mask convs over ``x`` (and tensors of its kind), else None (the
    caller falls back to PyTorch's convolutions).

    ``enabled``: a model's own setting (``model.set_fast_paths(cpu_kernels=...)``); None follows the process-wide
    :func:`cpu_kernels_enabled`. Applies to float32 NCHW-contiguous CPU tensors with ``H * W`` a multiple of the
    kernels' vector (16 floats with AVX-512, 8 with AVX2), outside tracing, scripting, compiling, Python dispatch
    modes (``FlopCounterMode`` counts MACs op by op and would not see inside a kernel) and CPU autocast (whose
    lower-precision convs it would otherwise silently replace).
    """
    if not (_State.enabled if enabled is None else enabled) or isinstance(x, torch.fx.Proxy):
        return None
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or not x.is_contiguous()
            or (x.shape[2] * x.shape[3]) % _MIN_WIDTH != 0):
        return None
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return None
    if _get_current_dispatch_mode() is not None:  # FlopCounterMode, fake tensors...: they must see every op
        return None
    if torch.is_autocast_enabled("cpu"):
        return None
    module = load_cpu_kernels()
    return module if module is not None and (x.shape[2] * x.shape[3]) % _State.width == 0 else None
