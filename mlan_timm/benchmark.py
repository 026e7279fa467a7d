"""Benchmarks for mlan_timm models: parameters, MACs, latency, throughput and train-step time.

Command line: ``mlan-bench`` or ``python -m mlan_timm.benchmark``.

* ``mlan-bench resnet20_cifar10 mlan_resnet20_cifar10 "mlan_resnet20_cifar10?attn=cbam"`` measures the named
  models (``?key=value&...`` adds ``timm.create_model`` keyword arguments; values are parsed as Python literals
  when possible).
* ``mlan-bench --paper-tables`` regenerates ``docs/benchmarks.md`` and ``docs/benchmarks.json``: the paper's
  comparison grids (Tables 3/11, 4/12, 5/13, 6/9) with our numbers beside the paper's, plus a speed-ratio section.
* ``--merge other.json`` folds the device timings of another run (e.g. a CUDA run) into the tables.

What is measured
----------------
* ``params``: ``sum(p.numel() for p in model.parameters())``.
* ``macs``: multiply-accumulates for one 3x32x32 image, from ``torch.utils.flop_counter.FlopCounterMode``
  with ``MACs = FLOPs / 2``. FlopCounterMode only counts operators that have a FLOP formula (convolutions,
  matrix products, attention); batch norm, activations, pooling and element-wise mask products count zero.
* ``latency_b1_ms``: median time of one eval forward pass at batch 1 (``torch.inference_mode``).
* ``infer_b128_ms`` / ``throughput_b128``: median eval forward time at batch 128 and images per second.
* ``train_step_b128_ms``: median time of forward + cross-entropy + backward + ``torch.optim.SGD`` step at
  batch 128 in train mode.

All times come from ``torch.utils.benchmark.Timer.blocked_autorange`` (which synchronises accelerators around
each block) after explicit warm-up calls; the reported value is the median over blocks. Speed ratios are measured
by interleaving the compared models over several rounds and taking the median per model, which keeps slow drifts
of a shared machine from favouring one model.

Paper row keys (for :func:`mlan_timm.paper_tables.paper_cell`)
---------------------------------------------------------------
Keys are ``"resnet{depth}/{variant}/{column}"`` with ``column`` in ``params``, ``macs``, ``time``, ``top1``:

* ``table3`` (CIFAR-10) / ``table11`` (CIFAR-100), single vs multi level: variants ``backbone``, ``single``,
  ``multi``.
* ``table4`` (CIFAR-10) / ``table12`` (CIFAR-100), FMA vs SMA: variants ``backbone``, ``fma``, ``sma``.
* ``table5`` (CIFAR-10) / ``table13`` (CIFAR-100), fusion: variants ``plus``, ``concat``, ``conv1x1``,
  ``weighted``.
* ``table6`` (CIFAR-10) / ``table9`` (CIFAR-100), attention modules in the same multi-level structure: variants
  ``backbone``, ``sma``, ``sma_v2``, ``cbam``, ``ta``, ``se``, ``gc``.

The assignment of the first table of each pair to CIFAR-10 and the second to CIFAR-100 follows the project issue;
check it against the paper when transcribing.
"""
from __future__ import annotations

import argparse
import ast
import copy
import datetime
import glob
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.benchmark import Timer

from .complexity import count_macs, count_params  # noqa: F401  (re-exported)

DEPTHS = (14, 20, 26, 32)
DATASETS = ("cifar10", "cifar100")
ATTNS = ("sma", "sma_v2", "cbam", "ta", "se", "gc")
FUSIONS = ("plus", "concat", "conv1x1", "weighted")
NOT_TRAINED = "not trained yet"
NOT_REGISTERED = "model not registered"


# --------------------------------------------------------------------------------------------------------------
# Model specifications
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """A model to benchmark: a timm model name plus ``create_model`` kwargs (or a custom ``factory``)."""

    model: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    factory: Optional[Callable[[], nn.Module]] = None

    @property
    def key(self) -> str:
        if not self.kwargs:
            return self.model
        return self.model + "?" + "&".join(f"{k}={self.kwargs[k]}" for k in sorted(self.kwargs))

    def build(self) -> nn.Module:
        if self.factory is not None:
            return self.factory()
        import timm

        try:
            import mlan_timm  # noqa: F401  (registers the mlan_timm entrypoints)
        except Exception:  # pragma: no cover - package import problems surface in the model build below
            pass
        return timm.create_model(self.model, pretrained=False, **self.kwargs)

    def available(self) -> bool:
        if self.factory is not None:
            return True
        import timm

        try:
            import mlan_timm  # noqa: F401
        except Exception:  # pragma: no cover
            pass
        return timm.is_model(self.model)


def parse_spec(text: str) -> Spec:
    """``"name?key=value&key2=value2"`` -> :class:`Spec` (values parsed as Python literals when possible)."""
    name, _, query = text.partition("?")
    kwargs: Dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        k, _, v = part.partition("=")
        try:
            kwargs[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            kwargs[k] = v
    return Spec(name, kwargs)


def _mlan(depth: int, ds: str, **kwargs) -> Spec:
    return Spec(f"mlan_resnet{depth}_{ds}", dict(kwargs))


def _backbone(depth: int, ds: str) -> Spec:
    return Spec(f"resnet{depth}_{ds}")


def paper_grid() -> Dict[str, Dict[str, Any]]:
    """The paper's comparison grids: table id -> {dataset, title, variants: {variant: (depth -> Spec)}, ...}."""
    tables: Dict[str, Dict[str, Any]] = {}

    def add(tid, ds, title, variants, timed=False, note=""):
        tables[tid] = dict(dataset=ds, title=title, variants=variants, timed=timed, note=note)

    for ds, (t3, t4, t5, t6) in (("cifar10", ("table3", "table4", "table5", "table6")),
                                 ("cifar100", ("table11", "table12", "table13", "table9"))):
        add(t3, ds, "single vs multi level",
            {"backbone": lambda d, ds=ds: _backbone(d, ds),
             "single": lambda d, ds=ds: _mlan(d, ds, levels="single"),
             "multi": lambda d, ds=ds: _mlan(d, ds)})
        add(t4, ds, "FMA vs SMA",
            {"backbone": lambda d, ds=ds: _backbone(d, ds),
             "fma": lambda d, ds=ds: _mlan(d, ds, attn="fma"),
             "sma": lambda d, ds=ds: _mlan(d, ds)})
        add(t5, ds, "fusion methods (SMA, multi-level)",
            {f: (lambda d, ds=ds, f=f: _mlan(d, ds) if f == "plus" else _mlan(d, ds, fusion=f)) for f in FUSIONS})
        add(t6, ds, "attention modules in the same multi-level structure",
            dict({"backbone": lambda d, ds=ds: _backbone(d, ds)},
                 **{a: (lambda d, ds=ds, a=a: _mlan(d, ds) if a == "sma" else _mlan(d, ds, attn=a)) for a in ATTNS}),
            timed=True)
    return tables


COMPILE_RATIO_MODELS = ("backbone", "mlan (sma)")


def ratio_specs(ds: str = "cifar10", depth: int = 20) -> Dict[str, Spec]:
    """Models compared in the speed-ratio section."""
    return {
        "backbone": _backbone(depth, ds),
        "mlan (sma)": _mlan(depth, ds),
        "mlan (sma_v2)": _mlan(depth, ds, attn="sma_v2"),
        "cbam multi-level": _mlan(depth, ds, attn="cbam"),
        "ta multi-level": _mlan(depth, ds, attn="ta"),
        "gc multi-level": _mlan(depth, ds, attn="gc"),
    }


# --------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------
# count_params / count_macs live in mlan_timm.complexity (one definition for benchmarks, tables, exports)


@dataclass
class TimingConfig:
    min_run_time: float = 0.3  # seconds per blocked_autorange call
    warmup: int = 3
    batch: int = 128
    rounds: int = 5  # interleaved rounds in the ratio section

    @classmethod
    def quick(cls) -> "TimingConfig":
        return cls(min_run_time=0.02, warmup=1, batch=8, rounds=2)


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
               channels_last=False, compile=False) -> Dict[str, float]:
    """Timings of one model on one device; keys latency_b1_ms, infer_b128_ms, throughput_b128, train_step_b128_ms."""
    out: Dict[str, float] = {}
    what = set(what)
    torch.manual_seed(0)
    model = spec.build()
    if "b1" in what:
        out["latency_b1_ms"] = 1e3 * time_fn(make_infer_fn(model, 1, device, channels_last, compile), cfg)
    if "b128" in what:
        t = time_fn(make_infer_fn(model, cfg.batch, device, channels_last, compile), cfg)
        out["infer_b128_ms"] = 1e3 * t
        out["throughput_b128"] = cfg.batch / t
    if "train" in what:
        model = spec.build()  # fresh weights/BN statistics for the train step
        out["train_step_b128_ms"] = 1e3 * time_fn(make_train_fn(model, cfg.batch, device, channels_last, compile),
                                                  cfg)
    return out


def time_interleaved(specs: Dict[str, Spec], device: str, cfg: TimingConfig, kinds=("b128", "train"),
                     channels_last=False, compile=False) -> Dict[str, Dict[str, float]]:
    """Median over ``cfg.rounds`` interleaved rounds (each round times every model once per kind)."""
    fns: Dict[Tuple[str, str], Callable] = {}
    for name, spec in specs.items():
        torch.manual_seed(0)
        for kind in kinds:
            model = spec.build()
            if kind == "train":
                fns[name, kind] = make_train_fn(model, cfg.batch, device, channels_last, compile)
            else:
                fns[name, kind] = make_infer_fn(model, 1 if kind == "b1" else cfg.batch, device, channels_last,
                                                compile)
            for _ in range(cfg.warmup):
                fns[name, kind]()
    samples: Dict[Tuple[str, str], List[float]] = {k: [] for k in fns}
    for _ in range(cfg.rounds):
        for k, fn in fns.items():
            samples[k].append(time_fn(fn, TimingConfig(cfg.min_run_time, 0, cfg.batch, cfg.rounds)))
    res: Dict[str, Dict[str, float]] = {name: {} for name in specs}
    col = {"b1": "latency_b1_ms", "b128": "infer_b128_ms", "train": "train_step_b128_ms"}
    for (name, kind), ts in samples.items():
        res[name][col[kind]] = 1e3 * statistics.median(ts)
    return res


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


def render_profiles(prof: Dict[str, Any]) -> str:
    out = ["## Where the time goes (torch.profiler)", "", f"Command: `{prof.get('command')}`", "",
           f"Machine: {prof.get('machine')}", "",
           "Top operators by self time per call of the timed function (one forward at batch 128, or one train "
           "step), grouped by input shape; 'share' is of the profiled total.", ""]
    for p in prof["profiles"]:
        kind = "train step" if p["train"] else "inference"
        out += [f"#### `{p['model']}` {p['device']} {kind} b{p['batch']}: {p['total_ms']:.1f} ms profiled total", "",
                "| operator | input shapes | calls | ms | share |", "|---|---|---|---|---|"]
        for r in p["rows"]:
            shapes = r["shapes"].replace("|", "/")
            out.append(f"| {r['op']} | `{shapes}` | {r['calls']} | {r['ms']:.2f} | {100 * r['share']:.1f}% |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# Accuracy from evaluation JSON files (written by the training tooling)
# --------------------------------------------------------------------------------------------------------------
CIFAR_TEST_IMAGES = 10_000  # size of the CIFAR-10 / CIFAR-100 test split
_TOP1_KEYS = ("top1", "test_top1", "eval_top1", "acc1", "accuracy")


def load_eval_results(root: str = ".") -> Dict[str, Tuple[float, str]]:
    """Spec key -> (top-1 %, source file) from ``docs/results/**/*.json`` and ``hub/*/**/*eval*.json``.

    Each file holds one object or a list of objects with a model name (``model``/``model_name``/``arch``), optional
    ``model_kwargs``/``kwargs`` and a top-1 value (``top1``/``test_top1``/``eval_top1``/``acc1``), e.g. the output of
    ``mlan-eval --json > docs/results/<model>.json``; records whose ``split`` is not ``test``, or that were evaluated
    on fewer than the full 10,000 test images (``subset``/``test_subset`` set, or ``images`` < 10,000), are ignored.
    A record is filed only under the key of its exact model name and kwargs."""
    found: Dict[str, Tuple[float, str]] = {}
    paths = sorted(glob.glob(os.path.join(root, "docs", "results", "**", "*.json"), recursive=True))
    paths += sorted(glob.glob(os.path.join(root, "hub", "*", "**", "*eval*.json"), recursive=True))
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        for rec in data if isinstance(data, list) else [data]:
            if not isinstance(rec, dict):
                continue
            name = rec.get("model") or rec.get("model_name") or rec.get("arch")
            if name is None and os.path.basename(os.path.dirname(path)) and "hub" in path.split(os.sep):
                name = os.path.basename(os.path.dirname(path))
            if rec.get("split", "test") != "test":
                continue  # only test-split accuracy belongs beside the paper's numbers
            top1 = next((rec[k] for k in _TOP1_KEYS if isinstance(rec.get(k), (int, float))), None)
            if not isinstance(name, str) or top1 is None:
                continue
            if rec.get("subset") or rec.get("test_subset"):
                continue  # evaluated on a subset: not comparable with the paper's full-test-set accuracy
            if isinstance(rec.get("images"), int) and rec["images"] < CIFAR_TEST_IMAGES:
                continue  # fewer than the full 10,000 CIFAR test images (a subset or a truncated run)
            if "weights" in rec and "model_kwargs" not in rec and "kwargs" not in rec:
                continue  # mlan-eval output from before it recorded model_kwargs: the architecture is unknown
            kwargs = rec.get("model_kwargs") if "model_kwargs" in rec else rec.get("kwargs")
            kwargs = dict(kwargs or {})
            kwargs.pop("num_classes", None)  # implied by the model name's dataset (mlan-eval refuses a clash)
            # filed only under the row with this exact model name and these exact kwargs (the Spec key)
            found[Spec(name, kwargs).key] = (float(top1), os.path.relpath(path, root))
    return found


# --------------------------------------------------------------------------------------------------------------
# Running a set of models
# --------------------------------------------------------------------------------------------------------------
def code_version() -> str:
    """``git describe``-style id of the measured code (short commit, '+changes' when tracked files differ)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+changes" if dirty else "")) if head else "unknown"


def machine_line(devices: Sequence[str] = ("cpu",)) -> str:
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"]
    if "cuda" in devices and torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    parts.append(f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}")
    return "; ".join(parts)


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
        rec["macs"] = count_macs(model)
        if timed_keys is None or spec.key in timed_keys:
            for dev in devices:
                variants = cuda_variants if dev == "cuda" else ("eager",)
                for var in variants:
                    t = time_model(spec, dev, cfg, what, channels_last=(var == "channels_last"),
                                   compile=(var == "compile"))
                    rec[dev if var == "eager" else f"{dev}_{var}"] = t
        results[spec.key] = rec
        log(f"{spec.key}: params {rec['params']:,} MACs {rec['macs']:,} "
            + " ".join(f"{d}={v}" for d, v in rec.items() if d.startswith(("cpu", "cuda"))))
    return results


# --------------------------------------------------------------------------------------------------------------
# Markdown rendering
# --------------------------------------------------------------------------------------------------------------
def _fmt_params(n: Optional[int]) -> str:
    return "—" if n is None else f"{n / 1e6:.3f}M ({n:,})"


def _fmt_macs(n: Optional[int]) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}M"


def _fmt_ms(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}"


def _top1(acc: Dict[str, Tuple[float, str]], key: str) -> str:
    return f"{acc[key][0]:.2f}" if key in acc else NOT_TRAINED


def render_results_table(results: Dict[str, Dict[str, Any]], devices: Sequence[str] = ("cpu",)) -> str:
    cols = ["model", "params", "MACs/img"]
    for d in devices:
        cols += [f"{d} b1 latency ms", f"{d} b128 ms", f"{d} b128 img/s", f"{d} train step b128 ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for key, rec in results.items():
        if "error" in rec:
            lines.append(f"| `{key}` | {rec['error']} |" + " |" * (len(cols) - 2))
            continue
        row = [f"`{key}`", _fmt_params(rec["params"]), _fmt_macs(rec["macs"])]
        for d in devices:
            t = rec.get(d, {})
            row += [_fmt_ms(t.get("latency_b1_ms")), _fmt_ms(t.get("infer_b128_ms")),
                    "—" if "throughput_b128" not in t else f"{t['throughput_b128']:.0f}",
                    _fmt_ms(t.get("train_step_b128_ms"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_paper_table(tid: str, table: Dict[str, Any], results: Dict[str, Dict[str, Any]],
                       acc: Dict[str, Tuple[float, str]], devices: Sequence[str], depths=DEPTHS) -> str:
    from mlan_timm.paper_tables import paper_cell

    timed = table["timed"]
    cols = ["depth", "variant", "model", "params", "paper params", "MACs/img", "paper MACs"]
    if timed:
        for d in devices:
            cols += [f"{d} b1 ms", f"{d} b128 ms", f"{d} train b128 ms"]
        cols += ["paper time"]
    cols += ["top-1 %", "paper top-1"]
    out = [f"### {tid.capitalize()} ({table['dataset'].upper()}): {table['title']}", ""]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for depth in depths:
        for var, mk in table["variants"].items():
            spec = mk(depth)
            rec = results.get(spec.key, {})
            pk = f"resnet{depth}/{var}"
            row = [f"ResNet-{depth}", var, f"`{spec.key}`"]
            if "error" in rec or not rec:
                err = rec.get("error", "not measured")
                row += [err, paper_cell(tid, pk + "/params"), "—", paper_cell(tid, pk + "/macs")]
                if timed:
                    row += ["—"] * (3 * len(devices)) + [paper_cell(tid, pk + "/time")]
            else:
                row += [_fmt_params(rec["params"]), paper_cell(tid, pk + "/params"),
                        _fmt_macs(rec["macs"]), paper_cell(tid, pk + "/macs")]
                if timed:
                    for d in devices:
                        t = rec.get(d, {})
                        row += [_fmt_ms(t.get("latency_b1_ms")), _fmt_ms(t.get("infer_b128_ms")),
                                _fmt_ms(t.get("train_step_b128_ms"))]
                    row += [paper_cell(tid, pk + "/time")]
            row += [_top1(acc, spec.key), paper_cell(tid, pk + "/top1")]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


TARGETS = (
    # (description, numerator, denominator, column, max ratio)
    ("MLAN inference b128 vs backbone", "mlan (sma)", "backbone", "infer_b128_ms", 1.25),
    ("MLAN train step b128 vs backbone", "mlan (sma)", "backbone", "train_step_b128_ms", 1.5),
    ("MLAN (sma) vs CBAM multi-level, inference b128", "mlan (sma)", "cbam multi-level", "infer_b128_ms", 1.0),
    ("MLAN (sma) vs TA multi-level, inference b128", "mlan (sma)", "ta multi-level", "infer_b128_ms", 1.0),
    ("MLAN (sma) vs GC multi-level, inference b128", "mlan (sma)", "gc multi-level", "infer_b128_ms", 1.0),
)


def render_ratios(ratios: Dict[str, Dict[str, Dict[str, float]]], specs: Dict[str, Spec],
                  sources: Optional[Dict[str, str]] = None) -> str:
    """``ratios``: device/variant label -> model label -> timings (ms)."""
    out = []
    for dev, res in ratios.items():
        out += [f"#### {dev}", ""]
        if sources and sources.get(dev):
            out += [f"Measured by `{sources[dev]}`", ""]
        out += ["| model | spec | b128 inference ms | train step b128 ms | "
                "inference / backbone | train / backbone |", "|---|---|---|---|---|---|"]
        base = res.get("backbone", {})
        for name, t in res.items():
            ri = t.get("infer_b128_ms", float("nan")) / base.get("infer_b128_ms", float("nan"))
            rt = t.get("train_step_b128_ms", float("nan")) / base.get("train_step_b128_ms", float("nan"))
            out.append(f"| {name} | `{specs[name].key}` | {_fmt_ms(t.get('infer_b128_ms'))} | "
                       f"{_fmt_ms(t.get('train_step_b128_ms'))} | {ri:.3f} | {rt:.3f} |")
        out += ["", "| target | measured ratio | limit | met |", "|---|---|---|---|"]
        for desc, num, den, col, lim in TARGETS:
            if num in res and den in res and col in res[num] and col in res[den]:
                r = res[num][col] / res[den][col]
                met = "yes" if (r <= lim if lim != 1.0 else r < 1.0) else "no"
                cmp_ = f"≤ {lim}" if lim != 1.0 else "< 1 (faster)"
                out.append(f"| {desc} | {r:.3f} | {cmp_} | {met} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# Paper-tables report
# --------------------------------------------------------------------------------------------------------------
def run_paper_tables(devices=("cpu",), cfg: Optional[TimingConfig] = None, depths=DEPTHS, datasets=DATASETS,
                     timed_depths=DEPTHS, cuda_variants=("eager", "channels_last", "compile"),
                     ratio_cfg: Optional[TimingConfig] = None, log=print, ratio_only: bool = False,
                     cpu_variants=("eager",)) -> Dict[str, Any]:
    """Measure every model of the paper grids (timing only the Table 6/9 models) plus the ratio section."""
    cfg = cfg or TimingConfig()
    ratio_cfg = ratio_cfg or cfg
    grid = {tid: t for tid, t in paper_grid().items() if t["dataset"] in datasets and not ratio_only}
    specs: List[Spec] = []
    timed: set = set()
    for t in grid.values():
        for mk in t["variants"].values():
            for d in depths:
                s = mk(d)
                specs.append(s)
                if t["timed"] and d in timed_depths:
                    timed.add(s.key)
    results = measure(specs, devices, cfg, timed_keys=timed, what=("b1", "b128", "train"),
                      cuda_variants=("eager",), log=log)
    rspecs = ratio_specs()
    ratios: Dict[str, Dict[str, Dict[str, float]]] = {}
    if all(s.available() for s in rspecs.values()):
        for dev in devices:
            for var in (cuda_variants if dev == "cuda" else cpu_variants):
                label = dev if var == "eager" else f"{dev} {var}"
                log(f"ratio section: {label}")
                # torch.compile costs a compilation per model and mode: only backbone vs MLAN there
                sub = {k: v for k, v in rspecs.items() if var != "compile" or k in COMPILE_RATIO_MODELS}
                try:
                    ratios[label] = time_interleaved(sub, dev, ratio_cfg, channels_last=(var == "channels_last"),
                                                     compile=(var == "compile"))
                except Exception as e:  # e.g. torch.compile unavailable
                    log(f"ratio section {label} failed: {type(e).__name__}: {e}")
    return dict(grid_ids=list(grid), depths=list(depths), devices=list(devices), results=results,
                ratios=ratios, ratio_specs={k: v.key for k, v in rspecs.items()},
                config=dict(min_run_time=cfg.min_run_time, warmup=cfg.warmup, batch=cfg.batch,
                            ratio_rounds=ratio_cfg.rounds, ratio_min_run_time=ratio_cfg.min_run_time))


def merge_reports(base: Dict[str, Any], other: Dict[str, Any]) -> Dict[str, Any]:
    """Fold another report's device timings (e.g. CUDA) into ``base``; params/MACs stay from ``base``."""
    merged = copy.deepcopy(base)
    for key, rec in other.get("results", {}).items():
        tgt = merged["results"].setdefault(key, copy.deepcopy(rec))
        for k, v in rec.items():
            if k.startswith("cuda") or (k.startswith("cpu") and k not in tgt):
                tgt[k] = v
    for label, res in other.get("ratios", {}).items():
        if label.startswith("cuda") or label not in merged.get("ratios", {}):
            merged.setdefault("ratios", {})[label] = res
            merged.setdefault("ratio_sources", {})[label] = other.get("command", "")
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


def render_report(report: Dict[str, Any], root: str = ".") -> str:
    acc = load_eval_results(root)
    grid = paper_grid()
    devices = report["devices"]
    results = report["results"]
    cfg = report.get("config", {})
    lines = [
        "# Benchmarks: MLAN models vs the paper's comparison grids",
        "",
        "<!-- generated by mlan_timm/benchmark.py; do not edit by hand -->",
        "Regenerate everything: `python benchmarks/run_benchmarks.py` (CPU measurements, then rendering that merges "
        "the saved GPU results in benchmarks/results/); GPU results: `python benchmarks/run_benchmarks.py --cuda "
        "--out-dir DIR` on a GPU machine.",
        "",
        f"Command: `{report['command']}`",
    ]
    for c in report.get("merged_commands", []):
        lines.append(f"Merged run command: `{c}`")
    lines += [""]
    codes = report.get("codes", [report.get("code", "unknown")])
    for i, m in enumerate(report.get("machines", [report.get("machine", "")])):
        code = codes[i] if i < len(codes) else "unknown"
        lines.append(f"- Machine: {m} (code: git {code})")
    lines += [
        f"- Generated: {report.get('date', '')}",
        "",
        "Conventions: params = sum of `numel()` of all parameters; MACs = `FlopCounterMode` FLOPs / 2 for one "
        "3x32x32 image (convolutions and linear layers only; batch norm, activations, pooling and element-wise "
        "attention products count zero). Times are medians of `torch.utils.benchmark.Timer.blocked_autorange` "
        f"blocks (min_run_time {cfg.get('min_run_time')} s, {cfg.get('warmup')} warm-up calls), eval mode under "
        f"`torch.inference_mode` for inference; train step = forward + cross-entropy + backward + SGD step; "
        f"batch {cfg.get('batch')} for the 'b128' columns. Accuracy columns come from evaluation JSON files "
        f"(docs/results, hub/*) when present, else '{NOT_TRAINED}'. Paper columns come from "
        "`mlan_timm.paper_tables.paper_cell` (row keys documented in `mlan_timm/benchmark.py`); "
        "'not transcribed' means the paper value has not been entered yet.",
        "",
        "## Speed ratios (ResNet-20, CIFAR-10 widths)",
        "",
        f"Interleaved measurement: {cfg.get('ratio_rounds')} rounds, each timing every model once "
        f"(blocked_autorange, min_run_time {cfg.get('ratio_min_run_time')} s); the table shows the median over "
        "rounds. Targets: MLAN inference within 1.25x of the backbone and faster than the CBAM/TA/GC multi-level "
        "variants; train step within 1.5x of the backbone.",
        "",
        "Reading the ratios: MLAN adds only a few percent of MACs to the backbone (tables below), but at full "
        "resolution it adds several element-wise passes per block (mask products, the LA/BA sums, the extra "
        "fusion add) that are memory-bound on CPU, and many small kernels that are launch-bound on a GPU at "
        "CIFAR widths; the profile section shows the operators. Speed-ups from the fast paths are in the "
        "before/after section.",
        "",
    ]
    rspecs = {k: parse_spec(v) for k, v in report.get("ratio_specs", {}).items()}
    if report.get("ratios"):
        lines.append(render_ratios(report["ratios"], rspecs, report.get("ratio_sources")))
        missing = [lab for lab in ("cpu compile", "cuda compile") if lab.split()[0] in report["ratios"]
                   and lab not in report["ratios"]]
        if missing:
            lines += [f"Not measured in this report: {', '.join(missing)}.", ""]
    else:
        lines += ["Ratio models not registered yet.", ""]
    for fp in report.get("fast_paths", []):
        dev = "cuda" if "GPU:" in str(fp.get("machine")) else "cpu"
        lines += [f"## Fast paths: before/after ({dev})", "",
                  "'reference' = the straightforward implementations kept next to the fast paths "
                  "(`mask_reference`, `forward_reference`: `nn.Conv2d` 1x1 mask convs, concatenation in LA/BA; "
                  "`MLANBlock.fused_sma` off: layer attentions materialised before LA); "
                  "'fast' = the default code. Equal outputs: tests/test_fast_paths.py.", "",
                  f"Command: `{fp.get('command')}`", "", f"Machine: {fp.get('machine')}", "",
                  "| model | reference b128 ms | fast b128 ms | speed-up | reference train ms | fast train ms | "
                  "speed-up |", "|---|---|---|---|---|---|---|"]
        for key, r in fp.get("results", {}).items():
            ri, fi = r["reference"]["infer_b128_ms"], r["fast"]["infer_b128_ms"]
            rt, ft = r["reference"]["train_step_b128_ms"], r["fast"]["train_step_b128_ms"]
            lines.append(f"| `{key}` | {ri:.2f} | {fi:.2f} | {ri / fi:.2f}x | {rt:.2f} | {ft:.2f} | {rt / ft:.2f}x |")
        lines.append("")
    if report.get("profile"):
        lines += [render_profiles(report["profile"]), ""]
    lines += ["## Paper grids", ""]
    for tid in report["grid_ids"]:
        tdevs = [d for d in devices]
        lines += [render_paper_table(tid, grid[tid], results, acc, tdevs, report["depths"]), ""]
    extra = sorted({k for rec in results.values() for k in rec if k.startswith(("cpu_", "cuda_"))})
    if extra:
        lines += ["## Other device variants", ""]
        sub = {k: {d: rec[d] for d in extra if d in rec} | {"params": rec.get("params"), "macs": rec.get("macs")}
               for k, rec in results.items() if any(d in rec for d in extra)}
        lines += [render_results_table(sub, extra), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlan-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="timm model names, optionally 'name?kwarg=value&...'; "
                                              "default: the paper grids (same as --paper-tables)")
    p.add_argument("--paper-tables", action="store_true", help="regenerate the paper comparison grids")
    p.add_argument("--device", default=None, help="comma list of devices (default: cpu, plus cuda if present)")
    p.add_argument("--cuda-variants", default="eager,channels_last,compile",
                   help="CUDA variants for the ratio section (eager, channels_last, compile)")
    p.add_argument("--cpu-variants", default="eager",
                   help="CPU variants for the ratio section (eager, compile; channels_last training on CPU crashes "
                        "in torch 2.14.1: heap corruption in the backward of a 1x1 stride-2 conv)")
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    p.add_argument("--timed-depths", default=None, help="depths timed in Table 6/9 (default: all --depths)")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per blocked_autorange")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the ratio section")
    p.add_argument("--batch", type=int, default=None, help="large batch size (default 128)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true", help="tiny repeat counts and batch 8 (for tests)")
    p.add_argument("--no-time", action="store_true", help="params and MACs only")
    p.add_argument("--ratio-only", action="store_true", help="with --paper-tables: only the speed-ratio section")
    p.add_argument("--merge", action="append", default=[], help="report JSON(s) whose device timings to merge")
    p.add_argument("--fast-path-json", action="append", default=[],
                   help="benchmarks/fast_path_speedup.py --out JSON(s) to include as a before/after section")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler top operators of the ratio backbone and MLAN (inference and train step)")
    p.add_argument("--profile-json", default=None, help="a --profile JSON to include in the rendered report")
    p.add_argument("--render-only", default=None, help="re-render Markdown from this JSON without measuring")
    p.add_argument("--md-out", default=None, help="Markdown output (paper tables default docs/benchmarks.md)")
    p.add_argument("--json-out", default=None, help="JSON output (paper tables default docs/benchmarks.json)")
    p.add_argument("--root", default=".", help="project root for eval-results lookup")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "mlan-bench " + " ".join(argv_list)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device.split(",") if args.device else (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    cfg = TimingConfig.quick() if args.quick else TimingConfig()
    if args.min_run_time is not None:
        cfg.min_run_time = args.min_run_time
    if args.rounds is not None:
        cfg.rounds = args.rounds
    if args.batch is not None:
        cfg.batch = args.batch
    paper = args.paper_tables or not args.models
    md_out = args.md_out or ("docs/benchmarks.md" if paper else None)
    json_out = args.json_out or ("docs/benchmarks.json" if paper else None)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    if args.profile:
        dev = devices[-1]
        specs = [parse_spec(m) for m in args.models] or [ratio_specs()["backbone"], ratio_specs()["mlan (sma)"]]
        profs = [profile_ops(sp, dev, cfg.batch, train=t) for sp in specs for t in (False, True)]
        report = dict(command=command, machine=machine_line([dev]), code=code_version(), profiles=profs)
        text = render_profiles(report)
        if args.json_out:
            os.makedirs(os.path.dirname(args.json_out) or ".", exist_ok=True)
            with open(args.json_out, "w") as f:
                json.dump(report, f, indent=1)
        print(text)
        return 0
    if args.render_only:
        with open(args.render_only) as f:
            report = json.load(f)
    elif paper:
        depths = tuple(int(d) for d in args.depths.split(","))
        timed_depths = tuple(int(d) for d in args.timed_depths.split(",")) if args.timed_depths else depths
        report = run_paper_tables(devices=[] if args.no_time else devices, cfg=cfg, depths=depths,
                                  datasets=tuple(args.datasets.split(",")), timed_depths=timed_depths,
                                  cuda_variants=tuple(args.cuda_variants.split(",")), log=log,
                                  ratio_only=args.ratio_only, cpu_variants=tuple(args.cpu_variants.split(",")))
        if args.no_time:
            report["devices"] = []
    else:
        specs = [parse_spec(m) for m in args.models]
        what = () if args.no_time else ("b1", "b128", "train")
        results = measure(specs, devices, cfg, what=what, cuda_variants=tuple(args.cuda_variants.split(",")),
                          log=log)
        report = dict(devices=devices if what else [], results=results,
                      config=dict(min_run_time=cfg.min_run_time, warmup=cfg.warmup, batch=cfg.batch))
    if not args.render_only:
        report["command"] = command
        report["machine"] = machine_line(devices)
        report["code"] = code_version()
        report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for path in args.merge:
        with open(path) as f:
            report = merge_reports(report, json.load(f))
    if args.profile_json:
        with open(args.profile_json) as f:
            report["profile"] = json.load(f)
    for path in args.fast_path_json:
        with open(path) as f:
            fp = json.load(f)
        report["fast_paths"] = [x for x in report.get("fast_paths", []) if x.get("machine") != fp.get("machine")
                                or x.get("command") != fp.get("command")] + [fp]

    if paper or args.render_only:
        md = render_report(report, args.root)
    else:
        md = "\n".join([f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", "",
                        render_results_table(report["results"], report["devices"]), ""])
    if json_out:
        os.makedirs(os.path.dirname(json_out) or ".", exist_ok=True)
        with open(json_out, "w") as f:
            json.dump(report, f, indent=1, sort_keys=False)
            f.write("\n")
    if md_out:
        os.makedirs(os.path.dirname(md_out) or ".", exist_ok=True)
        with open(md_out, "w") as f:
            f.write(md + "\n")
    if not md_out:
        print(md)
    else:
        print(f"wrote {md_out}" + (f" and {json_out}" if json_out else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
