"""Reporting for mlan-bench: Markdown from measured reports (``benchmarks/results/*.json``), paper columns from
:mod:`mlan_timm.paper_tables`, accuracy from ``mlan-eval --json`` files.

Every sentence here that interprets a number is generated from the numbers; explanations of *why* a number is what
it is belong in hand-written docs (docs/training.md, docs/architecture.md), not in this generator.
"""
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from ... import paper_tables, zoo
from .measure import PaperTable, Spec, paper_grid, variant_spec

__all__ = ['NOT_TRAINED', 'NOT_MEASURED', 'CIFAR_TEST_IMAGES', 'TARGET1_INFER', 'TARGET1_TRAIN', 'TARGET2_RIVALS',
           'load_eval_results', 'render_results_table', 'render_paper_table', 'render_target1', 'render_fast_paths',
           'render_target2', 'render_speed', 'render_profiles', 'conv_cost_findings', 'render_conv_costs',
           'render_report']

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
TIME_COLUMNS = (("b1", "latency_b1_ms", "batch 1"), ("b128", "infer_b128_ms", "batch 128"),
                ("train", "train_step_b128_ms", "train step b128"))


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


def _range(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f} to {hi:.2f}"


def render_target1(speed: Dict[str, Dict[str, Dict[str, float]]], macs: Dict[str, Dict[str, Optional[int]]],
                   label: str, batch: Any = 128) -> str:
    """Target 1 rows (groups with a backbone and MLAN train step): time ratio beside MACs ratio and the limit."""
    rows, verdicts = [], {"inference": [], "train step": []}
    for group, res in speed.items():
        m = macs.get(group, {})
        if "train_step_b128_ms" not in res.get("mlan", {}) or not m.get("mlan") or not m.get("backbone"):
            continue
        mr = m["mlan"] / m["backbone"]
        for kind, col, factor in (("inference", "infer_b128_ms", TARGET1_INFER),
                                  ("train step", "train_step_b128_ms", TARGET1_TRAIN)):
            b, t = res.get("backbone", {}).get(col), res["mlan"].get(col)
            if b is None or t is None:
                continue
            tr = t / b
            met = tr <= factor * mr
            verdicts[kind].append((met, tr / mr))
            rows.append(f"| {_group_name(group)} | {kind} | {_fmt_ms(b)} | {_fmt_ms(t)} | {tr:.2f} | {mr:.3f} | "
                        f"≤ {factor * mr:.2f} ({factor} x MACs ratio) | {tr / mr:.2f} | {'yes' if met else 'no'} |")
    if not rows:
        return ""
    out = [f"### Target 1 ({label}): MLAN vs its backbone, batch {batch} fp32", "",
           "| dataset | depth | measure | backbone ms | MLAN ms | time ratio | MACs ratio | limit | "
           "time ratio / MACs ratio | met |", "|---|---|---|---|---|---|---|---|---|---|"] + rows + [""]
    for (kind, v), factor in zip(verdicts.items(), (TARGET1_INFER, TARGET1_TRAIN)):
        if v:
            out.append(f"- {kind}: met in {sum(m for m, _ in v)} of {len(v)} rows; time ratio / MACs ratio "
                       f"{_range([r for _, r in v])} (limit {factor}).")
    return "\n".join(out + [""])


def render_fast_paths(speed: Dict[str, Dict[str, Dict[str, float]]], label: str) -> str:
    """The fast-path A/B rows: each fast model beside its reference (``?fast_paths=False``), same interleaved run."""
    rows, ups = [], []
    for group, res in speed.items():
        for fast, ref, name in FAST_PATH_PAIRS:
            if fast not in res or ref not in res:
                continue
            cells = []
            for _, col, _ in TIME_COLUMNS:
                r, f = res[ref].get(col), res[fast].get(col)
                if r is None or f is None:
                    cells += ["—", "—", "—"]
                else:
                    cells += [_fmt_ms(r), _fmt_ms(f), f"{r / f:.2f}x"]
                    ups.append(r / f)
            rows.append(f"| {_group_name(group)} | {name} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    head = " | ".join(f"reference {w} ms | fast {w} ms | speed-up" for _, _, w in TIME_COLUMNS)
    return "\n".join([f"### Fast paths ({label}): reference (`?fast_paths=False`) vs fast, same interleaved run", "",
                      f"| dataset | depth | model | {head} |", "|" + "---|" * (3 + 3 * len(TIME_COLUMNS))] + rows
                     + ["", f"Speed-up (reference time / fast time) {_range(ups)} over these {len(ups)} cells.", ""])


def render_target2(speed: Dict[str, Dict[str, Dict[str, float]]], label: str) -> str:
    """Target 2: MLAN's time beside SE, CBAM, TA and GC in the same multi-level structure, batch 1 and 128."""
    out, total, met_n, slower = [], 0, 0, {name: 0 for _, name in TARGET2_RIVALS}
    for _, col, what in TIME_COLUMNS[:2]:
        rows = []
        for group, res in speed.items():
            t = res.get("mlan", {}).get(col)
            if t is None:
                continue
            cells, ok = [], True
            for key, name in TARGET2_RIVALS:
                o = res.get(key, {}).get(col)
                if o is None:
                    cells += ["—", "—"]
                    ok = False
                    continue
                cells += [_fmt_ms(o), f"{t / o:.2f}"]
                if t >= o:
                    ok = False
                    slower[name] += 1
            total += 1
            met_n += ok
            rows.append(f"| {_group_name(group)} | {_fmt_ms(t)} | " + " | ".join(cells)
                        + f" | {'yes' if ok else 'no'} |")
        if rows:
            head = " | ".join(f"{name} ms | MLAN / {name}" for _, name in TARGET2_RIVALS)
            out += [f"#### {what} inference", "", f"| dataset | depth | MLAN ms | {head} | MLAN fastest |",
                    "|" + "---|" * (4 + 2 * len(TARGET2_RIVALS))] + rows + [""]
    if not out:
        return ""
    lose = ", ".join(f"{name} in {n}" for name, n in slower.items() if n) or "none"
    return "\n".join([f"### Target 2 ({label}): MLAN vs the other attentions in the same multi-level structure", ""]
                     + out + [f"MLAN is faster than all four in {met_n} of {total} (dataset, depth, batch) cases; "
                              f"it is not faster than: {lose}.", ""])


def render_speed(report: Dict[str, Any]) -> str:
    """Issue 10's targets 1 and 2 (and the fast-path A/B) for every device/variant of the report's speed section."""
    speed = report.get("speed") or {}
    if not speed:
        return ""
    sources = report.get("speed_sources", {})
    macs = report.get("speed_macs", {})
    out = []
    for label, groups in speed.items():
        src = sources.get(label) or dict(command=report.get("command"), machine=report.get("machine"),
                                         config=report.get("config", {}))
        cfg = src.get("config", {})
        b1 = cfg.get("b1_depths")
        out += [f"## Speed targets (issue 10): {label}", "", f"Command: `{src.get('command')}`", "",
                f"Machine: {src.get('machine')}", "",
                f"Each (dataset, depth) group's models are timed interleaved: {cfg.get('rounds')} rounds, each "
                f"timing every model once per measure (blocked_autorange, min_run_time {cfg.get('min_run_time')} s, "
                f"after {cfg.get('warmup')} warm-up call(s)); tables show the median over rounds. Batch "
                f"{cfg.get('batch')} for 'batch 128' / 'b128' and the train step; fp32; random weights."
                + (f" Batch-1 timings at depths {', '.join(map(str, b1))} only." if b1 is not None
                   and sorted(b1) != sorted({_split_group(g)[1] for g in groups}) else ""), ""]
        out += [x for x in (render_target1(groups, macs, label, cfg.get("batch", 128)),
                            render_fast_paths(groups, label),
                            render_target2(groups, label)) if x]
    if not any(lbl.startswith("cuda") for lbl in speed):
        out += ["## Speed targets (issue 10): GPU", "",
                "No GPU timings of the current architecture are in benchmarks/results/: they await a GPU session "
                "(`python benchmarks/run_benchmarks.py --cuda --out-dir DIR` on the GPU machine, then copy DIR's "
                "JSON files into benchmarks/results/ and run `python benchmarks/run_benchmarks.py --render-only`).",
                ""]
    return "\n".join(out)


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
            out.append(f"| {r['op']} | `{shapes}` | {r['calls']} | {r['ms']:.2f} | {100 * r['share']:.1f}% |")
        out.append("")
    return "\n".join(out)


def _conv_shape(r: Dict[str, Any]) -> str:
    return (f"[{r['batch']}, {r['in_channels']}, {r['size']}, {r['size']}] -> {r['out_channels']}, "
            f"{r['kernel']}x{r['kernel']}")


def _fmt_ms3(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.3f}"


def conv_cost_findings(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The sentences of the conv-cost section, each computed from ``rows`` (none where its rows are missing)."""
    few = [r for r in rows if r["out_channels"] < r["in_channels"]]
    square = [r for r in rows if r["out_channels"] == r["in_channels"]]
    out = []
    pairs = []
    for r in few:
        q = next((q for q in square if all(q[k] == r[k] for k in ("batch", "in_channels", "kernel", "size"))), None)
        if q is not None:
            pairs.append(f"{r['in_channels']} -> {r['out_channels']} at {r['size']}x{r['size']}, "
                         f"{r['kernel']}x{r['kernel']}: {r['forward_ms'] / q['forward_ms']:.2f} of the time for "
                         f"{r['macs'] / q['macs']:.2f} of the MACs")
    if pairs:
        out.append("Forward time of each C -> O conv with O < C relative to the C -> C conv on the same input, beside "
                   "its MACs ratio O / C: " + "; ".join(pairs) + ".")
    if few:
        sq = [r["backward_data_ms"] / r["forward_ms"] for r in square]
        out.append(f"The input gradient through aten's backward-data (what autograd runs) takes "
                   f"{_range([r['backward_data_ms'] / r['forward_ms'] for r in few])} times the forward time for the "
                   f"{len(few)} C -> O convs with O < C" + (f", and {_range(sq)} times for the {len(sq)} C -> C convs"
                                                            if sq else "") + ".")
        out.append(f"For those C -> O convs, aten's backward-data takes "
                   f"{_range([r['backward_data_ms'] / r['backward_data_as_forward_ms'] for r in few])} times the time "
                   "of the same values computed as a forward conv of the output gradient with the flipped, "
                   "transposed kernel.")
    mm = [r["forward_ms"] / r["matmul_ms"] for r in rows if r.get("matmul_ms")]
    if mm:
        out.append(f"The {len(mm)} 1x1 convs' forward takes {_range(mm)} times the time of the same product as a "
                   "batched matrix multiply (`torch.bmm`).")
    return out


def render_conv_costs(cc: Dict[str, Any]) -> str:
    """The conv-cost section from a ``mlan-bench --conv-costs`` report (rows under ``conv_costs``)."""
    cfg = cc.get("config", {})
    rows = cc["conv_costs"]
    out = [f"## Why the attention costs more than its MACs: per-call conv costs ({cc.get('device', 'cpu')})", "",
           f"Command: `{cc.get('command')}`", "", f"Machine: {cc.get('machine')}", "",
           "One stride-1 'same' convolution per row, fp32, NCHW contiguous random tensors, no bias, each call timed "
           "under `torch.inference_mode`: forward `F.conv2d`; backward-data and backward-weight "
           "`torch.ops.aten.convolution_backward` with output mask [True, False, False] / [False, True, False] (what "
           "autograd runs); backward-data as forward conv `F.conv2d(grad, w.flip(2, 3).transpose(0, 1))` (same "
           "values, checked); for 1x1 kernels the forward as `torch.bmm` (same values, checked). MACs = "
           f"B·H·W·C·O·k²; GMAC/s of the forward. All cells interleaved over {cfg.get('rounds')} rounds "
           f"(blocked_autorange, min_run_time {cfg.get('min_run_time')} s, after {cfg.get('warmup')} warm-up "
           "call(s)); medians over rounds, in ms.", "",
           "| shape [B, C, H, W] -> O, kxk | MACs | forward ms | GMAC/s | backward-data ms | "
           "backward-data as forward conv ms | backward-weight ms | 1x1 as bmm ms |", "|" + "---|" * 8]
    for r in rows:
        out.append(f"| {_conv_shape(r)} | {_fmt_macs(r['macs'])} | {_fmt_ms3(r['forward_ms'])} | "
                   f"{r['gmacs_per_s']:.1f} | {_fmt_ms3(r['backward_data_ms'])} | "
                   f"{_fmt_ms3(r['backward_data_as_forward_ms'])} | {_fmt_ms3(r['backward_weight_ms'])} | "
                   f"{_fmt_ms3(r.get('matmul_ms'))} |")
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
    """Device label (eager only) -> spec key -> timings, from the speed section (fills Tables 6/9's time columns)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    specs = report.get("speed_specs", {})
    for label, groups in (report.get("speed") or {}).items():
        if " " in label:  # channels_last / compile variants stay in their own sections
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
