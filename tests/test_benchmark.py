"""Behaviour of mlan_timm.benchmark in quick mode (tiny models, tiny repeat counts; no timing asserts)."""
import json
import os
import math

import pytest
import timm
import torch
import torch.nn as nn

import mlan_timm  # noqa: F401  (registers the models when they exist)
from mlan_timm import benchmark as B


def _tiny_conv_model():
    # conv 3->4 (3x3, pad 1, no bias) on 32x32, then global pool and a 4->5 linear layer
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 5))


def _tiny_timm_name():
    return "resnet14_cifar10" if timm.is_model("resnet14_cifar10") else "resnet10t"


def test_params_equal_sum_of_numel():
    m = _tiny_conv_model()
    assert B.count_params(m) == 3 * 4 * 9 + 4 * 5 + 5
    r = timm.create_model(_tiny_timm_name(), num_classes=10)
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
    name = _tiny_timm_name()
    md, js = tmp_path / "b.md", tmp_path / "b.json"
    rc = B.main(["--quick", "--device", "cpu", f"{name}?num_classes=10", f"{name}?num_classes=100",
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
    rc = B.main(["--paper-tables", "--no-time", "--depths", "14", "--datasets", "cifar10",
                 "--md-out", str(md), "--json-out", str(js), "--root", str(tmp_path)])
    assert rc == 0
    text = md.read_text()
    assert "Command: `mlan-bench --paper-tables" in text
    for tid in ("Table3", "Table4", "Table5", "Table6"):
        assert f"### {tid} (CIFAR10)" in text
    assert "not transcribed" in text
    # no eval JSON under tmp_path: accuracy column says so
    assert B.NOT_TRAINED in text
    data = json.loads(js.read_text())
    assert data["grid_ids"] == ["table3", "table4", "table5", "table6"]
    if timm.is_model("mlan_resnet14_cifar10"):
        rec = data["results"]["mlan_resnet14_cifar10"]
        model = timm.create_model("mlan_resnet14_cifar10")
        assert rec["params"] == sum(p.numel() for p in model.parameters())
        concat = data["results"]["mlan_resnet14_cifar10?fusion=concat"]
        assert concat["params"] == B.count_params(timm.create_model("mlan_resnet14_cifar10", fusion="concat"))


def test_ratio_section_reports_targets():
    specs = B.ratio_specs()
    res = {name: {"infer_b128_ms": 10.0, "train_step_b128_ms": 20.0} for name in specs}
    res["mlan (sma)"] = {"infer_b128_ms": 12.0, "train_step_b128_ms": 40.0}
    text = B.render_ratios({"cpu": res}, specs)
    assert "| MLAN inference b128 vs backbone | 1.200 | ≤ 1.25 | yes |" in text
    assert "| MLAN train step b128 vs backbone | 2.000 | ≤ 1.5 | no |" in text
    assert "| MLAN (sma) vs CBAM multi-level, inference b128 | 1.200 | < 1 (faster) | no |" in text


def test_time_interleaved_quick():
    specs = {"backbone": B.Spec("a", factory=_tiny_conv_model), "other": B.Spec("b", factory=_tiny_conv_model)}
    res = B.time_interleaved(specs, "cpu", B.TimingConfig.quick())
    for name in specs:
        assert res[name]["infer_b128_ms"] > 0 and res[name]["train_step_b128_ms"] > 0


def test_eval_results_fill_accuracy_column(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "eval.json").write_text(json.dumps(
        [{"model": "mlan_resnet20_cifar10", "top1": 91.234},
         {"model": "mlan_resnet20_cifar10", "model_kwargs": {"attn": "cbam"}, "test_top1": 90.5},
         {"model": "resnet20_cifar10", "split": "train", "top1": 99.0}]))
    acc = B.load_eval_results(str(tmp_path))
    assert acc["mlan_resnet20_cifar10"][0] == pytest.approx(91.234)
    assert acc["mlan_resnet20_cifar10?attn=cbam"][0] == pytest.approx(90.5)
    assert "resnet20_cifar10" not in acc  # train-split accuracy is not a test result


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
    text = B.render_profiles(dict(command="mlan-bench --profile", machine="m", profiles=[prof]))
    assert "## Where the time goes (torch.profiler)" in text and "| operator |" in text


def test_eval_results_need_matching_kwargs_and_the_full_test_set(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    base = dict(model="mlan_resnet20_cifar10", weights="w.safetensors", split="test", images=10000)
    (tmp_path / "docs" / "results" / "eval.json").write_text(json.dumps([
        dict(base, top1=80.0, model_kwargs={"attn": "cbam"}, subset=None),  # mlan-eval --json with kwargs
        dict(base, model="resnet20_cifar10", top1=70.0),  # old mlan-eval output: kwargs unknown
        dict(base, model="se_resnet20_cifar10", top1=60.0, model_kwargs={}, subset=500, images=500),
        dict(base, model="cbam_resnet20_cifar10", top1=50.0, model_kwargs={}, images=2000),
    ]))
    acc = B.load_eval_results(str(tmp_path))
    assert acc == {"mlan_resnet20_cifar10?attn=cbam": (80.0, os.path.join("docs", "results", "eval.json"))}
