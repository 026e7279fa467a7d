"""Reporting for mlan-bench: Markdown from measured reports (``benchmarks/results/*.json``), paper columns from
:mod:`mlan_timm.paper_tables`, accuracy from ``mlan-eval --json`` files.

Every sentence here that interprets a number is generated from the numbers; explanations of *why* a number is what
it is belong in hand-written docs (docs/training.md, docs/architecture.md), not in this generator.
"""
import glob
import json
import os
import re
import statistics
import textwrap
from typing import Any, Dict, List, Optional, Sequence

from ... import paper_tables, zoo
from .measure import (
    CPU_KERNEL_PATH,
    GPU_KERNEL_PATH,
    INTERLEAVE,
    KERNEL_PATHS,
    ROUNDS_SUFFIX,
    KernelPath,
    PaperTable,
    Spec,
    paper_grid,
    variant_spec,
)

__all__ = ['NOT_TRAINED', 'NOT_MEASURED', 'CIFAR_TEST_IMAGES', 'TARGET1_INFER', 'TARGET1_TRAIN', 'TARGET2_RIVALS',
           'load_eval_results', 'render_results_table', 'render_paper_table', 'render_target1', 'render_fast_paths',
           'render_target2', 'render_kernels', 'KERNELS', 'GPU_KERNELS', 'MLAN_PATHS', 'KERNEL_PAIRS',
           'KERNELS_METHOD', 'GPU_KERNELS_METHOD', 'TARGET3_LIMIT',
           'TARGET3_VARIANTS', 'target3_rows', 'target3_verdict', 'render_target3',
           'render_speed', 'render_profiles', 'conv_cost_findings', 'render_conv_costs',
           'render_report', 'target1_rows', 'target2_cases', 'fast_path_rows', 'conv_cost_ratios',
           'render_readme_summary', 'paired_ratio', 'PAIRED_METHOD', 'README_START', 'README_END',
           'readme_summary_span', 'replace_readme_summary']

NOT_TRAINED = "not trained yet"
NOT_MEASURED = "not measured"
CIFAR_TEST_IMAGES = 10_000  # size of the CIFAR-10 / CIFAR-100 test split

# Issue 10's targets. Target 1: MLAN time / backbone time <= factor x (MLAN MACs / backbone MACs), batch 128 fp32.
TARGET1_INFER = 1.1
TARGET1_TRAIN = 1.2
#: Target 2: MLAN faster than each of these (speed-section labels) in the same multi-level structure.
TARGET2_RIVALS = (("se", "SE"), ("cbam", "CBAM"), ("ta", "TA"), ("gc", "GC"))
#: Speed-section labels with a fast path and their reference (the fast-path A/B table).
FAST_PATH_PAIRS = (("mlan", "mlan (reference)", "MLAN"), ("smav2", "smav2 (reference)", "SMAv2"))
#: The speed-section label of MLAN built with ``?cpu_kernels=True`` (the compiled CPU kernels; CPU runs only).
KERNELS = CPU_KERNEL_PATH.label
#: The speed-section label of MLAN built with ``?gpu_kernels=True`` (the Triton kernels; CUDA inference only).
GPU_KERNELS = GPU_KERNEL_PATH.label
#: The MLAN models targets 1, 2 and 3 are read for: (speed-section label, the path's name in tables and prose): the
#: library fast path, then each kernel path (:data:`~.measure.KERNEL_PATHS`) where timed.
MLAN_PATHS = (("mlan", "library fast path"),) + tuple((p.label, p.name) for p in KERNEL_PATHS)
_KERNEL_LABELS = frozenset(p.label for p in KERNEL_PATHS)
#: What MLAN's default fast path runs on CUDA (runs whose machine line records the Triton kernels' status).
GPU_PATH_METHOD = ("On CUDA the fast path keeps the concatenations at every batch size (`?fast_paths=False` is the "
                   "reference; the streaming formulation is the CPU's).")
#: The kernels against the library fast path, same interleaved run: (kernels label, library label, name), one per
#: kernel path (:data:`~.measure.KERNEL_PATHS` order).
KERNEL_PAIRS = tuple((p.label, "mlan", "MLAN") for p in KERNEL_PATHS)
#: What the CPU-kernel rows time (said in the speed section's conventions when they were timed).
KERNELS_METHOD = ("'CPU kernels' is MLAN built with `?cpu_kernels=True` (`set_fast_paths(True, cpu_kernels=True)`): "
                  "each MLAN block's attention runs in one fused compiled kernel, in inference and in the train "
                  "step (forward, and a compiled backward for every input and weight gradient of the block's "
                  "attention; `mlan_timm.layers.cpu_kernels`); 'library fast path' is the default MLAN, on "
                  "PyTorch's operators.")
#: What the GPU-kernel rows time (said in the speed section's conventions when they were timed).
GPU_KERNELS_METHOD = ("'GPU kernels' is MLAN built with `?gpu_kernels=True` (`set_fast_paths(True, gpu_kernels=True)`):"
                      " in CUDA inference MLAN's attention (each block's and each group's shared masks, 1x1 "
                      "projections, plus fusion and ReLU) runs in the Triton kernels of `mlan_timm.layers.gpu_kernels`;"
                      " timed in inference only, eager and replayed from CUDA graphs (under autograd and torch.compile "
                      "they stand aside for PyTorch's operators); 'library fast path' is the default MLAN, on "
                      "PyTorch's operators.")
#: Each kernel path's method sentence.
_PATH_METHODS = {CPU_KERNEL_PATH.label: KERNELS_METHOD, GPU_KERNEL_PATH.label: GPU_KERNELS_METHOD}
TIME_COLUMNS = (("b1", "latency_b1_ms", "batch 1"), ("b128", "infer_b128_ms", "batch 128"),
                ("train", "train_step_b128_ms", "train step b128"))
#: Target 1's measures: (kind, timing column, limit factor).
TARGET1_MEASURES = (("inference", "infer_b128_ms", TARGET1_INFER), ("train step", "train_step_b128_ms", TARGET1_TRAIN))
#: Target 3: on the GPU, MLAN-20's inference within this factor of its backbone's time with CUDA graphs.
TARGET3_LIMIT = 1.2
TARGET3_DEPTH = 20
#: Target 3's GPU variants: (speed-section label, name), in table order; the verdict reads TARGET3_GRAPHS.
TARGET3_VARIANTS = (("cuda", "eager"), ("cuda channels_last", "channels_last"), ("cuda compile", "torch.compile"),
                    ("cuda cuda_graphs", "CUDA graphs"))
TARGET3_GRAPHS = "cuda cuda_graphs"
#: How speed ratios are computed when the timings carry per-round samples (said where the speed section states its
#: conventions; reports without per-round samples use the ratio of medians and do not say this).
PAIRED_METHOD = ("Ratios (time ratios, MLAN / rival, speed-ups) are medians of per-round ratios (each round times "
                 "the compared models back to back).")
#: How the cuda_graphs variant times (said in its speed section).
GRAPHS_METHOD = ("Each timed call replays a CUDA graph of one eval forward captured at that batch "
                 "(`torch.cuda.CUDAGraph` under `torch.no_grad`, static input, warm-up on a side stream); the "
                 "train step is not captured, so its cells are '—'.")


def _interleave_phrase(cfg: dict) -> str:
    """How a speed run ordered its rounds (``config["interleave"]``, :data:`.measure.INTERLEAVE`; reports without
    it: model by model)."""
    if cfg.get("interleave") == INTERLEAVE:
        return (", measure by measure: all models' batch-1 cells back to back, then batch 128, then the train "
                "step, so that compared cells are seconds apart")
    return ", model by model: each model's measures back to back, then the next model"


# ----------------------------------------------------------------------------------------------------------------
# Accuracy from mlan-eval JSON files
# ----------------------------------------------------------------------------------------------------------------
def load_eval_results(root: str = ".") -> Dict[str, Dict[str, Any]]:
    """Spec key -> ``{top1, best_top1, source}`` from ``mlan-eval --json`` files.

    Looked for in ``docs/results/**/*.json`` and ``hub/*/**/*eval*.json``; each file holds one mlan-eval object or
    a list of them. Only full-test-split evaluations count (``split == 'test'``, no ``subset``, 10,000 images), and
    only with ``model_kwargs`` recorded: a record is filed under the row of its exact model name and kwargs.
    ``best_top1`` is the training run's best-epoch test top-1 when the weights carry their training record."""
    found: Dict[str, Dict[str, Any]] = {}
    paths = sorted(glob.glob(os.path.join(root, "docs", "results", "**", "*.json"), recursive=True))
    paths += sorted(glob.glob(os.path.join(root, "hub", "*", "**", "*eval*.json"), recursive=True))
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        for rec in data if isinstance(data, list) else [data]:
            if not isinstance(rec, dict) or not isinstance(rec.get("model"), str):
                continue
            if not isinstance(rec.get("top1"), (int, float)) or "model_kwargs" not in rec:
                continue
            if rec.get("split", "test") != "test" or rec.get("subset") or rec.get("images") != CIFAR_TEST_IMAGES:
                continue  # not comparable with the paper's full-test-set accuracy
            kwargs = {k: v for k, v in (rec.get("model_kwargs") or {}).items() if k != "num_classes"}
            training = rec.get("training") or {}
            best = training.get("best_test_top1") if training.get("test_images") == CIFAR_TEST_IMAGES else None
            found[Spec(rec["model"], kwargs).key] = dict(top1=float(rec["top1"]), best_top1=best,
                                                         source=os.path.relpath(path, root))
    return found


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------
def _fmt_params(n: Optional[int]) -> str:
    return "—" if n is None else f"{n / 1e6:.3f}M ({n:,})"


def _fmt_macs(n: Optional[int]) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}M"


def _fmt_ms(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}"


def _top1(acc: Dict[str, Dict[str, Any]], key: str) -> str:
    if key not in acc:
        return NOT_TRAINED
    a = acc[key]
    return f"{a['top1']:.2f}" + (f" (best epoch {a['best_top1']:.2f})" if a.get("best_top1") is not None else "")


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
            if d in rec.get("not_timed", {}):  # e.g. ?cpu_kernels=True where the kernels do not load
                row += [rec["not_timed"][d], "—", "—", "—"]
                continue
            t = rec.get(d, {})
            row += [_fmt_ms(t.get("latency_b1_ms")), _fmt_ms(t.get("infer_b128_ms")),
                    "—" if "throughput_b128" not in t else f"{t['throughput_b128']:.0f}",
                    _fmt_ms(t.get("train_step_b128_ms"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _paper(ds: str, variant: str, depth: int, metric: str, fmt: str) -> str:
    v = paper_tables.paper_value(ds, variant, depth, metric)
    return "—" if v is None else fmt.format(v)


def _params_fit(params: Optional[int], ds: str, variant: str, depth: int) -> str:
    v = paper_tables.paper_value(ds, variant, depth, "params_M")
    if v is None or params is None:
        return "—"
    low, high = paper_tables.params_interval(v)
    return "yes" if low <= params < high else f"no ({params - low:+,})"


def render_paper_table(table: PaperTable, results: Dict[str, Dict[str, Any]], acc: Dict[str, Dict[str, Any]],
                       timings: Optional[Dict[str, Dict[str, Dict[str, float]]]] = None,
                       depths: Sequence[int] = tuple(zoo.DEPTHS)) -> str:
    """One paper table: our params / MACs (/ timings) / top-1 beside the paper's values for each row.

    ``timings``: device label -> spec key -> timings (ms), shown in the tables that print GPU times."""
    timings = timings or {}
    ds = table.dataset
    has_params = "params_M" in table.metrics
    cols = ["depth", "variant", "model", "params"]
    if has_params:
        cols += ["paper params", "within paper's truncation"]
    cols += ["MACs/img"]
    if table.timed:
        for d in timings:
            cols += [f"{d} b1 ms", f"{d} b128 ms"]
        cols += ["paper GPU ms (batch not given)"]
    cols += ["top-1 %", "paper top-1 (best epoch)"]
    title = f"### {table.table.replace('T', 'Table ', 1)} ({ds.upper()}): {table.title}"
    out = [title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for depth in depths:
        for var in table.variants:
            spec = variant_spec(var, depth, ds)
            rec = results.get(spec.key, {})
            ok = rec and "error" not in rec
            row = [f"ResNet-{depth}", zoo.PAPER_VARIANTS[var].label, f"`{spec.key}`",
                   _fmt_params(rec.get("params")) if ok else rec.get("error", NOT_MEASURED)]
            if has_params:
                row += [_paper(ds, var, depth, "params_M", "{:.2f}M"), _params_fit(rec.get("params"), ds, var, depth)]
            row += [_fmt_macs(rec.get("macs")) if ok else "—"]
            if table.timed:
                for d in timings:
                    t = timings[d].get(spec.key, {}) if ok else {}
                    row += [_fmt_ms(t.get("latency_b1_ms")), _fmt_ms(t.get("infer_b128_ms"))]
                row += [_paper(ds, var, depth, "gpu_ms", "{:g}")]
            row += [_top1(acc, spec.key), _paper(ds, var, depth, "top1", "{:.2f}")]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def _split_group(group: str):
    ds, _, depth = group.partition("/")
    return ds, int(depth)


def _group_name(group: str) -> str:
    ds, depth = _split_group(group)
    return f"{ds.upper()} | ResNet-{depth}"


def _range(values, digits: int = 2, unit: str = "") -> str:
    lo, hi = (f"{v:.{digits}f}{unit}" for v in (min(values), max(values)))
    return lo if lo == hi else f"{lo} to {hi}"


def paired_ratio(a: Dict[str, Any], b: Dict[str, Any], key: str) -> Optional[float]:
    """``a``'s time over ``b``'s for timing column ``key``: the median over rounds of ``a[key + '_rounds'][i] /
    b[key + '_rounds'][i]`` (both timed in round ``i``) when both have per-round samples of the same length, else
    the ratio of medians ``a[key] / b[key]`` (reports before per-round samples); None where either is missing."""
    ra, rb = a.get(key + ROUNDS_SUFFIX), b.get(key + ROUNDS_SUFFIX)
    if ra and rb and len(ra) == len(rb):
        return statistics.median(x / y for x, y in zip(ra, rb))
    x, y = a.get(key), b.get(key)
    return None if x is None or y is None else x / y


def _has_rounds(groups: Dict[str, Dict[str, Dict[str, Any]]]) -> bool:
    """Whether any model of ``groups`` (group -> label -> timings) carries per-round samples."""
    return any(k.endswith(ROUNDS_SUFFIX) for res in groups.values() for t in res.values() for k in t)


def _gpu_labels(speed: Dict[str, Any]) -> List[str]:
    """The speed section's GPU labels (``cuda``, ``cuda channels_last``, ...)."""
    return [lbl for lbl in speed if lbl.startswith("cuda")]


def _speed_source(report: Dict[str, Any], label: str) -> Dict[str, Any]:
    """Command, machine and config of the run that measured the speed section's ``label``."""
    return report.get("speed_sources", {}).get(label) or dict(command=report.get("command"),
                                                               machine=report.get("machine"),
                                                               config=report.get("config", {}))


def target1_rows(speed: Dict[str, Dict[str, Dict[str, float]]],
                 macs: Dict[str, Dict[str, Optional[int]]],
                 depths: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Target 1's rows (groups at ``depths``, the run's target-1 depths, or with an MLAN train step: reports
    before ``depths`` was recorded), one per group, MLAN path timed (:data:`MLAN_PATHS`: the library fast path, and
    the CPU or GPU kernels where timed) and measure: ``group``, ``model`` (speed-section label), ``path`` (its name),
    ``kind`` ('inference' / 'train step'), ``factor`` (the limit's), ``backbone_ms``, ``mlan_ms``, ``time_ratio``
    (:func:`paired_ratio`), ``macs_ratio``, ``over`` (time ratio / MACs ratio) and ``met`` (time ratio <= factor x
    MACs ratio). The kernels compute the same function as the library path: their MACs are MLAN's where the report
    has none of their own."""
    rows = []
    for group, res in speed.items():
        m = macs.get(group, {})
        target1 = "train_step_b128_ms" in res.get("mlan", {}) or (depths is not None
                                                                  and _split_group(group)[1] in depths)
        if not target1 or not m.get("mlan") or not m.get("backbone"):
            continue
        for model, path in MLAN_PATHS:
            if model not in res:
                continue
            mr = (m.get(model) or m["mlan"]) / m["backbone"]
            for kind, col, factor in TARGET1_MEASURES:
                b, t = res.get("backbone", {}).get(col), res[model].get(col)
                if b is None or t is None:
                    continue
                tr = paired_ratio(res[model], res["backbone"], col)
                rows.append(dict(group=group, model=model, path=path, kind=kind, factor=factor, backbone_ms=b,
                                 mlan_ms=t, time_ratio=tr, macs_ratio=mr, over=tr / mr, met=tr <= factor * mr))
    return rows


def _has_kernels(rows: Sequence[Dict[str, Any]]) -> bool:
    """Whether target rows / cases include a kernel path's MLAN (then tables and prose name each path)."""
    return any(r.get("model") in _KERNEL_LABELS for r in rows)


def render_target1(speed: Dict[str, Dict[str, Dict[str, float]]], macs: Dict[str, Dict[str, Optional[int]]],
                   label: str, batch: Any = 128, depths: Optional[Sequence[int]] = None) -> str:
    """Target 1 rows (:func:`target1_rows`): time ratio beside MACs ratio and the limit; with a kernel path timed
    (CPU or GPU kernels), a column names each row's MLAN path and the verdicts are counted per path."""
    t1 = target1_rows(speed, macs, depths)
    if not t1:
        return ""
    paths = _has_kernels(t1)
    rows = [f"| {_group_name(r['group'])} | " + (f"{r['path']} | " if paths else "")
            + f"{r['kind']} | {_fmt_ms(r['backbone_ms'])} | {_fmt_ms(r['mlan_ms'])} | "
            f"{r['time_ratio']:.2f} | {r['macs_ratio']:.3f} | ≤ {r['factor'] * r['macs_ratio']:.2f} ({r['factor']} x "
            f"MACs ratio) | {r['over']:.2f} | {'yes' if r['met'] else 'no'} |" for r in t1]
    out = [f"### Target 1 ({label}): MLAN vs its backbone, batch {batch} fp32", "",
           "| dataset | depth | " + ("MLAN path | " if paths else "") + "measure | backbone ms | MLAN ms | time ratio "
           "| MACs ratio | limit | time ratio / MACs ratio | met |", "|---|---|" + "---|" * (9 if paths else 8)] \
        + rows + [""]
    for kind, _, factor in TARGET1_MEASURES:
        for model, path in MLAN_PATHS if paths else MLAN_PATHS[:1]:
            v = [r for r in t1 if r["kind"] == kind and r["model"] == model]
            if v:
                out.append(f"- {kind}" + (f", {path}" if paths else "") + f": met in {sum(r['met'] for r in v)} of "
                           f"{len(v)} rows; time ratio / MACs ratio {_range([r['over'] for r in v])} (limit {factor}).")
    return "\n".join(out + [""])


def fast_path_rows(speed: Dict[str, Dict[str, Dict[str, float]]], pairs=FAST_PATH_PAIRS) -> List[Dict[str, Any]]:
    """One row per group and fast model measured beside its reference: ``group``, ``fast`` (speed-section label),
    ``name``, and ``cells``: TIME_COLUMNS key -> (reference ms, fast ms, speed-up = reference / fast, paired: see
    :func:`paired_ratio`) or None. ``pairs``: (fast, reference, name) labels, default :data:`FAST_PATH_PAIRS`;
    :data:`KERNEL_PAIRS` reads the kernel paths against the library fast path (their reference)."""
    rows = []
    for group, res in speed.items():
        for fast, ref, name in pairs:
            if fast not in res or ref not in res:
                continue
            cells = {}
            for key, col, _ in TIME_COLUMNS:
                r, f = res[ref].get(col), res[fast].get(col)
                cells[key] = None if r is None or f is None else (r, f, paired_ratio(res[ref], res[fast], col))
            rows.append(dict(group=group, fast=fast, name=name, cells=cells))
    return rows


def _ab_table(rows: Sequence[Dict[str, Any]], ref: str, fast: str) -> List[str]:
    """Table lines of :func:`fast_path_rows` rows: per measure ``ref`` ms, ``fast`` ms and the speed-up, then a line
    with the speed-ups' range."""
    lines, ups = [], []
    for row in rows:
        cells = []
        for key, _, _ in TIME_COLUMNS:
            c = row["cells"][key]
            if c is None:
                cells += ["—", "—", "—"]
            else:
                cells += [_fmt_ms(c[0]), _fmt_ms(c[1]), f"{c[2]:.2f}x"]
                ups.append(c[2])
        lines.append(f"| {_group_name(row['group'])} | {row['name']} | " + " | ".join(cells) + " |")
    head = " | ".join(f"{ref} {w} ms | {fast} {w} ms | speed-up" for _, _, w in TIME_COLUMNS)
    return ([f"| dataset | depth | model | {head} |", "|" + "---|" * (3 + 3 * len(TIME_COLUMNS))] + lines
            + ([""] + [f"Speed-up ({ref} time / {fast} time) {_range(ups)} over these {len(ups)} cells."]
               if ups else []))


def render_fast_paths(speed: Dict[str, Dict[str, Dict[str, float]]], label: str) -> str:
    """The fast-path A/B rows: each fast model beside its reference (``?fast_paths=False``), same interleaved run;
    then, where timed, MLAN with a kernel path beside the library fast path (:func:`render_kernels`)."""
    rows, out = fast_path_rows(speed), []
    if rows:
        out += [f"### Fast paths ({label}): reference (`?fast_paths=False`) vs fast, same interleaved run", ""] \
            + _ab_table(rows, "reference", "fast") + [""]
    kernels = render_kernels(speed, label)
    return "\n".join(out + ([kernels] if kernels else []))


def render_kernels(speed: Dict[str, Dict[str, Dict[str, float]]], label: str) -> str:
    """Per kernel path timed (:data:`KERNEL_PAIRS`): MLAN with the CPU kernels (``?cpu_kernels=True``) or the GPU
    kernels (``?gpu_kernels=True``) beside the library fast path, same interleaved run; empty where none was timed."""
    out = []
    for path, pair in zip(KERNEL_PATHS, KERNEL_PAIRS):
        rows = fast_path_rows(speed, (pair,))
        if rows:
            out += [f"### {path.name} ({label}): library fast path vs `?{path.option}=True`, same interleaved run",
                    ""] + _ab_table(rows, "library fast path", path.name) + [""]
    return "\n".join(out)


def _kernels_unavailable(info: Optional[Dict[str, Any]], path: KernelPath = CPU_KERNEL_PATH) -> Optional[str]:
    """'CPU kernels unavailable: <reason>' (``path``'s name) where a run recorded (``config[path.option]``,
    ``info``) that the kernels did not work; None otherwise (they did, or nothing recorded: reports before them)."""
    if not info or info.get("available") is not False:
        return None
    return f"{path.name} unavailable: {info.get('reason') or 'reason not recorded'}"


def _section_paths(label: str) -> List[KernelPath]:
    """The kernel paths a speed section (``cpu``, ``cuda cuda_graphs``, ...) can time: its device and variant."""
    dev, _, variant = label.partition(" ")
    return [p for p in KERNEL_PATHS if dev.partition(":")[0] == p.device_type and (variant or "eager") in p.variants]


def _kernels_left_out(cfg: Dict[str, Any], label: str = "cpu") -> Optional[str]:
    """The sentences of speed section ``label`` whose run left a kernel path's model out (its kernels unavailable)
    or whose kernels failed during the run (``config[<option>]['failed']``), else None."""
    out = []
    for path in _section_paths(label):
        info = cfg.get(path.option) or {}
        unavailable = _kernels_unavailable(info, path)
        if unavailable and info.get("left_out"):
            out.append(f"{unavailable}; {_join([f'`{m}`' for m in info['left_out']])} (MLAN with "
                       f"`?{path.option}=True`) not timed in this run.")
        if info.get("failed"):
            out.append(f"The {path.name} failed during this run ({info['failed']}): `{path.label}` cells timed after "
                       "the failure ran PyTorch's operators.")
    return " ".join(out) or None


def target2_cases(speed: Dict[str, Dict[str, Dict[str, float]]], mlan: str = "mlan") -> List[Dict[str, Any]]:
    """Target 2's (dataset, depth, batch) cases, batch 1 then batch 128, each group with an MLAN time and at least
    one rival's (a run of backbone and MLAN only, e.g. torch.compile, has none): ``batch`` (TIME_COLUMNS key),
    ``what`` ('batch 1' / 'batch 128'), ``group``, ``model`` (``mlan``: the speed-section label of the MLAN path
    compared, default the library fast path, :data:`KERNELS` for the CPU kernels), ``mlan_ms``, ``rivals``: rival
    name -> (its ms, MLAN / rival, :func:`paired_ratio`) or None where not measured, ``slower``: the rivals MLAN is
    not faster than (MLAN / rival >= 1), and ``met`` (MLAN faster than every rival, all measured)."""
    cases = []
    for key, col, what in TIME_COLUMNS[:2]:
        for group, res in speed.items():
            t = res.get(mlan, {}).get(col)
            if t is None:
                continue
            rivals = {}
            for rkey, name in TARGET2_RIVALS:
                o = res.get(rkey, {}).get(col)
                rivals[name] = None if o is None else (o, paired_ratio(res[mlan], res[rkey], col))
            if all(v is None for v in rivals.values()):
                continue
            slower = [name for name, v in rivals.items() if v is not None and v[1] >= 1]
            cases.append(dict(batch=key, what=what, group=group, model=mlan, mlan_ms=t, rivals=rivals,
                              slower=slower, met=not slower and all(v is not None for v in rivals.values())))
    return cases


def render_target2(speed: Dict[str, Dict[str, Dict[str, float]]], label: str) -> str:
    """Target 2: MLAN's time beside SE, CBAM, TA and GC in the same multi-level structure, batch 1 and 128; with
    a kernel path timed (CPU or GPU kernels), once per MLAN path (:data:`MLAN_PATHS`), each with its own verdicts."""
    per_path = [(model, path, target2_cases(speed, model)) for model, path in MLAN_PATHS]
    paths = any(cases for _, _, cases in per_path[1:])
    out = []
    for model, path, cases in per_path:
        if not cases:
            continue
        total, met_n = len(cases), sum(c["met"] for c in cases)
        slower = {name: sum(name in c["slower"] for c in cases) for _, name in TARGET2_RIVALS}
        for key, _, what in TIME_COLUMNS[:2]:
            rows = []
            for c in (c for c in cases if c["batch"] == key):
                cells = []
                for name, v in c["rivals"].items():
                    cells += ["—", "—"] if v is None else [_fmt_ms(v[0]), f"{v[1]:.2f}"]
                rows.append(f"| {_group_name(c['group'])} | {_fmt_ms(c['mlan_ms'])} | " + " | ".join(cells)
                            + f" | {'yes' if c['met'] else 'no'} |")
            if rows:
                head = " | ".join(f"{name} ms | MLAN / {name}" for _, name in TARGET2_RIVALS)
                out += [f"#### {what} inference" + (f", MLAN with the {path}" if paths else ""), "",
                        f"| dataset | depth | MLAN ms | {head} | MLAN fastest |",
                        "|" + "---|" * (4 + 2 * len(TARGET2_RIVALS))] + rows + [""]
        lose = ", ".join(f"{name} in {n}" for name, n in slower.items() if n) or "none"
        out += [f"MLAN{f' with the {path}' if paths else ''} is faster than all four in {met_n} of {total} "
                f"(dataset, depth, batch) cases; it is not faster than: {lose}.", ""]
    if not out:
        return ""
    return "\n".join([f"### Target 2 ({label}): MLAN vs the other attentions in the same multi-level structure", ""]
                     + out)


def _batches(report: Dict[str, Any]) -> Dict[str, Any]:
    """Speed-section label -> the large batch of the run that measured it."""
    return {label: _speed_source(report, label).get("config", {}).get("batch", 128)
            for label in report.get("speed") or {}}


def target3_rows(speed: Dict[str, Dict[str, Dict[str, Dict[str, float]]]],
                 batches: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Target 3's rows from the whole speed section (label -> groups): for every dataset with a ResNet-20 group in
    a GPU label, every variant of :data:`TARGET3_VARIANTS` that was run, each MLAN path it timed
    (:data:`MLAN_PATHS`: the library fast path, and the GPU kernels where timed in that variant) and batch 1 / the
    large batch (``batches``: label -> batch, default 128): ``dataset``, ``group``, ``label``, ``variant`` (the
    variant's name, with the path's for a kernel path: 'CUDA graphs, GPU kernels'), ``model`` (speed-section
    label), ``path`` (its name), ``batch``, ``backbone_ms``, ``mlan_ms`` and ``ratio`` (MLAN / backbone,
    :func:`paired_ratio`; None where either is not measured)."""
    batches = batches or {}
    order = list(zoo.DATASETS)
    datasets = sorted({_split_group(g)[0] for lbl in _gpu_labels(speed) for g in speed[lbl]
                       if _split_group(g)[1] == TARGET3_DEPTH},
                      key=lambda d: (order.index(d) if d in order else len(order), d))
    rows = []
    for ds in datasets:
        group = f"{ds}/{TARGET3_DEPTH}"
        for label, name in TARGET3_VARIANTS:
            if label not in speed:
                continue
            res = speed[label].get(group, {})
            for model, path in MLAN_PATHS:
                if model != "mlan" and not any(model in g for g in speed[label].values()):
                    continue  # a kernel path this variant did not time
                for key, col, _ in TIME_COLUMNS[:2]:
                    b, m = res.get("backbone", {}).get(col), res.get(model, {}).get(col)
                    rows.append(dict(dataset=ds, group=group, label=label, model=model, path=path,
                                     variant=name if model == "mlan" else f"{name}, {path}",
                                     batch=1 if key == "b1" else batches.get(label, 128), backbone_ms=b, mlan_ms=m,
                                     ratio=None if b is None or m is None
                                     else paired_ratio(res[model], res["backbone"], col)))
    return rows


def target3_verdict(rows: Sequence[Dict[str, Any]], model: str = "mlan") -> Optional[bool]:
    """Target 3 met by the MLAN path ``model`` (speed-section label, default the library fast path): every measured
    CUDA-graph ratio of its ``rows`` at most :data:`TARGET3_LIMIT`; None: none measured."""
    ratios = [r["ratio"] for r in rows if r["label"] == TARGET3_GRAPHS and r["model"] == model
              and r["ratio"] is not None]
    return None if not ratios else all(v <= TARGET3_LIMIT for v in ratios)


def _cells(rows: Sequence[Dict[str, Any]], ratio: bool = False) -> str:
    return _join([f"{_dataset_label(r['dataset'])} batch {r['batch']}" + (f" ({r['ratio']:.2f})" if ratio else "")
                  for r in rows])


def _target3_cells(graphs: Sequence[Dict[str, Any]]) -> str:
    """The measured CUDA-graph cells of one MLAN path: their ratios' range, and those above the limit."""
    ratios = _range([r["ratio"] for r in graphs])
    over = [r for r in graphs if r["ratio"] > TARGET3_LIMIT]
    if not over:
        return f"MLAN / backbone {ratios} over the {len(graphs)} measured cells ({_cells(graphs)})"
    return (f"MLAN / backbone {ratios}; above {TARGET3_LIMIT} in {len(over)} of the {len(graphs)} measured cells: "
            f"{_cells(over, ratio=True)}")


def _target3_verdict_sentence(rows: Sequence[Dict[str, Any]]) -> str:
    """The verdict line: met or not, and the cells that decide it; with a kernel path among ``rows``, per MLAN path
    (which of them meets the limit)."""
    head = f"Within {TARGET3_LIMIT}x with CUDA graphs"
    words = {True: "yes", False: "no", None: "not measured"}
    verdicts = [(model, path, target3_verdict(rows, model)) for model, path in MLAN_PATHS
                if any(r["model"] == model for r in rows)]
    if all(v is None for _, _, v in verdicts):
        return f"**{head}: not measured** (no CUDA-graph timings of the ResNet-20 pair)."

    def graphs(model: str) -> List[Dict[str, Any]]:
        return [r for r in rows if r["label"] == TARGET3_GRAPHS and r["model"] == model and r["ratio"] is not None]

    if len(verdicts) == 1:
        return f"**{head}: {words[verdicts[0][2]]}.** {_target3_cells(graphs('mlan'))}."
    return (f"**{head}: {', '.join(f'{words[v]} with the {path}' for _, path, v in verdicts)}.** "
            + " ".join(f"With the {path}, {_target3_cells(graphs(model))}." for model, path, v in verdicts
                       if v is not None))


def _tf32_phrase(report: Dict[str, Any]) -> str:
    for label in _gpu_labels(report.get("speed") or {}):
        tf32 = _speed_source(report, label).get("config", {}).get("cuda_tf32")
        if tf32:
            allowed = [name for k, name in (("cudnn", "cuDNN convolutions"), ("matmul", "matmuls")) if tf32.get(k)]
            return ("TF32 allowed for " + _join(allowed) if allowed else "TF32 off") + " (the run's PyTorch settings)"
    return ""


def render_target3(report: Dict[str, Any]) -> str:
    """Target 3: MLAN-20 / ResNet-20 inference time on the GPU at batch 1 and the large batch, per variant (eager,
    channels_last, torch.compile, CUDA graphs), with the verdict computed from the CUDA-graph cells; with the GPU
    kernels timed (eager and CUDA graphs), their rows follow the variant's ('eager, GPU kernels') and the verdict is
    given per MLAN path."""
    speed = report.get("speed") or {}
    rows = target3_rows(speed, _batches(report))
    if not rows:
        return ""
    table = [f"| {_dataset_label(r['dataset'])} | {r['variant']} | {r['batch']} | {_fmt_ms(r['backbone_ms'])} | "
             f"{_fmt_ms(r['mlan_ms'])} | " + ("— | — |" if r["ratio"] is None else
                                              f"{r['ratio']:.2f} | {'yes' if r['ratio'] <= TARGET3_LIMIT else 'no'} |")
             for r in rows]
    kernels = [p for p in KERNEL_PATHS if any(r["model"] == p.label for r in rows)]
    labels = [label for label, _ in TARGET3_VARIANTS if label in speed]
    big = sorted({r["batch"] for r in rows if r["batch"] != 1})
    tf32 = _tf32_phrase(report)
    out = ["### Target 3 (cuda): MLAN-20 inference vs its backbone on the GPU", "",
           f"ResNet-20 and MLAN-20 from the GPU speed sections ({', '.join(repr(lbl) for lbl in labels)}; each "
           "variant's command, machine and settings are in its section), each pair timed interleaved in its run. "
           f"Batch sizes: 1 and {_join([str(b) for b in big]) if big else '—'} (the paper's Tables 6/9 GPU times do "
           f"not state theirs); fp32 tensors{', ' + tf32 if tf32 else ''}; random weights; eval mode (CUDA graphs "
           f"as described in their section). The target: MLAN-20's inference within {TARGET3_LIMIT}x of its "
           "backbone's time with CUDA graphs."
           + "".join(f" '..., {p.name}' rows: MLAN built with `?{p.option}=True`, timed in the same interleaved "
                     "runs as the variant's other rows." for p in kernels)
           + (" MLAN / backbone is the median of per-round ratios (each round times the pair back to back)."
              if any(_has_rounds(speed[lbl]) for lbl in labels) else ""), "",
           f"| dataset | variant | batch | backbone ms | MLAN ms | MLAN / backbone | within {TARGET3_LIMIT}x |",
           "|---|---|---|---|---|---|---|"] + table + ["", _target3_verdict_sentence(rows), ""]
    for label, _ in TARGET3_VARIANTS:
        for model, _ in MLAN_PATHS:
            v = [r for r in rows if r["label"] == label and r["model"] == model and r["ratio"] is not None]
            if v:
                per_batch = [f"batch {b}: {_range([r['ratio'] for r in v if r['batch'] == b])}"
                             for b in sorted({r["batch"] for r in v})]
                out.append(f"- {v[0]['variant']}: MLAN / backbone {'; '.join(per_batch)}.")
    return "\n".join(out + [""])


def render_speed(report: Dict[str, Any]) -> str:
    """Issue 10's targets 1 and 2 (and the fast-path A/B, with the CPU kernels' A/B where timed) for every
    device/variant of the report's speed section, and target 3 (:func:`render_target3`) before the first GPU
    variant's section. A section whose run left the CPU-kernel models out says why (``config['cpu_kernels']``)."""
    speed = report.get("speed") or {}
    if not speed:
        return ""
    macs = report.get("speed_macs", {})
    out = []
    target3 = render_target3(report)
    for label, groups in speed.items():
        if label.startswith("cuda") and target3:  # before the first GPU section
            out += [target3]
            target3 = ""
        src = _speed_source(report, label)
        cfg = src.get("config", {})
        b1 = cfg.get("b1_depths")
        t1_depths = cfg.get("target1_depths", None if label in report.get("speed_sources", {})
                            else report.get("target1_depths"))
        out += [f"## Speed targets (issue 10): {label}", "", f"Command: `{src.get('command')}`", "",
                f"Machine: {src.get('machine')}", "",
                f"Each (dataset, depth) group's models are timed interleaved: {cfg.get('rounds')} rounds, each "
                f"timing every model once per measure (blocked_autorange, min_run_time {cfg.get('min_run_time')} s, "
                f"after {cfg.get('warmup')} warm-up call(s)){_interleave_phrase(cfg)}; tables show the median over "
                f"rounds. Batch "
                f"{cfg.get('batch')} for 'batch 128' / 'b128' and the train step; fp32; random weights."
                + (f" Batch-1 timings at depths {', '.join(map(str, b1))} only." if b1 is not None
                   and sorted(b1) != sorted({_split_group(g)[1] for g in groups}) else "")
                + (f" {GRAPHS_METHOD}" if label == TARGET3_GRAPHS else "")
                + (f" {PAIRED_METHOD}" if _has_rounds(groups) else "")
                + "".join(f" {_PATH_METHODS[p.label]}" for p in KERNEL_PATHS
                          if any(p.label in res for res in groups.values()))
                + (f" {GPU_PATH_METHOD}" if "GPU kernels:" in str(src.get("machine")) else "")
                + _process_wide_note(cfg, label), ""]
        left_out = _kernels_left_out(cfg, label)
        if left_out:
            out += [left_out, ""]
        out += [x for x in (render_target1(groups, macs, label, cfg.get("batch", 128), t1_depths),
                            render_fast_paths(groups, label),
                            render_target2(groups, label)) if x]
    if not _gpu_labels(speed):
        out += ["## Speed targets (issue 10): GPU", "",
                "No GPU timings of the current architecture are in benchmarks/results/: they await a GPU session "
                "(`python benchmarks/run_benchmarks.py --cuda --out-dir DIR` on the GPU machine, then copy DIR's "
                "JSON files into benchmarks/results/ and run `python benchmarks/run_benchmarks.py --render-only`).",
                ""]
    return "\n".join(out)


def _process_wide_note(cfg: Dict[str, Any], label: str = "cpu") -> str:
    """A sentence per kernel path of section ``label`` that the run had on process-wide (then 'MLAN' used them
    too), else ''."""
    return "".join(f" The {p.name} were on process-wide in this run (`{p.module.ENV_VAR}` or `enable_{p.option}`): "
                   "'MLAN' (the library fast path rows) ran them too, so those rows do not time the library path."
                   for p in _section_paths(label)
                   if (cfg.get(p.option) or {}).get("process_wide") and (cfg.get(p.option) or {}).get("available"))


def _fmt_share(share: float) -> str:
    return f"{100 * share:.1f}%"


def render_profiles(prof: Dict[str, Any]) -> str:
    out = ["## Where the time goes (torch.profiler)", "", f"Command: `{prof.get('command')}`", "",
           f"Machine: {prof.get('machine')}", "",
           "Top operators by self time per call of the timed function (one forward, or one train step, at the "
           "batch in each heading), grouped by input shape; 'share' is of the profiled total.", ""]
    for p in prof["profiles"]:
        kind = "train step" if p["train"] else "inference"
        out += [f"#### `{p['model']}` {p['device']} {kind} b{p['batch']}: {p['total_ms']:.1f} ms profiled total", "",
                "| operator | input shapes | calls | ms | share |", "|---|---|---|---|---|"]
        for r in p["rows"]:
            shapes = r["shapes"].replace("|", "/")
            out.append(f"| {r['op']} | `{shapes}` | {r['calls']} | {r['ms']:.2f} | {_fmt_share(r['share'])} |")
        out.append("")
    return "\n".join(out)


def _conv_shape(r: Dict[str, Any]) -> str:
    return (f"[{r['batch']}, {r['in_channels']}, {r['size']}, {r['size']}] -> {r['out_channels']}, "
            f"{r['kernel']}x{r['kernel']}")


def _fmt_ms3(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.3f}"


def conv_cost_ratios(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The ratios the conv-cost section reads: ``pairs`` (row of a C -> O conv with O < C, its forward time / the
    C -> C conv's on the same input, its MACs / that conv's), ``backward_few`` / ``backward_square`` (backward-data
    time / forward time of the O < C and the C -> C convs), ``backward_as_forward`` (aten's backward-data / the same
    values as a forward conv, O < C convs), ``matmul`` (1x1 forward / the same product as ``torch.bmm``), and for
    the rows with the compiled CPU kernels timed ``kernels_forward`` / ``kernels_backward_weight`` (the kernels'
    ``conv_same`` time / the forward time, ``conv_same_grad_weight`` time / aten's backward-weight time) and
    ``kernel_backends`` (PyTorch's conv backend of those rows, where recorded)."""
    few = [r for r in rows if r["out_channels"] < r["in_channels"]]
    kern = [r for r in rows if r.get("kernels_forward_ms") is not None]
    square = [r for r in rows if r["out_channels"] == r["in_channels"]]
    pairs = []
    for r in few:
        q = next((q for q in square if all(q[k] == r[k] for k in ("batch", "in_channels", "kernel", "size"))), None)
        if q is not None:
            pairs.append((r, r["forward_ms"] / q["forward_ms"], r["macs"] / q["macs"]))
    return dict(pairs=pairs, backward_few=[r["backward_data_ms"] / r["forward_ms"] for r in few],
                backward_square=[r["backward_data_ms"] / r["forward_ms"] for r in square],
                backward_as_forward=[r["backward_data_ms"] / r["backward_data_as_forward_ms"] for r in few],
                matmul=[r["forward_ms"] / r["matmul_ms"] for r in rows if r.get("matmul_ms")],
                kernels_forward=[r["kernels_forward_ms"] / r["forward_ms"] for r in kern],
                kernels_backward_weight=[r["kernels_backward_weight_ms"] / r["backward_weight_ms"] for r in kern
                                         if r.get("kernels_backward_weight_ms") is not None],
                kernel_backends=sorted({r["conv_backend"] for r in kern if r.get("conv_backend")}))


#: PyTorch's conv backends (``torch._C._ConvBackend`` names) in prose.
_BACKEND_NAMES = {"Mkldnn": "oneDNN", "Slow2d": "PyTorch's slow_conv2d", "Cudnn": "cuDNN"}


def _backends_phrase(backends: Sequence[str]) -> str:
    """' (oneDNN)' for the recorded backends of the compared convs, '' where none was recorded."""
    names = [_BACKEND_NAMES.get(b, b) for b in backends if b != "unknown"]
    return f" ({_join(names)})" if names else ""


def _kernels_vs_library(ratios: Dict[str, Any]) -> str:
    """'the compiled CPU kernels' conv_same takes ... of F.conv2d's time (oneDNN) and ...', or '' where not timed."""
    fwd, bw = ratios["kernels_forward"], ratios["kernels_backward_weight"]
    if not fwd:
        return ""
    return (f"the compiled CPU kernels' `conv_same` takes {_range(fwd)} times the forward time of PyTorch's conv"
            f"{_backends_phrase(ratios['kernel_backends'])} on the {len(fwd)} C -> O convs with O < C"
            + (f", and `conv_same_grad_weight` {_range(bw)} times the time of its backward-weight" if bw else ""))


def conv_cost_findings(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The sentences of the conv-cost section, each computed from ``rows`` (none where its rows are missing)."""
    ratios = conv_cost_ratios(rows)
    out = []
    pairs = [f"{r['in_channels']} -> {r['out_channels']} at {r['size']}x{r['size']}, {r['kernel']}x{r['kernel']}: "
             f"{tr:.2f} of the time for {mr:.2f} of the MACs" for r, tr, mr in ratios["pairs"]]
    if pairs:
        out.append("Forward time of each C -> O conv with O < C relative to the C -> C conv on the same input, beside "
                   "its MACs ratio O / C: " + "; ".join(pairs) + ".")
    few, sq = ratios["backward_few"], ratios["backward_square"]
    if few:
        out.append(f"The input gradient through aten's backward-data (what autograd runs) takes "
                   f"{_range(few)} times the forward time for the "
                   f"{len(few)} C -> O convs with O < C" + (f", and {_range(sq)} times for the {len(sq)} C -> C convs"
                                                            if sq else "") + ".")
        out.append(f"For those C -> O convs, aten's backward-data takes "
                   f"{_range(ratios['backward_as_forward'])} times the time "
                   "of the same values computed as a forward conv of the output gradient with the flipped, "
                   "transposed kernel.")
    mm = ratios["matmul"]
    if mm:
        out.append(f"The {len(mm)} 1x1 convs' forward takes {_range(mm)} times the time of the same product as a "
                   "batched matrix multiply (`torch.bmm`).")
    kernels = _kernels_vs_library(ratios)
    if kernels:
        out.append(kernels[0].upper() + kernels[1:] + ".")
    return out


def render_conv_costs(cc: Dict[str, Any]) -> str:
    """The conv-cost section from a ``mlan-bench --conv-costs`` report (rows under ``conv_costs``)."""
    cfg = cc.get("config", {})
    rows = cc["conv_costs"]
    kernels = any(r.get("kernels_forward_ms") is not None for r in rows)
    unavailable = _kernels_unavailable(cfg.get("cpu_kernels"))
    out = [f"## Why the attention costs more than its MACs: per-call conv costs ({cc.get('device', 'cpu')})", "",
           f"Command: `{cc.get('command')}`", "", f"Machine: {cc.get('machine')}", "",
           "One stride-1 'same' convolution per row, fp32, NCHW contiguous random tensors, no bias, each call timed "
           "under `torch.inference_mode`: forward `F.conv2d`; backward-data and backward-weight "
           "`torch.ops.aten.convolution_backward` with output mask [True, False, False] / [False, True, False] (what "
           "autograd runs); backward-data as forward conv `F.conv2d(grad, w.flip(2, 3).transpose(0, 1))` (same "
           "values, checked); for 1x1 kernels the forward as `torch.bmm` (same values, checked)"
           + ("; for the C -> O convs with O < C the compiled CPU kernels' (`mlan_timm.layers.cpu_kernels`) forward "
              "`conv_same(x, w)` and weight gradient `conv_same_grad_weight(x, grad, k)` (same values as `F.conv2d` "
              "and `torch.nn.grad.conv2d_weight`, checked)" if kernels else "")
           + ". MACs = "
           f"B·H·W·C·O·k²; GMAC/s of the forward. All cells interleaved over {cfg.get('rounds')} rounds "
           f"(blocked_autorange, min_run_time {cfg.get('min_run_time')} s, after {cfg.get('warmup')} warm-up "
           "call(s)); medians over rounds, in ms."
           + (f" {unavailable}: the compiled kernels' convs are not timed." if unavailable else ""), "",
           "| shape [B, C, H, W] -> O, kxk | MACs | forward ms | GMAC/s | backward-data ms | "
           "backward-data as forward conv ms | backward-weight ms | 1x1 as bmm ms |"
           + (" CPU kernels forward ms | CPU kernels backward-weight ms |" if kernels else ""),
           "|" + "---|" * (10 if kernels else 8)]
    for r in rows:
        out.append(f"| {_conv_shape(r)} | {_fmt_macs(r['macs'])} | {_fmt_ms3(r['forward_ms'])} | "
                   f"{r['gmacs_per_s']:.1f} | {_fmt_ms3(r['backward_data_ms'])} | "
                   f"{_fmt_ms3(r['backward_data_as_forward_ms'])} | {_fmt_ms3(r['backward_weight_ms'])} | "
                   f"{_fmt_ms3(r.get('matmul_ms'))} |"
                   + (f" {_fmt_ms3(r.get('kernels_forward_ms'))} | {_fmt_ms3(r.get('kernels_backward_weight_ms'))} |"
                      if kernels else ""))
    findings = conv_cost_findings(rows)
    return "\n".join(out + ([""] + [" ".join(findings)] if findings else []) + [""])


def _grid_ids(report: Dict[str, Any]):
    """The report's tables: ids of :func:`paper_grid` (reports before the paper tables used ``table3`` etc.)."""
    grid = paper_grid()
    datasets = report.get("datasets")
    if datasets is None:  # older reports: the datasets whose tables they measured
        datasets = sorted({grid[t.replace("table", "T")].dataset for t in report.get("grid_ids", [])
                           if t.replace("table", "T") in grid})
    return [tid for tid, t in grid.items() if t.dataset in datasets]


def _speed_timings(report: Dict[str, Any]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Device label (eager, and CUDA graphs) -> spec key -> timings, from the speed section (fills Tables 6/9's
    time columns: the paper's GPU times beside ours eager and with CUDA graphs)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    specs = report.get("speed_specs", {})
    for label, groups in (report.get("speed") or {}).items():
        if " " in label and label != TARGET3_GRAPHS:  # channels_last / compile variants stay in their sections
            continue
        for group, res in groups.items():
            for name, t in res.items():
                key = specs.get(group, {}).get(name)
                if key is not None:
                    out.setdefault(label, {})[key] = t
    return out


def render_report(report: Dict[str, Any], root: str = ".") -> str:
    """docs/benchmarks.md from a (merged) ``mlan-bench --paper-tables`` report."""
    acc = load_eval_results(root)
    grid = paper_grid()
    results = report["results"]
    cfg = report.get("config", {})
    timings = _speed_timings(report)
    lines = [
        "# Benchmarks: MLAN models vs the paper's comparison grids",
        "",
        "<!-- generated by mlan_timm/tools/bench/report.py from benchmarks/results/*.json; do not edit by hand -->",
        "Regenerate everything on CPU: `python benchmarks/run_benchmarks.py` (measures, then renders this file, "
        "merging any GPU results saved in benchmarks/results/); GPU results: `python benchmarks/run_benchmarks.py "
        "--cuda --out-dir DIR` on a GPU machine; re-render only: `python benchmarks/run_benchmarks.py --render-only`.",
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
        f"blocks (min_run_time {cfg.get('min_run_time')} s), eval mode under `torch.inference_mode` for inference; "
        "train step = forward + cross-entropy + backward + SGD step. On CPU, subnormal floats are flushed to zero "
        "(`torch.set_flush_denormal(True)`). Accuracy columns come from `mlan-eval --json` files (docs/results, "
        f"hub/*) on the full test split when present, else '{NOT_TRAINED}'. Paper columns come from "
        "`mlan_timm.paper_tables` ('—': the paper prints no value there); the paper truncates parameter counts to "
        "two decimals, so 'within paper's truncation' checks ours against [value, value + 0.01M).",
        "",
    ]
    speed = render_speed(report)
    if speed:
        lines += [speed]
    if report.get("profile"):
        lines += [render_profiles(report["profile"]), ""]
    if report.get("conv_costs"):
        lines += [render_conv_costs(report["conv_costs"]), ""]
    lines += ["## Paper grids", "", f"Command: `{report['command']}`", "",
              "Tables 6 and 9 print GPU times; the paper does not give the batch size (nor the GPU's settings) of "
              "those times, so they compare only within a column. Our time columns beside them are the speed "
              "section's medians (same runs as above).", ""]
    for tid in _grid_ids(report):
        lines += [render_paper_table(grid[tid], results, acc, timings, report["depths"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# README.md's speed summary: the same numbers as docs/benchmarks.md's speed sections, from the same helpers
# ----------------------------------------------------------------------------------------------------------------
#: README.md's generated block lies between a line starting with README_START (closed by '-->') and README_END.
README_START = "<!-- speed-summary:start"
README_END = "<!-- speed-summary:end -->"
README_START_LINE = (f"{README_START} (generated by python benchmarks/run_benchmarks.py --render-only; "
                     "do not edit) -->")
DOCS_MD = "docs/benchmarks.md"
README_WIDTH = 118
#: Joins the wrapper must not break (a continuation line starting with '+ ' would be a Markdown list item).
_NO_BREAK = (" + ", " -> ", " / ")


def _wrap(text: str, bullet: bool = False) -> str:
    for j in _NO_BREAK:
        text = text.replace(j, j.replace(" ", "\0"))
    out = textwrap.fill(text, README_WIDTH, initial_indent="- " if bullet else "",
                        subsequent_indent="  " if bullet else "", break_long_words=False, break_on_hyphens=False)
    return out.replace("\0", " ")


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _dataset_label(ds: str) -> str:
    return ds.upper().replace("CIFAR", "CIFAR-")


def _grid(groups: Sequence[str]):
    """(datasets, depths) when ``groups`` are exactly every combination of them, else None."""
    pairs = {_split_group(g) for g in groups}
    order = list(zoo.DATASETS)
    dss = sorted({d for d, _ in pairs}, key=lambda d: (order.index(d) if d in order else len(order), d))
    depths = sorted({n for _, n in pairs})
    return (dss, depths) if len(pairs) == len(dss) * len(depths) else None


def _datasets_phrase(datasets: Sequence[str]) -> str:
    if len(datasets) == len(zoo.DATASETS) == 2:
        return "both datasets"
    if len(datasets) == len(zoo.DATASETS) > 2:
        return f"all {len(datasets)} datasets"
    return _join([_dataset_label(d) for d in datasets])


def _group_list(groups: Sequence[str]) -> str:
    return _join([f"{_dataset_label(ds)} ResNet-{d}" for ds, d in map(_split_group, groups)])


def _target1_where(groups: Sequence[str]) -> str:
    grid = _grid(groups)
    if grid is None:
        return f"for {_group_list(groups)}"
    return f"for {_join([f'R{d}' for d in grid[1]])} on {_datasets_phrase(grid[0])}"


def _target2_where(groups: Sequence[str], all_depths: Sequence[int]) -> str:
    grid = _grid(groups)
    if grid is None:
        return f"in {_group_list(groups)}"
    dss, depths = grid
    if len(depths) == 1:
        at = f"at depth {depths[0]}"
    else:
        at = ("at every depth" if depths == sorted(all_depths) else "at depths") + f" ({'/'.join(map(str, depths))})"
    return f"{at} on {_datasets_phrase(dss)}"


def _target1_status(rows: Sequence[Dict[str, Any]]) -> str:
    """'is met', 'is not met', or per measure ('is met for inference and not met for the train step')."""
    status = []
    for kind, _, _ in TARGET1_MEASURES:
        v = [r for r in rows if r["kind"] == kind]
        if v:
            n = sum(r["met"] for r in v)
            status.append((kind, "met" if n == len(v) else "not met" if n == 0 else f"met in {n} of {len(v)} rows"))
    if all(s == "met" for _, s in status):
        return "is met"
    if all(s == "not met" for _, s in status):
        return "is not met"
    return "is " + _join([f"{s} for {'inference' if k == 'inference' else 'the ' + k}" for k, s in status])


def _target1_sentences(rows: Sequence[Dict[str, Any]], batch: Any) -> str:
    out, where0 = [], None
    for kind, _, factor in TARGET1_MEASURES:
        v = [r for r in rows if r["kind"] == kind]
        if not v:
            continue
        where = _target1_where([r["group"] for r in v])
        tr, over = _range([r["time_ratio"] for r in v], unit="x"), _range([r["over"] for r in v])
        if where0 is None:
            mr = [r["macs_ratio"] for r in v]
            macs = ("a MACs ratio of " if _range(mr, 3).count(" to ") == 0 else "MACs ratios of ") + _range(mr, 3)
            out.append(f"At batch {batch}, MLAN's {kind} takes {tr} its backbone's time {where}, against {macs}: "
                       f"time ratio / MACs ratio {over} (limit {factor}).")
            where0 = where
        else:
            out.append(f"Its {kind} takes {tr}" + (f" {where}" if where != where0 else "")
                       + f" ({over} times the MACs ratio; limit {factor}).")
    return " ".join(out)


def _target1_kernel_sentence(rows: Sequence[Dict[str, Any]], library: Sequence[Dict[str, Any]],
                             path: KernelPath = CPU_KERNEL_PATH) -> str:
    """Target 1 with a kernel path (``rows``; ``path``), after the library fast path's sentences (``library``): each
    measure's time ratio and time ratio / MACs ratio; where only when the groups differ from the library rows'."""
    parts = []
    for kind, _, factor in TARGET1_MEASURES:
        v = [r for r in rows if r["kind"] == kind]
        if not v:
            continue
        where = _target1_where([r["group"] for r in v])
        lib = [r["group"] for r in library if r["kind"] == kind]
        tr, over = _range([r["time_ratio"] for r in v], unit="x"), _range([r["over"] for r in v])
        parts.append((f"MLAN's {kind} takes {tr}" if not parts else f"its {kind} {tr}")
                     + (f" {where}" if not lib or where != _target1_where(lib) else "")
                     + f" ({over} times the MACs ratio; limit {factor})")
    return f"With the {path.name} (`?{path.option}=True`), {_join(parts)}." if parts else ""


def _profile_op(row: Dict[str, Any]):
    """(grouping key, description) of a profiler row: convolutions by kernel, channels and input size (the rows
    of one conv shape with and without bias are one group), other operators by name and input shapes."""
    op = row["op"]
    try:
        shapes = json.loads(row["shapes"])
    except ValueError:
        shapes = None
    if "convolution" in op and isinstance(shapes, list):
        backward = op.endswith("convolution_backward")
        x, w = (shapes[1:3] if backward else shapes[0:2]) if len(shapes) >= (3 if backward else 2) else ([], [])
        if len(x) == 4 and len(w) == 4:
            desc = (f"{'the backward of ' if backward else ''}the {w[2]}x{w[3]} convolutions {w[1]} -> {w[0]} at "
                    f"{x[2]}x{x[3]}")
            return desc, desc
    first = shapes[0] if isinstance(shapes, list) and shapes else row["shapes"]
    return (op, row["shapes"]), f"`{op}` on `{first}`"


def _profile_top(profile: Dict[str, Any], n: int = 2) -> str:
    """The ``n`` biggest shares of a profile, rows of one operator shape summed as 'a% + b%'."""
    groups: Dict[Any, Any] = {}
    for r in sorted(profile["rows"], key=lambda r: -r["share"]):
        key, desc = _profile_op(r)
        groups.setdefault(key, (desc, []))[1].append(r["share"])
    top = list(groups.values())[:n]
    return _join([f"{desc} ({' + '.join(map(_fmt_share, shares))})" for desc, shares in top])


def _profile_sentence(report: Dict[str, Any]) -> str:
    profiles = (report.get("profile") or {}).get("profiles") or []
    mlan = {spec.get("mlan"): g for g, spec in report.get("speed_specs", {}).items() if spec.get("mlan")}
    model = next((p["model"] for p in profiles if p["model"] in mlan), None) \
        or next((p["model"] for p in profiles if p["model"].startswith("mlan_")), None)
    if model is None:
        return ""
    name = f"MLAN-{_split_group(mlan[model])[1]}" if model in mlan else f"`{model}`"
    section = "The profiler section"
    if any(KERNELS in group for dev in (report.get("speed") or {}).values() for group in dev.values()):
        section += " (library fast path: the profiler sees no operators inside the CPU kernels' calls)"
    parts = []
    for train, kind in ((False, "inference"), (True, "the train step")):
        p = next((p for p in profiles if p["model"] == model and bool(p["train"]) == train and p["rows"]), None)
        if p is not None:
            parts.append(f"in {kind} {_profile_top(p)}")
    return f"{section} shows where {name}'s time goes: {'; '.join(parts)}." if parts else ""


def _target2_status(cases: Sequence[Dict[str, Any]]) -> str:
    """'is met everywhere', 'is not met', 'is met at batch 128, not everywhere at batch 1', ..."""
    met_n = sum(c["met"] for c in cases)
    if met_n == len(cases):
        return "is met everywhere"
    if met_n == 0:
        return "is not met"
    full, part, none = [], [], []
    for key, _, what in TIME_COLUMNS[1::-1]:
        v = [c["met"] for c in cases if c["batch"] == key]
        if v:
            (full if all(v) else none if not any(v) else part).append(what)
    if not full:
        return f"is met in {met_n} of {len(cases)} (dataset, depth, batch) cases"
    return (f"is met at {_join(full)}" + (f", not everywhere at {_join(part)}" if part else "")
            + (f", not at {_join(none)}" if none else ""))


def _closest_rival(cases: Sequence[Dict[str, Any]]) -> str:
    """'MLAN / SE 0.64 to 0.81': the range against the rival MLAN comes closest to (or exceeds) in ``cases``."""
    ratios = {name: [c["rivals"][name][1] for c in cases if c["rivals"][name] is not None]
              for _, name in TARGET2_RIVALS}
    timed = [n for n in ratios if ratios[n]]
    if not timed:
        return "no rival timed"
    name = max(timed, key=lambda n: max(ratios[n]))
    return f"MLAN / {name} {_range(ratios[name])}"


def _target2_exceptions(cases: Sequence[Dict[str, Any]]) -> str:
    """Per batch, the rivals MLAN is not faster than, where, and MLAN / rival; cases lacking a rival's time."""
    out = []
    for key, _, what in TIME_COLUMNS[1::-1]:
        bad = [c for c in cases if c["batch"] == key and not c["met"]]
        if not bad:
            continue
        per_rival = []
        for _, name in TARGET2_RIVALS:
            hit = [c for c in bad if name in c["slower"]]
            if not hit:
                continue
            by_ds: Dict[str, List[str]] = {}
            for c in hit:
                ds, depth = _split_group(c["group"])
                by_ds.setdefault(ds, []).append(f"ResNet-{depth} ({c['rivals'][name][1]:.2f})")
            verb = "slower than" if all(c["rivals"][name][1] > 1 for c in hit) else "not faster than"
            per_rival.append(f"{verb} {name} " + " and ".join(f"on {_dataset_label(ds)} {_join(v)}"
                                                               for ds, v in by_ds.items()))
        missing = [c["group"] for c in bad if not c["slower"]]
        parts = ([f"it is {', and '.join(per_rival)}"] if per_rival else []) \
            + ([f"a rival's time is missing for {_group_list(missing)}"] if missing else [])
        out.append(f"at {what} " + ", and ".join(parts))
    return "; ".join(out)


def _target2_sentences(cases: Sequence[Dict[str, Any]], all_depths: Sequence[int], subject: str = "MLAN") -> str:
    rivals = _join([name for _, name in TARGET2_RIVALS])
    full = []
    for key, _, what in TIME_COLUMNS[1::-1]:
        v = [c for c in cases if c["batch"] == key]
        if v and all(c["met"] for c in v):
            full.append((what, v))
    met_n, total = sum(c["met"] for c in cases), len(cases)
    exceptions = _target2_exceptions(cases)
    start = f"{subject} is faster than {rivals} in the same multi-level structure"
    if full:
        wheres = [_target2_where([c["group"] for c in v], all_depths) for _, v in full]
        if len(set(wheres)) == 1:
            text = f"{start} {wheres[0]} " + " and ".join(f"at {what} ({_closest_rival(v)})" for what, v in full)
        else:
            text = f"{start} " + " and ".join(f"{w} at {what} ({_closest_rival(v)})"
                                              for w, (what, v) in zip(wheres, full))
        return text + (f", and in {met_n} of {total} (dataset, depth, batch) cases overall: {exceptions}."
                       if exceptions else ".")
    ranges = "; ".join(f"{_closest_rival(v)} at {what}" for key, _, what in TIME_COLUMNS[1::-1]
                       for v in [[c for c in cases if c["batch"] == key]] if v)
    return f"{start} in {met_n} of {total} (dataset, depth, batch) cases ({ranges}): {exceptions}."


_FAST_PATH_MEASURES = (("b128", "batch-128 inference", "at batch 128"), ("train", "train step", "in the train step"),
                       ("b1", "batch-1 inference", "at batch 1"))


def _fast_path_sentence(speed: Dict[str, Any], kernels: Optional[KernelPath] = None) -> str:
    """The fast path against its reference (MLAN's rows of :func:`fast_path_rows`) in words; ``kernels``: that
    kernel path against the library fast path (:data:`KERNEL_PAIRS`) instead."""
    pairs = (KERNEL_PAIRS[KERNEL_PATHS.index(kernels)],) if kernels else FAST_PATH_PAIRS
    rows = [r for r in fast_path_rows(speed, pairs) if r["fast"] == pairs[0][0]]
    name = pairs[0][2]
    subject, verb, slower, over = ((f"The {kernels.name} (`?{kernels.option}=True`)", "speed up", "are slower than the "
                                    "library fast path", " over the library fast path") if kernels else
                                   ("The fast path", "speeds up", "is slower than the reference", ""))
    speed_up = (f"the {kernels.name}' speed-up (library fast path time / kernels time)" if kernels else
                "the fast path's speed-up (reference time / fast time)")
    up, down, mixed = [], [], []
    for key, what, where in _FAST_PATH_MEASURES:
        ups = [r["cells"][key][2] for r in rows if r["cells"][key] is not None]
        if not ups:
            continue
        rng = _range(ups, unit="x")
        if min(ups) > 1:
            up.append(f"{name}'s {what} {rng}" if not up else f"its {what} {rng}")
        elif max(ups) < 1:
            down.append(f"{where} ({rng})")
        else:
            mixed.append(f"{where} {speed_up} is {rng}, above 1 in {sum(u > 1 for u in ups)} of {len(ups)} groups")
    if not (up or down or mixed):
        return ""
    main = []
    if up:
        main.append(f"{verb} {_join(up)}{over}")
    if down:
        main.append(("but " if up else "") + f"{slower} {_join(down)}")
    text = f"{subject} {', '.join(main)}." if main else ""
    for m in mixed:
        text += (" " if text else "") + m[0].upper() + m[1:] + "."
    return text


def _conv_costs_sentence(cc: Dict[str, Any]) -> str:
    r = conv_cost_ratios(cc["conv_costs"])
    parts = []
    if r["pairs"]:
        parts.append(f"on the same input, a C -> O conv with O < C takes {_range([p[1] for p in r['pairs']])} of "
                     f"the forward time of the C -> C conv for {_range([p[2] for p in r['pairs']])} of its MACs")
    if r["backward_few"]:
        sq = r["backward_square"]
        parts.append(f"aten's backward-data (the input gradient autograd computes) of the O < C convs takes "
                     f"{_range(r['backward_few'])} times their forward time"
                     + (f", against {_range(sq)} for the C -> C convs" if sq else ""))
    kernels = _kernels_vs_library(r)
    if kernels:
        parts.append(kernels)
    batch = cc.get("config", {}).get("batch")
    return (f"\"Why the attention costs more than its MACs\" ({DOCS_MD}) times single convs of MLAN's and the "
            f"backbone's shapes{f' at batch {batch}' if batch else ''}" + (": " + "; ".join(parts) if parts else "")
            + ".")


def _device_phrase(machine: str, label: str) -> str:
    if label.startswith("cuda"):
        m = re.search(r"GPU: ([^;]+)", machine or "")
        return m.group(1).strip() if m else "GPU"
    m = re.search(r"(\d+) cores", machine or "")
    return f"{m.group(1)}-core CPU" if m else "CPU"


def _gpu_sentence(report: Dict[str, Any]) -> str:
    speed = report.get("speed") or {}
    labels = _gpu_labels(speed)
    if not labels:
        return ("GPU numbers for this architecture (target 3) await a GPU session; the paper's Table 6/9 GPU times "
                "are shown beside ours, and the paper does not give their batch size.")
    label = "cuda" if "cuda" in labels else labels[0]
    src = _speed_source(report, label)
    parts = []
    rows3 = target3_rows(speed, _batches(report))
    verdict = target3_verdict(rows3)
    if rows3 and verdict is None:
        parts.append("target 3's CUDA-graph timings are missing")
    elif rows3:
        def ratios(model: str, variant: str) -> List[float]:
            return [r["ratio"] for r in rows3 if r["label"] == variant and r["model"] == model
                    and r["ratio"] is not None]

        graphs = [r for r in rows3 if r["label"] == TARGET3_GRAPHS and r["model"] == "mlan" and r["ratio"] is not None]
        eager = ratios("mlan", "cuda")
        batches = _join([str(b) for b in sorted({r["batch"] for r in graphs})])
        parts.append(f"target 3 {'is met' if verdict else 'is not met'}: with CUDA graphs MLAN-20 takes "
                     f"{_range([r['ratio'] for r in graphs], unit='x')} its backbone's time at batch {batches} "
                     f"(limit {TARGET3_LIMIT}x" + (f"; eager {_range(eager, unit='x')})" if eager else ")"))
        for p in KERNEL_PATHS:  # a kernel path timed with CUDA graphs (the GPU kernels)
            kverdict, keager = target3_verdict(rows3, p.label), ratios(p.label, "cuda")
            if kverdict is not None:
                parts.append(f"with the {p.name} (`?{p.option}=True`) target 3 {'is met' if kverdict else 'is not met'}"
                             f": {_range(ratios(p.label, TARGET3_GRAPHS), unit='x')} with CUDA graphs"
                             + (f" (eager {_range(keager, unit='x')})" if keager else ""))
    t1_depths = _speed_source(report, label).get("config", {}).get("target1_depths")
    t1 = [r for r in target1_rows(speed[label], report.get("speed_macs", {}), t1_depths) if r["model"] == "mlan"]
    if t1:
        overs = "; ".join(f"{_range([r['over'] for r in t1 if r['kind'] == kind])} for "
                          f"{'inference' if kind == 'inference' else 'the ' + kind} (limit {factor})"
                          for kind, _, factor in TARGET1_MEASURES if any(r["kind"] == kind for r in t1))
        parts.append(f"target 1{' in eager mode' if label == 'cuda' else ''} {_target1_status(t1)} "
                     f"(time ratio / MACs ratio {overs})")
    variant_names = {"cuda": "in eager mode", "cuda channels_last": "with channels_last",
                     TARGET3_GRAPHS: "with CUDA graphs"}
    t2 = [(lbl, target2_cases(speed[lbl])) for lbl in [label] + [lbl for lbl in labels if lbl != label]]
    t2 = [(lbl, cases) for lbl, cases in t2 if cases]
    if t2:  # every GPU variant's verdict: eager and CUDA graphs can differ
        parts.append("target 2: " + "; ".join(
            f"{variant_names.get(lbl, repr(lbl))} it {_target2_status(cases)} (MLAN faster than all four in "
            f"{sum(c['met'] for c in cases)} of {len(cases)} (dataset, depth, batch) cases"
            + (f"; {_target2_exceptions(cases)}" if not all(c['met'] for c in cases) else "") + ")"
            for lbl, cases in t2))
    others = [lbl for lbl in labels if lbl != label]
    return (f"GPU ({_device_phrase(src.get('machine'), label)}, '{label}' in {DOCS_MD}): "
            + ("; ".join(parts) if parts else "timed, no target rows")
            + (f"; also timed there: {_join([repr(o) for o in others])}" if others else "") + ".")


def render_readme_summary(report: Dict[str, Any], label: Optional[str] = None) -> str:
    """README.md's speed summary (between :data:`README_START` and :data:`README_END`) from a (merged) report:
    the targets, profiler, fast-path, conv-cost and GPU numbers of docs/benchmarks.md, computed by the helpers that
    render those sections (:func:`target1_rows`, :func:`target2_cases`, :func:`fast_path_rows`,
    :func:`conv_cost_ratios`). Where the run timed MLAN with the kernel path of the summarised section's device
    (the compiled CPU kernels, :data:`KERNELS`, on CPU; the GPU kernels on CUDA), targets 1 and 2 are stated for the
    library fast path and for the kernels, and the kernels' speed-up over the library fast path follows the fast
    path's; where it left them out (kernels unavailable), a bullet says why. ``label``: the speed-section label
    summarised (default 'cpu')."""
    speed = report.get("speed") or {}
    if label is None:
        label = "cpu" if "cpu" in speed else next((lbl for lbl in speed if " " not in lbl), next(iter(speed), None))
    if label is None:
        return (f"Current numbers ({DOCS_MD}): no speed results in benchmarks/results/ yet "
                "(`python benchmarks/run_benchmarks.py` measures them).")
    groups, src = speed[label], _speed_source(report, label)
    cfg = src.get("config", {})
    rounds = f"medians of {cfg['rounds']} rounds" if cfg.get("rounds") else "medians over rounds"
    if _has_rounds(groups):
        rounds += ", ratios medians of per-round ratios"
    head = (f"Current numbers ({DOCS_MD}; {_device_phrase(src.get('machine'), label)}, fp32, random weights, each "
            f"depth's models timed interleaved, {rounds}; the targets: MLAN's time ratio to its backbone at most "
            f"{TARGET1_INFER}x (inference) / {TARGET1_TRAIN}x (train step) its MACs ratio, and MLAN faster than "
            "every other attention in the same structure):")
    bullets = []
    kpath = next(iter(_section_paths(label)), CPU_KERNEL_PATH)  # the kernel path of this section's device
    rows = target1_rows(groups, report.get("speed_macs", {}))
    t1, k1 = [r for r in rows if r["model"] == "mlan"], [r for r in rows if r["model"] == kpath.label]
    profile = _profile_sentence(report)
    if t1 or k1:
        status = (f"{_target1_status(t1)} with the library fast path; with the {kpath.name} it {_target1_status(k1)}"
                  if k1 and t1 else f"{_target1_status(t1)}" if t1 else f"{_target1_status(k1)} with the {kpath.name}")
        text = " ".join(x for x in (_target1_sentences(t1, cfg.get("batch", 128)) if t1 else "",
                                    _target1_kernel_sentence(k1, t1, kpath), profile) if x)
        bullets.append(f"**Target 1 {status}.** {text}")
    elif profile:
        bullets.append(profile)
    cases, kcases = target2_cases(groups), target2_cases(groups, kpath.label)
    all_depths = sorted({_split_group(g)[1] for g in groups})
    if cases and kcases:
        bullets.append(f"**Target 2 {_target2_status(cases)} with the library fast path; with the {kpath.name} it "
                       f"{_target2_status(kcases)}.** {_target2_sentences(cases, all_depths)} "
                       + _target2_sentences(kcases, all_depths,
                                            f"With the {kpath.name} (`?{kpath.option}=True`), MLAN"))
    elif cases:
        bullets.append(f"**Target 2 {_target2_status(cases)}.** {_target2_sentences(cases, all_depths)}")
    for fast in (_fast_path_sentence(groups), _fast_path_sentence(groups, kernels=kpath),
                 _kernels_left_out(cfg, label)):
        if fast:
            bullets.append(fast)
    if report.get("conv_costs"):
        bullets.append(_conv_costs_sentence(report["conv_costs"]))
    bullets.append(_gpu_sentence(report))
    return "\n".join([_wrap(head), ""] + [_wrap(b, bullet=True) for b in bullets])


def readme_summary_span(text: str):
    """(start, end) offsets of the text between README.md's speed-summary markers (after the start marker's
    '-->', up to the end marker); ValueError when the markers are missing, repeated or out of order."""
    i = text.find(README_START)
    j = text.find("-->", i + len(README_START)) if i >= 0 else -1
    k = text.find(README_END, j) if j >= 0 else -1
    if k < 0 or text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"no speed-summary block: it needs one '{README_START_LINE}' line and one "
                         f"'{README_END}' line after it")
    return j + len("-->"), k


def replace_readme_summary(text: str, summary: str) -> str:
    """``text`` with the block between the speed-summary markers replaced by ``summary``; the markers and
    everything outside them are kept byte for byte."""
    a, b = readme_summary_span(text)
    return f"{text[:a]}\n\n{summary.strip()}\n\n{text[b:]}"
