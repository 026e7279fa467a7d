"""Wiring of the MLAN levels (docs/architecture.md) against hand-written forward passes, and the network's shape."""
import pytest
import timm
import torch
from helpers import randomize_bn

import mlan_timm
from mlan_timm import zoo
from mlan_timm.layers import create_attention
from mlan_timm.models.blocks import (
    STREAMING_MIN_BATCH,
    STREAMING_MIN_PLANE,
    BasicBlock,
    MLANBlock,
    MLANGroup,
    SingleLevelBlock,
)
from mlan_timm.models.cifar_resnet import CifarResNet


def _randomize_bn(module):
    return randomize_bn(module).eval()


@pytest.fixture(params=["sma", "sma_v2", "fma", "cbam"])
def attn(request):
    return request.param


def _factory(attn):
    return lambda c, level: create_attention(attn, c, level)


@torch.no_grad()
def test_mlan_block_is_fusion_of_backbone_projected_la_and_residual(attn):
    """b = LA(cat(T(o1), T(o2))) keeps 2C channels; x_A = conv1x1(b); y = ReLU(F(o2, x_A, x))."""
    block = _randomize_bn(MLANBlock(8, _factory(attn), "weighted"))
    x = torch.randn(2, 8, 6, 6)
    o1 = torch.relu(block.bn1(block.conv1(x)))
    o2 = block.bn2(block.conv2(o1))
    b = block.block_attn.attn(torch.cat([block.layer_attn[0](o1), block.layer_attn[1](o2)], 1))
    expected = torch.relu(block.fusion(o2, block.attn_proj(b), x))
    out, attn_out = block(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(attn_out, b)
    assert attn_out.shape == (2, 16, 6, 6) and out.shape == (2, 8, 6, 6)
    assert block.attn_proj.weight.shape == (8, 16, 1, 1) and block.attn_proj.bias is None


@torch.no_grad()
@pytest.mark.parametrize("down", [True, False])
def test_mlan_group_fuses_ba_with_the_group_input_after_the_d_block(attn, down):
    """g = BA(cat(b_1..b_p)) on 2pC channels, g_A = conv1x1(g); out = ReLU(F(y_p, g_A, x_G)), x_G after D."""
    d_block = BasicBlock(4, 8, 2) if down else None
    group = _randomize_bn(MLANGroup(d_block, 8, 3, _factory(attn), "plus"))
    x = torch.randn(2, 4 if down else 8, 12, 12)
    x_g = group.down_block(x)
    y, attns = x_g, []
    for block in group.blocks:
        y, a = block(y)
        attns.append(a)
    g = group.group_attn.attn(torch.cat(attns, 1))
    assert g.shape[1] == 2 * 3 * 8
    expected = torch.relu(y + group.attn_proj(g) + x_g)
    torch.testing.assert_close(group(x), expected)
    assert isinstance(group.down_block, BasicBlock if down else torch.nn.Identity)


@torch.no_grad()
def test_single_level_block():
    block = _randomize_bn(SingleLevelBlock(16, _factory("sma"), "plus"))
    x = torch.randn(2, 16, 8, 8)
    o2 = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(o2 + block.attn(o2) + x))


@torch.no_grad()
def test_classic_block_applies_attention_after_bn2_before_the_addition():
    block = _randomize_bn(BasicBlock(8, 16, 2, _factory("se")))
    x = torch.randn(2, 8, 8, 8)
    o2 = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(block.attn(o2) + block.downsample(x)))
    assert block.attn.fc1.out_channels == 1  # reduction 16, at least one unit


def test_structures_are_what_the_names_say():
    plain = timm.create_model("resnet20_cifar10")
    assert all(isinstance(m.attn, torch.nn.Identity) for m in plain.modules() if isinstance(m, BasicBlock))
    se = timm.create_model("se_resnet20_cifar10")
    assert sum(type(m).__name__ == "SEModule" for m in se.modules()) == 9  # every block, D blocks included
    mlan = timm.create_model("mlan_v2_resnet26_cifar100")
    assert [type(g) for g in mlan.groups] == [MLANGroup] * 3
    assert [len(g.blocks) for g in mlan.groups] == [4, 3, 3]  # groups 2, 3: a D block + n - 1 MLAN blocks
    assert [isinstance(g.down_block, BasicBlock) for g in mlan.groups] == [False, True, True]
    assert [g.blocks[0].conv1.out_channels for g in mlan.groups] == [16, 32, 64]
    single = timm.create_model("mlan_resnet14_cifar10", levels="single")
    assert sum(isinstance(m, SingleLevelBlock) for m in single.modules()) == 4
    assert not any(isinstance(m, MLANGroup) for m in single.modules())


def test_backbone_keys_are_shared_by_plain_classic_and_mlan_models():
    """An MLAN model holds its backbone under the same state-dict keys: backbone weights load with strict=False."""
    plain = timm.create_model("resnet20_cifar10")
    mlan = timm.create_model("mlan_resnet20_cifar10")
    assert set(plain.state_dict()) < set(mlan.state_dict())
    assert set(plain.state_dict()) < set(timm.create_model("se_resnet20_cifar10").state_dict())
    missing, unexpected = mlan.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".layer_attn." in k or "attn" in k or "fusion" in k for k in missing)


@pytest.mark.parametrize("layers,widths", [((1,), (8,)), ((2, 2), (8, 16)), ((1, 1, 1, 1), (4, 8, 8, 16)),
                                           ((2, 1, 3), (4, 8, 8))])
@pytest.mark.parametrize("structure", ["plain", "mlan"])
def test_any_number_of_groups_is_built_and_run(layers, widths, structure):
    """Every group that is built is run (and counted in features); groups of one block are a lone D block."""
    attn = "sma" if structure == "mlan" else None
    model = CifarResNet(layers, widths, num_classes=3, structure=structure, attn=attn).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[1] for f in feats] == [widths[0], *widths]
    assert [f.shape[-1] for f in feats] == [32] + [32 // 2 ** i for i in range(len(layers))]
    assert model(x).shape == (2, 3)
    assert len(model.groups) == len(layers) == len(model.feature_info) - 1
    # every parameter takes part in the forward pass
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("layers,widths,match", [
    ((), (), "non-empty"), ((2, 2), (8,), "equally long"), ((2, 0), (8, 16), "integers >= 1"),
    ((2,), (0,), "widths must be"),
])
def test_bad_group_specs_are_rejected(layers, widths, match):
    with pytest.raises(ValueError, match=match):
        CifarResNet(layers, widths)


def test_widths_kwarg_builds_the_standard_width_resnet20():
    """resnet20_cifar10 is the paper's narrow 8/16/32 net; widths=(16, 32, 64) gives the usual 0.27M ResNet-20."""
    model = timm.create_model("resnet20_cifar10", widths=(16, 32, 64))
    assert sum(p.numel() for p in model.parameters()) == 272_474  # the authors' code at 16/32/64, 10 classes
    assert timm.create_model("mlan_resnet20_cifar10", widths=(16, 32, 64)).groups[2].blocks[0].conv1.in_channels == 64


def test_input_errors_name_the_problem():
    model = timm.create_model("mlan_resnet14_cifar10").eval()
    with pytest.raises(ValueError, match="floating-point.*uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiples of 4.*30x30"):
        model(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.zeros(1, 1, 32, 32))


def test_model_names_and_parse():
    names = mlan_timm.list_models()
    assert len(names) == 56 == len(set(names))
    assert set(names) <= set(timm.list_models("*_cifar*"))
    assert zoo.parse_model_name("mlan_v2_resnet32_cifar100") == ("mlan_v2_", 32, "cifar100", "")
    assert zoo.parse_model_name("hf-hub:mlan-timm/mlan_resnet20_cifar10.paper").tag == "paper"
    for bad in ("mlan_resnet18_cifar10", "foo_resnet20_cifar10", "mlan_resnet20_cifar1000", "resnet20"):
        with pytest.raises(ValueError, match=f"unknown mlan_timm model '{bad}'"):
            zoo.parse_model_name(bad)
    assert [zoo.parse_model_name(n).name for n in names] == names


def test_cfg_says_dataset_and_normalisation():
    c10 = timm.create_model("resnet14_cifar10").pretrained_cfg
    c100 = timm.create_model("resnet14_cifar100").pretrained_cfg
    assert c10["label_names"][0] == "airplane" and c10["label_names"][9] == "truck"
    labels = c100["label_names"]
    assert len(labels) == 100 and labels == sorted(labels) and labels[0] == "apple" and labels[-1] == "worm"
    assert tuple(c10["mean"]) == tuple(c100["mean"]) == zoo.PAPER_MEAN  # the paper recipe's constants
    assert c10["num_classes"] == 10 and c100["num_classes"] == 100


@pytest.mark.parametrize("batch", [1, STREAMING_MIN_BATCH - 1, STREAMING_MIN_BATCH + 1, STREAMING_MIN_BATCH + 2])
@pytest.mark.parametrize("name,kwargs", [
    ("mlan_resnet14_cifar10", {}), ("mlan_v2_resnet14_cifar10", {}),
    ("mlan_resnet20_cifar100", dict(fusion="weighted")),
    ("mlan_resnet14_cifar10", dict(fusion="concat", mask_kernel_size=1)), ("mlan_resnet14_cifar10", dict(num_masks=1)),
])
def test_fast_path_equals_the_equations_forward_and_backward(name, kwargs, batch):
    """Both fast-path formulations (concatenating below STREAMING_MIN_BATCH, streaming from it on) compute the
    reference's outputs and gradients, and its outputs without autograd (where conv2 and T_1's masks merge)."""
    torch.manual_seed(0)
    fast = timm.create_model(name, **kwargs)
    ref = timm.create_model(name, **kwargs)
    ref.load_state_dict(fast.state_dict())
    ref.set_fast_paths(False)
    assert all(g.fast_path and g.has_fast_path() for g in fast.groups)
    assert not any(g.fast_path for g in ref.groups)
    x = torch.randn(batch, 3, 32, 32)
    for model in (fast, ref):
        model.train()
        model(x).square().mean().backward()
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-5)
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)
    with torch.inference_mode():
        torch.testing.assert_close(fast.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)


def test_fast_path_equals_the_equations_in_float64_at_the_threshold_batch():
    """At batch STREAMING_MIN_BATCH this seed's float32 gradients differ by ~3% in one BN-conditioned layer, in the
    earlier code as well (float rounding, amplified); in float64 both paths agree to rounding."""
    torch.manual_seed(0)
    fast = timm.create_model("mlan_resnet14_cifar10").double()
    ref = timm.create_model("mlan_resnet14_cifar10").double()
    ref.load_state_dict(fast.state_dict())
    ref.set_fast_paths(False)
    x = torch.randn(STREAMING_MIN_BATCH, 3, 32, 32, dtype=torch.float64)
    for model in (fast, ref):
        model.train()(x).square().mean().backward()
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_fast_path_picks_its_formulation_by_batch_size_and_plane(monkeypatch):
    model = timm.create_model("mlan_resnet14_cifar10").eval()
    calls = []
    monkeypatch.setattr(MLANGroup, "forward_streaming", lambda self, x: calls.append(("stream", x.shape[0])) or x)
    monkeypatch.setattr(MLANGroup, "forward_concatenated",
                        lambda self, x, small_batch: calls.append(("concat", small_batch)) or x)
    group = model.groups[0]
    for batch in (1, STREAMING_MIN_BATCH - 1, STREAMING_MIN_BATCH):
        group(torch.randn(batch, 8, 32, 32))
    # the last group's D block halves its 16x16 input: 8x8 = 64 pixels < STREAMING_MIN_PLANE, concatenated with the
    # reference blocks at any batch; a 32x32 input gives it 16x16 = 256 pixels, streamed
    assert STREAMING_MIN_PLANE == 256
    model.groups[2](torch.randn(STREAMING_MIN_BATCH, 16, 16, 16))
    model.groups[2](torch.randn(STREAMING_MIN_BATCH, 16, 32, 32))
    model.set_fast_paths(False)
    group(torch.randn(STREAMING_MIN_BATCH, 8, 32, 32))
    assert calls == [("concat", True), ("concat", True), ("stream", STREAMING_MIN_BATCH), ("concat", False),
                     ("stream", STREAMING_MIN_BATCH), ("concat", False)]


def test_small_batch_forward_checks_no_kernel_structure_without_the_kernels(monkeypatch):
    """MLANGroup.fusable walks every block's modules, a cost that showed in MLAN's batch-1 latency; the forward asks
    it only when the compiled CPU kernels are in use."""
    def fail(self):
        raise AssertionError("fusable() called without the kernels")
    monkeypatch.setattr(MLANGroup, "fusable", fail)
    model = timm.create_model("mlan_resnet20_cifar10").eval()
    model.set_fast_paths(True, cpu_kernels=False)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_structural_checks_follow_submodule_swaps():
    """The fast paths' structural checks are cached (models/structure.py), and any submodule registration in the
    process invalidates them: swapping an attention by attribute or by ModuleList item changes the formulation the
    next forward picks, and the outputs still equal the reference's."""
    torch.manual_seed(0)
    model = timm.create_model("mlan_resnet14_cifar10").eval()
    ref = timm.create_model("mlan_resnet14_cifar10").eval()
    ref.load_state_dict(model.state_dict())
    ref.set_fast_paths(False)
    group, block = model.groups[0], model.groups[0].blocks[0]
    assert group.has_fast_path() and block.can_merge_first_mask() and group.fusable() and group.gpu_kernels_fit()
    assert group.has_fast_path.__wrapped__(group)  # the undecorated check agrees
    for swap in (lambda m: setattr(m.groups[0].group_attn, "attn", create_attention("se", 32, "aggregate")),
                 lambda m: m.groups[0].blocks[0].layer_attn.__setitem__(0, create_attention("cbam", 8, "layer"))):
        torch.manual_seed(1)
        swap(model)
        torch.manual_seed(1)
        swap(ref)
        x = torch.randn(2, 3, 32, 32)
        with torch.inference_mode():
            torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    assert not group.has_fast_path() and not group.fusable() and not group.gpu_kernels_fit()
    assert not block.can_merge_first_mask() and not block.can_fuse()
    assert model.groups[1].has_fast_path()  # untouched groups keep theirs


def test_structural_check_cache_is_not_carried_by_copies():
    """A cached answer is tied to this process's current structure token: a deep copy or an unpickled model
    recomputes it (an entry left stale by a swap must not become valid again elsewhere)."""
    import copy
    import pickle

    from mlan_timm.models.structure import structure_token
    model = timm.create_model("mlan_resnet14_cifar10")
    group = model.groups[0]
    assert group.has_fast_path()
    assert group.__dict__["_structure_cache_has_fast_path"][0] is structure_token()
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        entry = other.groups[0].__dict__.get("_structure_cache_has_fast_path")
        assert entry is None or entry[0] is not structure_token()
        assert other.groups[0].has_fast_path()
    torch.nn.Sequential(torch.nn.ReLU())  # registers a submodule: every cached answer is recomputed
    assert group.__dict__["_structure_cache_has_fast_path"][0] is not structure_token()


def test_compiled_forward_neither_reads_nor_writes_the_structure_cache():
    """Under torch.compile the checks are computed in the trace (dynamo guards the module structure itself), so the
    trace writes no cache entry; the eager forward afterwards does."""
    torch._dynamo.reset()
    model = timm.create_model("mlan_resnet14_cifar10").eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out = compiled(x)
        assert not any(k.startswith("_structure_cache_") for m in model.modules() for k in m.__dict__)
        torch.testing.assert_close(out, model(x))  # eager: the same formulation, now cached
    assert any(k.startswith("_structure_cache_") for k in model.groups[0].__dict__)


def test_inference_runs_conv2_and_the_first_mask_as_one_conv(monkeypatch):
    """Without autograd conv2 and T_1's mask convs read out1 once (C + N outputs); with autograd they stay apart."""
    model = timm.create_model("mlan_resnet14_cifar10")
    widths = []
    real_conv = torch.nn.functional.conv2d

    def spy(x, weight, *args, **kwargs):
        widths.append(weight.shape[0])
        return real_conv(x, weight, *args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    x = torch.randn(STREAMING_MIN_BATCH, 3, 32, 32)
    with torch.inference_mode():
        model.eval()(x)
    assert widths.count(8 + 3) == 2  # the two MLAN blocks of the first group (C = 8, N = 3)
    widths.clear()
    model.train()(x).sum().backward()
    assert 8 + 3 not in widths


def test_fast_path_really_skips_the_concatenation(monkeypatch):
    """The fast path never builds the 2C / 2pC-channel concatenations (what makes it faster) where it streams: on
    planes of STREAMING_MIN_PLANE pixels and more."""
    model = timm.create_model("mlan_resnet14_cifar10").eval()
    widths = []
    real_cat = torch.cat

    def spy(tensors, dim=0, **kw):
        out = real_cat(tensors, dim, **kw)
        if out.dim() == 4 and out.shape[0] == 5:  # activations (batch 5), not stacked weights
            widths.append(out.shape[1])
        return out
    monkeypatch.setattr(torch, "cat", spy)
    with torch.no_grad():
        model(torch.randn(5, 3, 64, 64))  # planes 64x64, 32x32, 16x16: every group streams
        assert widths == []
        model(torch.randn(5, 3, 32, 32))  # the last group's 8x8 planes: LA's 2C = 64 (its one block: BA's input
        assert widths == [64]             # is that block's attention, nothing to concatenate)
        widths.clear()
        model.set_fast_paths(False)
        model(torch.randn(5, 3, 64, 64))
    assert 16 in widths and 2 * 2 * 8 in widths  # LA's 2C and BA's 2pC concatenations, reference path only


def test_fast_path_applies_only_to_shared_mask_aggregation():
    for attn in ("fma", "se", "cbam", "gc", "ta"):
        model = timm.create_model("mlan_resnet14_cifar10", attn=attn)
        assert not any(g.has_fast_path() for g in model.groups), attn


@pytest.mark.parametrize("batch", [2, STREAMING_MIN_BATCH + 4])
def test_fast_path_trains_under_bf16_autocast(batch):
    """Both fast-path regimes run under autocast (in-place and custom-backward ops cast explicitly); logits match the
    reference under the same autocast within bf16 rounding, every gradient is finite and in its parameter's dtype."""
    torch.manual_seed(0)
    fast = timm.create_model("mlan_resnet14_cifar10").train()
    ref = timm.create_model("mlan_resnet14_cifar10").train()
    ref.load_state_dict(fast.state_dict())
    ref.set_fast_paths(False)
    x = torch.randn(batch, 3, 32, 32)
    logits = []
    for model in (fast, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
        logits.append(out.float())
    torch.testing.assert_close(logits[0], logits[1], rtol=0.05, atol=0.05 * logits[1].abs().max().item())
    for n, p in fast.named_parameters():
        assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("batch", [2, STREAMING_MIN_BATCH + 1])
def test_fast_path_with_grad_checkpointing_equals_the_equations(batch):
    torch.manual_seed(0)
    fast = timm.create_model("mlan_resnet14_cifar10").train()
    ref = timm.create_model("mlan_resnet14_cifar10").train()
    ref.load_state_dict(fast.state_dict())
    ref.set_fast_paths(False)
    fast.set_grad_checkpointing(True)
    x = torch.randn(batch, 3, 32, 32)
    out, expected = fast(x), ref(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    expected.square().mean().backward()
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.parametrize("batch", [2, STREAMING_MIN_BATCH + 1])
def test_fast_path_in_channels_last_equals_the_equations(batch):
    """Inference only: channels-last training on CPU aborts inside torch 2.14.1 for the plain backbone too."""
    torch.manual_seed(0)
    fast = timm.create_model("mlan_resnet14_cifar10").eval().to(memory_format=torch.channels_last)
    ref = timm.create_model("mlan_resnet14_cifar10").eval()
    ref.load_state_dict(fast.state_dict())
    ref.set_fast_paths(False)
    x = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), ref(x),
                                   rtol=1e-4, atol=1e-5)
