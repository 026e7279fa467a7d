"""Reporting for mlan-bench: Markdown from measured reports (``benchmarks/results/*.json``), paper columns from
:mod:`mlan_timm.paper_tables`, accuracy from ``mlan-eval --json`` files.

Every sentence here that interprets a number is generated from the numbers; explanations of *why* a number is what
it is belong in hand-written docs (docs/training.md, docs/architecture.md), not in this generator.
"""
import glob
import json
import os
from typing import Any, Dict, Optional, Sequence

from ... import paper_tables, zoo
from .measure import PaperTable, Spec, paper_grid, parse_spec, variant_spec

__all__ = ['NOT_TRAINED', 'NOT_MEASURED', 'CIFAR_TEST_IMAGES', 'TARGETS', 'load_eval_results', 'render_results_table',
           'render_paper_table', 'render_ratios', 'render_profiles', 'render_fast_paths', 'render_report']

NOT_TRAINED = "not trained yet"
NOT_MEASURED = "not measured"
CIFAR_TEST_IMAGES = 10_000  # size of the CIFAR-10 / CIFAR-100 test split

TARGETS = (
    # (description, numerator, denominator, column, max ratio): the project's speed targets
    ("MLAN inference b128 vs backbone", "mlan (sma)", "backbone", "infer_b128_ms", 1.25),
    ("MLAN train step b128 vs backbone", "mlan (sma)", "backbone", "train_step_b128_ms", 1.5),
    ("MLAN (sma) vs CBAM multi-level, inference b128", "mlan (sma)", "cbam multi-level", "infer_b128_ms", 1.0),
    ("MLAN (sma) vs TA multi-level, inference b128", "mlan (sma)", "ta multi-level", "infer_b128_ms", 1.0),
    ("MLAN (sma) vs GC multi-level, inference b128", "mlan (sma)", "gc multi-level", "infer_b128_ms", 1.0),
)


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
                       devices: Sequence[str], depths: Sequence[int] = tuple(zoo.DEPTHS)) -> str:
    """One paper table: our params / MACs (/ timings) / top-1 beside the paper's values for each row."""
    ds = table.dataset
    has_params = "params_M" in table.metrics
    cols = ["depth", "variant", "model", "params"]
    if has_params:
        cols += ["paper params", "within paper's truncation"]
    cols += ["MACs/img"]
    if table.timed:
        for d in devices:
            cols += [f"{d} b1 ms", f"{d} b128 ms", f"{d} train b128 ms"]
        cols += ["paper GPU ms"]
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
                for d in devices:
                    t = rec.get(d, {}) if ok else {}
                    row += [_fmt_ms(t.get("latency_b1_ms")), _fmt_ms(t.get("infer_b128_ms")),
                            _fmt_ms(t.get("train_step_b128_ms"))]
                row += [_paper(ds, var, depth, "gpu_ms", "{:g}")]
            row += [_top1(acc, spec.key), _paper(ds, var, depth, "top1", "{:.2f}")]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def _ratio(res, num, den, col) -> Optional[float]:
    if num in res and den in res and col in res[num] and col in res[den]:
        return res[num][col] / res[den][col]
    return None


def render_ratios(ratios: Dict[str, Dict[str, Dict[str, float]]], specs: Dict[str, Spec],
                  sources: Optional[Dict[str, str]] = None, macs: Optional[Dict[str, int]] = None) -> str:
    """``ratios``: device/variant label -> model label -> timings (ms); ``macs``: model label -> MACs."""
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
        ri = _ratio(res, "mlan (sma)", "backbone", "infer_b128_ms")
        rt = _ratio(res, "mlan (sma)", "backbone", "train_step_b128_ms")
        if ri is not None and rt is not None:
            sentence = (f"On {dev}, MLAN (sma) takes {ri:.2f}x the backbone's batch-128 inference time and "
                        f"{rt:.2f}x its train-step time")
            if macs and macs.get("mlan (sma)") and macs.get("backbone"):
                sentence += f", for {100 * (macs['mlan (sma)'] / macs['backbone'] - 1):+.1f}% MACs"
            out += ["", sentence + "."]
        out += ["", "| target | measured ratio | limit | met |", "|---|---|---|---|"]
        for desc, num, den, col, lim in TARGETS:
            r = _ratio(res, num, den, col)
            if r is not None:
                met = "yes" if (r <= lim if lim != 1.0 else r < 1.0) else "no"
                cmp_ = f"≤ {lim}" if lim != 1.0 else "< 1 (faster)"
                out.append(f"| {desc} | {r:.3f} | {cmp_} | {met} |")
        out.append("")
    return "\n".join(out)


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


def render_fast_paths(fp: Dict[str, Any]) -> str:
    """A before/after section from a ``benchmarks/fast_path_speedup.py --out`` JSON."""
    dev = "cuda" if "GPU:" in str(fp.get("machine")) else "cpu"
    lines = [f"## Fast paths: before/after ({dev})", ""]
    if fp.get("description"):
        lines += [fp["description"], ""]
    lines += [f"Command: `{fp.get('command')}`", "", f"Machine: {fp.get('machine')}", "",
              "| model | reference b128 ms | fast b128 ms | speed-up | reference train ms | fast train ms | "
              "speed-up |", "|---|---|---|---|---|---|---|"]
    for key, r in fp.get("results", {}).items():
        ri, fi = r["reference"]["infer_b128_ms"], r["fast"]["infer_b128_ms"]
        rt, ft = r["reference"]["train_step_b128_ms"], r["fast"]["train_step_b128_ms"]
        lines.append(f"| `{key}` | {ri:.2f} | {fi:.2f} | {ri / fi:.2f}x | {rt:.2f} | {ft:.2f} | {rt / ft:.2f}x |")
    return "\n".join(lines + [""])


def _grid_ids(report: Dict[str, Any]):
    """The report's tables: ids of :func:`paper_grid` (reports before the paper tables used ``table3`` etc.)."""
    grid = paper_grid()
    datasets = report.get("datasets")
    if datasets is None:  # older reports: the datasets whose tables they measured
        datasets = sorted({grid[t.replace("table", "T")].dataset for t in report.get("grid_ids", [])
                           if t.replace("table", "T") in grid})
    return [tid for tid, t in grid.items() if t.dataset in datasets]


def render_report(report: Dict[str, Any], root: str = ".") -> str:
    """docs/benchmarks.md from a (merged) ``mlan-bench --paper-tables`` report."""
    acc = load_eval_results(root)
    grid = paper_grid()
    devices = report["devices"]
    results = report["results"]
    cfg = report.get("config", {})
    lines = [
        "# Benchmarks: MLAN models vs the paper's comparison grids",
        "",
        "<!-- generated by mlan_timm/tools/bench/report.py from benchmarks/results/*.json; do not edit by hand -->",
        "Regenerate everything: `python benchmarks/run_benchmarks.py` (CPU measurements, then rendering that merges "
        "the saved GPU results in benchmarks/results/); GPU results: `python benchmarks/run_benchmarks.py --cuda "
        "--out-dir DIR` on a GPU machine; re-render only: `python benchmarks/run_benchmarks.py --render-only`.",
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
        f"batch {cfg.get('batch')} for the 'b128' columns. Accuracy columns come from `mlan-eval --json` files "
        f"(docs/results, hub/*) on the full test split when present, else '{NOT_TRAINED}'. Paper columns come from "
        "`mlan_timm.paper_tables` ('—': the paper prints no value there); the paper truncates parameter counts to "
        "two decimals, so 'within paper's truncation' checks ours against [value, value + 0.01M).",
        "",
    ]
    rspecs = {k: parse_spec(v) for k, v in report.get("ratio_specs", {}).items()}
    if report.get("ratios"):
        depth = zoo.parse_model_name(rspecs["backbone"].model).depth if "backbone" in rspecs else None
        lines += [f"## Speed ratios (ResNet-{depth}, CIFAR-10 widths)", "",
                  f"Interleaved measurement: {cfg.get('ratio_rounds')} rounds, each timing every model once "
                  f"(blocked_autorange, min_run_time {cfg.get('ratio_min_run_time')} s); the table shows the median "
                  "over rounds. Targets: " + "; ".join(
                      f"{desc} {'< 1' if lim == 1.0 else f'≤ {lim}'}" for desc, _, _, _, lim in TARGETS) + ".", ""]
        macs = report.get("ratio_macs") or {label: results.get(s.key, {}).get("macs") for label, s in rspecs.items()}
        lines.append(render_ratios(report["ratios"], rspecs, report.get("ratio_sources"), macs))
    for fp in report.get("fast_paths", []):
        lines.append(render_fast_paths(fp))
    if report.get("profile"):
        lines += [render_profiles(report["profile"]), ""]
    lines += ["## Paper grids", ""]
    for tid in _grid_ids(report):
        lines += [render_paper_table(grid[tid], results, acc, devices, report["depths"]), ""]
    extra = sorted({k for rec in results.values() for k in rec if k.startswith(("cpu_", "cuda_"))})
    if extra:
        lines += ["## Other device variants", ""]
        sub = {k: {d: rec[d] for d in extra if d in rec} | {"params": rec.get("params"), "macs": rec.get("macs")}
               for k, rec in results.items() if any(d in rec for d in extra)}
        lines += [render_results_table(sub, extra), ""]
    return "\n".join(lines)
