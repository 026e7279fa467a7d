"""Parameter counts: every family against a closed-form count of the architecture (docs/architecture.md), the
paper's printed counts against ours (the fidelity bar), and the README table against a fresh computation."""
from pathlib import Path

import pytest
import timm
import torch

import mlan_timm  # noqa: F401  (registers the models)
from mlan_timm import zoo
from mlan_timm.complexity import count_params
from mlan_timm.paper_tables import params_interval
from mlan_timm.tools import tables

README = Path(__file__).resolve().parents[1] / "README.md"


def conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def single_attn(attn, x, reduction):
    """One SE / CBAM / GC / triplet module on x channels (bottleneck max(1, x // reduction))."""
    rd = max(1, x // reduction)
    if attn == "se":  # two bias-free linear maps
        return 2 * x * rd
    if attn == "cbam":  # MLP with bias + 7x7 2->1 conv (no bias) + 1-channel BN
        return 2 * x * rd + rd + x + 2 * 49 + 2
    if attn == "gc":  # 1x1 attention conv (bias) + MLP (bias) with LayerNorm
        return (x + 1) + (x * rd + rd) + 2 * rd + (rd * x + x)
    if attn == "ta":  # three 7x7 2->1 gates with 1-channel BN
        return 3 * (2 * 49 + 2)
    raise AssertionError(attn)


def attn_params(attn, x, level, n=3, k=3):
    """Parameters of attention ``attn`` on x channels at ``level`` (layer / aggregate / classic)."""
    if attn == "sma":
        return n * (x * k * k + 1)
    if attn == "sma_v2":
        return n * (k * k + 1)
    if attn == "fma":
        return (n if level == "aggregate" else 1) * x * (x * k * k + 1)
    if level == "aggregate":
        return n * single_attn(attn, x, 4)
    return single_attn(attn, x, 16 if level == "classic" else 4)


def fusion_params(fusion, c):
    return {"plus": 0, "concat": conv(3 * c, c, 3, bias=True), "conv1x1": conv(3 * c, c, 1, bias=True),
            "weighted": 3 * c * 3 + 3}[fusion]


def basic_block(cin, c, stride):
    shortcut = 0 if (cin == c and stride == 1) else conv(cin, c, 1) + bn(c)
    return conv(cin, c, 3) + bn(c) + conv(c, c, 3) + bn(c) + shortcut


def expected_params(depth, dataset, structure="plain", attn=None, fusion="plus", levels="multi"):
    """Closed form of the architecture: stem, groups (D block + n - 1 blocks after the first), head."""
    info = zoo.DATASETS[dataset]
    widths, n = info.widths, zoo.DEPTHS[depth]
    total = conv(3, widths[0], 3) + bn(widths[0]) + widths[-1] * info.num_classes + info.num_classes
    cin = widths[0]
    for g, c in enumerate(widths):
        p = n if g == 0 else n - 1  # blocks after the D block
        if g > 0:  # D block: stride 2, 1x1 conv + BN shortcut; attention only in the classic placement
            total += basic_block(cin, c, 2) + (attn_params(attn, c, "classic") if structure == "classic" else 0)
        for _ in range(p):
            total += basic_block(c, c, 1)
            if structure == "classic":
                total += attn_params(attn, c, "classic")
            elif structure == "mlan" and levels == "single":
                total += attn_params(attn, c, "layer") + fusion_params(fusion, c)
            elif structure == "mlan":  # T(o1), T(o2), LA on 2C, 1x1 2C -> C, block fusion
                total += (2 * attn_params(attn, c, "layer") + attn_params(attn, 2 * c, "aggregate")
                          + conv(2 * c, c, 1) + fusion_params(fusion, c))
        if structure == "mlan" and levels == "multi":  # BA on 2pC, 1x1 2pC -> C, group fusion
            total += attn_params(attn, 2 * p * c, "aggregate") + conv(2 * p * c, c, 1) + fusion_params(fusion, c)
        cin = c
    return total


def spec_of(family, **kwargs):
    f = zoo.FAMILIES[family]
    spec = dict(structure=f.structure, attn=f.attn)
    spec.update(kwargs)
    return spec


@pytest.fixture(scope="module")
def paper_rows():
    return tables.param_rows()


def _count(name, **kwargs):
    with torch.device("meta"):
        return count_params(timm.create_model(name, **kwargs))


@pytest.mark.parametrize("family", list(zoo.FAMILIES), ids=lambda f: f or "plain")
def test_entrypoint_param_count_matches_closed_form(family):
    for dataset in zoo.DATASETS:
        for depth in zoo.DEPTHS:
            assert _count(zoo.model_name(family, depth, dataset)) == expected_params(depth, dataset,
                                                                                  **spec_of(family))


@pytest.mark.parametrize("kwargs", [
    dict(attn="fma"), dict(attn="se"), dict(attn="cbam"), dict(attn="ta"), dict(attn="gc"),
    dict(fusion="concat"), dict(fusion="conv1x1"), dict(fusion="weighted"),
    dict(levels="single"), dict(levels="single", fusion="weighted"),
], ids=str)
def test_mlan_variant_param_count_matches_closed_form(kwargs):
    for dataset in zoo.DATASETS:
        for depth in (14, 32):
            assert _count(zoo.model_name("mlan_", depth, dataset), **kwargs) == expected_params(
                depth, dataset, **spec_of("mlan_", **kwargs))


def test_reading_reproduces_the_counts_worked_out_in_the_fidelity_issue():
    """The counts of the adopted reading (issue 7's table), as absolute anchors for the closed form."""
    assert [_count(f"mlan_resnet{d}_cifar10") for d in (14, 20, 26, 32)] == [60415, 99306, 138197, 177088]
    assert _count("mlan_resnet20_cifar100", attn="fma") == 4_173_396
    assert _count("mlan_v2_resnet32_cifar100") == 561_056
    assert [_count("mlan_resnet20_cifar10", attn=a) for a in ("se", "cbam", "gc", "ta")] == [
        133_234, 139_734, 137_898, 92_994]
    assert [_count("mlan_resnet20_cifar100", fusion=f) for f in ("concat", "conv1x1", "weighted")] == [
        804_028, 410_812, 364_506]


def test_classic_se_matches_the_authors_se_resnet20():
    """The authors' SE-ResNet-20 at widths 16/32/64, 10 classes: 274,490 parameters (backbone 272,474)."""
    assert _count("se_resnet20_cifar10", widths=(16, 32, 64)) == 274_490
    assert _count("resnet20_cifar10", widths=(16, 32, 64)) == 272_474


def test_paper_counts_fit_the_architecture(paper_rows):
    """The fidelity bar: >= 60 of the paper's counts fit ([printed - 3.4k, printed + 10k)), none > 8% off."""
    rows = paper_rows
    assert len(rows) == 66  # distinct models among the paper's 76 printed counts
    summary = tables.fit_summary(rows)
    fitting = [r for r in rows if params_interval(r.paper_m)[0] - 3_400 <= r.ours < params_interval(r.paper_m)[1]]
    assert len(fitting) == summary["exact"] + summary["near"] >= 60
    assert max(r.rel_error for r in rows) <= 0.08
    assert summary["ok"]
    # the known misses (docs/architecture.md): triplet attention at R20 and CIFAR-100 concat fusion
    assert {(r.dataset, r.variant, r.depth) for r in rows if r.status == "off"} == {
        ("cifar10", "multilevel_ta", 20), ("cifar100", "multilevel_ta", 20), ("cifar100", "fusion_concat", 20)}


def test_parameter_ordering_the_paper_claims():
    """Tables 6/9: SMA needs fewer parameters than SE, CBAM, GC (and FMA); TA 'slightly' fewer than SMA."""
    for dataset in zoo.DATASETS:
        for depth in zoo.DEPTHS:
            sma = expected_params(depth, dataset, "mlan", "sma")
            assert expected_params(depth, dataset, "mlan", "sma_v2") < sma
            for other in ("se", "cbam", "gc", "fma"):
                assert sma < expected_params(depth, dataset, "mlan", other), (dataset, depth, other)
            assert expected_params(depth, dataset, "mlan", "ta") < sma


def test_fit_status_boundaries():
    row = lambda ours: tables.ParamRow("cifar10", "sma", 20, ("T4",), 0.10, ours)  # noqa: E731
    assert [row(n).status for n in (100_000, 109_999, 96_600, 96_599, 110_000)] == [
        "exact", "exact", "near", "off", "off"]
    assert row(92_000).signed_error == pytest.approx(-0.08)
    assert row(110_999).signed_error == pytest.approx(0.01)


def test_readme_param_table_is_current(paper_rows):
    """The README table is generated: `python -m mlan_timm.tools.tables --update README.md` leaves it unchanged."""
    text = README.read_text()
    block = text.split(tables.START, 1)[1].split(tables.END, 1)[0]
    assert block.strip() == tables.render_markdown(paper_rows).strip()


def test_update_file_refuses_file_without_markers(tmp_path):
    f = tmp_path / "x.md"
    f.write_text("no markers here")
    with pytest.raises(ValueError, match="param-table"):
        tables.update_file(f, "table")
