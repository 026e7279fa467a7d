"""mlan-bench (mlan_timm.tools.bench: measure, report, cli) in quick mode (tiny models, tiny repeat counts; no
timing asserts), and benchmarks/run_benchmarks.py --quick end to end."""
import json
import math
import os
import re
import statistics
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn

import mlan_timm  # noqa: F401  (registers the models)
from mlan_timm import paper_tables, zoo
from mlan_timm.tools.bench import cli
from mlan_timm.tools.bench import measure as B
from mlan_timm.tools.bench import report as R


def _tiny_conv_model():
    # conv 3->4 (3x3, pad 1, no bias) on 32x32, then global pool and a 4->5 linear layer
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 5))


#: The loader's reason on a machine without AVX-512 or AVX2 (what the fake_kernels fixture reports).
NO_KERNEL_ISA = "this CPU (PyTorch capability DEFAULT) has neither AVX-512 nor AVX2"


def _kernels_info(available):
    source = "small_conv.cpp 0123456789ab"
    return dict(available=available, reason=None if available else NO_KERNEL_ISA, source=source, process_wide=False,
                status=(f"available (AVX-512, {source}), used only by the models built with cpu_kernels=True"
                        if available else f"unavailable: {NO_KERNEL_ISA}"))


#: What gpu_kernels_info records without Triton.
NO_TRITON = "Triton cannot be imported"


def _gpu_kernels_info(available, process_wide=False):
    return dict(available=available, reason=None if available else NO_TRITON, triton="3.0.0" if available else None,
                process_wide=process_wide,
                status=("available (Triton 3.0.0), used only by the models built with gpu_kernels=True" if available
                        else f"unavailable: {NO_TRITON}"))


@pytest.fixture
def fake_gpu_kernels(monkeypatch):
    """``fake_gpu_kernels(available, after=None)``: measure sees the Triton kernels as working or not (no compile);
    ``after``: what a later look without loading (``load=False``) sees, e.g. False for a kernel failing mid-run."""
    def fake(available, after=None):
        after = available if after is None else after
        monkeypatch.setattr(B, "gpu_kernels_info", lambda load=True: _gpu_kernels_info(available if load else after))
    return fake


@pytest.fixture
def fake_kernels(monkeypatch):
    """``fake_kernels(available)``: measure and cli see the compiled CPU kernels as loaded or not (no build)."""
    def fake(available):
        info = lambda load=True: _kernels_info(available)  # noqa: E731
        monkeypatch.setattr(B, "cpu_kernels_info", info)
        monkeypatch.setattr(cli, "cpu_kernels_info", info)
    return fake


def test_params_equal_sum_of_numel():
    m = _tiny_conv_model()
    assert B.count_params(m) == 3 * 4 * 9 + 4 * 5 + 5
    r = timm.create_model("resnet14_cifar10", num_classes=10)
    assert B.count_params(r) == sum(p.numel() for p in r.parameters())


def test_macs_of_plain_conv_model_equal_analytic_count():
    m = _tiny_conv_model()
    conv_macs = 32 * 32 * 4 * 3 * 9  # output positions x out channels x (in channels x kernel area)
    linear_macs = 4 * 5
    assert B.count_macs(m) == conv_macs + linear_macs
    # a strided conv: output 16x16
    s = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1))
    assert B.count_macs(s) == 16 * 16 * 8 * 3 * 9


def test_fast_paths_spec_option_builds_the_reference():
    from mlan_timm.models.blocks import MLANGroup

    ref, fast = B.parse_spec("mlan_resnet14_cifar10?fast_paths=False"), B.parse_spec("mlan_resnet14_cifar10")
    assert ref.key == "mlan_resnet14_cifar10?fast_paths=False" and B.parse_spec(ref.key).kwargs == ref.kwargs
    groups = [m for m in ref.build().modules() if isinstance(m, MLANGroup)]
    assert groups and not any(g.fast_path for g in groups)  # the equations as written
    assert all(g.fast_path for g in fast.build().modules() if isinstance(g, MLANGroup))
    assert B.count_macs(ref.build()) == B.count_macs(fast.build())  # same function, same MACs


def test_speed_plan_train_steps_only_in_target1_groups():
    t1 = B.speed_plan("cifar100", 20, target1=True, cpu_kernels=False)
    assert t1["mlan (reference)"][0].key == "mlan_resnet20_cifar100?fast_paths=False"
    assert t1["se"][0].key == "mlan_resnet20_cifar100?attn=se"
    assert {k for k, (_, kinds) in t1.items() if "train" in kinds} == {"backbone", "mlan", "mlan (reference)"}
    assert all(kinds[:2] == ("b1", "b128") for _, kinds in t1.values())
    other = B.speed_plan("cifar10", 14, target1=False, b1=False, cpu_kernels=False)
    assert set(other) == set(t1) == {"backbone", "mlan", "mlan (reference)", "smav2", "smav2 (reference)", "se", "cbam",
                                     "ta", "gc"}
    assert all(kinds == ("b128",) for _, kinds in other.values())
    assert set(B.speed_plan("cifar10", 20, target1=True, compile=True)) == set(B.COMPILE_SPEED_MODELS)


def test_speed_plan_cuda_graphs_has_no_train_step_and_counts_cells():
    eager = B.speed_plan("cifar10", 20, target1=True, device="cuda", gpu_kernels=False)
    graphs = B.speed_plan("cifar10", 20, target1=True, cuda_graphs=True, device="cuda", gpu_kernels=False)
    assert {k: v[0].key for k, v in graphs.items()} == {k: v[0].key for k, v in eager.items()}  # the same models
    assert all(kinds == ("b1", "b128") for _, kinds in graphs.values())  # inference only: nothing captured to train
    # the whole grid: 2 datasets x 4 depths x 9 models x (b1, b128), + train steps of 3 models at depths 20 and 32
    # (without the GPU kernels' model: its cells are counted in test_speed_plan_times_the_gpu_kernels_...)
    grid = dict(datasets=zoo.DATASETS, depths=zoo.DEPTHS, device="cuda", gpu_kernels=False)
    assert B.count_speed_cells(**grid, variant="cuda_graphs") == 2 * 4 * 9 * 2 == 144
    assert B.count_speed_cells(**grid) == B.count_speed_cells(**grid, variant="channels_last") == 144 + 2 * 2 * 3
    assert B.count_speed_cells(["cifar10"], [20], "compile", device="cuda") == 2 * 3  # backbone, MLAN: b1, b128, train
    assert B.default_target1_depths((14, 20, 26)) == (20,) and B.default_target1_depths((14,)) == (14,)


def test_cuda_graphs_variant_is_cuda_only(tmp_path, capsys):
    assert B.check_variants("cuda", "eager,channels_last,compile,cuda_graphs".split(",")) == B.SPEED_VARIANTS
    assert B.check_variants("cpu", ["eager", "compile"]) == ("eager", "compile")
    with pytest.raises(ValueError, match="the cuda_graphs variant needs a CUDA device; it cannot run on 'cpu'"):
        B.check_variants("cpu", ["eager", "cuda_graphs"])
    with pytest.raises(ValueError, match="unknown speed variant 'graphs'"):
        B.check_variants("cuda", ["graphs"])
    with pytest.raises(ValueError, match="needs a CUDA device"):
        B.make_graph_infer_fn(_tiny_conv_model(), 1, "cpu")
    with pytest.raises(ValueError, match="needs a CUDA device"):  # refused before anything is measured
        B.run_paper_tables(devices=["cpu"], depths=(14,), datasets=("cifar10",), cpu_variants=("cuda_graphs",),
                           speed_only=True, log=lambda s: None)
    capsys.readouterr()
    md = tmp_path / "b.md"
    assert cli.main(["--paper-tables", "--speed-only", "--device", "cpu", "--cpu-variants", "cuda_graphs",
                     "--depths", "14", "--datasets", "cifar10", "--md-out", str(md)]) == 2
    err = capsys.readouterr().err
    assert err == ("mlan-bench: error: --cpu-variants: the cuda_graphs variant needs a CUDA device; it cannot run "
                   "on 'cpu'\n") and not md.exists()
    assert cli.main(["--paper-tables", "--no-time", "--cuda-variants", "eager,graphs"]) == 2
    assert "--cuda-variants: unknown speed variant 'graphs'" in capsys.readouterr().err


def test_parse_spec_and_key_round_trip():
    s = B.parse_spec("mlan_resnet20_cifar10?fusion=concat&attn=cbam&num_masks=3")
    assert s.model == "mlan_resnet20_cifar10"
    assert s.kwargs == {"attn": "cbam", "fusion": "concat", "num_masks": 3}
    assert B.parse_spec(s.key).kwargs == s.kwargs
    assert B.Spec("resnet20_cifar10").key == "resnet20_cifar10"


def test_measure_quick_records_all_columns():
    res = B.measure([B.Spec("tiny_a", factory=_tiny_conv_model)], ("cpu",), B.TimingConfig.quick())
    rec = res["tiny_a"]
    assert rec["params"] == 3 * 4 * 9 + 4 * 5 + 5
    t = rec["cpu"]
    assert set(t) == {"latency_b1_ms", "infer_b128_ms", "throughput_b128", "train_step_b128_ms"}
    assert all(v > 0 and math.isfinite(v) for v in t.values())
    # throughput is batch / time
    assert t["throughput_b128"] == pytest.approx(B.TimingConfig.quick().batch / (t["infer_b128_ms"] / 1e3))


def test_unregistered_model_is_reported_not_fatal():
    res = B.measure([B.Spec("no_such_model_xyz")], ("cpu",), B.TimingConfig.quick())
    assert res["no_such_model_xyz"]["error"] == B.NOT_REGISTERED


def test_cli_quick_two_models_writes_json_and_table(tmp_path):
    name = "resnet14_cifar10"
    md, js = tmp_path / "b.md", tmp_path / "b.json"
    rc = cli.main(["--quick", "--threads", "1", "--device", "cpu", f"{name}?num_classes=10", f"{name}?num_classes=100",
                 "--md-out", str(md), "--json-out", str(js)])
    assert rc == 0
    data = json.loads(js.read_text())
    assert set(data["results"]) == {f"{name}?num_classes=10", f"{name}?num_classes=100"}
    for key, rec in data["results"].items():
        model = timm.create_model(name, num_classes=rec["kwargs"]["num_classes"])
        assert rec["params"] == sum(p.numel() for p in model.parameters())
        assert rec["macs"] > 0 and rec["cpu"]["train_step_b128_ms"] > 0
    # the 100-class head has more parameters than the 10-class head
    r = data["results"]
    assert r[f"{name}?num_classes=100"]["params"] > r[f"{name}?num_classes=10"]["params"]
    text = md.read_text()
    assert text.startswith("Command: `mlan-bench --quick")
    assert "Machine: CPU:" in text and "torch " in text and "timm " in text
    assert f"| `{name}?num_classes=10` |" in text


def test_paper_tables_render_quick(tmp_path):
    md, js = tmp_path / "p.md", tmp_path / "p.json"
    # params/MACs only (timing is covered above; timing every Table 6 model would make the test slow)
    rc = cli.main(["--paper-tables", "--no-time", "--depths", "14", "--datasets", "cifar10",
                   "--md-out", str(md), "--json-out", str(js), "--root", str(tmp_path)])
    assert rc == 0
    text = md.read_text()
    assert "Command: `mlan-bench --paper-tables" in text
    grid = B.paper_grid()
    c10 = [tid for tid, t in grid.items() if t.dataset == "cifar10"]
    assert c10 == ["T2", "T3", "T4", "T5", "T6", "T7"]  # every comparison table of the paper, in its order
    for tid in c10:
        assert f"### Table {tid[1:]} (CIFAR10)" in text
    assert R.NOT_TRAINED in text  # no eval JSON under tmp_path
    data = json.loads(js.read_text())
    assert data["grid_ids"] == c10
    rec = data["results"]["mlan_resnet14_cifar10"]
    assert rec["params"] == B.count_params(timm.create_model("mlan_resnet14_cifar10"))
    fma = data["results"]["mlan_resnet14_cifar10?attn=fma"]
    assert fma["params"] == B.count_params(timm.create_model("mlan_resnet14_cifar10", attn="fma"))
    # the paper's FMA-14 row: its (truncated) parameter count and its accuracy, beside ours
    p_m = paper_tables.paper_value("cifar10", "fma", 14, "params_M")
    top1 = paper_tables.paper_value("cifar10", "fma", 14, "top1")
    low, high = paper_tables.params_interval(p_m)
    fit = "yes" if low <= fma["params"] < high else f"no ({fma['params'] - low:+,})"
    row = next(ln for ln in text.splitlines() if "`mlan_resnet14_cifar10?attn=fma`" in ln)
    assert f"| {p_m:.2f}M | {fit} |" in row and row.endswith(f"| {R.NOT_TRAINED} | {top1:.2f} |")


def test_report_renders_stored_results_of_older_reports():
    """benchmarks/results/cpu.json (ids 'table3', ...) still renders: tables by dataset, rows by spec key."""
    report = dict(grid_ids=["table3", "table6"], depths=[20], devices=["cpu"], command="c", machine="m",
                  results={"mlan_resnet20_cifar10": dict(params=1, macs=2, cpu=dict(infer_b128_ms=3.0))},
                  config={})
    text = R.render_report(report, root="/nonexistent")
    assert "### Table 6 (CIFAR10)" in text and "### Table 9" not in text
    assert "`resnet20_cifar10` | not measured |" in text


def _speed(mlan=(12.0, 40.0), b1=None, kernels=None, **rivals):
    """One synthetic speed group (cifar10/20): backbone 10 ms inference / 20 ms train; rivals' b128 times;
    ``kernels``: MLAN with the CPU kernels (b128, train step, b1 ms), absent by default (older reports)."""
    res = {"backbone": dict(infer_b128_ms=10.0, train_step_b128_ms=20.0),
           "mlan": dict(infer_b128_ms=mlan[0], train_step_b128_ms=mlan[1], latency_b1_ms=b1 or 1.0),
           "mlan (reference)": dict(infer_b128_ms=18.0, train_step_b128_ms=50.0, latency_b1_ms=2.0)}
    if kernels is not None:
        res[R.KERNELS] = dict(infer_b128_ms=kernels[0], train_step_b128_ms=kernels[1], latency_b1_ms=kernels[2])
    for k in ("se", "cbam", "ta", "gc"):
        res[k] = dict(infer_b128_ms=rivals.get(k, 100.0), latency_b1_ms=5.0)
    return {"cifar10/20": res}


def test_target1_compares_time_ratio_with_macs_ratio():
    macs = {"cifar10/20": {"backbone": 100, "mlan": 110}}
    text = R.render_target1(_speed(mlan=(12.0, 40.0)), macs, "cpu")
    # inference: 1.2 <= 1.1 x 1.1 = 1.21 (met); train: 2.0 > 1.2 x 1.1 = 1.32 (not met)
    assert ("| CIFAR10 | ResNet-20 | inference | 10.00 | 12.00 | 1.20 | 1.100 | ≤ 1.21 (1.1 x MACs ratio) | 1.09 "
            "| yes |") in text
    assert ("| CIFAR10 | ResNet-20 | train step | 20.00 | 40.00 | 2.00 | 1.100 | ≤ 1.32 (1.2 x MACs ratio) | 1.82 "
            "| no |") in text
    # the sentences that read the numbers are generated from them
    assert "- inference: met in 1 of 1 rows; time ratio / MACs ratio 1.09 (limit 1.1)." in text
    assert "- train step: met in 0 of 1 rows; time ratio / MACs ratio 1.82 (limit 1.2)." in text
    assert R.render_target1(_speed(mlan=(13.0, 40.0)), macs, "cpu").count("| no |") == 2  # 1.3 > 1.21


def test_fast_path_rows_divide_reference_by_fast():
    text = R.render_fast_paths(_speed(), "cpu")
    assert "| CIFAR10 | ResNet-20 | MLAN | 2.00 | 1.00 | 2.00x | 18.00 | 12.00 | 1.50x | 50.00 | 40.00 | 1.25x |" \
        in text
    assert "SMAv2" not in text  # no reference measured for it here
    assert "Speed-up (reference time / fast time) 1.25 to 2.00 over these 3 cells." in text


def test_target2_needs_mlan_faster_than_every_rival():
    text = R.render_target2(_speed(se=11.0), "cpu")
    assert "| CIFAR10 | ResNet-20 | 1.00 | 5.00 | 0.20 | 5.00 | 0.20 | 5.00 | 0.20 | 5.00 | 0.20 | yes |" in text  # b1
    assert "| CIFAR10 | ResNet-20 | 12.00 | 11.00 | 1.09 | 100.00 | 0.12 |" in text and text.count("| no |") == 1
    assert "MLAN is faster than all four in 1 of 2 (dataset, depth, batch) cases; it is not faster than: SE in 1." \
        in text
    assert "it is not faster than: none." in R.render_target2(_speed(), "cpu")


def _paired(a_rounds, b_rounds, key="infer_b128_ms"):
    """Two synthetic timings of ``key`` with per-round samples and their medians."""
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731  (odd lengths here)
    return ({key: med(a_rounds), key + "_rounds": list(a_rounds)},
            {key: med(b_rounds), key + "_rounds": list(b_rounds)})


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # round 2 is disturbed for a (a slow period of the machine): the ratio of medians 11 / 10 = 1.1 is inflated
    a, b = _paired([10.0, 10.5, 30.0, 11.0, 11.0], [10.0, 10.0, 10.0, 12.0, 12.0])
    ratios = sorted([10.0 / 10.0, 10.5 / 10.0, 30.0 / 10.0, 11.0 / 12.0, 11.0 / 12.0])
    assert a["infer_b128_ms"] / b["infer_b128_ms"] == pytest.approx(1.1)
    assert R.paired_ratio(a, b, "infer_b128_ms") == pytest.approx(ratios[2]) == pytest.approx(1.0)
    # without (or with mismatched) per-round samples: the ratio of medians, as before
    old_a, old_b = {"infer_b128_ms": 11.0}, {"infer_b128_ms": 10.0}
    assert R.paired_ratio(old_a, old_b, "infer_b128_ms") == 11.0 / 10.0
    assert R.paired_ratio(a, old_b, "infer_b128_ms") == 11.0 / 10.0
    assert R.paired_ratio(a, dict(b, infer_b128_ms_rounds=[10.0] * 3), "infer_b128_ms") == 11.0 / 10.0
    assert R.paired_ratio(a, {}, "infer_b128_ms") is None


def _paired_speed(mlan_rounds, se_rounds, bb_rounds=(10.0, 10.0, 10.0), ref_rounds=None):
    """cifar10/20 with per-round b128 samples for backbone, MLAN, its reference (default 2 x MLAN) and the
    rivals (CBAM, TA, GC at 100 ms)."""
    key = "infer_b128_ms"
    mlan, se = _paired(mlan_rounds, se_rounds)
    bb, ref = _paired(bb_rounds, ref_rounds or [2 * t for t in mlan_rounds])
    res = {"backbone": bb, "mlan": mlan, "mlan (reference)": ref, "se": se}
    for k in ("cbam", "ta", "gc"):
        res[k] = {key: 100.0, key + "_rounds": [100.0] * len(mlan_rounds)}
    return {"cifar10/20": res}


def test_target2_verdict_uses_the_paired_ratio():
    # medians: MLAN 11 vs SE 10, "slower" by the ratio of medians (1.1); per round MLAN / SE = 5/6, 12/13, 11/10:
    # median 12/13 < 1, MLAN faster
    speed = _paired_speed([5.0, 12.0, 11.0], [6.0, 13.0, 10.0])
    res = speed["cifar10/20"]
    assert res["mlan"]["infer_b128_ms"] / res["se"]["infer_b128_ms"] == pytest.approx(1.1)
    (case,) = R.target2_cases(speed)
    assert case["rivals"]["SE"][1] == pytest.approx(12.0 / 13.0)
    assert case["met"] and not case["slower"]
    # the other way round: medians say MLAN faster (11.5 < 12), per-round ratios 1.045, 1.042, 0.43 say not
    speed = _paired_speed([11.5, 12.5, 6.0], [11.0, 12.0, 14.0])
    res = speed["cifar10/20"]
    assert res["mlan"]["infer_b128_ms"] < res["se"]["infer_b128_ms"]
    (case,) = R.target2_cases(speed)
    assert case["rivals"]["SE"][1] == pytest.approx(12.5 / 12.0) and case["slower"] == ["SE"] and not case["met"]
    text = R.render_target2(speed, "cpu")
    assert f"| 12.00 | {12.5 / 12.0:.2f} |" in text and "it is not faster than: SE in 1." in text


def test_every_speed_ratio_is_paired():
    # MLAN / backbone per round 1, 3, 2 (median 2) against 10 / 10 = 1 for the medians; reference / fast per round
    # 2.5, 0.67, 2.5 (median 2.5) against 20 / 10 = 2
    speed = _paired_speed([10.0, 30.0, 8.0], [11.0, 9.0, 7.0], bb_rounds=(10.0, 10.0, 4.0),
                          ref_rounds=[25.0, 20.0, 20.0])
    res = speed["cifar10/20"]
    assert res["mlan"]["infer_b128_ms"] / res["backbone"]["infer_b128_ms"] == 1.0
    assert R.paired_ratio(res["mlan"], res["backbone"], "infer_b128_ms") == pytest.approx(2.0)
    (row,) = R.target1_rows(speed, {"cifar10/20": {"backbone": 100, "mlan": 110}}, depths=(20,))
    assert row["time_ratio"] == pytest.approx(2.0)
    (fast,) = R.fast_path_rows(speed)
    assert fast["cells"]["b128"][2] == pytest.approx(2.5)
    report = dict(command="c", machine="m", config=dict(rounds=3, batch=128),
                  speed={"cpu": speed, "cuda cuda_graphs": speed})
    rows3 = [r for r in R.target3_rows(report["speed"]) if r["ratio"] is not None]
    assert rows3 and all(r["ratio"] == pytest.approx(2.0) for r in rows3)
    summary = R.render_readme_summary(report)
    assert "2.00x" in summary  # target 3 (CUDA graphs) in the GPU line: the paired ratio, not 1.00x
    # the method is stated where the conventions are, and only when per-round samples are present
    text = R.render_speed(report)
    assert R.PAIRED_METHOD in text and "median of per-round ratios" in text
    assert "ratios medians of per-round ratios" in summary
    old = dict(report, speed={"cpu": _speed()})
    assert R.PAIRED_METHOD not in R.render_speed(old) and "per-round" not in R.render_readme_summary(old)


def test_speed_section_says_gpu_numbers_are_missing_until_merged():
    report = dict(command="c", machine="m", config=dict(rounds=5, batch=128), speed={"cpu": _speed()},
                  speed_macs={"cifar10/20": {"backbone": 100, "mlan": 110}})
    assert "## Speed targets (issue 10): GPU" in R.render_speed(report)
    report["speed"]["cuda"] = _speed()
    assert "## Speed targets (issue 10): GPU" not in R.render_speed(report)
    assert "### Target 2 (cuda)" in R.render_speed(report)


def _pair(b1, b128, rivals=None):
    """A synthetic ResNet-20 group: (backbone, MLAN) ms at batch 1 and at the large batch; rivals' ms at both."""
    g = {"backbone": dict(latency_b1_ms=b1[0], infer_b128_ms=b128[0]),
         "mlan": dict(latency_b1_ms=b1[1], infer_b128_ms=b128[1])}
    for k, v in (rivals or {}).items():
        g[k] = dict(latency_b1_ms=v, infer_b128_ms=v)
    return g


GPU_MACHINE = "CPU: x, 16 cores, torch threads 16; GPU: NVIDIA H100 80GB HBM3; python 3, torch 2, timm 1"


def _gpu_report(graphs_c100_b1=(0.10, 0.11), batch=128, graphs=True):
    """A merged report: the CPU speed section plus GPU labels as run_benchmarks.py --cuda writes them (compile:
    CIFAR-10 only, channels_last: CIFAR-10 only here, no train steps: missing cells)."""
    rivals = {k: 50.0 for k in ("se", "cbam", "ta", "gc")}
    gpu = {"cuda": {"cifar10/20": _pair((2.0, 5.0), (2.5, 6.0), rivals),
                    "cifar100/20": _pair((2.0, 4.0), (3.0, 6.3), rivals)},
           "cuda channels_last": {"cifar10/20": _pair((2.0, 4.4), (2.0, 4.2))},
           "cuda compile": {"cifar10/20": _pair((0.5, 0.6), (0.8, 1.0))}}
    if graphs:  # MLAN / backbone: 1.10 and 1.16 on CIFAR-10, graphs_c100_b1 and 1.15 on CIFAR-100
        gpu["cuda cuda_graphs"] = {"cifar10/20": _pair((0.10, 0.11), (0.50, 0.58), rivals),
                                   "cifar100/20": _pair(graphs_c100_b1, (0.60, 0.69), rivals)}
    src = dict(command="mlan-bench --paper-tables --speed-only --device cuda", machine=GPU_MACHINE,
               config=dict(rounds=3, batch=batch, min_run_time=0.01, warmup=3, target1_depths=[20],
                           cuda_tf32=dict(cudnn=True, matmul=False)))
    report = _summary_report(_speed(), speed_sources={label: src for label in gpu},
                             speed_specs={"cifar10/20": {"mlan": "mlan_resnet20_cifar10", "se": "se_x"}})
    report["speed"].update(gpu)
    report["speed_macs"]["cifar100/20"] = {"backbone": 100, "mlan": 110}
    return report


def test_target3_table_and_verdict_met():
    report = _gpu_report()
    rows = R.target3_rows(report["speed"], R._batches(report))
    assert R.target3_verdict(rows) is True
    text = R.render_target3(report)
    assert text.startswith("### Target 3 (cuda): MLAN-20 inference vs its backbone on the GPU")
    assert "Batch sizes: 1 and 128 (the paper's Tables 6/9 GPU times do not state theirs)" in text
    assert "TF32 allowed for cuDNN convolutions" in text
    assert "The target: MLAN-20's inference within 1.2x of its backbone's time with CUDA graphs." in text
    for row in ("| CIFAR-10 | eager | 1 | 2.00 | 5.00 | 2.50 | no |",
                "| CIFAR-10 | eager | 128 | 2.50 | 6.00 | 2.40 | no |",
                "| CIFAR-10 | channels_last | 128 | 2.00 | 4.20 | 2.10 | no |",
                "| CIFAR-10 | torch.compile | 1 | 0.50 | 0.60 | 1.20 | yes |",
                "| CIFAR-10 | CUDA graphs | 1 | 0.10 | 0.11 | 1.10 | yes |",
                "| CIFAR-10 | CUDA graphs | 128 | 0.50 | 0.58 | 1.16 | yes |",
                "| CIFAR-100 | CUDA graphs | 128 | 0.60 | 0.69 | 1.15 | yes |",
                # not measured there: compile and channels_last ran on CIFAR-10 only
                "| CIFAR-100 | torch.compile | 1 | — | — | — | — |",
                "| CIFAR-100 | channels_last | 128 | — | — | — | — |"):
        assert row in text, row
    lines = text.splitlines()
    order = [ln.split(" | ")[1] for ln in lines if ln.startswith("| CIFAR-10 |")]
    assert order == ["eager"] * 2 + ["channels_last"] * 2 + ["torch.compile"] * 2 + ["CUDA graphs"] * 2
    assert ("**Within 1.2x with CUDA graphs: yes.** MLAN / backbone 1.10 to 1.16 over the 4 measured cells (CIFAR-10 "
            "batch 1, CIFAR-10 batch 128, CIFAR-100 batch 1 and CIFAR-100 batch 128).") in text
    assert "- eager: MLAN / backbone batch 1: 2.00 to 2.50; batch 128: 2.10 to 2.40." in text
    assert "- torch.compile: MLAN / backbone batch 1: 1.20; batch 128: 1.25." in text
    assert "- CUDA graphs: MLAN / backbone batch 1: 1.10; batch 128: 1.15 to 1.16." in text


def test_target3_verdict_not_met_and_not_measured():
    text = R.render_target3(_gpu_report(graphs_c100_b1=(0.10, 0.13)))  # 1.30 > 1.2 on CIFAR-100 at batch 1
    assert "| CIFAR-100 | CUDA graphs | 1 | 0.10 | 0.13 | 1.30 | no |" in text
    assert ("**Within 1.2x with CUDA graphs: no.** MLAN / backbone 1.10 to 1.30; above 1.2 in 1 of the 4 measured "
            "cells: CIFAR-100 batch 1 (1.30).") in text
    # the large batch is the run's, stated in the table
    text = R.render_target3(_gpu_report(batch=256))
    assert "Batch sizes: 1 and 256" in text and "| CIFAR-10 | CUDA graphs | 256 | 0.50 | 0.58 | 1.16 | yes |" in text
    report = _gpu_report(graphs=False)
    assert R.target3_verdict(R.target3_rows(report["speed"])) is None
    assert "**Within 1.2x with CUDA graphs: not measured** (no CUDA-graph timings of the ResNet-20 pair)." \
        in R.render_target3(report)
    assert R.render_target3(_summary_report(_speed())) == ""  # no GPU results: no target-3 table


def test_speed_section_with_cuda_results():
    """Target 3 before the GPU sections; targets 1 and 2 per GPU label (batch 1 and 128), train cells '—'."""
    report = _gpu_report()
    text = R.render_speed(report)
    assert "## Speed targets (issue 10): GPU" not in text  # the placeholder goes once GPU results are merged
    assert text.index("## Speed targets (issue 10): cpu") < text.index("### Target 3 (cuda)") \
        < text.index("## Speed targets (issue 10): cuda\n")
    graphs = text[text.index("## Speed targets (issue 10): cuda cuda_graphs"):]  # the last section
    assert R.GRAPHS_METHOD in graphs
    assert "| CIFAR10 | ResNet-20 | inference | 0.50 | 0.58 | 1.16 | 1.100 |" in graphs  # target 1: inference only
    assert "train step" not in graphs.split("### Target 1")[1].split("###")[0]
    for label in ("cuda", "cuda cuda_graphs"):  # target 2 on the GPU, at batch 1 and at batch 128
        t2 = text.split(f"### Target 2 ({label})")[1].split("\n## ")[0]
        assert "#### batch 1 inference" in t2 and "#### batch 128 inference" in t2
        assert "MLAN is faster than all four in 4 of 4 (dataset, depth, batch) cases" in t2
    assert "| CIFAR100 | ResNet-20 | 4.00 | 50.00 | 0.08 |" in text  # cuda, batch 1
    # variants without the rivals (compile, channels_last here) get no target-2 table
    assert "### Target 2 (cuda compile)" not in text and "### Target 2 (cuda channels_last)" not in text
    # the fast-path table of a CUDA-graph group: no train step measured, its cells '—'
    fast = R.render_fast_paths({"cifar10/20": {"mlan": dict(latency_b1_ms=1.0, infer_b128_ms=2.0),
                                               "mlan (reference)": dict(latency_b1_ms=2.0, infer_b128_ms=3.0)}},
                               "cuda cuda_graphs")
    assert "| CIFAR10 | ResNet-20 | MLAN | 2.00 | 1.00 | 2.00x | 3.00 | 2.00 | 1.50x | — | — | — |" in fast
    table = R.render_results_table({"m": dict(params=1, macs=2, cuda_cuda_graphs=dict(latency_b1_ms=0.1))},
                                    ["cuda_cuda_graphs"])
    assert "| `m` | 0.000M (1) | 0.00M | 0.10 | — | — | — |" in table
    # Tables 6/9 show the eager and the CUDA-graph timings beside the paper's GPU times
    assert list(R._speed_timings(report)) == ["cpu", "cuda", "cuda cuda_graphs"]


def test_readme_summary_gpu_line_reads_target3():
    met = _flat(R.render_readme_summary(_gpu_report()))
    assert ("- GPU (NVIDIA H100 80GB HBM3, 'cuda' in docs/benchmarks.md): target 3 is met: with CUDA graphs MLAN-20 "
            "takes 1.10x to 1.16x its backbone's time at batch 1 and 128 (limit 1.2x; eager 2.00x to 2.50x); target 1 "
            "in eager mode is not met") in met
    assert "await a GPU session" not in met
    missed = _flat(R.render_readme_summary(_gpu_report(graphs_c100_b1=(0.10, 0.13))))
    assert "target 3 is not met: with CUDA graphs MLAN-20 takes 1.10x to 1.30x its backbone's time at batch 1 and " \
           "128 (limit 1.2x; eager 2.00x to 2.50x)" in missed


def test_time_interleaved_quick():
    specs = {"backbone": B.Spec("a", factory=_tiny_conv_model), "other": B.Spec("b", factory=_tiny_conv_model)}
    cfg = B.TimingConfig.quick()
    res = B.time_interleaved(specs, "cpu", cfg)
    for name in specs:
        assert res[name]["infer_b128_ms"] > 0 and res[name]["train_step_b128_ms"] > 0
        for col in ("infer_b128_ms", "train_step_b128_ms"):  # per-round samples (ms) beside the median
            rounds = res[name][col + "_rounds"]
            assert len(rounds) == cfg.rounds and all(t > 0 for t in rounds)
            assert res[name][col] == pytest.approx(statistics.median(rounds))
    res = B.time_interleaved(specs, "cpu", cfg, kinds={"backbone": ("b1",), "other": ("train",)})
    assert set(res["backbone"]) == {"latency_b1_ms", "latency_b1_ms_rounds"}
    assert set(res["other"]) == {"train_step_b128_ms", "train_step_b128_ms_rounds"}
    assert len(res["backbone"]["latency_b1_ms_rounds"]) == cfg.rounds


def test_time_interleaved_times_each_measure_of_all_models_back_to_back(monkeypatch):
    """A round times every model's batch-1 cell, then every batch-128 cell, then every train step (the compared
    cells are adjacent in time), in the models' order; the report records and says so."""
    def tagged(name):
        def build():
            model = _tiny_conv_model()
            model.tag = name
            return model
        return build
    specs = {name: B.Spec(name, factory=tagged(name)) for name in "abc"}
    cfg = B.TimingConfig(min_run_time=0.001, warmup=0, batch=2, rounds=2)
    timed = []
    real = {}  # timed function -> (measure, model)

    def spy(fn, cfg, label=""):
        timed.append(real[fn])
        return 1e-3
    monkeypatch.setattr(B, "time_fn", spy)
    real_infer, real_train = B._make_infer, B.make_train_fn

    def infer(model, batch, *a, **kw):
        fn = real_infer(model, batch, *a, **kw)
        real[fn] = ("b1" if batch == 1 else "b128", model.tag)
        return fn

    def train(model, *a, **kw):
        fn = real_train(model, *a, **kw)
        real[fn] = ("train", model.tag)
        return fn
    monkeypatch.setattr(B, "_make_infer", infer)
    monkeypatch.setattr(B, "make_train_fn", train)
    B.time_interleaved(specs, "cpu", cfg, kinds=("train", "b128", "b1"))
    one_round = [(kind, name) for kind in B.MEASURE_ORDER for name in "abc"]
    assert timed == one_round * cfg.rounds
    assert R._interleave_phrase({"interleave": B.INTERLEAVE}).startswith(", measure by measure")
    assert R._interleave_phrase({}).startswith(", model by model")  # reports measured before the change


def test_cuda_graphs_variant_times_graph_replays_and_no_train_step(monkeypatch):
    """The wiring on CPU: the cuda_graphs variant times make_graph_infer_fn's function (a stand-in here: capture
    needs CUDA; tests/test_cuda.py checks the real one) at batch 1 and the large batch, and records no train step."""
    built = []

    def fake_graph_fn(model, batch, device, channels_last=False, warmup=3):
        built.append(batch)
        return B.make_infer_fn(model, batch, "cpu")

    monkeypatch.setattr(B, "make_graph_infer_fn", fake_graph_fn)
    cfg = B.TimingConfig(min_run_time=0.001, warmup=1, batch=4, rounds=1)
    specs = {"backbone": B.Spec("a", factory=_tiny_conv_model), "mlan": B.Spec("b", factory=_tiny_conv_model)}
    res = B.time_interleaved(specs, "cpu", cfg, kinds=("b1", "b128", "train"), cuda_graphs=True)
    assert built == [1, 4, 1, 4]
    assert all(set(t) == {"latency_b1_ms", "infer_b128_ms", "latency_b1_ms_rounds", "infer_b128_ms_rounds"}
               for t in res.values())
    assert set(B.time_model(specs["mlan"], "cpu", cfg, cuda_graphs=True)) == {"latency_b1_ms", "infer_b128_ms",
                                                                              "throughput_b128"}
    with pytest.raises(ValueError, match="separate speed variants"):
        B.time_interleaved(specs, "cpu", cfg, kinds=("b1",), compile=True, cuda_graphs=True)


def _eval_rec(model, top1, **kw):
    return dict(dict(model=model, model_kwargs={}, weights="w.safetensors", split="test", images=10000,
                     subset=None, top1=top1), **kw)


def test_eval_results_fill_accuracy_column(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    training = dict(best_test_top1=92.0, test_images=10000)
    (tmp_path / "docs" / "results" / "eval.json").write_text(json.dumps(
        [_eval_rec("mlan_resnet20_cifar10", 91.234, training=training),
         _eval_rec("mlan_resnet20_cifar10", 90.5, model_kwargs={"attn": "cbam", "num_classes": 10}),
         _eval_rec("resnet20_cifar10", 99.0, split="train")]))
    acc = R.load_eval_results(str(tmp_path))
    assert acc["mlan_resnet20_cifar10"]["top1"] == pytest.approx(91.234)
    assert acc["mlan_resnet20_cifar10"]["best_top1"] == 92.0
    assert acc["mlan_resnet20_cifar10?attn=cbam"]["top1"] == pytest.approx(90.5)
    assert "resnet20_cifar10" not in acc  # train-split accuracy is not a test result
    assert R._top1(acc, "mlan_resnet20_cifar10") == "91.23 (best epoch 92.00)"


def test_merge_reports_adds_cuda_timings():
    base = dict(devices=["cpu"], results={"m": {"params": 1, "macs": 2}}, speed={"cpu": _speed()}, machine="cpu box",
                speed_specs={"cifar10/20": {"mlan": "m"}})
    other = dict(devices=["cuda"], results={"m": {"params": 1, "macs": 2}}, speed={"cuda": _speed()},
                 speed_specs={"cifar10/20": {"mlan": "m", "backbone": "b"}}, machine="gpu box",
                 command="mlan-bench --device cuda", config=dict(rounds=3))
    m = B.merge_reports(base, other)
    assert m["devices"] == ["cpu", "cuda"]
    assert set(m["speed"]) == {"cpu", "cuda"}
    assert m["speed_sources"]["cuda"] == dict(command="mlan-bench --device cuda", machine="gpu box",
                                              config=dict(rounds=3))
    assert m["speed_specs"]["cifar10/20"] == {"mlan": "m", "backbone": "b"}
    assert m["machines"] == ["cpu box", "gpu box"]


def test_profile_ops_lists_top_operators():
    prof = B.profile_ops(B.Spec("tiny", factory=_tiny_conv_model), "cpu", batch=4, iters=1, top=3)
    assert 1 <= len(prof["rows"]) <= 3
    assert any("convolution" in r["op"] for r in prof["rows"])
    assert all(0 <= r["share"] <= 1 and r["ms"] >= 0 for r in prof["rows"])
    text = R.render_profiles(dict(command="mlan-bench --profile", machine="m", profiles=[prof]))
    assert "## Where the time goes (torch.profiler)" in text and "| operator |" in text


#: Conv-cost timing small enough for tests (about 0.5 s for all shapes); batch 2.
CONV_COST_TEST_CFG = B.TimingConfig(min_run_time=0.001, warmup=1, batch=2, rounds=1)
CONV_COST_TITLE = "## Why the attention costs more than its MACs: per-call conv costs (cpu)"


def test_measure_conv_costs_times_every_shape():
    # the backward-data-as-forward and bmm results are asserted equal to aten's inside measure_conv_costs; one
    # thread: on a busy 2-core machine, two threads wait on each other for scheduler ticks (ms per sub-ms call)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = B.measure_conv_costs("cpu", cfg=CONV_COST_TEST_CFG, cpu_kernels=False)
    finally:
        torch.set_num_threads(threads)
    assert [(r["in_channels"], r["out_channels"], r["kernel"], r["size"]) for r in rows] == list(B.CONV_COST_SHAPES)
    for (c, o, k, h) in [(8, 3, 3, 32), (16, 16, 3, 32), (32, 3, 3, 8), (32, 64, 1, 16)]:
        assert (c, o, k, h) in B.CONV_COST_SHAPES
    for r in rows:
        timed = [col for col in B.CONV_COST_COLUMNS
                 if (col != "matmul_ms" or r["kernel"] == 1) and not col.startswith("kernels_")]
        assert set(timed) <= set(r) and ("matmul_ms" in r) == (r["kernel"] == 1)
        assert "kernels_forward_ms" not in r and r["conv_backend"]  # kernels not asked for; PyTorch's backend named
        assert all(r[col] > 0 and math.isfinite(r[col]) for col in timed)
        assert r["batch"] == 2
        assert r["macs"] == 2 * r["size"] ** 2 * r["in_channels"] * r["out_channels"] * r["kernel"] ** 2
        assert r["gmacs_per_s"] == pytest.approx(r["macs"] / (r["forward_ms"] / 1e3) / 1e9)


def _cc_row(c, o, k, h, fwd, bwd, as_fwd, bwd_w=1.0, mm=None, kern=None):
    r = dict(batch=128, in_channels=c, out_channels=o, kernel=k, size=h, macs=128 * h * h * c * o * k * k,
             forward_ms=fwd, backward_data_ms=bwd, backward_data_as_forward_ms=as_fwd, backward_weight_ms=bwd_w)
    r["gmacs_per_s"] = r["macs"] / (fwd / 1e3) / 1e9
    if mm is not None:
        r["matmul_ms"] = mm
    if kern is not None:  # the CPU kernels' forward and weight gradient ms, and PyTorch's backend for the conv
        r.update(kernels_forward_ms=kern[0], kernels_backward_weight_ms=kern[1], conv_backend="Mkldnn")
    return r


def test_conv_cost_prose_is_computed_from_the_rows():
    rows = [_cc_row(16, 16, 3, 32, fwd=4.0, bwd=5.0, as_fwd=4.0), _cc_row(16, 3, 3, 32, fwd=3.0, bwd=30.0, as_fwd=2.5),
            _cc_row(8, 8, 3, 32, fwd=2.0, bwd=2.0, as_fwd=2.0), _cc_row(8, 3, 3, 32, fwd=1.5, bwd=12.0, as_fwd=1.0),
            _cc_row(16, 32, 1, 32, fwd=6.0, bwd=3.0, as_fwd=3.0, mm=1.5)]
    cc = dict(command="mlan-bench --conv-costs", machine="m", device="cpu",
              config=dict(rounds=5, min_run_time=0.3, warmup=3, batch=128), conv_costs=rows)
    text = R.render_conv_costs(cc)
    assert text.startswith(CONV_COST_TITLE + "\n\nCommand: `mlan-bench --conv-costs`\n\nMachine: m\n")
    # C -> 3 vs C -> C forward: 3 / 4 = 0.75 of the time for 3 / 16 = 0.19 of the MACs; 1.5 / 2 = 0.75 for 3 / 8
    assert "16 -> 3 at 32x32, 3x3: 0.75 of the time for 0.19 of the MACs" in text
    assert "8 -> 3 at 32x32, 3x3: 0.75 of the time for 0.38 of the MACs" in text
    # backward-data / forward: 30 / 3 = 10 and 12 / 1.5 = 8 (C -> 3); 5 / 4 = 1.25 and 2 / 2 = 1 (C -> C)
    assert "takes 8.00 to 10.00 times the forward time for the 2 C -> O convs with O < C, and 1.00 to 1.25 times " \
           "for the 2 C -> C convs." in text
    # backward-data / backward-data as forward conv: 30 / 2.5 = 12, 12 / 1 = 12
    assert "aten's backward-data takes 12.00 times the time of the same values computed as a forward conv" in text
    assert "The 1 1x1 convs' forward takes 4.00 times the time of the same product as a batched matrix" in text
    assert "| [128, 16, 32, 32] -> 3, 3x3 | 56.62M | 3.000 | 18.9 | 30.000 | 2.500 | 1.000 | — |" in text
    assert "| [128, 16, 32, 32] -> 32, 1x1 | 67.11M | 6.000 | 11.2 | 3.000 | 3.000 | 1.000 | 1.500 |" in text
    assert R.conv_cost_findings(rows[:1]) == []  # no C -> 3 nor 1x1 rows: nothing to say


def test_cli_conv_costs_quick_json_renders_into_the_report(tmp_path, capsys, fake_kernels):
    fake_kernels(False)  # no kernel build here, and the unavailable kernels are said in the section
    js, md = tmp_path / "conv_costs_cpu.json", tmp_path / "b.md"
    assert cli.main(["--conv-costs", "--quick", "--threads", "1", "--device", "cpu", "--batch", "2",
                     "--min-run-time", "0.001", "--rounds", "1", "--json-out", str(js)]) == 0
    assert CONV_COST_TITLE in capsys.readouterr().out
    cc = json.loads(js.read_text())
    assert cc["command"].startswith("mlan-bench --conv-costs --quick") and cc["machine"].startswith("CPU:")
    assert len(cc["conv_costs"]) == len(B.CONV_COST_SHAPES) and cc["config"]["batch"] == 2
    base, prof = tmp_path / "cpu.json", tmp_path / "profile_cpu.json"
    base.write_text(json.dumps(dict(grid_ids=[], datasets=[], depths=[20], devices=["cpu"], command="c",
                                    machine="m", results={}, config={})))
    prof.write_text(json.dumps(dict(command="mlan-bench --profile", machine="m", profiles=[])))
    assert cli.main(["--render-only", str(base), "--profile-json", str(prof), "--conv-costs-json", str(js),
                     "--md-out", str(md), "--root", str(tmp_path)]) == 0
    text = md.read_text()
    assert text.index("## Where the time goes (torch.profiler)") < text.index(CONV_COST_TITLE) \
        < text.index("## Paper grids")
    assert f"Command: `{cc['command']}`" in text and "| [2, 8, 32, 32] -> 3, 3x3 |" in text
    assert cc["config"]["cpu_kernels"]["available"] is False and "CPU kernels: unavailable: " in cc["machine"]
    assert f"CPU kernels unavailable: {NO_KERNEL_ISA}: the compiled kernels' convs are not timed." in text
    assert "CPU kernels forward ms" not in text and not any("kernels_forward_ms" in r for r in cc["conv_costs"])


def test_eval_results_need_recorded_kwargs_and_the_full_test_set(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    old = _eval_rec("resnet20_cifar10", 70.0)
    del old["model_kwargs"]  # mlan-eval output from before it recorded model_kwargs: the architecture is unknown
    (tmp_path / "docs" / "results" / "eval.json").write_text(json.dumps([
        _eval_rec("mlan_resnet20_cifar10", 80.0, model_kwargs={"attn": "cbam"}),
        old,
        _eval_rec("se_resnet20_cifar10", 60.0, subset=500, images=500),
        _eval_rec("cbam_resnet20_cifar10", 50.0, images=2000),
    ]))
    acc = R.load_eval_results(str(tmp_path))
    assert acc == {"mlan_resnet20_cifar10?attn=cbam": dict(top1=80.0, best_top1=None,
                                                            source=os.path.join("docs", "results", "eval.json"))}


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--render-only", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith("mlan-bench: error: --render-only")
    assert cli.main(["--paper-tables", "--no-time", "--depths", "21"]) == 2
    assert "unknown depth/dataset [21]" in capsys.readouterr().err
    assert cli.main(["--profile", "--conv-costs"]) == 2
    assert "--profile and --conv-costs are separate runs" in capsys.readouterr().err
    out = tmp_path / "b.json"
    for argv, needle in ((["nope_model"], "Unknown model 'nope_model'"),
                         (["resnet14_cifar10", "--device", "tpu"], "--device 'tpu' is not a device"),
                         (["resnet14_cifar10", "--device", "cuda"], "CUDA is not available")):
        if argv[-1] == "cuda" and torch.cuda.is_available():
            continue
        timing = [] if argv[0] == "nope_model" else ["--min-run-time", "0.001", "--rounds", "1"]
        assert cli.main([*argv, *timing, "--json-out", str(out), "--md-out", str(tmp_path / "b.md")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mlan-bench: error: ") and needle in err and err.count("\n") == 1, err
        assert not out.exists()  # refused before anything is measured or written


@pytest.mark.slow  # ~11 s: runs in CI's slow step
def test_run_benchmarks_quick_regenerates_markdown(tmp_path, repo_root, subprocess_env):
    """The one command that regenerates docs/benchmarks.md, on a tiny subset, writing only under --out-dir."""
    readme = (repo_root / "README.md").read_bytes()
    res = subprocess.run([sys.executable, "benchmarks/run_benchmarks.py", "--quick", "--out-dir", str(tmp_path)],
                         cwd=repo_root, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (repo_root / "README.md").read_bytes() == readme  # the smoke run never touches README.md
    md = (tmp_path / "benchmarks.md").read_text()
    assert md.startswith("# Benchmarks: MLAN models vs the paper's comparison grids")
    assert "## Where the time goes (torch.profiler)" in md and "### Table 6 (CIFAR10)" in md
    assert "## Why the attention costs more than its MACs: per-call conv costs (cpu)" in md
    for section in ("### Target 1 (cpu)", "### Fast paths (cpu)", "### Target 2 (cpu)",
                    "## Speed targets (issue 10): GPU", "paper GPU ms (batch not given)"):
        assert section in md, section
    report = json.loads((tmp_path / "cpu.json").read_text())
    assert report["depths"] == [14] and report["datasets"] == ["cifar10"]
    assert f"{report['results']['resnet14_cifar10']['params'] / 1e6:.3f}M" in md
    assert zoo.model_name("", 20, "cifar10") not in report["results"]  # only the tiny subset was measured
    assert list(report["speed"]["cpu"]) == ["cifar10/14"]
    mlan = report["speed"]["cpu"]["cifar10/14"]["mlan"]
    row = next(ln for ln in md.splitlines() if ln.startswith("| ResNet-14 | multi-level SMA (MLAN) |"))
    assert f"| {mlan['latency_b1_ms']:.2f} | {mlan['infer_b128_ms']:.2f} | 18.12 |" in row  # ours, then paper's



# ----------------------------------------------------------------------------------------------------------------
# README.md's speed summary: generated from the same results (and helpers) as docs/benchmarks.md
# ----------------------------------------------------------------------------------------------------------------
def _flat(text):
    """The summary without its line wrapping."""
    return " ".join(text.split())


def test_readme_speed_summary_is_rendered_from_the_committed_results(repo_root, load_script, tmp_path, monkeypatch):
    """README.md's speed summary is what `python benchmarks/run_benchmarks.py --render-only` renders from
    benchmarks/results/*.json: same arguments (run_benchmarks.render_args), same merged report (cli.add_results)."""
    rb = load_script("benchmarks/run_benchmarks.py")
    monkeypatch.chdir(repo_root)  # run_benchmarks runs mlan-bench in the repo root, with paths relative to it
    original = (repo_root / "README.md").read_bytes()
    readme = tmp_path / "README.md"
    readme.write_bytes(original)
    argv = rb.render_args(rb.CPU_JSON, str(tmp_path / "benchmarks.md"), readme_out=str(readme))
    assert argv[:2] == ["--render-only", rb.CPU_JSON] and "--readme-out" in argv
    args = cli.build_parser().parse_args(argv)
    report = cli.add_results(cli._load_json(args.render_only, "--render-only"), args)
    text = original.decode("utf-8")
    a, b = R.readme_summary_span(text)
    stale = "README.md's speed summary is stale: run python benchmarks/run_benchmarks.py --render-only"
    assert text[a:b].strip() == R.render_readme_summary(report), stale
    assert cli.main(argv) == 0
    assert readme.read_bytes() == original, stale


def _group(group, speed):
    """``speed`` (one synthetic group from _speed) filed under ``group`` ('cifar100/32', ...)."""
    return {group: next(iter(speed.values()))}


def _summary_report(groups, **extra):
    return dict(dict(command="mlan-bench --paper-tables", config=dict(rounds=5, batch=128),
                     machine="CPU: Test CPU, 4 cores, torch threads 4; python 3, torch 2, timm 1",
                     speed={"cpu": groups}, speed_macs={g: {"backbone": 100, "mlan": 110} for g in groups}), **extra)


def test_readme_summary_target1_wording_follows_the_numbers():
    met = _flat(R.render_readme_summary(_summary_report(_speed(mlan=(11.0, 24.0)))))
    assert met.startswith("Current numbers (docs/benchmarks.md; 4-core CPU, fp32, random weights, each depth's models "
                          "timed interleaved, medians of 5 rounds; the targets: MLAN's time ratio to its backbone at "
                          "most 1.1x (inference) / 1.2x (train step) its MACs ratio")
    # inference 11 / 10 = 1.10 <= 1.1 x 1.1; train step 24 / 20 = 1.20 <= 1.2 x 1.1
    assert ("- **Target 1 is met.** At batch 128, MLAN's inference takes 1.10x its backbone's time for R20 on "
            "CIFAR-10, against a MACs ratio of 1.100: time ratio / MACs ratio 1.00 (limit 1.1). Its train step takes "
            "1.20x (1.09 times the MACs ratio; limit 1.2).") in met
    assert "not met" not in met
    # inference 13 / 10 = 1.30 > 1.21; train step 40 / 20 = 2.00 > 1.32
    missed = _flat(R.render_readme_summary(_summary_report(_speed(mlan=(13.0, 40.0)))))
    assert ("- **Target 1 is not met.** At batch 128, MLAN's inference takes 1.30x its backbone's time for R20 on "
            "CIFAR-10, against a MACs ratio of 1.100: time ratio / MACs ratio 1.18 (limit 1.1). Its train step takes "
            "2.00x (1.82 times the MACs ratio; limit 1.2).") in missed
    half = _flat(R.render_readme_summary(_summary_report(_speed(mlan=(12.0, 40.0)))))
    assert "- **Target 1 is met for inference and not met for the train step.**" in half
    # two groups: ranges, and the groups named as a grid
    both = {**_group("cifar10/20", _speed(mlan=(12.0, 40.0))), **_group("cifar100/20", _speed(mlan=(15.0, 50.0)))}
    text = _flat(R.render_readme_summary(_summary_report(both)))
    assert ("inference takes 1.20x to 1.50x its backbone's time for R20 on both datasets, against a MACs ratio of "
            "1.100: time ratio / MACs ratio 1.09 to 1.36 (limit 1.1). Its train step takes 2.00x to 2.50x (1.82 to "
            "2.27 times the MACs ratio; limit 1.2).") in text
    assert "- **Target 1 is met in 1 of 2 rows for inference and not met for the train step.**" in text


def test_readme_summary_target2_lists_its_exceptions():
    fine = {**_group("cifar10/20", _speed()), **_group("cifar100/20", _speed())}
    text = _flat(R.render_readme_summary(_summary_report(fine)))
    assert ("- **Target 2 is met everywhere.** MLAN is faster than SE, CBAM, TA and GC in the same multi-level "
            "structure at depth 20 on both datasets at batch 128 (MLAN / SE 0.12) and at batch 1 (MLAN / SE 0.20).") \
        in text
    # two exceptions at batch 128: SE on CIFAR-10 ResNet-20 (12 / 11), GC on CIFAR-100 ResNet-20 (12 / 10)
    groups = {**_group("cifar10/20", _speed(se=11.0)), **_group("cifar10/32", _speed()),
              **_group("cifar100/20", _speed(gc=10.0)), **_group("cifar100/32", _speed(se=20.0))}
    text = _flat(R.render_readme_summary(_summary_report(groups)))
    assert ("- **Target 2 is met at batch 1, not everywhere at batch 128.** MLAN is faster than SE, CBAM, TA and GC "
            "in the same multi-level structure at every depth (20/32) on both datasets at batch 1 (MLAN / SE 0.20), "
            "and in 6 of 8 (dataset, depth, batch) cases overall: at batch 128 it is slower than SE on CIFAR-10 "
            "ResNet-20 (1.09), and slower than GC on CIFAR-100 ResNet-20 (1.20).") in text
    # the same counts as docs/benchmarks.md's target-2 section
    assert "MLAN is faster than all four in 6 of 8 (dataset, depth, batch) cases; it is not faster than: SE in 1, " \
           "GC in 1." in R.render_target2(groups, "cpu")
    assert "is met everywhere" not in text
    untimed = _speed()
    del untimed["cifar10/20"]["gc"]["infer_b128_ms"]
    text = _flat(R.render_readme_summary(_summary_report({**_group("cifar10/20", _speed(se=11.0)),
                                                          **_group("cifar100/20", untimed)})))
    assert ("- **Target 2 is met at batch 1, not at batch 128.** MLAN is faster than SE, CBAM, TA and GC in the same "
            "multi-level structure at depth 20 on both datasets at batch 1 (MLAN / SE 0.20), and in 2 of 4 (dataset, "
            "depth, batch) cases overall: at batch 128 it is slower than SE on CIFAR-10 ResNet-20 (1.09), and a "
            "rival's time is missing for CIFAR-100 ResNet-20.") in text


def test_readme_summary_fast_path_profile_conv_costs_and_gpu():
    speed = _speed()
    text = _flat(R.render_readme_summary(_summary_report(speed)))
    # reference / fast: b128 18 / 12, train 50 / 40, b1 2 / 1
    assert "- The fast path speeds up MLAN's batch-128 inference 1.50x, its train step 1.25x and its batch-1 " \
           "inference 2.00x." in text
    assert "- GPU numbers for this architecture (target 3) await a GPU session" in text
    assert "profiler" not in text and "Why the attention" not in text  # no profile, no conv costs in the report
    slow_b1 = _speed()
    slow_b1["cifar10/20"]["mlan (reference)"]["latency_b1_ms"] = 0.5
    mixed = _flat(R.render_readme_summary(_summary_report({**speed, **_group("cifar100/20", slow_b1)})))
    assert "- The fast path speeds up MLAN's batch-128 inference 1.50x and its train step 1.25x. At batch 1 the fast " \
           "path's speed-up (reference time / fast time) is 0.50x to 2.00x, above 1 in 1 of 2 groups." in mixed
    speed["cifar10/20"]["mlan (reference)"]["latency_b1_ms"] = 0.5
    prof = dict(profiles=[dict(model="mlan_resnet20_cifar10", device="cpu", train=False, batch=128, total_ms=10.0,
                               rows=[
        dict(op="aten::mkldnn_convolution", shapes="[[128, 8, 32, 32], [3, 8, 3, 3], [], []]", share=0.3),
        dict(op="aten::mul", shapes="[[128, 8, 32, 32], [128, 1, 32, 32]]", share=0.2),
        dict(op="aten::mkldnn_convolution", shapes="[[128, 8, 32, 32], [3, 8, 3, 3], [3], []]", share=0.1)])])
    cc = dict(config=dict(batch=128), conv_costs=[
        _cc_row(16, 16, 3, 32, fwd=4.0, bwd=5.0, as_fwd=4.0), _cc_row(16, 3, 3, 32, fwd=3.0, bwd=30.0, as_fwd=2.5),
        _cc_row(8, 8, 3, 32, fwd=2.0, bwd=2.0, as_fwd=2.0), _cc_row(8, 3, 3, 32, fwd=1.5, bwd=12.0, as_fwd=1.0)])
    report = _summary_report(speed, profile=prof, conv_costs=cc,
                             speed_specs={"cifar10/20": {"mlan": "mlan_resnet20_cifar10"}})
    report["speed"]["cuda"] = _speed(mlan=(11.0, 24.0))
    report["speed"]["cuda channels_last"] = _speed(b1=6.0)  # batch 1: SE, CBAM, TA and GC take 5 ms
    report["speed_sources"] = {"cuda": dict(command="c", machine="CPU: x, 16 cores; GPU: NVIDIA H100; python 3",
                                            config=dict(rounds=5))}
    text = _flat(R.render_readme_summary(report))
    assert "- The fast path speeds up MLAN's batch-128 inference 1.50x and its train step 1.25x, but is slower than " \
           "the reference at batch 1 (0.50x)." in text
    assert "The profiler section shows where MLAN-20's time goes: in inference the 3x3 convolutions 8 -> 3 at 32x32 " \
           "(30.0% + 10.0%) and `aten::mul` on `[128, 8, 32, 32]` (20.0%)." in text
    # conv costs: forward 3 / 4 and 1.5 / 2 of the time for 3 / 16 and 3 / 8 of the MACs; backward-data 10x and 8x
    assert ("- \"Why the attention costs more than its MACs\" (docs/benchmarks.md) times single convs of MLAN's and "
            "the backbone's shapes at batch 128: on the same input, a C -> O conv with O < C takes 0.75 of the "
            "forward time of the C -> C conv for 0.19 to 0.38 of its MACs; aten's backward-data (the input gradient "
            "autograd computes) of the O < C convs takes 8.00 to 10.00 times their forward time, against 1.00 to "
            "1.25 for the C -> C convs.") in text
    # every GPU variant's target-2 verdict, with the rivals MLAN is not faster than
    assert ("- GPU (NVIDIA H100, 'cuda' in docs/benchmarks.md): target 3's CUDA-graph timings are missing; target 1 "
            "in eager mode is met (time ratio / MACs ratio 1.00 for inference (limit 1.1); 1.09 for the train step "
            "(limit 1.2)); target 2: in eager mode it is met everywhere (MLAN faster than all four in 2 of 2 "
            "(dataset, depth, batch) cases); with channels_last it is met at batch 128, not at batch 1 (MLAN faster "
            "than all four in 1 of 2 (dataset, depth, batch) cases; at batch 1 it is slower than SE on CIFAR-10 "
            "ResNet-20 (1.20), and slower than CBAM on CIFAR-10 ResNet-20 (1.20), and slower than TA on CIFAR-10 "
            "ResNet-20 (1.20), and slower than GC on CIFAR-10 ResNet-20 (1.20)); also timed there: "
            "'cuda channels_last'.") in text
    assert "await a GPU session" not in text


def test_readme_summary_markers(tmp_path, capsys):
    start, end = R.README_START_LINE, R.README_END
    with pytest.raises(ValueError, match="speed-summary"):
        R.replace_readme_summary("# Title\n\nno markers\n", "x")
    for broken in (f"{start}\nold\n", f"old\n{end}\n", f"{end}\nold\n{start}\n", f"{start}\n{start}\n{end}\n"):
        with pytest.raises(ValueError, match="speed-summary"):
            R.replace_readme_summary(broken, "x")
    head, tail = "# Title\r\n\nintro ünïcode  \n\n", "\n\n`after` \t\nend without newline"
    text = f"{head}{start}\nold summary\n{end}{tail}"
    new = R.replace_readme_summary(text, "new summary\n")
    assert new == f"{head}{start}\n\nnew summary\n\n{end}{tail}"
    assert R.replace_readme_summary(new, "new summary") == new  # idempotent
    # through the CLI: only the block changes, written in place of the file
    report = _summary_report(_speed())
    base = tmp_path / "cpu.json"
    base.write_text(json.dumps(dict(report, grid_ids=[], datasets=[], depths=[20], devices=["cpu"], results={})))
    readme = tmp_path / "README.md"
    readme.write_bytes(text.encode("utf-8"))
    md = tmp_path / "b.md"
    assert cli.main(["--render-only", str(base), "--md-out", str(md), "--readme-out", str(readme),
                     "--root", str(tmp_path)]) == 0
    out = readme.read_bytes()
    a, b = R.readme_summary_span(out.decode("utf-8"))
    assert out.startswith(f"{head}{start}".encode("utf-8")) and out.endswith(f"{end}{tail}".encode("utf-8"))
    assert out.decode("utf-8")[a:b].strip() == R.render_readme_summary(json.loads(base.read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "b.md", "cpu.json"]  # no temp file left
    # a file without the markers: one-line error before anything is rendered, the file untouched
    capsys.readouterr()
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers\n")
    md.unlink()
    assert cli.main(["--render-only", str(base), "--md-out", str(md), "--readme-out", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlan-bench: error: --readme-out {plain}: no speed-summary block") and err.count("\n") == 1
    assert plain.read_text() == "# no markers\n" and not md.exists()
    assert cli.main(["resnet14_cifar10", "--no-time", "--readme-out", str(readme)]) == 2
    assert "--readme-out needs --paper-tables or --render-only" in capsys.readouterr().err


def test_run_benchmarks_passes_readme_out_only_for_the_docs_render(repo_root, load_script, tmp_path, monkeypatch):
    rb = load_script("benchmarks/run_benchmarks.py")
    calls = []
    monkeypatch.setattr(rb, "bench", lambda *a: calls.append(a))

    def readme_outs(*argv):
        calls.clear()
        rb.main(list(argv))
        assert calls
        return [c[c.index("--readme-out") + 1] if "--readme-out" in c else None for c in calls]

    assert readme_outs("--render-only") == ["README.md"]
    full = readme_outs()  # measuring: paper tables (fails early on a README without markers), ..., final render
    assert full[0] == full[-1] == "README.md" and set(full[1:-1]) == {None}
    assert set(readme_outs("--quick", "--out-dir", str(tmp_path))) == {None}
    assert set(readme_outs("--cuda", "--out-dir", str(tmp_path))) == {None}
    assert set(readme_outs("--render-only", "--md-out", str(tmp_path / "x.md"))) == {None}


def test_recorded_command_names_the_timing_environment(tmp_path, monkeypatch):
    """Variables that change timings (measure.TIMING_ENV) are written in front of the recorded command."""
    for name in B.TIMING_ENV:
        monkeypatch.delenv(name, raising=False)
    assert B.timing_environment() == ""
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert B.timing_environment() == "OMP_WAIT_POLICY=ACTIVE ATEN_CPU_CAPABILITY=avx2 "
    js = tmp_path / "b.json"
    assert cli.main(["--quick", "--no-time", "resnet14_cifar10", "--json-out", str(js), "--md-out",
                     str(tmp_path / "b.md")]) == 0
    assert json.loads(js.read_text())["command"].startswith(
        "OMP_WAIT_POLICY=ACTIVE ATEN_CPU_CAPABILITY=avx2 mlan-bench --quick --no-time")


def test_run_benchmarks_cuda_run_has_cuda_graphs_and_counts_its_cells(load_script, tmp_path, monkeypatch, capsys,
                                                                      fake_gpu_kernels):
    rb = load_script("benchmarks/run_benchmarks.py")
    calls = []
    monkeypatch.setattr(rb, "bench", lambda *a: calls.append(a))
    fake_gpu_kernels(True)  # as where Triton imports: the plan counts the GPU kernels' cells

    def arg(call, flag):
        return call[call.index(flag) + 1] if flag in call else None

    rb.main(["--cuda", "--out-dir", str(tmp_path)])
    first = capsys.readouterr().out.splitlines()[0]
    # graphs: 2 datasets x 4 depths x 10 models (MLAN with the GPU kernels too) x (b1, b128); eager: the same + 3
    # train steps at depths 20 and 32 per dataset; compile: CIFAR-10 ResNet-20 backbone and MLAN, b1, b128, train
    assert first == ("CUDA run: 3 mlan-bench runs, 338 timed cells x 3 rounds (min_run_time 0.01 s) "
                     "[cuda_graphs.json: cuda_graphs 160; cuda.json: eager 172; cuda_compile.json: compile 6], 6 "
                     "torch.compile'd functions. Estimated ~4.5 min (up to ~8.2 min): an estimate from the cell "
                     "count, calibrated on an H100 run's wall times (cuda_graphs.json 144 cells in 63 s, cuda.json "
                     "156 cells in 61 s, cuda_compile.json 6 cells with 6 compilations in 133 s), not a measurement "
                     "of this run.")
    expected, worst = rb.estimate_seconds(rb.cuda_plan(), rb.CUDA_ROUNDS, rb.CUDA_MIN_RUN_TIME)
    assert f"Estimated ~{expected / 60:.1f} min (up to ~{worst / 60:.1f} min)" in first and 0 < expected < worst
    # the calibration reproduces the H100 run's wall times it was fitted on: the runs without compilations together,
    # the compile run exactly
    runs = {name: (cells, n, s) for name, cells, n, s in rb.CUDA_CALIBRATION}
    plan = [(name, None, None, None, {"compile" if n else "x": cells}) for name, (cells, n, _) in runs.items()]
    fit = {p[0]: rb.estimate_seconds([p], rb.CALIBRATION_ROUNDS, rb.CALIBRATION_MIN_RUN_TIME)[0] for p in plan}
    assert fit["cuda_graphs"] + fit["cuda"] == pytest.approx(runs["cuda_graphs"][2] + runs["cuda"][2])
    assert fit["cuda_compile"] == pytest.approx(runs["cuda_compile"][2])
    assert [arg(c, "--cuda-variants") for c in calls] == ["cuda_graphs", "eager", "compile"]
    assert [os.path.basename(arg(c, "--json-out")) for c in calls] == ["cuda_graphs.json", "cuda.json",
                                                                        "cuda_compile.json"]
    assert {arg(c, "--device") for c in calls} == {"cuda"} and {arg(c, "--rounds") for c in calls} == {"3"}
    assert [(arg(c, "--depths"), arg(c, "--datasets")) for c in calls] == [("14,20,26,32", "cifar10,cifar100")] * 2 \
        + [("20", "cifar10")]
    calls.clear()
    rb.main(["--cuda", "--out-dir", str(tmp_path), "--depths", "20"])  # what target 3 reads, only
    assert "92 timed cells" in capsys.readouterr().out and {arg(c, "--depths") for c in calls} == {"20"}
    calls.clear()
    rb.main(["--cuda", "--out-dir", str(tmp_path), "--datasets", "cifar100"])  # no compile run: it is CIFAR-10's
    assert [arg(c, "--cuda-variants") for c in calls] == ["cuda_graphs", "eager"]
    calls.clear()
    fake_gpu_kernels(False)  # e.g. no Triton here: the plan counts the models the GPU machine would time without it
    rb.main(["--cuda", "--out-dir", str(tmp_path)])
    assert "CUDA run: 3 mlan-bench runs, 306 timed cells x 3 rounds (min_run_time 0.01 s) [cuda_graphs.json: " \
           "cuda_graphs 144; cuda.json: eager 156; cuda_compile.json: compile 6]" in capsys.readouterr().out
    capsys.readouterr()
    for bad, msg in ((["--depths", "20"], "limit the --cuda run only"),
                     (["--cuda", "--out-dir", str(tmp_path), "--depths", "21"], "unknown depth/dataset [21]"),
                     (["--cuda", "--out-dir", str(tmp_path), "--depths", "x"], "invalid literal for int()")):
        with pytest.raises(SystemExit) as e:
            rb.main(bad)
        assert e.value.code == 2 and msg in capsys.readouterr().err
    calls.clear()

    def first_fails(*a):
        calls.append(a)
        if len(calls) == 1:
            raise subprocess.CalledProcessError(1, "mlan-bench")

    monkeypatch.setattr(rb, "bench", first_fails)
    with pytest.raises(SystemExit, match="cuda_graphs failed"):  # the other runs still ran
        rb.main(["--cuda", "--out-dir", str(tmp_path)])
    assert [arg(c, "--cuda-variants") for c in calls] == ["cuda_graphs", "eager", "compile"]
    monkeypatch.setattr(rb, "bench", lambda *a: calls.append(a))
    calls.clear()
    rb.main([])  # the CPU run never asks for the CUDA-only variant (it may merge saved CUDA results)
    assert calls and not any("cuda" in (arg(c, "--cuda-variants") or "") + (arg(c, "--device") or "") for c in calls)
    for name in ("cuda.json", "cuda_graphs.json", "cuda_compile.json"):
        (tmp_path / name).write_text("{}")
    argv = rb.render_args("cpu.json", "b.md", results_dir=str(tmp_path))
    assert [os.path.basename(argv[i + 1]) for i, a in enumerate(argv) if a == "--merge"] == \
        ["cuda.json", "cuda_graphs.json", "cuda_compile.json"]


# ----------------------------------------------------------------------------------------------------------------
# The compiled CPU kernels (?cpu_kernels=True, "mlan (cpu kernels)"): specs, plans, records and reports
# ----------------------------------------------------------------------------------------------------------------
def test_cpu_kernels_spec_option_sets_the_models_switch():
    from mlan_timm.models.blocks import MLANGroup

    spec = B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=True")
    assert spec.key == "mlan_resnet14_cifar10?cpu_kernels=True" and B.parse_spec(spec.key).kwargs == spec.kwargs
    assert spec.kernel_paths == (B.CPU_KERNEL_PATH,)
    assert B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=False").kernel_paths == ()
    groups = [m for m in spec.build().modules() if isinstance(m, MLANGroup)]
    assert groups and all(g.fast_path and g.cpu_kernels is True for g in groups)  # fast_paths not given: True
    both = B.parse_spec("mlan_resnet14_cifar10?fast_paths=False&cpu_kernels=True").build()
    assert all(not g.fast_path and g.cpu_kernels is True for g in both.modules() if isinstance(g, MLANGroup))
    off = B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=False").build()
    assert all(g.fast_path and g.cpu_kernels is False for g in off.modules() if isinstance(g, MLANGroup))
    plain = B.parse_spec("mlan_resnet14_cifar10").build()  # no option: the process-wide setting (None)
    assert all(g.cpu_kernels is None for g in plain.modules() if isinstance(g, MLANGroup))
    for option in ("fast_paths=False", "cpu_kernels=True"):  # the same clear error for both options
        with pytest.raises(ValueError, match=rf"resnet10t has no set_fast_paths \(spec option {option[:-6]}"):
            B.parse_spec(f"resnet10t?num_classes=10&{option}").build()


def test_speed_plan_times_the_cpu_kernels_on_cpu_only(fake_kernels):
    t1 = B.speed_plan("cifar10", 20, target1=True, cpu_kernels=True)
    spec, kinds = t1[B.CPU_KERNEL_SPEED_MODELS[0]]
    assert B.CPU_KERNEL_SPEED_MODELS == (R.KERNELS,) and spec.key == "mlan_resnet20_cifar10?cpu_kernels=True"
    assert kinds == ("b1", "b128", "train") == t1["mlan"][1]  # as MLAN: batch 1, batch 128, and the train step
    assert list(t1).index(R.KERNELS) == list(t1).index("mlan") + 1  # interleaved right after the library path
    assert B.speed_plan("cifar10", 14, target1=False, cpu_kernels=True)[R.KERNELS][1] == ("b1", "b128")
    # never on CUDA, torch.compile (the kernels stand aside while compiling) or channels_last (not NCHW)
    for kw in (dict(device="cuda"), dict(device="cuda:0"), dict(compile=True), dict(channels_last=True),
               dict(device="cuda", cuda_graphs=True), dict(cpu_kernels=False)):
        assert R.KERNELS not in B.speed_plan("cifar10", 20, target1=True, **dict(dict(cpu_kernels=True), **kw)), kw
    # by default: on CPU where the kernels load
    fake_kernels(True)
    assert R.KERNELS in B.speed_plan("cifar10", 20, target1=True)
    assert R.KERNELS not in B.speed_plan("cifar10", 20, target1=True, device="cuda")
    grid = dict(datasets=zoo.DATASETS, depths=zoo.DEPTHS)
    # + b1 and b128 in the 8 groups, + the train step in the 4 target-1 groups; the CUDA counts are unchanged
    assert B.count_speed_cells(**grid) == 156 + 8 * 2 + 4 == 176
    assert B.count_speed_cells(**grid, device="cuda", gpu_kernels=False) == \
        B.count_speed_cells(**grid, cpu_kernels=False) == 156
    fake_kernels(False)
    assert R.KERNELS not in B.speed_plan("cifar10", 20, target1=True)


def _run_speed_only(monkeypatch, timed, devices=("cpu",), **kw):
    """run_paper_tables' speed section on ``devices`` for CIFAR-10 ResNet-14 with the timing and the model counting
    replaced (the plans are real): ``timed`` collects the specs each group timed (with the variant's flags)."""
    def fake_interleaved(specs, device, cfg, kinds, **flags):
        timed.append({label: spec.key for label, spec in specs.items()})
        timed[-1]["flags"] = (device, tuple(f for f, on in flags.items() if on), dict(kinds))
        return {label: dict(infer_b128_ms=1.0, latency_b1_ms=1.0) for label in specs}

    monkeypatch.setattr(B, "time_interleaved", fake_interleaved)
    monkeypatch.setattr(B, "measure", lambda specs, *a, **k: {s.key: dict(params=1, macs=1) for s in specs})
    return B.run_paper_tables(devices=list(devices), depths=(14,), datasets=("cifar10",), speed_only=True,
                              cfg=B.TimingConfig.quick(), log=lambda s: None, target1_depths=(14,), **kw)


def test_unavailable_cpu_kernels_are_left_out_and_said(monkeypatch, fake_kernels):
    fake_kernels(False)
    timed = []
    report = _run_speed_only(monkeypatch, timed)
    info = report["config"]["cpu_kernels"]
    assert info["available"] is False and info["reason"] == NO_KERNEL_ISA and info["left_out"] == [R.KERNELS]
    assert timed and all(R.KERNELS not in t for t in timed)  # not timed as the library path under its name
    assert all(R.GPU_KERNELS not in t for t in timed) and "gpu_kernels" not in report["config"]  # a CPU run
    assert R.KERNELS not in report["speed"]["cpu"]["cifar10/14"]
    assert R.KERNELS not in report["speed_specs"]["cifar10/14"]
    json.dumps(report)  # the record is plain JSON
    assert f"CPU kernels: unavailable: {NO_KERNEL_ISA}" in B.machine_line(["cpu"])
    assert "CPU kernels" not in B.machine_line(["cuda"])
    report.update(command="mlan-bench --paper-tables", machine=B.machine_line(["cpu"]))
    said = (f"CPU kernels unavailable: {NO_KERNEL_ISA}; `mlan (cpu kernels)` (MLAN with `?cpu_kernels=True`) not "
            "timed in this run.")
    text = R.render_speed(report)
    assert said in text and "### CPU kernels (cpu)" not in text and R.KERNELS_METHOD not in text
    assert f"- {said}" in _flat(R.render_readme_summary(report))
    # where they load, the same run times them (and records that nothing was left out)
    fake_kernels(True)
    timed.clear()
    report = _run_speed_only(monkeypatch, timed)
    assert report["config"]["cpu_kernels"]["available"] is True and report["config"]["cpu_kernels"]["left_out"] == []
    assert timed[0][R.KERNELS] == report["speed_specs"]["cifar10/14"][R.KERNELS] == \
        "mlan_resnet14_cifar10?cpu_kernels=True"
    assert R.KERNELS_METHOD in R.render_speed(report) and "CPU kernels unavailable" not in R.render_speed(report)


def test_measure_does_not_time_kernels_models_without_the_kernels(fake_kernels):
    fake_kernels(False)
    spec = B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=True")
    rec = B.measure([spec], ("cpu",), B.TimingConfig.quick())[spec.key]
    assert rec["not_timed"] == {"cpu": f"CPU kernels unavailable: {NO_KERNEL_ISA}"} and "cpu" not in rec
    off = B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=False")
    assert rec["macs"] == B.count_macs(off.build())  # the same function's MACs
    table = R.render_results_table({spec.key: rec}, ["cpu"])
    assert f"| `{spec.key}` | {rec['params'] / 1e6:.3f}M ({rec['params']:,}) | {rec['macs'] / 1e6:.2f}M | CPU " \
           f"kernels unavailable: {NO_KERNEL_ISA} | — | — | — |" in table


def test_targets_read_the_cpu_kernels_beside_the_library_fast_path():
    macs = {"cifar10/20": {"backbone": 100, "mlan": 110}}  # the kernels' MACs: MLAN's (same function)
    speed = _speed(mlan=(12.0, 40.0), kernels=(11.0, 25.0, 0.5))
    rows = R.target1_rows(speed, macs)
    assert [(r["model"], r["kind"], r["met"]) for r in rows] == [
        ("mlan", "inference", True), ("mlan", "train step", False),
        (R.KERNELS, "inference", True), (R.KERNELS, "train step", True)]
    text = R.render_target1(speed, macs, "cpu")
    assert "| dataset | depth | MLAN path | measure | backbone ms | MLAN ms |" in text
    # kernels: inference 11 / 10 = 1.10 <= 1.21, train 25 / 20 = 1.25 <= 1.32 (1.25 / 1.1 = 1.14 of the MACs ratio)
    for row in ("| CIFAR10 | ResNet-20 | library fast path | train step | 20.00 | 40.00 | 2.00 | 1.100 | ≤ 1.32 "
                "(1.2 x MACs ratio) | 1.82 | no |",
                "| CIFAR10 | ResNet-20 | CPU kernels | inference | 10.00 | 11.00 | 1.10 | 1.100 | ≤ 1.21 (1.1 x MACs "
                "ratio) | 1.00 | yes |",
                "| CIFAR10 | ResNet-20 | CPU kernels | train step | 20.00 | 25.00 | 1.25 | 1.100 | ≤ 1.32 (1.2 x MACs "
                "ratio) | 1.14 | yes |",
                "- train step, library fast path: met in 0 of 1 rows; time ratio / MACs ratio 1.82 (limit 1.2).",
                "- train step, CPU kernels: met in 1 of 1 rows; time ratio / MACs ratio 1.14 (limit 1.2)."):
        assert row in text, row
    # the fast-path section: the kernels against the library fast path, library / kernels time
    fast = R.render_fast_paths(speed, "cpu")
    assert fast.index("### Fast paths (cpu)") < fast.index("### CPU kernels (cpu): library fast path vs "
                                                           "`?cpu_kernels=True`, same interleaved run")
    assert "| CIFAR10 | ResNet-20 | MLAN | 1.00 | 0.50 | 2.00x | 12.00 | 11.00 | 1.09x | 40.00 | 25.00 | 1.60x |" \
        in fast
    assert "Speed-up (library fast path time / CPU kernels time) 1.09 to 2.00 over these 3 cells." in fast
    assert "Speed-up (reference time / fast time) 1.25 to 2.00 over these 3 cells." in fast  # unchanged
    assert R.render_kernels(_speed(), "cpu") == ""


def test_target2_verdicts_per_mlan_path_use_the_paired_ratios():
    # library path vs SE per round 1.045, 1.042, 0.43: slower (median 1.04); kernels vs SE per round 0.45, 1.04,
    # 0.86: faster (median 0.86), though the ratio of medians (12 / 12 = 1) would say not faster
    speed = _paired_speed([11.5, 12.5, 6.0], [11.0, 12.0, 14.0])
    speed["cifar10/20"][R.KERNELS] = _paired([5.0, 12.5, 12.0], [1.0] * 3)[0]
    (lib,), (ker,) = R.target2_cases(speed), R.target2_cases(speed, R.KERNELS)
    assert lib["model"] == "mlan" and lib["slower"] == ["SE"] and not lib["met"]
    assert ker["model"] == R.KERNELS and ker["met"] and ker["rivals"]["SE"][1] == pytest.approx(12.0 / 14.0)
    text = R.render_target2(speed, "cpu")
    assert text.index("#### batch 128 inference, MLAN with the library fast path") \
        < text.index("#### batch 128 inference, MLAN with the CPU kernels")
    assert "| CIFAR10 | ResNet-20 | 12.00 | 12.00 | 0.86 |" in text
    assert "MLAN with the library fast path is faster than all four in 0 of 1 (dataset, depth, batch) cases; it is " \
           "not faster than: SE in 1." in text
    assert "MLAN with the CPU kernels is faster than all four in 1 of 1 (dataset, depth, batch) cases; it is not " \
           "faster than: none." in text
    assert "MLAN with the" not in R.render_target2(_speed(), "cpu")  # older reports: one MLAN, as before


def test_readme_summary_reads_the_cpu_kernels():
    text = _flat(R.render_readme_summary(_summary_report(_speed(mlan=(12.0, 40.0), kernels=(11.0, 25.0, 0.5)))))
    assert ("- **Target 1 is met for inference and not met for the train step with the library fast path; with the "
            "CPU kernels it is met.** At batch 128, MLAN's inference takes 1.20x its backbone's time for R20 on "
            "CIFAR-10, against a MACs ratio of 1.100: time ratio / MACs ratio 1.09 (limit 1.1). Its train step takes "
            "2.00x (1.82 times the MACs ratio; limit 1.2). With the CPU kernels (`?cpu_kernels=True`), MLAN's "
            "inference takes 1.10x (1.00 times the MACs ratio; limit 1.1) and its train step 1.25x (1.14 times the "
            "MACs ratio; limit 1.2).") in text
    assert ("- **Target 2 is met everywhere with the library fast path; with the CPU kernels it is met everywhere.** "
            "MLAN is faster than SE, CBAM, TA and GC in the same multi-level structure at depth 20 on CIFAR-10 at "
            "batch 128 (MLAN / SE 0.12) and at batch 1 (MLAN / SE 0.20). With the CPU kernels (`?cpu_kernels=True`), "
            "MLAN is faster than SE, CBAM, TA and GC in the same multi-level structure at depth 20 on CIFAR-10 at "
            "batch 128 (MLAN / SE 0.11) and at batch 1 (MLAN / SE 0.10).") in text
    assert ("- The CPU kernels (`?cpu_kernels=True`) speed up MLAN's batch-128 inference 1.09x, its train step 1.60x "
            "and its batch-1 inference 2.00x over the library fast path.") in text
    # slower than the library path at batch 1: said so (kernels 2 ms vs 1 ms)
    slow = _flat(R.render_readme_summary(_summary_report(_speed(kernels=(11.0, 25.0, 2.0)))))
    assert "speed up MLAN's batch-128 inference 1.09x and its train step 1.60x over the library fast path, but are " \
           "slower than the library fast path at batch 1 (0.50x)." in slow
    # process-wide kernels: the 'MLAN' rows are not the library path, and the section says so
    report = _summary_report(_speed(kernels=(11.0, 25.0, 0.5)))
    report["config"]["cpu_kernels"] = dict(_kernels_info(True), process_wide=True, left_out=[])
    assert "'MLAN' (the library fast path rows) ran them too" in R.render_speed(report)


def test_conv_costs_compare_the_cpu_kernels_with_pytorchs_convs():
    rows = [_cc_row(16, 16, 3, 32, fwd=4.0, bwd=5.0, as_fwd=4.0),
            _cc_row(16, 3, 3, 32, fwd=3.0, bwd=30.0, as_fwd=2.5, bwd_w=2.0, kern=(1.5, 0.5)),
            _cc_row(8, 3, 3, 32, fwd=1.5, bwd=12.0, as_fwd=1.0, bwd_w=1.0, kern=(0.3, 0.5))]
    cc = dict(command="mlan-bench --conv-costs", machine="m", device="cpu",
              config=dict(rounds=5, min_run_time=0.3, warmup=3, batch=128, cpu_kernels=_kernels_info(True)),
              conv_costs=rows)
    r = R.conv_cost_ratios(rows)
    assert r["kernels_forward"] == pytest.approx([0.5, 0.2]) and r["kernels_backward_weight"] == [0.25, 0.5]
    text = R.render_conv_costs(cc)
    assert "| backward-weight ms | 1x1 as bmm ms | CPU kernels forward ms | CPU kernels backward-weight ms |" in text
    assert "| [128, 16, 32, 32] -> 3, 3x3 | 56.62M | 3.000 | 18.9 | 30.000 | 2.500 | 2.000 | — | 1.500 | 0.500 |" \
        in text
    assert "| [128, 16, 32, 32] -> 16, 3x3 | 301.99M | 4.000 |" in text and text.count("| — | — | — |") == 1
    # 1.5 / 3 and 0.3 / 1.5 of the forward; 0.5 / 2 and 0.5 / 1 of the backward-weight
    finding = ("The compiled CPU kernels' `conv_same` takes 0.20 to 0.50 times the forward time of PyTorch's conv "
               "(oneDNN) on the 2 C -> O convs with O < C, and `conv_same_grad_weight` 0.25 to 0.50 times the time of "
               "its backward-weight.")
    assert finding in text
    summary = _flat(R.render_readme_summary(_summary_report(_speed(), conv_costs=cc)))
    assert "; the compiled CPU kernels' `conv_same` takes 0.20 to 0.50 times the forward time of PyTorch's conv " \
           "(oneDNN) on the 2 C -> O convs with O < C, and `conv_same_grad_weight` 0.25 to 0.50 times" in summary
    old = dict(cc, conv_costs=[_cc_row(16, 3, 3, 32, fwd=3.0, bwd=30.0, as_fwd=2.5)])  # before the kernels
    assert "CPU kernels" not in R.render_conv_costs(old) and "conv_same" not in R.render_conv_costs(old)


def test_reports_without_the_cpu_kernels_render_as_before(repo_root):
    """benchmarks/results/*.json from before the kernels (no 'mlan (cpu kernels)', no config['cpu_kernels'], no
    kernel columns) still render: no kernel rows, columns or sentences."""
    results = repo_root / "benchmarks" / "results"
    report = json.loads((results / "cpu.json").read_text())
    report["config"].pop("cpu_kernels", None)
    for groups in report["speed"].values():
        for res in groups.values():
            res.pop(R.KERNELS, None)
    for g in report.get("speed_specs", {}).values():
        g.pop(R.KERNELS, None)
    cc = json.loads((results / "conv_costs_cpu.json").read_text())
    cc["config"].pop("cpu_kernels", None)
    for rec in (report, cc):  # machine lines from before the kernels had no "CPU kernels: ...; " part
        rec["machine"] = re.sub(r"CPU kernels: [^;]*; ", "", rec["machine"])
    cc["conv_costs"] = [{k: v for k, v in r.items() if not k.startswith("kernels_")} for r in cc["conv_costs"]]
    report["conv_costs"] = cc
    text = R.render_report(report, root="/nonexistent")
    assert "### Target 1 (cpu)" in text and "### Target 2 (cpu)" in text and "### Fast paths (cpu)" in text
    for new in ("MLAN path", "CPU kernels", "cpu_kernels", "conv_same", "MLAN with the"):
        assert new not in text, new
    summary = R.render_readme_summary(report)
    assert "**Target 1" in summary and "CPU kernels" not in summary and "cpu_kernels" not in summary


def test_cpu_kernels_where_they_load():
    """The one test that builds the kernels (about 15 s the first time, cached afterwards); skipped without them."""
    from mlan_timm.layers import cpu_kernels as ck

    process_wide = ck.cpu_kernels_enabled()  # MLAN_TIMM_CPU_KERNELS=1 in the environment: said, not changed
    info = B.cpu_kernels_info()
    if not info["available"]:
        pytest.skip(f"CPU kernels unavailable: {info['reason']}")
    assert info["status"].startswith(f"available ({ck.kernel_isa()}, {info['source']}), ")
    assert ck.kernel_isa() in ("AVX-512", "AVX2")
    assert info["source"].startswith("small_conv.cpp ") and info["process_wide"] == process_wide
    assert ("ON process-wide" if process_wide else "used only by the models built with cpu_kernels=True") \
        in info["status"]
    assert f"CPU kernels: {info['status']}" in B.machine_line(["cpu"])
    # conv costs: the kernels' columns on the mask conv only, checked against F.conv2d / conv2d_weight inside
    rows = B.measure_conv_costs("cpu", cfg=CONV_COST_TEST_CFG, shapes=((8, 3, 3, 16), (8, 8, 3, 16)))
    mask, square = rows
    assert mask["kernels_forward_ms"] > 0 and mask["kernels_backward_weight_ms"] > 0
    assert "kernels_forward_ms" not in square and "kernels_backward_weight_ms" not in square
    text = R.render_conv_costs(dict(command="c", machine="m", device="cpu", conv_costs=rows,
                                    config=dict(rounds=1, min_run_time=0.001, warmup=1, batch=2, cpu_kernels=info)))
    fwd, bw = (mask[f"kernels_{c}_ms"] / mask[f"{c}_ms"] for c in ("forward", "backward_weight"))
    assert (f"The compiled CPU kernels' `conv_same` takes {fwd:.2f} times the forward time of PyTorch's conv"
            f"{' (oneDNN)' if mask['conv_backend'] == 'Mkldnn' else ''} on the 1 C -> O convs with O < C, and "
            f"`conv_same_grad_weight` {bw:.2f} times the time of its backward-weight.") in text
    # MACs of the kernels' model: the kernels stand aside under FlopCounterMode (a Python dispatch mode), so the
    # count is the model's whatever its setting
    spec = B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=True")
    off = B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=False")
    assert B.count_macs(spec.build()) == B.count_macs(off.build())
    res = B.measure([spec, off, B.parse_spec("mlan_resnet14_cifar10")], ())
    assert res[spec.key]["macs"] == res[off.key]["macs"] == res["mlan_resnet14_cifar10"]["macs"]
    assert R.KERNELS in B.speed_plan("cifar10", 14, target1=False)  # planned on this CPU
    assert ck.cpu_kernels_enabled() == process_wide  # the bench never switches them on process-wide


def test_profile_sentence_says_which_path_it_profiles_when_the_report_has_the_kernels(repo_root):
    """The profiler times the library fast path; beside the CPU kernels' rows the sentence says so."""
    results = repo_root / "benchmarks" / "results"
    report = json.loads((results / "cpu.json").read_text())
    report["profile"] = json.loads((results / "profile_cpu.json").read_text())
    has_kernels = any(R.KERNELS in group for dev in report["speed"].values() for group in dev.values())
    text = R._profile_sentence(report)
    assert text.startswith("The profiler section (library fast path: the profiler sees no operators inside the CPU "
                           "kernels' calls) shows where MLAN-20's time goes: " if has_kernels else
                           "The profiler section shows where MLAN-20's time goes: ")
    for dev in report["speed"].values():
        for group in dev.values():
            group.pop(R.KERNELS, None)
    assert R._profile_sentence(report).startswith("The profiler section shows where MLAN-20's time goes: ")


# ----------------------------------------------------------------------------------------------------------------
# The Triton kernels (?gpu_kernels=True, "mlan (gpu kernels)"): specs, plans, records and reports
# ----------------------------------------------------------------------------------------------------------------
def test_gpu_kernels_spec_option_sets_the_models_switch():
    from mlan_timm.models.blocks import MLANGroup

    def switches(text):
        return {(g.fast_path, g.cpu_kernels, g.gpu_kernels) for g in B.parse_spec(text).build().modules()
                if isinstance(g, MLANGroup)}

    spec = B.parse_spec("mlan_resnet14_cifar10?gpu_kernels=True")
    assert spec.key == "mlan_resnet14_cifar10?gpu_kernels=True" and B.parse_spec(spec.key).kwargs == spec.kwargs
    assert spec.kernel_paths == (B.GPU_KERNEL_PATH,) and B.GPU_KERNEL_PATH.label == R.GPU_KERNELS
    assert switches(spec.key) == {(True, None, True)}  # fast_paths not given: True; CPU kernels: process-wide
    both = B.parse_spec("mlan_resnet14_cifar10?cpu_kernels=True&gpu_kernels=True")
    assert both.kernel_paths == B.KERNEL_PATHS and switches(both.key) == {(True, True, True)}
    assert switches("mlan_resnet14_cifar10?fast_paths=False&gpu_kernels=True") == {(False, None, True)}
    assert switches("mlan_resnet14_cifar10?gpu_kernels=False") == {(True, None, False)}
    with pytest.raises(ValueError, match=r"resnet10t has no set_fast_paths \(spec option gpu_kernels\)"):
        B.parse_spec("resnet10t?gpu_kernels=True").build()


def test_speed_plan_times_the_gpu_kernels_on_cuda_eager_and_graphs_only(fake_gpu_kernels):
    for flags in (dict(), dict(cuda_graphs=True)):
        plan = B.speed_plan("cifar10", 20, target1=True, device="cuda", gpu_kernels=True, **flags)
        spec, kinds = plan[R.GPU_KERNELS]
        assert spec.key == "mlan_resnet20_cifar10?gpu_kernels=True"
        assert kinds == ("b1", "b128")  # inference only: no train step (it would time the fallback), graphs or not
        assert list(plan).index(R.GPU_KERNELS) == list(plan).index("mlan") + 1  # right after the library path
    assert B.speed_plan("cifar10", 14, target1=False, b1=False, device="cuda:0", gpu_kernels=True)[R.GPU_KERNELS][1] \
        == ("b128",)
    # never under torch.compile (the kernels stand aside), channels_last, on CPU, nor when asked not to
    for kw in (dict(compile=True), dict(channels_last=True), dict(channels_last=True, cuda_graphs=True),
               dict(device="cpu"), dict(gpu_kernels=False)):
        assert R.GPU_KERNELS not in B.speed_plan("cifar10", 20, target1=True,
                                                 **dict(dict(device="cuda", gpu_kernels=True), **kw)), kw
    # by default: where the kernels work (gpu_kernels_info; on a machine without CUDA: where Triton imports)
    fake_gpu_kernels(True)
    assert R.GPU_KERNELS in B.speed_plan("cifar10", 20, target1=True, device="cuda")
    assert R.GPU_KERNELS not in B.speed_plan("cifar10", 20, target1=True, cpu_kernels=False)
    grid = dict(datasets=zoo.DATASETS, depths=zoo.DEPTHS, device="cuda")
    # + b1 and b128 in each of the 8 groups, eager and CUDA graphs; channels_last and compile unchanged
    assert B.count_speed_cells(**grid) == 156 + 8 * 2 == 172
    assert B.count_speed_cells(**grid, variant="cuda_graphs") == 144 + 8 * 2 == 160
    assert B.count_speed_cells(**grid, variant="channels_last") == 156
    assert B.count_speed_cells(["cifar10"], [20], "compile", device="cuda") == 6
    fake_gpu_kernels(False)
    assert R.GPU_KERNELS not in B.speed_plan("cifar10", 20, target1=True, device="cuda")
    assert B.count_speed_cells(**grid) == 156


def test_gpu_kernels_timed_beside_mlan_or_left_out_and_said(monkeypatch, fake_gpu_kernels):
    """run_paper_tables on CUDA (timing replaced): the GPU kernels' model in the eager and CUDA-graph groups,
    inference only, never under torch.compile; left out, with the reason, where the kernels do not work."""
    variants = dict(cuda_variants=("eager", "cuda_graphs", "compile"))
    fake_gpu_kernels(True)
    timed = []
    report = _run_speed_only(monkeypatch, timed, devices=("cuda",), **variants)
    by_flags = {t["flags"][1]: t for t in timed}
    assert set(by_flags) == {(), ("cuda_graphs",), ("compile",)}
    for flags in ((), ("cuda_graphs",)):
        assert by_flags[flags][R.GPU_KERNELS] == "mlan_resnet14_cifar10?gpu_kernels=True"
        assert by_flags[flags]["flags"][2][R.GPU_KERNELS] == ("b1", "b128")
    assert by_flags[()]["flags"][2]["mlan"] == ("b1", "b128", "train")
    assert R.GPU_KERNELS not in by_flags[("compile",)] and R.KERNELS not in by_flags[()]
    assert report["speed_specs"]["cifar10/14"][R.GPU_KERNELS] == "mlan_resnet14_cifar10?gpu_kernels=True"
    assert list(report["speed_specs"]["cifar10/14"])[:3] == ["backbone", "mlan", R.GPU_KERNELS]
    info = report["config"]["gpu_kernels"]
    assert info == dict(_gpu_kernels_info(True), left_out=[]) and "cpu_kernels" not in report["config"]
    json.dumps(report)  # the record is plain JSON
    report.update(command="mlan-bench --paper-tables --device cuda", machine=GPU_MACHINE)
    text = R.render_speed(report)
    assert text.count(R.GPU_KERNELS_METHOD) == 2 and "unavailable" not in text  # the eager and graphs sections
    # unavailable: left out, and said in the sections that would have timed them
    fake_gpu_kernels(False)
    timed.clear()
    report = _run_speed_only(monkeypatch, timed, devices=("cuda",), **variants)
    assert timed and all(R.GPU_KERNELS not in t for t in timed)  # not timed as the library path under its name
    assert R.GPU_KERNELS not in report["speed_specs"]["cifar10/14"]
    assert report["config"]["gpu_kernels"]["left_out"] == [R.GPU_KERNELS]
    report.update(command="mlan-bench --paper-tables --device cuda", machine=GPU_MACHINE)
    said = (f"GPU kernels unavailable: {NO_TRITON}; `mlan (gpu kernels)` (MLAN with `?gpu_kernels=True`) not timed "
            "in this run.")
    sections = R.render_speed(report).split("\n## ")
    assert [s.splitlines()[0].rpartition(": ")[2] for s in sections if said in s] == ["cuda", "cuda cuda_graphs"]
    # a kernel that fails during the run (e.g. one shape Triton cannot compile): recorded and said
    fake_gpu_kernels(True, after=False)
    report = _run_speed_only(monkeypatch, [], devices=("cuda",), cuda_variants=("eager",))
    assert report["config"]["gpu_kernels"]["failed"] == NO_TRITON
    report.update(command="c", machine=GPU_MACHINE)
    assert (f"The GPU kernels failed during this run ({NO_TRITON}): `mlan (gpu kernels)` cells timed after the "
            "failure ran PyTorch's operators.") in R.render_speed(report)


def test_measure_times_gpu_kernel_specs_in_their_variants_only(monkeypatch, fake_gpu_kernels):
    """mlan-bench MODEL?gpu_kernels=True: timed on CUDA in eager and CUDA graphs, inference only; not at all where
    the kernels do not work (timing replaced: no GPU here)."""
    calls = []
    monkeypatch.setattr(B, "time_model", lambda spec, dev, cfg, what, **flags: calls.append(
        (dev, tuple(f for f, on in flags.items() if on), tuple(what))) or {"infer_b128_ms": 1.0})
    spec = B.parse_spec("mlan_resnet14_cifar10?gpu_kernels=True")
    fake_gpu_kernels(True)
    rec = B.measure([spec], ("cpu", "cuda"), cuda_variants=("eager", "channels_last", "compile", "cuda_graphs"))
    assert calls == [("cpu", (), ("b1", "b128", "train")),  # on CPU the option changes nothing: timed as asked
                     ("cuda", (), ("b1", "b128")), ("cuda", ("cuda_graphs",), ("b1", "b128"))]
    assert set(rec[spec.key]) >= {"cpu", "cuda", "cuda_cuda_graphs"} and "cuda_compile" not in rec[spec.key]
    fake_gpu_kernels(False)
    calls.clear()
    rec = B.measure([spec], ("cuda",), cuda_variants=("eager",))[spec.key]
    assert calls == [] and rec["not_timed"] == {"cuda": f"GPU kernels unavailable: {NO_TRITON}"}


def _with_gpu_kernels(report, cells):
    """``report`` with MLAN with the GPU kernels in its GPU groups: label -> group -> (b1 ms, large-batch ms)."""
    for label, groups in cells.items():
        for group, (b1, b128) in groups.items():
            report["speed"][label][group][R.GPU_KERNELS] = dict(latency_b1_ms=b1, infer_b128_ms=b128)
    return report


#: MLAN with the GPU kernels beside _gpu_report's pairs: MLAN / backbone 1.50, 1.60 (eager, CIFAR-10 b1, b128), 1.60,
#: 1.50 (CIFAR-100); with CUDA graphs 1.08, 1.10 (CIFAR-10), 1.12, 1.07 (CIFAR-100).
GPU_KERNEL_CELLS = {"cuda": {"cifar10/20": (3.0, 4.0), "cifar100/20": (3.2, 4.5)},
                    "cuda cuda_graphs": {"cifar10/20": (0.108, 0.55), "cifar100/20": (0.112, 0.642)}}


def test_reports_read_the_gpu_kernels_beside_the_library_fast_path():
    # the library path misses target 3 (CIFAR-100 batch 1 with CUDA graphs: 0.13 / 0.10), the GPU kernels meet it
    report = _with_gpu_kernels(_gpu_report(graphs_c100_b1=(0.10, 0.13)), GPU_KERNEL_CELLS)
    text = R.render_speed(report)
    # the A/B table in the eager and CUDA-graph sections: library fast path / kernels, no train step
    graphs = text[text.index("## Speed targets (issue 10): cuda cuda_graphs"):]
    assert ("### GPU kernels (cuda cuda_graphs): library fast path vs `?gpu_kernels=True`, same interleaved run"
            in graphs) and R.GPU_KERNELS_METHOD in graphs
    assert "| CIFAR10 | ResNet-20 | MLAN | 0.11 | 0.11 | 1.02x | 0.58 | 0.55 | 1.05x | — | — | — |" in graphs
    assert "### GPU kernels (cuda): library fast path vs `?gpu_kernels=True`" in text
    assert "| CIFAR100 | ResNet-20 | MLAN | 4.00 | 3.20 | 1.25x | 6.30 | 4.50 | 1.40x | — | — | — |" in text
    assert "### CPU kernels" not in text and R.KERNELS_METHOD not in text
    assert "### GPU kernels (cuda channels_last)" not in text and "### GPU kernels (cuda compile)" not in text
    cpu = text[:text.index("### Target 3 (cuda)")]
    assert R.GPU_KERNELS_METHOD not in cpu and "MLAN path" not in cpu  # the CPU section as before
    # target 1 (inference rows only) and target 2, per MLAN path
    assert ("| CIFAR10 | ResNet-20 | GPU kernels | inference | 0.50 | 0.55 | 1.10 | 1.100 | ≤ 1.21 (1.1 x MACs "
            "ratio) | 1.00 | yes |") in graphs
    assert "- inference, GPU kernels: met in 2 of 2 rows; time ratio / MACs ratio 0.97 to 1.00 (limit 1.1)." in graphs
    assert "GPU kernels | train step" not in text
    assert "#### batch 128 inference, MLAN with the GPU kernels" in graphs
    assert "MLAN with the GPU kernels is faster than all four in 4 of 4 (dataset, depth, batch) cases; it is not " \
           "faster than: none." in graphs
    # target 3: the kernels' rows after their variant's, under eager and CUDA graphs only; the library rows as before
    t3 = R.render_target3(report)
    assert "| dataset | variant | batch | backbone ms | MLAN ms | MLAN / backbone | within 1.2x |" in t3
    for row in ("| CIFAR-10 | eager | 1 | 2.00 | 5.00 | 2.50 | no |",
                "| CIFAR-10 | eager, GPU kernels | 128 | 2.50 | 4.00 | 1.60 | no |",
                "| CIFAR-100 | CUDA graphs | 1 | 0.10 | 0.13 | 1.30 | no |",
                "| CIFAR-100 | CUDA graphs, GPU kernels | 1 | 0.10 | 0.11 | 1.12 | yes |",
                "| CIFAR-10 | CUDA graphs, GPU kernels | 128 | 0.50 | 0.55 | 1.10 | yes |",
                "| CIFAR-10 | torch.compile | 1 | 0.50 | 0.60 | 1.20 | yes |"):
        assert row in t3, row
    order = [ln.split(" | ")[1] for ln in t3.splitlines() if ln.startswith("| CIFAR-10 |")]
    assert order == ["eager"] * 2 + ["eager, GPU kernels"] * 2 + ["channels_last"] * 2 + ["torch.compile"] * 2 \
        + ["CUDA graphs"] * 2 + ["CUDA graphs, GPU kernels"] * 2
    assert ("'..., GPU kernels' rows: MLAN built with `?gpu_kernels=True`, timed in the same interleaved runs as the "
            "variant's other rows.") in t3
    assert ("**Within 1.2x with CUDA graphs: no with the library fast path, yes with the GPU kernels.** With the "
            "library fast path, MLAN / backbone 1.10 to 1.30; above 1.2 in 1 of the 4 measured cells: CIFAR-100 batch "
            "1 (1.30). With the GPU kernels, MLAN / backbone 1.07 to 1.12 over the 4 measured cells (CIFAR-10 batch 1, "
            "CIFAR-10 batch 128, CIFAR-100 batch 1 and CIFAR-100 batch 128).") in t3
    assert "- CUDA graphs, GPU kernels: MLAN / backbone batch 1: 1.08 to 1.12; batch 128: 1.07 to 1.10." in t3
    assert "- eager: MLAN / backbone batch 1: 2.00 to 2.50; batch 128: 2.10 to 2.40." in t3
    rows = R.target3_rows(report["speed"], R._batches(report))
    assert R.target3_verdict(rows) is False and R.target3_verdict(rows, R.GPU_KERNELS) is True
    # README's GPU line: the library path's verdict, then the kernels'
    summary = _flat(R.render_readme_summary(report))
    assert ("target 3 is not met: with CUDA graphs MLAN-20 takes 1.10x to 1.30x its backbone's time at batch 1 and "
            "128 (limit 1.2x; eager 2.00x to 2.50x); with the GPU kernels (`?gpu_kernels=True`) target 3 is met: "
            "1.07x to 1.12x with CUDA graphs (eager 1.50x to 1.60x); target 1") in summary
    # kernels timed with CUDA graphs in one group only, eager not at all: '—' cells, and the verdict of what there is
    part = _with_gpu_kernels(_gpu_report(), {"cuda cuda_graphs": {"cifar10/20": (0.108, 0.55)}})
    t3 = R.render_target3(part)
    assert "| CIFAR-100 | CUDA graphs, GPU kernels | 128 | 0.60 | — | — | — |" in t3
    assert "eager, GPU kernels" not in t3
    assert "**Within 1.2x with CUDA graphs: yes with the library fast path, yes with the GPU kernels.**" in t3
    # process-wide GPU kernels: the 'MLAN' rows of the CUDA sections ran them too, and the section says so
    for label in ("cuda", "cuda cuda_graphs"):
        report["speed_sources"][label] = dict(report["speed_sources"][label], config=dict(
            report["speed_sources"][label]["config"], gpu_kernels=dict(_gpu_kernels_info(True, process_wide=True))))
    note = ("The GPU kernels were on process-wide in this run (`MLAN_TIMM_GPU_KERNELS` or `enable_gpu_kernels`): "
            "'MLAN' (the library fast path rows) ran them too")
    assert R.render_speed(report).count(note) == 2


def test_reports_without_gpu_kernel_rows_render_as_before():
    """The committed CUDA JSONs have no GPU-kernel rows: no path column or rows, one verdict (test_target3_* pin the
    rest)."""
    text = R.render_speed(_gpu_report())
    for new in ("MLAN path", "GPU kernels", "gpu_kernels=True", "library fast path", R.GPU_KERNELS_METHOD):
        assert new not in text, new
    assert "with the GPU kernels" not in R.render_readme_summary(_gpu_report())


def test_gpu_kernels_info_tries_the_kernels_where_cuda_is(monkeypatch, recwarn):
    """Where CUDA is, gpu_kernels_info compiles and runs the kernels once before anything is planned: a failure is
    recorded as the reason (and switches them off for the process), without the kernels' warning. Simulated here:
    CUDA 'available' but no GPU, so the first CUDA tensor fails."""
    from mlan_timm.layers import gpu_kernels as gk

    monkeypatch.setattr(gk, "triton_version", lambda: "3.0.0")
    monkeypatch.setattr(gk._State, "error", None)  # restored after the test: the failure stays in it
    monkeypatch.setattr(gk._State, "enabled", False)
    B._try_gpu_kernels.cache_clear()
    try:
        assert B.gpu_kernels_info(load=False) == _gpu_kernels_info(True)
        if not torch.cuda.is_available():
            assert B.gpu_kernels_info() == _gpu_kernels_info(True)  # no CUDA: nothing tried
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            info = B.gpu_kernels_info()
            assert info["available"] is False and info["reason"] and info["status"] == f"unavailable: {info['reason']}"
            assert gk._State.error == info["reason"] and not recwarn.list
            assert B.gpu_kernels_info()["reason"] == info["reason"]  # tried once per process
    finally:
        B._try_gpu_kernels.cache_clear()


def test_group_formulations_script_times_both_formulations_of_every_group(load_script, capsys):
    """benchmarks/mlan_group_formulations.py (what STREAMING_MIN_PLANE is chosen from), smoke-sized."""
    script = load_script("benchmarks/mlan_group_formulations.py")
    res = script.main(["--models", "mlan_resnet14_cifar10", "--rounds", "2", "--min-run-time", "0.01", "--batch", "4",
                       "--train"])
    rows = res["mlan_resnet14_cifar10"]
    assert [(r["group"], r["kind"]) for r in rows] == [(0, "infer"), (1, "infer"), (2, "infer"),
                                                      (0, "train"), (1, "train"), (2, "train")]
    assert [r["block_features"] for r in rows[:3]] == [(8, 32, 32), (16, 16, 16), (32, 8, 8)]
    for r in rows:
        assert all(len(v) == 2 and all(t > 0 for t in v) for v in r["samples_ms"].values())
        assert r["streaming_speedup"] > 0
    assert "mlan_resnet14_cifar10 group 2 (1 MLAN blocks, features (32, 8, 8)) train: streaming" in \
        capsys.readouterr().out
