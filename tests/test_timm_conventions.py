"""The checks timm's own ``tests/test_models.py`` (and ``tests/test_optim.py``) make of every model, applied to the
mlan_timm zoo: build/forward/backward of all 56 entrypoints, pretrained_cfg contents, feature extraction,
``forward_intermediates``, grad checkpointing, parameter grouping, the kwargs timm's train.py passes, TorchScript,
torch.fx, torch.compile, ONNX, and clear errors for bad arguments/inputs.

Slow checks (inductor compile, TorchScript of all 56 models, ONNX with both exporters) run with ``-m slow``.
"""
import copy
import math
import warnings

import pytest
import timm
import torch
from torch import nn

import mlan_timm
from mlan_timm import zoo
from mlan_timm.layers import ATTN_TYPES, FUSION_TYPES
from mlan_timm.zoo import FAMILIES

try:
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    HAS_TV_FX = True
except ImportError:  # pragma: no cover
    HAS_TV_FX = False

try:
    import onnxruntime
    HAS_ORT = True
except ImportError:  # pragma: no cover
    HAS_ORT = False

torch.set_num_threads(min(2, torch.get_num_threads()))

ALL_MODELS = mlan_timm.model_names()
PREFIXES = list(FAMILIES)  # '', 'mlan_', 'mlan_v2_', 'se_', 'cbam_', 'ta_', 'gc_'
#: One small model per family (prefix).
FAMILY_REPS = [f"{p}resnet14_cifar10" for p in PREFIXES]
PLAIN_OR_CLASSIC = [n for n in FAMILY_REPS if not n.startswith("mlan")]
MLAN_BASE = "mlan_resnet14_cifar10"
LEVELS = ("multi", "single")
INPUT = (3, 32, 32)

TIMM_CFG_KEYS = (
    "mean", "std", "input_size", "crop_pct", "crop_mode", "interpolation", "num_classes", "first_conv",
    "classifier", "pool_size", "label_names", "license", "architecture",
)

def _x(batch: int = 2, chans: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, chans, size, size, generator=g)


def _create(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def _assert_all_params_have_finite_grads(model: nn.Module) -> None:
    num_params = sum(p.numel() for p in model.parameters())
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"parameters with non-finite gradient: {bad}"
    assert sum(p.grad.numel() for p in model.parameters()) == num_params


def _fwd_bwd(model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all(), "output has NaN/inf"
    out.mean().backward()
    _assert_all_params_have_finite_grads(model)
    return out


def _mlan_variant_grid():
    """Every attn with one fusion per levels value (every fusion reached at both levels), num_masks 1 and 5,
    kernel 3."""
    grid = []
    for i, attn in enumerate(ATTN_TYPES):
        for j, levels in enumerate(LEVELS):
            fusion = FUSION_TYPES[(i + 2 * j) % len(FUSION_TYPES)]
            num_masks = (1, 5)[(i + j) % 2]
            grid.append(dict(attn=attn, fusion=fusion, levels=levels, num_masks=num_masks))
    # (the fusion index above walks all 4 fusions for each levels value)
    for attn in ("sma_v2", "fma"):
        grid.append(dict(attn=attn, num_masks=5, mask_kernel_size=3))
    return grid


MLAN_GRID = _mlan_variant_grid()


def _grid_id(kw) -> str:
    return "-".join(f"{k}={v}" for k, v in kw.items())


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

def test_registry_has_all_56_models():
    assert len(ALL_MODELS) == 56 == len(set(ALL_MODELS))
    expected = {f"{p}resnet{d}_cifar{c}" for p in PREFIXES for d in (14, 20, 26, 32) for c in (10, 100)}
    assert set(ALL_MODELS) == expected
    listed = set(timm.list_models())
    assert set(ALL_MODELS) <= listed
    for name in ALL_MODELS:
        assert timm.is_model(name)
        assert timm.models.get_pretrained_cfg(name) is not None


def test_unknown_model_name_raises_like_timm():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("mlan_resnet99_cifar10")
    assert not timm.is_model("mlan_resnet99_cifar10")


# ---------------------------------------------------------------------------------------------------------------
# timm test_model_forward / test_model_backward / test_model_default_cfgs, for all 56 entrypoints
# ---------------------------------------------------------------------------------------------------------------

def _num_classes(name: str) -> int:
    return 100 if name.endswith("cifar100") else 10


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_forward_backward(name):
    """timm's test_model_forward + test_model_backward + the forward part of test_model_default_cfgs."""
    model = _create(name)  # no mlan_timm-specific args
    num_classes = _num_classes(name)
    assert model.num_classes == num_classes
    assert model.num_features > 0 and model.head_hidden_size > 0
    x = _x(2)
    _fwd_bwd(model, x, num_classes)

    model.eval()
    pool_size = model.pretrained_cfg["pool_size"]
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
        feats = model.forward_features(x)  # always unpooled
        assert feats.shape == (2, model.num_features, *pool_size)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        assert torch.allclose(model.forward_head(feats), logits)
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape == (2, model.head_hidden_size)
        assert torch.allclose(out, pre)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_default_cfgs(name):
    """pretrained_cfg has what timm expects; first_conv / classifier name real modules of the right shapes."""
    model = _create(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg
    for key in TIMM_CFG_KEYS:
        assert key in cfg, f"pretrained_cfg lacks {key!r}"
    num_classes = _num_classes(name)
    assert cfg["architecture"] == name
    assert cfg["num_classes"] == num_classes == model.num_classes
    assert tuple(cfg["input_size"]) == INPUT
    assert tuple(cfg["pool_size"]) == (8, 8)
    assert cfg["crop_pct"] == 1.0
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    assert all(0 < m < 1 for m in cfg["mean"]) and all(0 < s < 1 for s in cfg["std"])
    assert len(cfg["label_names"]) == num_classes and len(set(cfg["label_names"])) == num_classes
    assert isinstance(cfg["license"], str) and cfg["license"]
    # a Hub id (and a pretrained tag) only where weights are published (the manifest's models)
    from mlan_timm.pretrained import has_pretrained
    if has_pretrained(name):
        assert cfg["hf_hub_id"] == zoo.hub_repo_id(name) and cfg["tag"]
    else:
        assert cfg.get("hf_hub_id") is None and timm.list_models(f"{name}.*", pretrained=True) == []
    assert timm.get_pretrained_cfg_value(name, "num_classes") == num_classes

    # timm.data resolves the CIFAR preprocessing from the cfg
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert tuple(data_cfg["input_size"]) == INPUT and data_cfg["crop_pct"] == 1.0
    assert tuple(data_cfg["mean"]) == tuple(cfg["mean"]) and tuple(data_cfg["std"]) == tuple(cfg["std"])

    state_dict = model.state_dict()
    first_conv = model.get_submodule(cfg["first_conv"])
    assert cfg["first_conv"] + ".weight" in state_dict
    assert isinstance(first_conv, nn.Conv2d) and first_conv.weight.shape[1] == 3
    classifier = model.get_submodule(cfg["classifier"])
    assert cfg["classifier"] + ".weight" in state_dict
    assert isinstance(classifier, nn.Linear)
    assert classifier.weight.shape == (num_classes, model.num_features)
    assert model.get_classifier() is classifier


HEAD_CASES = FAMILY_REPS + ["mlan_v2_resnet32_cifar100", "cbam_resnet26_cifar100"]


@pytest.mark.parametrize("name", HEAD_CASES)
def test_model_head_variants(name):
    """The rest of timm's test_model_default_cfgs: pooling removed, head removed via __init__, in_chans=1."""
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    pool_size = cfg["pool_size"]
    num_classes = _num_classes(name)
    x = _x(1)
    with torch.no_grad():
        model.reset_classifier(0, "")  # classifier and global pooling removed
        assert model(x).shape == (1, model.num_features, *pool_size)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7

        m0 = _create(name, num_classes=0, global_pool="").eval()
        assert m0(x).shape == (1, m0.num_features, *pool_size)
        m0 = _create(name, num_classes=0).eval()
        assert m0(x).shape == (1, m0.num_features)

    # in_chans=1 (timm loads pretrained weights with in_chans != 3 by adapting first_conv)
    m1 = _create(name, in_chans=1).eval()
    assert m1.get_submodule(cfg["first_conv"]).weight.shape[1] == 1
    with torch.no_grad():
        assert m1(_x(1, chans=1)).shape == (1, num_classes)


@pytest.mark.parametrize("name", FAMILY_REPS)
def test_model_backward_num_classes_42(name):
    """timm's test_model_backward builds with num_classes=42."""
    model = _create(name, num_classes=42)
    assert model.get_classifier().out_features == 42
    _fwd_bwd(model, _x(3), 42)


def test_eval_transform_gives_cifar_tensor():
    from PIL import Image

    model = _create(MLAN_BASE)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    img = Image.new("RGB", (32, 32), (128, 64, 200))
    t = transform(img)
    assert t.shape == INPUT
    # the paper's normalisation (zoo.PAPER_MEAN / PAPER_STD), no resize or crop at 32x32: every pixel is the same
    from mlan_timm.zoo import PAPER_MEAN, PAPER_STD
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip((128, 64, 200), PAPER_MEAN, PAPER_STD)])
    torch.testing.assert_close(t, expected[:, None, None].expand(INPUT))


# ---------------------------------------------------------------------------------------------------------------
# MLAN kwargs variants
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", MLAN_GRID, ids=_grid_id)
def test_mlan_variant_forward_backward(kwargs):
    from mlan_timm.layers import ConvFusion, PlusFusion, WeightedFusion
    from mlan_timm.models.blocks import MLANGroup

    model = _create("mlan_resnet14_cifar10", **kwargs)
    _fwd_bwd(model, _x(2), 10)

    # the kwargs took effect
    groups = [m for m in model.modules() if isinstance(m, MLANGroup)]
    assert len(groups) == (3 if kwargs.get("levels", "multi") == "multi" else 0)
    fusion_cls = {"plus": PlusFusion, "concat": ConvFusion, "conv1x1": ConvFusion, "weighted": WeightedFusion}
    fusion = kwargs.get("fusion", "plus")
    fusions = [m for m in model.modules() if type(m).__name__.endswith("Fusion")]
    assert fusions and all(isinstance(f, fusion_cls[fusion]) for f in fusions)
    if fusion in ("concat", "conv1x1"):
        k = 3 if fusion == "concat" else 1
        assert all(f.conv.kernel_size == (k, k) for f in fusions)
    if kwargs["attn"] in ("sma", "sma_v2", "fma"):
        masked = [m for m in model.modules() if hasattr(m, "num_masks") and hasattr(m, "conv")]
        assert masked
        n = kwargs.get("num_masks", 3)
        # FMA: one full mask per layer attention, N at LA/BA (docs/architecture.md)
        fma_levels = {1, n} if kwargs.get("levels", "multi") == "multi" else {1}
        assert {m.num_masks for m in masked} == (fma_levels if kwargs["attn"] == "fma" else {n})
        ks = kwargs.get("mask_kernel_size", 3)
        assert all(m.conv.kernel_size == (ks, ks) for m in masked)


# ---------------------------------------------------------------------------------------------------------------
# features_only, forward_intermediates, prune_intermediate_layers
# ---------------------------------------------------------------------------------------------------------------

FEATURE_MODELS = FAMILY_REPS + ["mlan_resnet20_cifar100"]


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_features_only(name):
    base = _create(name)
    info = timm.models.FeatureInfo(base.feature_info, range(len(base.feature_info)))
    model = _create(name, features_only=True).eval()
    assert model.feature_info.channels() == info.channels()
    assert model.feature_info.reduction() == info.reduction() == [1, 1, 2, 4]
    widths = (16, 32, 64) if name.endswith("cifar100") else (8, 16, 32)
    assert model.feature_info.channels() == [widths[0], *widths]
    with torch.no_grad():
        outs = model(_x(2))
    assert len(outs) == 4
    for c, r, o in zip(model.feature_info.channels(), model.feature_info.reduction(), outs):
        assert o.shape == (2, c, 32 // r, 32 // r)
        assert torch.isfinite(o).all()

    sel = _create(name, features_only=True, out_indices=(1, 3)).eval()
    assert sel.feature_info.channels() == [widths[0], widths[2]]
    assert sel.feature_info.reduction() == [1, 4]
    with torch.no_grad():
        souts = sel(_x(2))
    assert [tuple(o.shape) for o in souts] == [(2, widths[0], 32, 32), (2, widths[2], 8, 8)]
    # same weights (seeded) -> same maps as the full extractor
    assert torch.allclose(souts[0], outs[1]) and torch.allclose(souts[1], outs[3])

    neg = _create(name, features_only=True, out_indices=(-1,)).eval()
    assert neg.feature_info.channels() == [widths[2]]


def _assert_same_features(net_a, net_b):
    """Both feature extractors return the same 4 feature maps for the same input."""
    x = _x(2)
    with torch.no_grad():
        a, b = net_a(x), net_b(x)
    assert len(a) == len(b) == 4
    for p, q in zip(a, b):
        assert p.shape == q.shape
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [MLAN_BASE, "mlan_v2_resnet14_cifar10", "cbam_resnet14_cifar10", "resnet14_cifar10"])
def test_features_only_getter_matches_hooks(name):
    """timm's test_model_forward_intermediates_features: feature_cls='getter' goes through forward_intermediates."""
    hooks = _create(name, features_only=True).eval()
    getter = _create(name, features_only=True, feature_cls="getter").eval()  # same seed -> same weights
    assert sorted(v.sum().item() for v in getter.state_dict().values()) == pytest.approx(
        sorted(v.sum().item() for v in hooks.state_dict().values()))
    assert getter.feature_info.channels() == hooks.feature_info.channels()
    _assert_same_features(hooks, getter)


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_forward_intermediates(name):
    model = _create(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, range(len(model.feature_info)))
    x = _x(2)
    with torch.no_grad():
        ref = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, ref)
        assert len(inter) == 4
        for c, r, o in zip(info.channels(), info.reduction(), inter):
            assert o.shape == (2, c, math.ceil(32 / r), math.ceil(32 / r))
        assert torch.equal(inter[-1], ref)

        # int index: the last n
        final2, last2 = model.forward_intermediates(x, indices=2)
        assert torch.allclose(final2, ref) and len(last2) == 2
        assert torch.allclose(last2[0], inter[2]) and torch.allclose(last2[1], inter[3])
        # list of indices, negative index, intermediates_only
        sel = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        assert isinstance(sel, list) and len(sel) == 2
        assert torch.allclose(sel[0], inter[0]) and torch.allclose(sel[1], inter[2])
        neg = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
        assert torch.allclose(neg[0], inter[3])
        # stop_early: same intermediates, final is the last computed one
        early_final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert len(early) == 1 and torch.allclose(early[0], inter[1])
        assert early_final.shape == inter[1].shape

        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NHWC")

        # grad checkpointing does not change intermediates (timm's test_model_forward_intermediates)
        model.set_grad_checkpointing(True)
        final3, inter3 = model.forward_intermediates(x)
        assert torch.allclose(final3, ref, rtol=1e-4, atol=1e-5)
        for p, q in zip(inter, inter3):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [MLAN_BASE, "se_resnet14_cifar10", "resnet14_cifar10"])
@pytest.mark.parametrize("indices", [2, [0, 1]])
def test_prune_intermediate_layers(name, indices):
    model = _create(name).eval()
    x = _x(2)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    n_params = sum(p.numel() for p in model.parameters())
    kept = model.prune_intermediate_layers(indices)
    if isinstance(indices, int):
        assert list(kept) == list(range(4 - indices, 4))
    else:
        assert list(kept) == list(indices)
    max_index = max(kept)
    assert len(model.groups) == max_index  # the groups after the last wanted one are gone
    assert model.num_classes == 0
    assert sum(p.numel() for p in model.parameters()) <= n_params
    with torch.no_grad():
        got = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    assert len(got) == len(want)
    for p, q in zip(want, got):
        assert torch.allclose(p, q)


# ---------------------------------------------------------------------------------------------------------------
# Grad checkpointing
# ---------------------------------------------------------------------------------------------------------------

CKPT_CASES = [
    ("resnet14_cifar10", {}, "train"),
    ("se_resnet14_cifar10", {}, "train"),
    ("ta_resnet14_cifar10", {}, "eval"),
    (MLAN_BASE, {}, "train"),
    (MLAN_BASE, {}, "eval"),
    ("mlan_v2_resnet14_cifar10", {}, "train"),
    (MLAN_BASE, dict(levels="single", fusion="concat"), "train"),
    (MLAN_BASE, dict(attn="gc", fusion="weighted"), "train"),
]


@pytest.mark.parametrize("name,kwargs,mode", CKPT_CASES, ids=lambda v: v if isinstance(v, str) else _grid_id(v))
def test_grad_checkpointing_same_outputs_and_grads(name, kwargs, mode):
    ref = _create(name, **kwargs)
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.grad_checkpointing
    for m in (ref, ckpt):
        m.train(mode == "train")
    x = _x(4)
    out_ref = ref(x)
    out_ckpt = ckpt(x)
    assert torch.allclose(out_ref, out_ckpt, rtol=1e-5, atol=1e-6)
    out_ref.square().mean().backward()
    out_ckpt.square().mean().backward()
    _assert_all_params_have_finite_grads(ckpt)
    g_ref = dict(ref.named_parameters())
    for n, p in ckpt.named_parameters():
        assert torch.allclose(p.grad, g_ref[n].grad, rtol=1e-4, atol=1e-6), f"gradient of {n} differs"
    ckpt.set_grad_checkpointing(False)
    assert not ckpt.grad_checkpointing


# ---------------------------------------------------------------------------------------------------------------
# Parameter groups (group_matcher), layer decay
# ---------------------------------------------------------------------------------------------------------------

GROUP_CASES = FAMILY_REPS + ["mlan_resnet20_cifar100"]


@pytest.mark.parametrize("coarse", [True, False], ids=["coarse", "fine"])
@pytest.mark.parametrize("name,kwargs", [(n, {}) for n in GROUP_CASES] + [
    (MLAN_BASE, dict(levels="single", fusion="conv1x1")),
    (MLAN_BASE, dict(fusion="weighted", attn="fma")),
], ids=lambda v: v if isinstance(v, str) else _grid_id(v))
def test_group_matcher_covers_every_parameter_once(name, kwargs, coarse):
    from timm.models import group_modules, group_parameters

    model = _create(name, **kwargs)
    names = [n for n, _ in model.named_parameters()]
    groups = group_parameters(model, model.group_matcher(coarse=coarse))
    flat = [n for ns in groups.values() for n in ns]
    assert sorted(flat) == sorted(names), "parameters missing from or repeated in the groups"
    assert len(flat) == len(set(flat))
    ids = sorted(groups)
    assert ids == list(range(len(ids)))
    # stem first, classifier alone last, stages in order in between
    assert set(groups[ids[0]]) == {n for n in names if n.startswith(("conv1.", "bn1."))}
    assert set(groups[ids[-1]]) == {"fc.weight", "fc.bias"}
    stage_of = {}
    for gid in ids[1:-1]:
        stages = {int(n.split(".")[1]) for n in groups[gid]}
        assert len(stages) == 1, f"group {gid} mixes stages {stages}"
        stage_of[gid] = stages.pop()
    assert [stage_of[g] for g in ids[1:-1]] == sorted(stage_of.values())
    # fine: the D block and each block (group-level BA, projection and fusion join the group's last block)
    n_expected = 3 if coarse else sum(len(g.blocks) + (not isinstance(g.down_block, nn.Identity)) for g in model.groups)
    assert len(ids) == n_expected + 2
    # group_modules works with the same matcher
    mgroups = group_modules(model, model.group_matcher(coarse=coarse))
    assert len(mgroups) >= 2


@pytest.mark.parametrize("name", [MLAN_BASE, "cbam_resnet14_cifar10", "resnet20_cifar100"])
def test_layer_decay_optimizer_covers_every_parameter_once(name):
    from timm.optim import create_optimizer_v2

    model = _create(name)
    opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, layer_decay=0.7)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    by_param = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.fc.weight)] == pytest.approx(1.0)
    assert by_param[id(model.conv1.weight)] < by_param[id(model.fc.weight)]
    # deeper groups never get a smaller lr scale than shallower ones
    from timm.models import group_parameters
    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    params = dict(model.named_parameters())
    scales = sorted((layer_of[n], by_param[id(p)]) for n, p in params.items())
    assert all(a[1] <= b[1] + 1e-12 for a, b in zip(scales, scales[1:]))
    # no weight decay for biases / norm params (timm convention)
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd_of[id(model.bn1.weight)] == 0 and wd_of[id(model.fc.bias)] == 0
    assert wd_of[id(model.conv1.weight)] > 0


# ---------------------------------------------------------------------------------------------------------------
# kwargs timm's train.py passes
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILY_REPS)
def test_train_py_default_kwargs(name):
    """timm train.py's create_model call with its defaults (None values are dropped by create_model)."""
    model = timm.create_model(
        name, pretrained=False, in_chans=3, num_classes=None, drop_rate=0.0, drop_path_rate=None,
        drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
        checkpoint_path=None,
    )
    with torch.no_grad():
        assert model.eval()(_x(1)).shape == (1, 10)


@pytest.mark.parametrize("name,in_chans", [(MLAN_BASE, 1), (MLAN_BASE, 4), ("mlan_v2_resnet14_cifar10", 2),
                                           ("gc_resnet14_cifar10", 4), ("resnet14_cifar10", 1)])
def test_in_chans(name, in_chans):
    model = _create(name, in_chans=in_chans)
    assert model.conv1.weight.shape[1] == in_chans
    _fwd_bwd(model, _x(2, chans=in_chans), 10)
    with pytest.raises(ValueError, match="input channels"):
        model(_x(2, chans=3 if in_chans != 3 else 1))


@pytest.mark.parametrize("name", FAMILY_REPS)
def test_drop_rate(name):
    model = _create(name, drop_rate=0.5)
    ref = _create(name)
    ref.load_state_dict(model.state_dict())
    x = _x(4)
    with torch.no_grad():
        model.eval(), ref.eval()
        assert torch.allclose(model(x), ref(x))  # dropout is off in eval
        model.train()
        ref.train()
        torch.manual_seed(1)
        a = model(x)
        b = ref(x)
    assert not torch.allclose(a, b), "drop_rate=0.5 had no effect in train mode"
    assert a.shape == (4, 10)


@pytest.mark.parametrize("name", PLAIN_OR_CLASSIC)
def test_drop_path_rate_plain_and_classic(name):
    from timm.layers import DropPath

    model = _create(name, drop_path_rate=0.2)
    drops = [m for m in model.modules() if isinstance(m, DropPath)]
    assert drops, "drop_path_rate created no DropPath"
    probs = [d.drop_prob for d in drops]
    assert probs == sorted(probs) and max(probs) == pytest.approx(0.2)
    ref = _create(name)
    ref.load_state_dict(model.state_dict())
    x = _x(4)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), ref.eval()(x))  # stochastic depth is off in eval
        torch.manual_seed(1)
        a = model.train()(x)
        b = ref.train()(x)
    assert not torch.allclose(a, b), "drop_path_rate=0.2 had no effect in train mode"
    _fwd_bwd(model, x, 10)


@pytest.mark.parametrize("name", ["mlan_resnet14_cifar10", "mlan_v2_resnet20_cifar100"])
def test_drop_path_rate_mlan_is_a_clear_error(name):
    with pytest.raises(ValueError, match="drop_path_rate"):
        timm.create_model(name, drop_path_rate=0.1)
    timm.create_model(name, drop_path_rate=0.0)  # 0 is accepted


@pytest.mark.parametrize("pool", ["max", "avgmax"])
def test_global_pool_kwarg(pool):
    model = _create(MLAN_BASE, global_pool=pool).eval()
    with torch.no_grad():
        feats = model.forward_features(_x(2))
        pooled = model.forward_head(feats, pre_logits=True)
        expected = feats.amax((2, 3)) if pool == "max" else 0.5 * (feats.amax((2, 3)) + feats.mean((2, 3)))
        torch.testing.assert_close(pooled, expected)
        torch.testing.assert_close(model(_x(2)), model.get_classifier()(expected))


# ---------------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs,match", [
    (MLAN_BASE, dict(attn="nope"), r"unknown attn"),
    ("se_resnet14_cifar10", dict(attn="nope"), r"unknown attn"),
    (MLAN_BASE, dict(fusion="nope"), r"unknown fusion"),
    (MLAN_BASE, dict(levels="nope"), r"unknown levels"),
    (MLAN_BASE, dict(num_masks=0), r"num_masks"),
    (MLAN_BASE, dict(num_masks=-2), r"num_masks"),
    (MLAN_BASE, dict(mask_kernel_size=2), r"mask_kernel_size.*odd"),
    (MLAN_BASE, dict(attn="fma", mask_kernel_size=4), r"mask_kernel_size.*odd"),
    ("resnet14_cifar10", dict(attn="se"), r"attn.*plain"),
    ("se_resnet14_cifar10", dict(fusion="concat"), r"fusion.*MLAN"),
    ("cbam_resnet14_cifar10", dict(levels="single"), r"levels.*MLAN"),
    ("resnet14_cifar10", dict(fusion="weighted"), r"fusion.*MLAN"),
    (MLAN_BASE, dict(drop_path_rate=0.1), r"drop_path_rate"),
    (MLAN_BASE, dict(widths=16), r"widths must be a list or tuple with one entry per group, got 16"),
    (MLAN_BASE, dict(layers=3), r"layers must be a list or tuple"),
    (MLAN_BASE, dict(drop_rate="0.1"), r"drop_rate must be a number in \[0, 1\), got '0.1'"),
    (MLAN_BASE, dict(num_classes=True), r"num_classes must be an integer >= 0"),
    (MLAN_BASE, dict(global_pool="foo"), r"global_pool 'foo': Invalid pool type: foo \(e.g. 'avg'"),
    (MLAN_BASE, dict(features_only=True, out_indices=(5,)), r"4 feature levels .* must be in \[-4, 3\]"),
    (MLAN_BASE, dict(features_only=True, out_indices=5), r"an integer \(the last N levels\) must be in \[1, 4\]"),
])
def test_bad_kwargs_raise_clear_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", ["resnet14_cifar10", "se_resnet14_cifar10"])
def test_num_masks_validated_for_every_structure(name):
    with pytest.raises(ValueError, match="num_masks"):
        timm.create_model(name, num_masks=0)


@pytest.mark.parametrize("name", ["resnet14_cifar10", "se_resnet14_cifar10"])
def test_even_mask_kernel_size_rejected_for_every_structure(name):
    with pytest.raises(ValueError, match="mask_kernel_size"):
        timm.create_model(name, mask_kernel_size=2)


@pytest.mark.parametrize("name", [MLAN_BASE, "resnet14_cifar10", "gc_resnet14_cifar10"])
@pytest.mark.parametrize("shape,match", [
    ((2, 1, 32, 32), r"3 input channels"),
    ((2, 4, 32, 32), r"3 input channels"),
    ((2, 3, 30, 30), r"multiples of 4"),
    ((2, 3, 32, 30), r"multiples of 4"),
    ((3, 32, 32), r"4-D"),
    ((2, 3, 32, 32, 1), r"4-D"),
])
def test_bad_input_raises_clear_value_error(name, shape, match):
    model = _create(name).eval()
    features = _create(name, features_only=True).eval()  # timm's wrapper runs the children, not forward_features
    x = torch.randn(*shape)
    with torch.no_grad():
        with pytest.raises(ValueError, match=match):
            features(x)
        with pytest.raises(ValueError, match=match):
            model(x)
        with pytest.raises(ValueError, match=match):
            model.forward_features(x)
        with pytest.raises(ValueError, match=match):
            model.forward_intermediates(x)


def test_a_whole_model_pickled_before_the_input_check_gets_one():
    """torch.save(model) of a model built before ``input_check`` existed unpickles with it, as the first child."""
    import io
    model = _create(MLAN_BASE).eval()
    del model._modules["input_check"]  # what such a pickle holds
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert next(iter(loaded.named_children()))[0] == "input_check"
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(1)), _create(MLAN_BASE).eval()(_x(1)))
        with pytest.raises(ValueError, match="multiples of 4"):
            loaded(torch.randn(1, 3, 31, 31))


def test_integer_out_indices_take_the_last_levels_as_in_timm():
    model = _create(MLAN_BASE, features_only=True, out_indices=4).eval()
    assert [f.shape[1] for f in model(_x(1))] == [8, 8, 16, 32]
    assert [f.shape[1] for f in _create(MLAN_BASE, features_only=True, out_indices=2).eval()(_x(1))] == [16, 32]


def test_reset_classifier_checks_num_classes_like_the_constructor():
    model = _create(MLAN_BASE)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0, got -1"):
        model.reset_classifier(-1)
    assert model.get_classifier().out_features == 10  # unchanged
    model.reset_classifier(0)
    assert model(_x(1)).shape == (1, 8 * 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(enable="off"), r"set_fast_paths\(enable\) must be True or False, got 'off'"),
    (dict(cpu_kernels="false"), r"set_fast_paths\(cpu_kernels\) must be True or False or None, got 'false'"),
    (dict(gpu_kernels=1), r"set_fast_paths\(gpu_kernels\) must be True or False or None, got 1"),
])
def test_set_fast_paths_refuses_what_is_not_a_switch(kwargs, match):
    """A string such as 'false' is truthy: it would have switched the kernels on."""
    model = _create(MLAN_BASE)
    with pytest.raises(TypeError, match=match):
        model.set_fast_paths(**kwargs)
    assert all(g.fast_path is True and g.cpu_kernels is None and g.gpu_kernels is None
               for g in model.modules() if hasattr(g, "gpu_kernels"))


def test_other_multiple_of_4_sizes_work():
    model = _create(MLAN_BASE).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 10)
        assert model.forward_features(torch.randn(1, 3, 16, 16)).shape == (1, 32, 4, 4)


# ---------------------------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------------------------

JIT_CASES = [(n, {}) for n in FAMILY_REPS] + [(MLAN_BASE, dict(fusion=f)) for f in FUSION_TYPES if f != "plus"] + [
    (MLAN_BASE, dict(levels="single")),
    (MLAN_BASE, dict(attn="fma")),
]


def _check_script(name, kwargs):
    with timm.layers.set_scriptable(True):
        model = _create(name, **kwargs).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.x
        scripted = torch.jit.script(model)
    x = _x(2)
    model.set_fast_paths(False)  # TorchScript runs the reference path (the fast path is compared in test_models)
    with torch.no_grad():
        ref = model(x)
        out = scripted(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs", JIT_CASES, ids=lambda v: v if isinstance(v, str) else _grid_id(v))
def test_torchscript(name, kwargs):
    _check_script(name, kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript_all_models(name):
    _check_script(name, {})


# ---------------------------------------------------------------------------------------------------------------
# torch.fx
# ---------------------------------------------------------------------------------------------------------------

FX_CASES = [(n, {}) for n in FAMILY_REPS] + [(MLAN_BASE, dict(fusion=f)) for f in FUSION_TYPES if f != "plus"] + [
    (MLAN_BASE, dict(levels="single")),
]


@pytest.mark.parametrize("name,kwargs", FX_CASES, ids=lambda v: v if isinstance(v, str) else _grid_id(v))
def test_fx_symbolic_trace(name, kwargs):
    model = _create(name, **kwargs).eval()
    gm = torch.fx.symbolic_trace(model)
    x = _x(2)
    with torch.inference_mode():  # the traced graph is the streaming fast path; eager picks by batch size
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    # the input check survives tracing (check_input is fx-wrapped, not traced away)
    with pytest.raises(ValueError, match="multiples of 4"):
        gm(torch.randn(2, 3, 30, 30))


def _timm_fx_model(model, train=False):
    """timm's _create_fx_model: torchvision feature extractor returning the last node, timm's tracer kwargs."""
    from timm.models import get_notrace_functions, get_notrace_modules

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.skipif(not HAS_TV_FX, reason="torchvision feature_extraction unavailable")
@pytest.mark.parametrize("name", [MLAN_BASE, "cbam_resnet14_cifar10"])
def test_fx_forward_backward_timm_style(name):
    model = _create(name).eval()
    x = _x(2)
    with torch.inference_mode():
        ref = model(x)
        fx_model = _timm_fx_model(model)
        out = list(fx_model(x).values())[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # traced: the streaming path; eager: by batch size

    # timm's test_model_backward_fx
    model = _create(name, num_classes=42).train()
    fx_model = _timm_fx_model(model, train=True).train()
    out = list(fx_model(x).values())[0]
    assert out.shape == (2, 42)
    out.mean().backward()
    _assert_all_params_have_finite_grads(fx_model)


@pytest.mark.skipif(not HAS_TV_FX, reason="torchvision feature_extraction unavailable")
def test_features_only_fx_feature_cls():
    hooks = _create(MLAN_BASE, features_only=True).eval()
    fx = _create(MLAN_BASE, features_only=True, feature_cls="fx").eval()  # same seed -> same weights
    _assert_same_features(hooks, fx)


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------

def _check_compile(model, backend, x, train=False):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    if train:
        model.train()
        ref = model(x)
        out = compiled(x)
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
        out.mean().backward()
        _assert_all_params_have_finite_grads(model)
        return
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILY_REPS)
def test_compile_eager_backend(name):
    _check_compile(_create(name).eval(), "eager", _x(2))


@pytest.mark.parametrize("name,kwargs", [(MLAN_BASE, {}), ("cbam_resnet14_cifar10", {}),
                                         (MLAN_BASE, dict(fusion="weighted", levels="single"))],
                         ids=lambda v: v if isinstance(v, str) else _grid_id(v))
def test_compile_aot_eager_backend(name, kwargs):
    _check_compile(_create(name, **kwargs).eval(), "aot_eager", _x(2))


@pytest.mark.slow
@pytest.mark.parametrize("name", [MLAN_BASE, "mlan_v2_resnet14_cifar10", "se_resnet14_cifar10"])
def test_compile_inductor(name):
    _check_compile(_create(name).eval(), "inductor", _x(2))


@pytest.mark.slow
def test_compile_aot_eager_train_with_grad_checkpointing():
    model = _create(MLAN_BASE)
    model.set_grad_checkpointing(True)
    _check_compile(model, "aot_eager", _x(2), train=True)


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------

def _export_onnx(model, path, dynamo):
    x = _x(2)
    kwargs = dict(dynamo=dynamo)
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kwargs.update(input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), **kwargs)


def _check_onnx(name, dynamo, tmp_path):
    import onnx

    model = _create(name).eval()
    path = tmp_path / f"{name}.onnx"
    _export_onnx(model, path, dynamo)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert len(proto.graph.input) == 1 and len(proto.graph.output) == 1
    if not HAS_ORT:
        pytest.skip("onnxruntime not installed: ONNX exported and checked, outputs not compared")
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 3):  # dynamic batch
        x = _x(batch, seed=batch)
        (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            ref = model(x)
        assert out.shape == tuple(ref.shape)
        assert torch.allclose(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,dynamo", [(MLAN_BASE, True), ("cbam_resnet14_cifar10", False)])
def test_onnx_export(name, dynamo, tmp_path):
    _check_onnx(name, dynamo, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", [MLAN_BASE, "mlan_v2_resnet14_cifar10", "se_resnet14_cifar10",
                                  "ta_resnet14_cifar10", "gc_resnet14_cifar10", "resnet14_cifar10"])
def test_onnx_export_both_exporters(name, dynamo, tmp_path):
    _check_onnx(name, dynamo, tmp_path)
