"""mlan-bench (mlan_timm.tools.bench: measure, report, cli) in quick mode (tiny models, tiny repeat counts; no
timing asserts), and benchmarks/run_benchmarks.py --quick end to end."""
import json
import math
import os
import subprocess
import sys

import pytest
import timm
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
                  config={}, ratios={}, ratio_specs={})
    text = R.render_report(report, root="/nonexistent")
    assert "### Table 6 (CIFAR10)" in text and "### Table 9" not in text
    assert "`resnet20_cifar10` | not measured |" in text


def test_ratio_section_reports_targets():
    specs = B.ratio_specs()
    res = {name: {"infer_b128_ms": 10.0, "train_step_b128_ms": 20.0} for name in specs}
    res["mlan (sma)"] = {"infer_b128_ms": 12.0, "train_step_b128_ms": 40.0}
    text = R.render_ratios({"cpu": res}, specs, macs={"backbone": 100, "mlan (sma)": 107})
    assert "| MLAN inference b128 vs backbone | 1.200 | ≤ 1.25 | yes |" in text
    assert "| MLAN train step b128 vs backbone | 2.000 | ≤ 1.5 | no |" in text
    assert "| MLAN (sma) vs CBAM multi-level, inference b128 | 1.200 | < 1 (faster) | no |" in text
    # the sentence that reads the numbers is generated from them
    assert "MLAN (sma) takes 1.20x the backbone's batch-128 inference time and 2.00x its train-step time, " \
           "for +7.0% MACs." in text


def test_time_interleaved_quick():
    specs = {"backbone": B.Spec("a", factory=_tiny_conv_model), "other": B.Spec("b", factory=_tiny_conv_model)}
    res = B.time_interleaved(specs, "cpu", B.TimingConfig.quick())
    for name in specs:
        assert res[name]["infer_b128_ms"] > 0 and res[name]["train_step_b128_ms"] > 0


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
    base = dict(devices=["cpu"], results={"m": {"params": 1, "macs": 2, "cpu": {"infer_b128_ms": 1.0}}},
                ratios={"cpu": {}}, machine="cpu box")
    other = dict(devices=["cuda"], results={"m": {"params": 1, "macs": 2, "cuda": {"infer_b128_ms": 0.1},
                                                  "cuda_compile": {"infer_b128_ms": 0.05}}},
                 ratios={"cuda": {"backbone": {}}}, machine="gpu box", command="mlan-bench --device cuda")
    m = B.merge_reports(base, other)
    assert m["devices"] == ["cpu", "cuda"]
    assert m["results"]["m"]["cpu"] == {"infer_b128_ms": 1.0}
    assert m["results"]["m"]["cuda"] == {"infer_b128_ms": 0.1}
    assert "cuda_compile" in m["results"]["m"]
    assert set(m["ratios"]) == {"cpu", "cuda"}
    assert m["machines"] == ["cpu box", "gpu box"]


def test_profile_ops_lists_top_operators():
    prof = B.profile_ops(B.Spec("tiny", factory=_tiny_conv_model), "cpu", batch=4, iters=1, top=3)
    assert 1 <= len(prof["rows"]) <= 3
    assert any("convolution" in r["op"] for r in prof["rows"])
    assert all(0 <= r["share"] <= 1 and r["ms"] >= 0 for r in prof["rows"])
    text = R.render_profiles(dict(command="mlan-bench --profile", machine="m", profiles=[prof]))
    assert "## Where the time goes (torch.profiler)" in text and "| operator |" in text


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


@pytest.mark.slow  # ~11 s: runs in CI's slow step
def test_run_benchmarks_quick_regenerates_markdown(tmp_path, repo_root, subprocess_env):
    """The one command that regenerates docs/benchmarks.md, on a tiny subset, writing only under --out-dir."""
    res = subprocess.run([sys.executable, "benchmarks/run_benchmarks.py", "--quick", "--out-dir", str(tmp_path)],
                         cwd=repo_root, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "benchmarks.md").read_text()
    assert md.startswith("# Benchmarks: MLAN models vs the paper's comparison grids")
    assert "## Where the time goes (torch.profiler)" in md and "### Table 6 (CIFAR10)" in md
    report = json.loads((tmp_path / "cpu.json").read_text())
    assert report["depths"] == [14] and report["datasets"] == ["cifar10"]
    assert f"{report['results']['resnet14_cifar10']['params'] / 1e6:.3f}M" in md
    assert zoo.model_name("", 20, "cifar10") not in report["results"]  # only the tiny subset was measured
