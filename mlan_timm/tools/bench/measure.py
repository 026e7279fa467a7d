"""Measuring for mlan-bench: model specs, the paper's grids, parameters/MACs, timings, profiles, provenance.

What is measured
----------------
* ``params``: ``sum(p.numel() for p in model.parameters())``;
* ``macs``: multiply-accumulates for one 3x32x32 image (``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2;
  operators without a FLOP formula, i.e. batch norm, activations, pooling, element-wise products, count zero);
* ``latency_b1_ms``: median eval forward time at batch 1 (``torch.inference_mode``);
* ``infer_b128_ms`` / ``throughput_b128``: median eval forward time at batch 128 and images per second;
* ``train_step_b128_ms``: forward + cross-entropy + backward + ``torch.optim.SGD`` step at batch 128.

Times come from ``torch.utils.benchmark.Timer.blocked_autorange`` (which synchronises accelerators) after warm-up
calls; the value is the median over blocks. Speed ratios interleave the compared models over several rounds and
take the median per model, so slow drifts of a shared machine favour no model; the per-round samples are kept
(``<column>_rounds``) so that the report's ratios are medians of per-round ratios (each round times the compared
models back to back), which a slow period inside one round disturbs less.

A model spec is ``name`` or ``name?key=value&key=value``: the ``key=value`` items use the one kwargs syntax of all
tools (:func:`mlan_timm.tools.common.parse_model_kwargs`). Three keys are not ``create_model`` kwargs
(:data:`SPEC_OPTIONS`): ``fast_paths=False`` builds the model and calls ``model.set_fast_paths(False)`` (the
equations as written), so ``mlan_resnet20_cifar10?fast_paths=False`` and ``mlan_resnet20_cifar10`` time the reference
against the fast path; ``cpu_kernels=True`` calls ``model.set_fast_paths(fast_paths or True, cpu_kernels=True)``: the
model runs its mask convs with the compiled CPU kernels (:mod:`mlan_timm.layers.cpu_kernels`) where they apply;
``gpu_kernels=True`` likewise with ``gpu_kernels=True``: CUDA inference runs MLAN's attention in the Triton kernels
(:mod:`mlan_timm.layers.gpu_kernels`) where they apply (both options together set both). The bench never switches
the kernels on process-wide: the per-model options do it.

The speed section (:func:`run_speed`) measures issue 10's targets: for every (dataset, depth) group it builds the
backbone, MLAN (fast and reference), SMAv2 and the other attentions in the same multi-level structure, and times
them interleaved over several rounds (median per model), so ratios within a group share the machine's state. Each
MLAN kernel path (:data:`KERNEL_PATHS`) is timed beside the default MLAN on its device: on CPU (eager, NCHW) MLAN
with the compiled CPU kernels (``mlan (cpu kernels)``, ``?cpu_kernels=True``), on CUDA (eager and CUDA graphs,
inference only) MLAN with the Triton kernels (``mlan (gpu kernels)``, ``?gpu_kernels=True``), each where its kernels
work on the machine; where they do not, that model is left out and the reason recorded (:func:`kernels_info`),
never timed as the library path under the kernels' name.

The conv-cost section (:func:`measure_conv_costs`) times single convolutions of the shapes MLAN and its backbone
run (:data:`CONV_COST_SHAPES`): forward, aten's backward-data and backward-weight, the backward-data computed as a
forward conv (as ``mlan_timm.layers.fast_ops.same_conv`` does), 1x1 convs as ``torch.bmm`` (as
``pointwise_conv`` does) and, for the mask convs (O < C) on CPU when the compiled kernels load, the kernels'
``conv_same`` forward and ``conv_same_grad_weight``, all cells interleaved over several rounds (median per cell).

Speed variants (:data:`SPEED_VARIANTS`): ``eager``; ``channels_last`` (model and input in channels-last memory
format); ``compile`` (plain ``torch.compile(model)``); ``cuda_graphs`` (CUDA only: one eval forward captured in a
``torch.cuda.CUDAGraph`` per model and batch, timed as ``graph.replay()``, see :func:`make_graph_infer_fn`; no
train step, so its train cells stay empty).
"""
import copy
import functools
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from ... import paper_tables, zoo
from ...complexity import count_macs, count_params
from ..common import create_model, parse_model_kwargs, set_threads, tune_cpu

__all__ = ['Spec', 'parse_spec', 'SPEC_OPTIONS', 'PaperTable', 'paper_grid', 'SPEED_MODELS', 'TARGET1_DEPTHS',
           'COMPILE_SPEED_MODELS', 'SPEED_VARIANTS', 'CUDA_ONLY_VARIANTS', 'check_variants', 'speed_group',
           'KernelPath', 'KERNEL_PATHS', 'CPU_KERNEL_PATH', 'GPU_KERNEL_PATH', 'CPU_KERNEL_SPEED_MODELS',
           'GPU_KERNEL_SPEED_MODELS', 'cpu_kernels_info', 'gpu_kernels_info', 'kernels_info', 'speed_plan',
           'default_target1_depths',
           'count_speed_cells', 'TimingConfig', 'make_infer_fn',
           'make_graph_infer_fn', 'make_train_fn', 'time_fn', 'time_model', 'time_interleaved', 'run_speed',
           'profile_ops', 'CONV_COST_SHAPES', 'CONV_COST_COLUMNS', 'measure_conv_costs', 'code_version',
           'TIMING_ENV', 'timing_environment', 'machine_line', 'measure', 'run_paper_tables', 'merge_reports',
           'NOT_REGISTERED', 'ROUNDS_SUFFIX', 'MEASURE_ORDER', 'INTERLEAVE',
           'count_macs', 'count_params']

NOT_REGISTERED = "model not registered"
#: The measures (kinds) of :func:`time_interleaved`, in the order each round times them: all models' cells of one
#: measure back to back. Recorded in a speed report's config as ``interleave``.
MEASURE_ORDER = ("b1", "b128", "train")
#: How :func:`time_interleaved` orders a round (``config["interleave"]``; reports without it timed model-major:
#: each model's measures back to back, then the next model).
INTERLEAVE = "measure-major"
#: Suffix of the per-round samples :func:`time_interleaved` stores beside each median (``latency_b1_ms_rounds``).
ROUNDS_SUFFIX = "_rounds"


# ----------------------------------------------------------------------------------------------------------------
# Model specifications
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """A model to benchmark: a timm model name plus ``create_model`` kwargs (or a custom ``factory``)."""

    model: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    factory: Optional[Callable[[], nn.Module]] = None

    @property
    def key(self) -> str:
        """``name`` or ``name?k=v&...`` (sorted keys): parses back to this spec with :func:`parse_spec`."""
        if not self.kwargs:
            return self.model
        return self.model + "?" + "&".join(f"{k}={self.kwargs[k]}" for k in sorted(self.kwargs))

    def build(self) -> nn.Module:
        if self.factory is not None:
            return self.factory()
        kwargs = {k: v for k, v in self.kwargs.items() if k not in SPEC_OPTIONS}
        model = create_model(self.model, pretrained=False, **kwargs)
        options = [k for k in SPEC_OPTIONS if k in self.kwargs]
        if options:
            if not hasattr(model, "set_fast_paths"):
                raise ValueError(f"{self.model} has no set_fast_paths (spec option {', '.join(options)})")
            model.set_fast_paths(bool(self.kwargs.get("fast_paths", True)),
                                 **{p.option: bool(self.kwargs[p.option]) for p in KERNEL_PATHS
                                    if p.option in self.kwargs})
        return model

    @property
    def kernel_paths(self) -> Tuple["KernelPath", ...]:
        """The MLAN kernel paths the spec asks for (``cpu_kernels=True``, ``gpu_kernels=True``)."""
        if self.factory is not None:
            return ()
        return tuple(p for p in KERNEL_PATHS if self.kwargs.get(p.option, False))

    def available(self) -> bool:
        if self.factory is not None:
            return True
        import timm

        import mlan_timm  # noqa: F401  (registers the models)
        return timm.is_model(self.model)


def parse_spec(text: str) -> Spec:
    """``"name?key=value&key2=value2"`` -> :class:`Spec`; values parsed as by ``--model-kwargs``."""
    name, _, query = text.partition("?")
    return Spec(name, parse_model_kwargs(filter(None, query.split("&")), flag=f"model spec {text!r}"))


def variant_spec(variant: str, depth: int, dataset: str) -> Spec:
    """The model of a :data:`mlan_timm.zoo.PAPER_VARIANTS` entry at ``depth`` on ``dataset``."""
    v = zoo.PAPER_VARIANTS[variant]
    return Spec(v.model_name(depth, dataset), dict(v.kwargs))


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables: id (``T6``), dataset, its variants in the paper's order, and its metrics."""
    table: str
    dataset: str
    variants: Tuple[str, ...]
    metrics: Tuple[str, ...]

    @property
    def timed(self) -> bool:
        """Tables that print GPU times get our timings beside them."""
        return 'gpu_ms' in self.metrics

    @property
    def title(self) -> str:
        return " vs ".join(zoo.PAPER_VARIANTS[v].label for v in self.variants)


def paper_grid() -> Dict[str, PaperTable]:
    """Every table of :mod:`mlan_timm.paper_tables` that compares models (two or more variants), in paper order."""
    tables: Dict[str, Dict[str, Any]] = {}
    for r in paper_tables.RECORDS:
        t = tables.setdefault(r.table, dict(dataset=r.dataset, variants=[], metrics=[]))
        if r.variant not in t["variants"]:
            t["variants"].append(r.variant)
        if r.metric not in t["metrics"]:
            t["metrics"].append(r.metric)
    return {tid: PaperTable(tid, t["dataset"], tuple(t["variants"]), tuple(t["metrics"]))
            for tid, t in tables.items() if len(t["variants"]) > 1}


@dataclass(frozen=True)
class KernelPath:
    """An MLAN path with kernels of its own, timed beside the library fast path (``mlan``) on one kind of device:
    MLAN built with ``?<option>=True``, planned only in ``variants`` on ``device_type`` and only where its kernels
    work on the machine (:func:`kernels_info`); elsewhere it would silently time the library path under its name."""

    label: str  # speed-section label
    name: str  # in tables and prose
    option: str  # spec option and set_fast_paths keyword; also its module's name in mlan_timm.layers
    device_type: str  # the torch device type its kernels run on
    variants: Tuple[str, ...]  # the speed variants that time it
    train: bool  # whether the target-1 groups time its train step

    @property
    def module(self) -> Any:
        """Its kernels' module (:mod:`mlan_timm.layers.cpu_kernels` / :mod:`mlan_timm.layers.gpu_kernels`)."""
        import importlib

        return importlib.import_module(f"mlan_timm.layers.{self.option}")


#: The compiled CPU kernels: eager NCHW only (they apply to contiguous float32 CPU tensors outside torch.compile),
#: inference and train step.
CPU_KERNEL_PATH = KernelPath("mlan (cpu kernels)", "CPU kernels", "cpu_kernels", "cpu", ("eager",), True)
#: The Triton kernels: CUDA inference only (no train step: under autograd they fall back to PyTorch's operators),
#: eager and replayed from CUDA graphs (never under torch.compile; not channels_last).
GPU_KERNEL_PATH = KernelPath("mlan (gpu kernels)", "GPU kernels", "gpu_kernels", "cuda", ("eager", "cuda_graphs"),
                             False)
KERNEL_PATHS = (CPU_KERNEL_PATH, GPU_KERNEL_PATH)
#: Spec keys that are not ``create_model`` kwargs: ``fast_paths`` -> ``model.set_fast_paths(value)``,
#: ``cpu_kernels`` / ``gpu_kernels`` (the kernel paths' options) -> ``model.set_fast_paths(fast_paths if given else
#: True, cpu_kernels=value, gpu_kernels=value)``, each only where given.
SPEC_OPTIONS = ("fast_paths",) + tuple(p.option for p in KERNEL_PATHS)

#: Models of the speed section: (label, paper variant, extra spec kwargs, where). ``where``: "all" groups, or only
#: the "target1" groups. The first is the backbone every ratio of target 1 divides by. The references
#: (``fast_paths=False``) are in every group: the fast path is checked at every depth, interleaved with it. The
#: kernel paths (:data:`KERNEL_PATHS`) follow the library fast path; each is planned only on its device and variants,
#: where its kernels work.
SPEED_MODELS = (
    ("backbone", "backbone", {}, "all"),
    ("mlan", "multilevel_sma", {}, "all"),
    *((p.label, "multilevel_sma", {p.option: True}, "all") for p in KERNEL_PATHS),
    ("mlan (reference)", "multilevel_sma", {"fast_paths": False}, "all"),
    ("smav2", "multilevel_sma_v2", {}, "all"),
    ("smav2 (reference)", "multilevel_sma_v2", {"fast_paths": False}, "all"),
    ("se", "multilevel_se", {}, "all"),
    ("cbam", "multilevel_cbam", {}, "all"),
    ("ta", "multilevel_ta", {}, "all"),
    ("gc", "multilevel_gc", {}, "all"),
)
#: Models that also get a train step in the target-1 groups (target 1's training ratio and the fast-path A/B).
TRAIN_SPEED_MODELS = ("backbone", "mlan", "mlan (reference)") + tuple(p.label for p in KERNEL_PATHS if p.train)
#: Speed-section models that run the compiled CPU kernels (``cpu_kernels=True``, :data:`CPU_KERNEL_PATH`).
CPU_KERNEL_SPEED_MODELS = (CPU_KERNEL_PATH.label,)
#: Speed-section models that run the Triton kernels (``gpu_kernels=True``, :data:`GPU_KERNEL_PATH`).
GPU_KERNEL_SPEED_MODELS = (GPU_KERNEL_PATH.label,)
#: Issue 10's target 1 is stated for ResNet-20 and ResNet-32; target 2 for every depth of Tables 6 and 9.
TARGET1_DEPTHS = (20, 32)
#: torch.compile costs a compilation per model and mode: only backbone vs MLAN there.
COMPILE_SPEED_MODELS = ("backbone", "mlan")
#: Variants of the speed section (module docstring); the CUDA-only ones are refused on other devices.
SPEED_VARIANTS = ("eager", "channels_last", "compile", "cuda_graphs")
CUDA_ONLY_VARIANTS = ("cuda_graphs",)


def check_variants(device: str, variants: Iterable[str]) -> Tuple[str, ...]:
    """``variants`` as a tuple, after checking each is a speed variant that ``device`` can run (ValueError)."""
    variants = tuple(variants)
    for v in variants:
        if v not in SPEED_VARIANTS:
            raise ValueError(f"unknown speed variant {v!r} (known: {', '.join(SPEED_VARIANTS)})")
        if v in CUDA_ONLY_VARIANTS and torch.device(device).type != "cuda":
            raise ValueError(f"the {v} variant needs a CUDA device; it cannot run on {device!r}")
    return variants


def speed_group(dataset: str, depth: int) -> str:
    """Key of one (dataset, depth) group of the speed section, e.g. ``cifar10/20``."""
    return f"{dataset}/{depth}"


def cpu_kernels_info(load: bool = True) -> Dict[str, Any]:
    """Whether the compiled CPU kernels (:mod:`mlan_timm.layers.cpu_kernels`) serve this process's
    ``?cpu_kernels=True`` models, as recorded in reports: ``available`` (bool, or None when ``load`` is False and no
    load was tried yet), ``reason`` (why not: the loader's own message), ``source`` (``small_conv.cpp <hash>``),
    ``process_wide`` (switched on for the whole process by ``enable_cpu_kernels`` or the environment variable: MLAN
    models without ``cpu_kernels=False`` use them too; the bench never does this) and ``status`` (the machine
    line's words). ``load``: build / load them now (about 15 s the first time, then cached); the loader's warning is
    not repeated (the reason is recorded instead)."""
    import warnings

    from ...layers import cpu_kernels as ck

    tried = ck.load_tried()
    if load and not tried:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ck.load_cpu_kernels()
        tried = True
    available = (ck.load_error() is None) if tried else None
    source = ck.source_id()
    process_wide = ck.cpu_kernels_enabled()
    if available:
        status = f"available ({ck.kernel_isa()}, {source})"
        status += (f", ON process-wide ({ck.ENV_VAR} or enable_cpu_kernels): every MLAN model without "
                   "cpu_kernels=False uses them" if process_wide else
                   ", used only by the models built with cpu_kernels=True")
    elif available is None:
        status = "not loaded (no model of this run asked for them)" + (", on process-wide" if process_wide else "")
    else:
        status = f"unavailable: {ck.load_error()}"
    return dict(available=available, reason=None if available or not tried else ck.load_error(), source=source,
                process_wide=process_wide, status=status)


@functools.lru_cache(maxsize=None)
def _try_gpu_kernels() -> None:
    """Compile and launch both Triton kernels once on tiny CUDA tensors (once per process): a Triton that cannot
    compile for this GPU marks the kernels failed (:func:`mlan_timm.layers.gpu_kernels.mark_failed`) now, before
    anything is timed, and its warning is not repeated (:func:`gpu_kernels_info` records the reason)."""
    import warnings

    from ...layers import gpu_kernels as gk

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            x = torch.randn(2, 4, 8, 8, device="cuda")
            both = gk.layer_attention_pair(x, x, *(torch.randn(3, 4, 3, 3, device="cuda"), None) * 2,
                                           torch.empty(2, 8, 8, 8, device="cuda"))
            gk.attend_project_fuse(both, torch.randn(3, 8, 3, 3, device="cuda"), None,
                                   torch.randn(4, 8, device="cuda"), x, x, attn_out=torch.empty_like(both))
            torch.cuda.synchronize()
        except Exception as exc:  # a launch that failed is recorded already; anything else is recorded here
            if not isinstance(exc, gk.GpuKernelsFailed):
                gk.mark_failed(exc)


def gpu_kernels_info(load: bool = True) -> Dict[str, Any]:
    """Whether the Triton kernels (:mod:`mlan_timm.layers.gpu_kernels`) serve this process's ``?gpu_kernels=True``
    models, as recorded in reports: ``available`` (Triton imports and no kernel failed here), ``reason`` (why not),
    ``triton`` (its version, or None), ``process_wide`` (switched on for the whole process by ``enable_gpu_kernels``
    or the environment variable; the bench never does this) and ``status`` (the machine line's words). ``load``: on
    a machine with CUDA, compile and run both kernels once now (:func:`_try_gpu_kernels`), so that kernels that do
    not compile for this GPU are known before anything is timed; without CUDA only Triton's import is checked."""
    from ...layers import gpu_kernels as gk

    if load and gk.gpu_kernels_available() and torch.cuda.is_available():
        _try_gpu_kernels()
    available, status = gk.gpu_kernels_available(), gk.gpu_kernels_status()
    return dict(available=available, reason=None if available else status.partition(": ")[2],
                triton=gk.triton_version(), process_wide=gk.gpu_kernels_enabled(), status=status)


def kernels_info(path: KernelPath, load: bool = True) -> Dict[str, Any]:
    """:func:`cpu_kernels_info` or :func:`gpu_kernels_info`: whether ``path``'s kernels work here, and why not."""
    return (cpu_kernels_info if path is CPU_KERNEL_PATH else gpu_kernels_info)(load=load)


def _speed_variant(compile: bool, cuda_graphs: bool, channels_last: bool) -> str:
    """The speed variant of these flags (:data:`SPEED_VARIANTS`)."""
    return "compile" if compile else "channels_last" if channels_last else "cuda_graphs" if cuda_graphs else "eager"


def _variant_flags(variant: str) -> Dict[str, bool]:
    """The ``compile`` / ``cuda_graphs`` / ``channels_last`` flags of a speed variant (:func:`_speed_variant`'s
    inverse)."""
    return dict(compile=variant == "compile", cuda_graphs=variant == "cuda_graphs",
                channels_last=variant == "channels_last")


def _plans_kernels(path: KernelPath, device: str, variant: str, wanted: Optional[bool]) -> bool:
    """Whether a speed group on ``device`` / ``variant`` times ``path``: only on its device type and variants, and
    there ``wanted`` decides (None: where its kernels work here, :func:`kernels_info`)."""
    if torch.device(device).type != path.device_type or variant not in path.variants or wanted is False:
        return False
    return True if wanted else bool(kernels_info(path)["available"])


def speed_plan(dataset: str, depth: int, target1: bool, b1: bool = True, compile: bool = False,
               cuda_graphs: bool = False, device: str = "cpu", channels_last: bool = False,
               cpu_kernels: Optional[bool] = None, gpu_kernels: Optional[bool] = None
               ) -> Dict[str, Tuple[Spec, Tuple[str, ...]]]:
    """label -> (spec, kinds) of one speed group on ``device``; kinds among ``b1``, ``b128``, ``train`` (never
    ``train`` with ``cuda_graphs``: only inference is captured; never for a kernel path without ``train``).

    The kernel paths (:data:`KERNEL_PATHS`) are planned only on their device and variants: MLAN with the CPU kernels
    on CPU (eager, NCHW), with the GPU kernels on CUDA (eager and CUDA graphs, inference). There ``cpu_kernels`` /
    ``gpu_kernels`` decide: None (default) where the kernels work on this machine (:func:`kernels_info`: the CPU
    kernels are built the first time; the GPU kernels compiled where CUDA is, else Triton's import is checked), True
    always, False never."""
    speed_variant = _speed_variant(compile, cuda_graphs, channels_last)
    wanted = dict(cpu_kernels=cpu_kernels, gpu_kernels=gpu_kernels)
    left_out = {p.label for p in KERNEL_PATHS if not _plans_kernels(p, device, speed_variant, wanted[p.option])}
    plan: Dict[str, Tuple[Spec, Tuple[str, ...]]] = {}
    for label, variant, extra, where in SPEED_MODELS:
        if (where == "target1" and not target1) or (compile and label not in COMPILE_SPEED_MODELS) \
                or label in left_out:
            continue
        base = variant_spec(variant, depth, dataset)
        train = target1 and label in TRAIN_SPEED_MODELS and not cuda_graphs
        kinds = (("b1",) if b1 else ()) + ("b128",) + (("train",) if train else ())
        plan[label] = (Spec(base.model, dict(base.kwargs, **extra)), kinds)
    return plan


def default_target1_depths(speed_depths: Sequence[int]) -> Tuple[int, ...]:
    """Issue 10's target-1 depths among ``speed_depths``; a run without them (e.g. --quick) uses its smallest."""
    return tuple(d for d in TARGET1_DEPTHS if d in speed_depths) or (min(speed_depths),)


def count_speed_cells(datasets: Sequence[str], depths: Sequence[int], variant: str = "eager",
                      target1_depths: Optional[Sequence[int]] = None, b1_depths: Optional[Sequence[int]] = None,
                      device: str = "cpu", cpu_kernels: Optional[bool] = None,
                      gpu_kernels: Optional[bool] = None) -> int:
    """Timed cells (model x measure) of one speed-section variant on ``device`` over ``datasets`` x ``depths``; each
    is timed once per round. ``target1_depths`` default: :func:`default_target1_depths`; ``cpu_kernels``,
    ``gpu_kernels``: as in :func:`speed_plan` (by default a CUDA plan made on a machine without CUDA counts the GPU
    kernels' cells where Triton imports)."""
    t1 = default_target1_depths(depths) if target1_depths is None else tuple(target1_depths)
    return sum(len(kinds) for ds in datasets for d in depths
               for _, kinds in speed_plan(ds, d, target1=d in t1, b1=b1_depths is None or d in b1_depths,
                                          device=device, cpu_kernels=cpu_kernels, gpu_kernels=gpu_kernels,
                                          **_variant_flags(variant)).values())


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TimingConfig:
    min_run_time: float = 0.3  # seconds per blocked_autorange call
    warmup: int = 3
    batch: int = 128
    rounds: int = 5  # interleaved rounds in the speed section

    @classmethod
    def quick(cls) -> "TimingConfig":
        return cls(min_run_time=0.02, warmup=1, batch=8, rounds=2)


def add_ab_arguments(parser, models: str, rounds: int, min_run_time: float) -> None:
    """The timing arguments of the A/B scripts in benchmarks/ (``cpu_kernels_ab.py``, ``mlan_group_formulations.py``):
    ``--models``, ``--rounds``, ``--min-run-time``, ``--batch``, ``--threads``, ``--train``."""
    parser.add_argument("--models", default=models, help="comma list of MLAN model names")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    parser.add_argument("--min-run-time", type=float, default=min_run_time, help="seconds per blocked_autorange")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--train", action="store_true", help="also time the train step (forward + backward)")


def ab_timing(args, warmup: int) -> TimingConfig:
    """Threads and CPU settings (:func:`..common.tune_cpu`) as the tools set them, and the TimingConfig of the
    arguments :func:`add_ab_arguments` added."""
    set_threads(args.threads)
    tune_cpu()
    return TimingConfig(min_run_time=args.min_run_time, warmup=warmup, batch=args.batch, rounds=args.rounds)


def _prepare(model: nn.Module, device: str, channels_last: bool, compile: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


def _input(batch: int, device: str, channels_last: bool, input_size=(3, 32, 32)) -> torch.Tensor:
    x = torch.randn(batch, *input_size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_infer_fn(model: nn.Module, batch: int, device: str, channels_last=False, compile=False) -> Callable[[], Any]:
    model = _prepare(model, device, channels_last, compile).eval()
    x = _input(batch, device, channels_last)

    def fn():
        with torch.inference_mode():
            return model(x)

    return fn


def make_graph_infer_fn(model: nn.Module, batch: int, device: str, channels_last=False, warmup: int = 3
                        ) -> Callable[[], Any]:
    """The ``cuda_graphs`` variant's timed call: an eval forward replayed from a CUDA graph.

    The model (eval mode) and a static input of ``batch`` random images go to ``device`` (CUDA only, else
    ValueError); ``warmup`` forwards run on a side stream (cuDNN/cuBLAS set-up and allocator warm-up, as PyTorch's
    CUDA graph notes ask), then one forward is captured into a ``torch.cuda.CUDAGraph``. The returned function calls
    ``graph.replay()`` and returns the static output: it reruns the captured kernels on what the static input
    holds, without Python or per-kernel launch overhead. Its attributes ``graph``, ``static_input`` and
    ``static_output`` expose them (tests copy new images into ``static_input``).

    Capture and warm-up run under ``torch.no_grad``: the same kernels as ``torch.inference_mode`` (which only saves
    CPU work that a replay does not do), and no inference tensors in the CUDA generator's capture state (with them,
    PyTorch before pytorch/pytorch#172706 refuses every later capture outside inference mode, e.g. a train step's).
    One graph per batch size: MLAN's forward picks its formulation by batch size in Python
    (``mlan_timm.models.blocks.STREAMING_MIN_BATCH``), fixed at capture. The train step is not captured."""
    if torch.device(device).type != "cuda":
        raise ValueError(f"the cuda_graphs variant needs a CUDA device; it cannot run on {device!r}")
    model = _prepare(model, device, channels_last, False).eval()
    x = _input(batch, device, channels_last)
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(max(warmup, 1)):
            model(x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = model(x)

    def fn():
        graph.replay()
        return out

    # the graph reads the model's parameters and buffers at their captured addresses: fn must keep the model alive,
    # or the allocator hands that memory to the next model (wrong numbers, or an illegal access once it is freed)
    fn.model, fn.graph, fn.static_input, fn.static_output = model, graph, x, out  # type: ignore[attr-defined]
    return fn


def _make_infer(model: nn.Module, batch: int, device: str, channels_last=False, compile=False, cuda_graphs=False,
                warmup: int = 3) -> Callable[[], Any]:
    if cuda_graphs:
        if compile:
            raise ValueError("compile and cuda_graphs are separate speed variants")
        return make_graph_infer_fn(model, batch, device, channels_last, warmup)
    return make_infer_fn(model, batch, device, channels_last, compile)


def make_train_fn(model: nn.Module, batch: int, device: str, channels_last=False, compile=False,
                  num_classes: Optional[int] = None) -> Callable[[], Any]:
    model = _prepare(model, device, channels_last, compile).train()
    x = _input(batch, device, channels_last)
    if num_classes is None:
        with torch.no_grad():
            num_classes = model(x[:2]).shape[-1]
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def fn():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return fn


def time_fn(fn: Callable[[], Any], cfg: TimingConfig, label: str = "") -> float:
    """Median seconds per call of ``fn`` (warm-up first; blocked_autorange synchronises accelerators)."""
    for _ in range(cfg.warmup):
        fn()
    m = Timer(stmt="fn()", globals={"fn": fn}, label=label, num_threads=torch.get_num_threads())
    return m.blocked_autorange(min_run_time=cfg.min_run_time).median


def time_model(spec: Spec, device: str, cfg: TimingConfig, what: Iterable[str] = ("b1", "b128", "train"),
               channels_last=False, compile=False, cuda_graphs=False) -> Dict[str, float]:
    """Timings of one model on one device; keys latency_b1_ms, infer_b128_ms, throughput_b128, train_step_b128_ms
    (no train step with ``cuda_graphs``)."""
    out: Dict[str, float] = {}
    what = set(what)
    torch.manual_seed(0)
    model = spec.build()
    if "b1" in what:
        out["latency_b1_ms"] = 1e3 * time_fn(_make_infer(model, 1, device, channels_last, compile, cuda_graphs,
                                                         cfg.warmup), cfg)
    if "b128" in what:
        t = time_fn(_make_infer(model, cfg.batch, device, channels_last, compile, cuda_graphs, cfg.warmup), cfg)
        out["infer_b128_ms"] = 1e3 * t
        out["throughput_b128"] = cfg.batch / t
    if "train" in what and not cuda_graphs:
        model = spec.build()  # fresh weights/BN statistics for the train step
        out["train_step_b128_ms"] = 1e3 * time_fn(make_train_fn(model, cfg.batch, device, channels_last, compile),
                                                  cfg)
    return out


def time_interleaved(specs: Dict[str, Spec], device: str, cfg: TimingConfig,
                     kinds: Union[Sequence[str], Dict[str, Sequence[str]]] = ("b128", "train"),
                     channels_last=False, compile=False, cuda_graphs=False) -> Dict[str, Dict[str, Any]]:
    """Median over ``cfg.rounds`` interleaved rounds (each round times every model once per kind, measure-major:
    all models' ``b1`` cells back to back, then ``b128``, then ``train``; :data:`MEASURE_ORDER`), and the per-round
    samples under ``<column>_rounds`` (ms, in round order: the report's paired ratios read them).

    ``kinds``: one tuple for every model, or label -> tuple of ``b1`` / ``b128`` / ``train``. With ``cuda_graphs``
    the inference kinds are graph replays (:func:`make_graph_infer_fn`) and ``train`` is skipped (no entry)."""
    fns: Dict[Tuple[str, str], Callable] = {}
    for name, spec in specs.items():
        torch.manual_seed(0)
        for kind in (kinds[name] if isinstance(kinds, dict) else kinds):
            if kind == "train" and cuda_graphs:
                continue  # the train step is not captured: its cell stays empty
            model = spec.build()
            if kind == "train":
                fns[name, kind] = make_train_fn(model, cfg.batch, device, channels_last, compile)
            else:
                fns[name, kind] = _make_infer(model, 1 if kind == "b1" else cfg.batch, device, channels_last,
                                              compile, cuda_graphs, cfg.warmup)
            for _ in range(cfg.warmup):
                fns[name, kind]()
    samples: Dict[Tuple[str, str], List[float]] = {k: [] for k in fns}
    # measure-major: every model's batch-1 cell back to back, then batch 128, then the train step, so that the
    # cells a ratio compares are timed seconds apart (the 2-core machine has slow periods lasting seconds)
    order = sorted(fns, key=lambda k: MEASURE_ORDER.index(k[1]))
    no_warmup = TimingConfig(cfg.min_run_time, 0, cfg.batch, cfg.rounds)  # warmed up above
    for _ in range(cfg.rounds):
        for k in order:
            samples[k].append(time_fn(fns[k], no_warmup))
    res: Dict[str, Dict[str, Any]] = {name: {} for name in specs}
    col = {"b1": "latency_b1_ms", "b128": "infer_b128_ms", "train": "train_step_b128_ms"}
    for (name, kind), ts in samples.items():
        res[name][col[kind]] = 1e3 * statistics.median(ts)
        res[name][col[kind] + ROUNDS_SUFFIX] = [1e3 * t for t in ts]  # per-round samples, for paired ratios
    return res


def run_speed(groups: Sequence[Tuple[str, int]], device: str, cfg: TimingConfig,
              target1_depths: Sequence[int] = TARGET1_DEPTHS, b1_depths: Optional[Sequence[int]] = None,
              channels_last=False, compile=False, cuda_graphs=False, log: Callable[[str], None] = lambda s: None,
              kernels: Optional[Dict[str, Optional[bool]]] = None) -> Dict[str, Dict[str, Dict[str, float]]]:
    """The speed section on one device/variant: group key -> model label -> timings (ms), each group interleaved.
    ``kernels``: :func:`speed_plan`'s ``cpu_kernels`` / ``gpu_kernels`` (default: where the kernels work)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for ds, depth in groups:
        plan = speed_plan(ds, depth, target1=depth in target1_depths, b1=b1_depths is None or depth in b1_depths,
                          compile=compile, cuda_graphs=cuda_graphs, device=device, channels_last=channels_last,
                          **(kernels or {}))
        t0 = time.perf_counter()
        out[speed_group(ds, depth)] = time_interleaved({k: v[0] for k, v in plan.items()}, device, cfg,
                                                       kinds={k: v[1] for k, v in plan.items()},
                                                       channels_last=channels_last, compile=compile,
                                                       cuda_graphs=cuda_graphs)
        log(f"speed {device}{' channels_last' if channels_last else ''}{' compile' if compile else ''}"
            f"{' cuda_graphs' if cuda_graphs else ''} {speed_group(ds, depth)}: {time.perf_counter() - t0:.0f} s")
    return out


def profile_ops(spec: Spec, device: str = "cpu", batch: int = 128, iters: int = 3, top: int = 8,
                train: bool = False) -> Dict[str, Any]:
    """torch.profiler: the ``top`` operators by self time (ms per forward, or per train step) with input shapes."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    fn = (make_train_fn if train else make_infer_fn)(spec.build(), batch, device)
    for _ in range(3):
        fn()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(iters):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: getattr(e, attr, 0), reverse=True)
    total = sum(getattr(e, attr, 0) for e in events)
    rows = [dict(op=e.key, shapes=str(e.input_shapes)[:90], calls=e.count // iters,
                 ms=getattr(e, attr, 0) / 1e3 / iters, share=getattr(e, attr, 0) / max(total, 1e-9))
            for e in events[:top]]
    return dict(model=spec.key, device=device, batch=batch, train=train, total_ms=total / 1e3 / iters, rows=rows)


#: (in channels C, out channels O, kernel k, size H = W) of the conv-cost section: the backbone's C -> C convs beside
#: MLAN's C -> 3 mask convs (and C -> C + 3, conv2 with the first layer's mask) at each stage, and 1x1 projections.
CONV_COST_SHAPES: Tuple[Tuple[int, int, int, int], ...] = (
    (8, 8, 3, 32), (8, 3, 3, 32), (8, 11, 3, 32), (16, 16, 3, 32), (16, 3, 3, 32), (16, 16, 3, 16), (16, 3, 3, 16),
    (32, 32, 3, 8), (32, 3, 3, 8), (8, 16, 1, 32), (16, 32, 1, 32), (32, 64, 1, 16))
#: Timed cells of one conv-cost row (``matmul`` only for 1x1 kernels; ``kernels_*`` only for the mask convs, O < C,
#: on CPU where the compiled kernels load: their ``conv_same`` forward and ``conv_same_grad_weight``).
CONV_COST_COLUMNS = ("forward_ms", "backward_data_ms", "backward_data_as_forward_ms", "backward_weight_ms",
                     "matmul_ms", "kernels_forward_ms", "kernels_backward_weight_ms")


def _conv_cost_fns(c: int, o: int, k: int, size: int, batch: int, device: str, cpu_kernels: bool = False
                   ) -> Dict[str, Callable[[], Any]]:
    """The timed calls of one conv shape (NCHW fp32 contiguous random tensors), keyed by conv-cost column; the
    backward-data-as-forward and the 1x1-as-bmm results are checked against aten's once here, and so are the
    compiled CPU kernels' (``cpu_kernels``: time them for this shape if it is a mask conv, O < C, they apply to)
    against ``F.conv2d`` and ``torch.nn.grad.conv2d_weight``."""
    x = torch.randn(batch, c, size, size, device=device)
    w = torch.randn(o, c, k, k, device=device) / (c * k * k) ** 0.5
    g = torch.randn(batch, o, size, size, device=device)
    pad = k // 2
    w_t = w.flip(2, 3).transpose(0, 1)  # the input gradient as a forward conv: flipped kernel, in/out swapped
    aten = torch.ops.aten.convolution_backward

    def backward(mask):
        return lambda: aten(g, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

    fns: Dict[str, Callable[[], Any]] = {
        "forward_ms": lambda: F.conv2d(x, w, padding=pad),
        "backward_data_ms": backward([True, False, False]),
        "backward_data_as_forward_ms": lambda: F.conv2d(g, w_t, padding=pad),
        "backward_weight_ms": backward([False, True, False]),
    }
    if k == 1:
        w2 = w.view(o, c)
        fns["matmul_ms"] = lambda: torch.bmm(w2.expand(batch, -1, -1), x.flatten(2))
    kernels = None
    if cpu_kernels and o < c:
        from ...layers.cpu_kernels import kernels_for

        kernels = kernels_for(x, enabled=True)
    if kernels is not None:
        fns["kernels_forward_ms"] = lambda: kernels.conv_same(x, w)
        fns["kernels_backward_weight_ms"] = lambda: kernels.conv_same_grad_weight(x, g, k)
    with torch.inference_mode():
        torch.testing.assert_close(fns["backward_data_as_forward_ms"](), fns["backward_data_ms"]()[0],
                                   rtol=1e-4, atol=1e-4)
        if k == 1:
            torch.testing.assert_close(fns["matmul_ms"]().unflatten(2, (size, size)), fns["forward_ms"](),
                                       rtol=1e-4, atol=1e-4)
        if kernels is not None:
            torch.testing.assert_close(fns["kernels_forward_ms"](), fns["forward_ms"](), rtol=1e-4, atol=1e-4)
            gw = torch.nn.grad.conv2d_weight(x, w.shape, g, padding=pad)  # sums over B x H x W: scale-aware atol
            torch.testing.assert_close(fns["kernels_backward_weight_ms"](), gw, rtol=1e-4,
                                       atol=1e-5 * float(gw.abs().max()))
    return fns


def _conv_backend(c: int, o: int, k: int, size: int, batch: int, device: str) -> str:
    """The backend PyTorch picks for this conv (``torch._C._select_conv_backend``: ``Mkldnn`` is oneDNN), or
    'unknown' where that private API is missing."""
    try:
        x = torch.empty(batch, c, size, size, device=device)
        w = torch.empty(o, c, k, k, device=device)
        pad = k // 2
        backend = torch._C._select_conv_backend(x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, None)
    except (AttributeError, RuntimeError, TypeError):
        return "unknown"
    return str(backend).rpartition(".")[2]


def measure_conv_costs(device: str = "cpu", batch: Optional[int] = None, cfg: Optional[TimingConfig] = None,
                       shapes: Sequence[Tuple[int, int, int, int]] = CONV_COST_SHAPES,
                       cpu_kernels: Optional[bool] = None) -> List[Dict[str, Any]]:
    """Per-call times (ms) of one stride-1 'same' conv per shape (C, O, k, H) of ``shapes``, at ``batch``
    (default ``cfg.batch``): forward, aten's backward-data (the input gradient autograd computes), the same input
    gradient as a forward conv, backward-weight, for 1x1 kernels the forward as ``torch.bmm``, and for the mask
    convs (O < C) the compiled CPU kernels' forward and weight gradient (``cpu_kernels``: None, the default, where
    they load, i.e. on CPU with AVX-512; True / False: always / never try); with MACs, forward GMAC/s and
    ``conv_backend`` (PyTorch's choice for the conv). Each call is timed under ``torch.inference_mode``; all cells
    are interleaved over ``cfg.rounds`` rounds (median per cell), as in :func:`time_interleaved`."""
    cfg = cfg or TimingConfig()
    batch = cfg.batch if batch is None else batch
    if cpu_kernels is None:
        cpu_kernels = torch.device(device).type == "cpu" and bool(cpu_kernels_info()["available"])
    torch.manual_seed(0)
    fns: Dict[Tuple[int, str], Callable[[], Any]] = {}
    for i, (c, o, k, size) in enumerate(shapes):
        for col, fn in _conv_cost_fns(c, o, k, size, batch, device, cpu_kernels).items():
            fns[i, col] = fn
    samples: Dict[Tuple[int, str], List[float]] = {key: [] for key in fns}
    one = TimingConfig(cfg.min_run_time, 0, batch, cfg.rounds)
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(cfg.warmup):
                fn()
        for _ in range(cfg.rounds):
            for key, fn in fns.items():
                samples[key].append(time_fn(fn, one))
    rows: List[Dict[str, Any]] = []
    for i, (c, o, k, size) in enumerate(shapes):
        macs = batch * size * size * c * o * k * k
        row: Dict[str, Any] = dict(batch=batch, in_channels=c, out_channels=o, kernel=k, size=size, macs=macs,
                                   conv_backend=_conv_backend(c, o, k, size, batch, device))
        for col in CONV_COST_COLUMNS:
            if (i, col) in samples:
                row[col] = 1e3 * statistics.median(samples[i, col])
        row["gmacs_per_s"] = macs / (row["forward_ms"] / 1e3) / 1e9
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------------
def code_version() -> str:
    """``git describe``-style id of the measured code (short commit, '+changes' when tracked files differ; files
    under ``runs/``, the training state committed between sessions, are data, not code)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)runs"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+changes" if dirty else "")) if head else "unknown"


#: Environment variables that change timings without changing results: OpenMP's idle-thread policy, thread counts
#: and the instruction sets PyTorch and oneDNN may use (``cpu_kernels_ab.py --isa AVX2`` sets the last two). Those set
#: in the environment are written in front of a report's command, so that the command reproduces the run.
TIMING_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def timing_environment() -> str:
    """``"NAME=value NAME=value "`` for the :data:`TIMING_ENV` variables set in this process ('' if none), to
    prefix the recorded command so that it reproduces the run."""
    return "".join(f"{k}={os.environ[k]} " for k in TIMING_ENV if os.environ.get(k))


def machine_line(devices: Sequence[str] = ("cpu",)) -> str:
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"]
    from ..common import cpu_heap_tuned
    if "cpu" in devices and cpu_heap_tuned():
        parts[0] += ", glibc mmap/trim thresholds 1 GiB (tools.common.keep_cpu_memory_in_heap)"
    if "cuda" in devices and torch.cuda.is_available():
        from ...layers import gpu_kernels
        # whether MLAN's default fast path ran the Triton kernels in CUDA inference (read at the end of a run: a
        # kernel that failed to compile switched them off and says so here)
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}; GPU kernels: {gpu_kernels.gpu_kernels_status()}")
    if "cpu" in devices:  # whether the ?cpu_kernels=True models had the kernels (no build here: loaded if used)
        parts.append(f"CPU kernels: {cpu_kernels_info(load=False)['status']}")
    parts.append(f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Running sets of models
# ----------------------------------------------------------------------------------------------------------------
def measure(specs: Sequence[Spec], devices: Sequence[str] = ("cpu",), cfg: Optional[TimingConfig] = None,
            timed_keys: Optional[set] = None, what=("b1", "b128", "train"), cuda_variants=("eager",),
            log: Callable[[str], None] = lambda s: None) -> Dict[str, Dict[str, Any]]:
    """Params, MACs and timings for ``specs`` (timed only when ``timed_keys`` is None or contains the key)."""
    cfg = cfg or TimingConfig()
    results: Dict[str, Dict[str, Any]] = {}
    for spec in specs:
        if spec.key in results:
            continue
        rec: Dict[str, Any] = dict(model=spec.model, kwargs=spec.kwargs)
        if not spec.available():
            rec["error"] = NOT_REGISTERED
            results[spec.key] = rec
            continue
        try:
            model = spec.build()
        except Exception as e:  # an unsupported kwarg combination is reported, not fatal
            rec["error"] = f"{type(e).__name__}: {e}"
            results[spec.key] = rec
            log(f"{spec.key}: {rec['error']}")
            continue
        rec["params"] = count_params(model)
        rec["macs"] = count_macs(model)  # the kernels stand aside under FlopCounterMode
        if timed_keys is None or spec.key in timed_keys:
            for dev in devices:
                # the kernel paths asked for on this device: not timed as the library path under their name
                paths = [p for p in spec.kernel_paths if torch.device(dev).type == p.device_type]
                unavailable = [f"{p.name} unavailable: {info['reason']}" for p in paths
                               for info in [kernels_info(p)] if not info["available"]]
                if unavailable:
                    rec.setdefault("not_timed", {})[dev] = "; ".join(unavailable)
                    log(f"{spec.key}: not timed on {dev}: {rec['not_timed'][dev]}")
                    continue
                kinds = tuple(k for k in what if k != "train" or all(p.train for p in paths))
                variants = check_variants(dev, cuda_variants) if dev == "cuda" else ("eager",)
                for var in variants:
                    if any(var not in p.variants for p in paths):
                        log(f"{spec.key}: not timed on {dev} {var}: the kernels run in "
                            f"{' / '.join(paths[0].variants)} only")
                        continue
                    t = time_model(spec, dev, cfg, kinds, **_variant_flags(var))
                    rec[dev if var == "eager" else f"{dev}_{var}"] = t
        results[spec.key] = rec
        log(f"{spec.key}: params {rec['params']:,} MACs {rec['macs']:,} "
            + " ".join(f"{d}={v}" for d, v in rec.items() if d.startswith(("cpu", "cuda"))))
    return results


def run_paper_tables(devices=("cpu",), cfg: Optional[TimingConfig] = None, depths=tuple(zoo.DEPTHS),
                     datasets=tuple(zoo.DATASETS), speed_depths: Optional[Sequence[int]] = None,
                     cuda_variants=("eager", "channels_last", "compile", "cuda_graphs"), log=print,
                     speed_only: bool = False,
                     cpu_variants=("eager",), target1_depths: Sequence[int] = TARGET1_DEPTHS,
                     b1_depths: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Params and MACs of every model of the paper grids, and the speed section on each device/variant.

    The speed section times, per (dataset, depth) group of ``datasets`` x ``speed_depths`` (default ``depths``),
    the models of :func:`speed_plan` interleaved; its eager timings also fill the timed columns of Tables 6 and 9.
    ``speed_only``: no paper grids (e.g. a torch.compile run). Variants a device cannot run (``cuda_graphs`` on
    CPU) are a ValueError before anything is measured. For each kernel path (:data:`KERNEL_PATHS`) whose device
    type is among ``devices``, ``config[<its option>]`` (``cpu_kernels``, ``gpu_kernels``) records
    :func:`kernels_info` and ``left_out``: its label where a variant of the run would time it but the kernels do not
    work here (``reason`` says why); ``failed``: why, where they stopped working during the run (a kernel failed to
    compile: its later cells ran PyTorch's operators)."""
    cfg = cfg or TimingConfig()
    variants = {dev: check_variants(dev, cuda_variants if dev == "cuda" else cpu_variants) for dev in devices}
    speed_depths = tuple(depths if speed_depths is None else speed_depths)
    grid = {tid: t for tid, t in paper_grid().items() if t.dataset in datasets and not speed_only}
    specs: List[Spec] = [variant_spec(v, d, t.dataset) for t in grid.values() for v in t.variants for d in depths]
    groups = [(ds, d) for ds in datasets for d in speed_depths]
    kernels: Dict[str, Dict[str, Any]] = {}  # spec option -> its kernels' record (config)
    wanted = {p.option: False for p in KERNEL_PATHS}  # spec option -> timed in this run
    for path in KERNEL_PATHS:  # timed where the kernels work, else left out with the reason
        path_runs = [var for dev in devices if torch.device(dev).type == path.device_type for var in variants[dev]]
        if not path_runs:
            continue
        info = kernels[path.option] = kernels_info(path)
        planned = any(var in path.variants for var in path_runs)
        wanted[path.option] = planned and bool(info["available"])
        info["left_out"] = [path.label] if planned and not info["available"] else []
        if info["left_out"]:
            log(f"speed section: {path.label} left out: {path.name} unavailable: {info['reason']}")
    runs = [dict(device=dev, **_variant_flags(var)) for dev in devices for var in variants[dev]]
    speed_specs: Dict[str, Dict[str, str]] = {}
    for ds, d in groups:  # label -> spec key over every run, and CPU eager's models (e.g. for a --no-time run)
        planned_specs: Dict[str, Tuple[Spec, Tuple[str, ...]]] = {}
        for run in [{}] + runs:
            planned_specs.update(speed_plan(ds, d, target1=d in target1_depths, **wanted, **run))
        speed_specs[speed_group(ds, d)] = {label: planned_specs[label][0].key for label, *_ in SPEED_MODELS
                                           if label in planned_specs}
    specs += [parse_spec(k) for g in speed_specs.values() for k in g.values()]
    results = measure(specs, (), cfg, log=log)
    speed: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    for dev in devices:
        if dev == "cpu":
            from ..common import tune_cpu
            tune_cpu()
        for var in variants[dev]:
            label = dev if var == "eager" else f"{dev} {var}"
            log(f"speed section: {label}")
            try:
                speed[label] = run_speed(groups, dev, cfg, target1_depths=target1_depths, b1_depths=b1_depths,
                                         log=log, kernels=wanted, **_variant_flags(var))
            except Exception as e:  # e.g. torch.compile unavailable
                log(f"speed section {label} failed: {type(e).__name__}: {e}")
    for path in KERNEL_PATHS:  # e.g. a Triton kernel that did not compile for one shape: said, not hidden
        after = kernels_info(path, load=False) if wanted[path.option] else {}
        if after and not after["available"]:
            kernels[path.option]["failed"] = after["reason"]
            log(f"speed section: {path.name} failed during the run: {after['reason']}")
    speed_macs = {g: {label: results.get(k, {}).get("macs") for label, k in m.items()}
                  for g, m in speed_specs.items()}
    t1 = [d for d in target1_depths if d in speed_depths]
    config = dict(min_run_time=cfg.min_run_time, warmup=cfg.warmup, batch=cfg.batch, rounds=cfg.rounds,
                  b1_depths=list(speed_depths if b1_depths is None else b1_depths), target1_depths=t1,
                  interleave=INTERLEAVE)
    config.update(kernels)  # whether the kernel paths were timed, and why not
    if "cuda" in devices:  # cuDNN convolutions may run in TF32 by default: record what the fp32 timings used
        config["cuda_tf32"] = dict(cudnn=bool(torch.backends.cudnn.allow_tf32),
                                   matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    return dict(grid_ids=list(grid), depths=list(depths), datasets=list(datasets), devices=list(devices),
                results=results, speed=speed, speed_specs=speed_specs, speed_macs=speed_macs,
                target1_depths=t1, config=config)


def merge_reports(base: Dict[str, Any], other: Dict[str, Any]) -> Dict[str, Any]:
    """Fold another report's device timings (e.g. CUDA) into ``base``; params/MACs stay from ``base``."""
    merged = copy.deepcopy(base)
    for key, rec in other.get("results", {}).items():
        tgt = merged["results"].setdefault(key, copy.deepcopy(rec))
        for k, v in rec.items():
            if k.startswith("cuda") or (k.startswith("cpu") and k not in tgt):
                tgt[k] = v
    for label, res in other.get("speed", {}).items():
        if label.startswith("cuda") or label not in merged.get("speed", {}):
            merged.setdefault("speed", {})[label] = res
            merged.setdefault("speed_sources", {})[label] = dict(command=other.get("command", ""),
                                                                 machine=other.get("machine", ""),
                                                                 config=other.get("config", {}))
    for key in ("speed_specs", "speed_macs"):
        for g, m in other.get(key, {}).items():
            merged.setdefault(key, {}).setdefault(g, {}).update({k: v for k, v in m.items()
                                                                 if k not in merged[key][g]})
    devs = list(merged.get("devices", []))
    for d in other.get("devices", []):
        if d not in devs:
            devs.append(d)
    merged["devices"] = devs
    merged.setdefault("machines", [merged.get("machine", "")])
    merged.setdefault("codes", [merged.get("code", "unknown")])
    if other.get("machine") and other["machine"] not in merged["machines"]:
        merged["machines"].append(other["machine"])
        merged["codes"].append(other.get("code", "unknown"))
    if other.get("command"):
        merged.setdefault("merged_commands", []).append(other["command"])
    return merged
