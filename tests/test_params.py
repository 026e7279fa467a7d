"""Parameter counts: every variant of the zoo against a closed-form count of the architecture (docs/architecture.md),
the README table against a fresh computation, and the paper-comparison mechanism."""
import sys
from pathlib import Path

import pytest
import timm
import torch

import mlan_timm  # noqa: F401  (registers the models)
from mlan_timm import paper_tables, tables
from mlan_timm.layers import create_attention
from mlan_timm.models.cifar_resnet import DATASETS, DEPTHS

README = Path(__file__).resolve().parents[1] / "README.md"


def conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def attn_params(attn, c, n=3, k=1):
    if attn == "sma":
        return n * (c * k * k + 1)
    if attn == "sma_v2":
        return n * (k * k + 1)
    if attn == "fma":
        return n * c * (c * k * k + 1)
    if attn == "ta":
        return 3 * (2 * 7 * 7 + 2)
    return sum(p.numel() for p in create_attention(attn, c).parameters())  # timm's SE/CBAM/GC as configured


def fusion_params(fusion, c):
    return {"plus": 0, "concat": conv(3 * c, c, 3) + bn(c), "conv1x1": conv(3 * c, c, 1) + bn(c),
            "weighted": 3 * c * 3 + 3}[fusion]


def projection(cin, cout, stride):
    return 0 if (cin == cout and stride == 1) else conv(cin, cout, 1) + bn(cout)


def expected_params(depth, dataset, structure="plain", attn=None, fusion="plus", levels="multi"):
    widths, classes = DATASETS[dataset]
    blocks = DEPTHS[depth]
    total = conv(3, widths[0], 3) + bn(widths[0]) + widths[-1] * classes + classes
    cin = widths[0]
    for g, (n_blocks, c) in enumerate(zip(blocks, widths)):
        stride = 1 if g == 0 else 2
        for b in range(n_blocks):
            bin_, bstride = (cin, stride) if b == 0 else (c, 1)
            total += conv(bin_, c, 3) + bn(c) + conv(c, c, 3) + bn(c) + projection(bin_, c, bstride)
            if structure == "classic":
                total += attn_params(attn, c)
            elif structure == "mlan" and levels == "single":
                total += attn_params(attn, c) + fusion_params(fusion, c)
            elif structure == "mlan":  # two layer attentions + LA on 2C + block fusion
                total += 2 * attn_params(attn, c) + attn_params(attn, 2 * c) + fusion_params(fusion, c)
        if structure == "mlan" and levels == "multi":  # BA on n_blocks*C + group fusion + group projection
            total += attn_params(attn, n_blocks * c) + fusion_params(fusion, c) + projection(cin, c, stride)
        cin = c
    return total


CASES = [("", dict()), ("mlan_", dict(structure="mlan", attn="sma")), ("mlan_v2_", dict(structure="mlan", attn="sma_v2"))]
CASES += [(f"{a}_", dict(structure="classic", attn=a)) for a in ("se", "cbam", "ta", "gc")]


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("depth", list(DEPTHS))
@pytest.mark.parametrize("prefix,spec", CASES, ids=[c[0] or "plain" for c in CASES])
def test_entrypoint_param_count_matches_closed_form(prefix, spec, depth, dataset):
    with torch.device("meta"):
        model = timm.create_model(f"{prefix}resnet{depth}_{dataset}")
    assert tables.count_params(model) == expected_params(depth, dataset, **spec)


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("kwargs", [
    dict(attn="fma"), dict(attn="se"), dict(attn="cbam"), dict(attn="ta"), dict(attn="gc"),
    dict(fusion="concat"), dict(fusion="conv1x1"), dict(fusion="weighted"),
    dict(levels="single"), dict(levels="single", fusion="weighted"),
], ids=str)
def test_mlan_variant_param_count_matches_closed_form(kwargs, dataset):
    spec = dict(structure="mlan", attn="sma")
    spec.update(kwargs)
    with torch.device("meta"):
        model = timm.create_model(f"mlan_resnet14_{dataset}", **kwargs)
    assert tables.count_params(model) == expected_params(14, dataset, **spec)


def test_backbone_counts_match_he_et_al_resnet20():
    """He et al. report 0.27M parameters for CIFAR ResNet-20 at widths 16/32/64 (ours: option-B shortcuts)."""
    with torch.device("meta"):
        n = tables.count_params(timm.create_model("resnet20_cifar100", num_classes=10))
    assert round(n / 1e6, 2) == 0.27


def test_mlan_is_lighter_than_other_attentions_in_the_same_structure():
    """The paper's claim behind Tables 6/9: SMA adds fewer parameters than SE, CBAM, TA and GC."""
    for dataset in DATASETS:
        for depth in DEPTHS:
            ours = expected_params(depth, dataset, "mlan", "sma")
            for other in ("se", "cbam", "ta", "gc", "fma"):
                assert ours < expected_params(depth, dataset, "mlan", other), (dataset, depth, other)


def test_readme_param_table_is_current():
    """The README table is generated: `python -m mlan_timm.tables --update README.md` must leave it unchanged."""
    text = README.read_text()
    block = text.split(tables.START, 1)[1].split(tables.END, 1)[0]
    assert block.strip() == tables.render_markdown(tables.param_rows()).strip()


def test_parse_paper_count():
    assert tables.parse_paper_count("0.27M") == 270000
    assert tables.parse_paper_count("72,132") == 72132
    assert tables.parse_paper_count("15.3K") == pytest.approx(15300)
    assert tables.parse_paper_count("n/a") is None


def test_compare_to_paper_flags_only_counts_outside_tolerance(monkeypatch):
    monkeypatch.setitem(paper_tables.PAPER, ("table1", "resnet20"), "0.069M")  # ours 68,786: within 5%
    monkeypatch.setitem(paper_tables.PAPER, ("table1", "mlan_resnet20"), "0.090M")  # ours 72,132: off by 20%
    rows = [r for r in tables.param_rows(["cifar10"]) if r["depth"] == 20 and r["table"] == "table1"]
    assert {r["paper"] for r in rows} == {"0.069M", "0.090M"}
    problems = tables.compare_to_paper(rows, tolerance=0.05)
    assert len(problems) == 1 and "mlan_resnet20_cifar10" in problems[0]
    md = tables.render_markdown(rows)
    assert "0.069M" in md and "0.090M" in md


def test_update_file_refuses_file_without_markers(tmp_path):
    f = tmp_path / "x.md"
    f.write_text("no markers here")
    with pytest.raises(ValueError, match="param-table"):
        tables.update_file(f, "table")
