"""The optional compiled CPU kernels (mlan_timm/layers/cpu_kernels.py, csrc/small_conv.cpp) against PyTorch.

* the kernel functions against ``F.conv2d`` / ``torch.nn.grad.conv2d_weight``, and their error messages;
* :func:`same_conv` with kernels: values and gradients of ``F.conv2d``;
* whole models with the kernels equal the reference path (``set_fast_paths(False)``), inference and training;
* dispatch: which kernel runs when (a spy in place of the extension), the per-model and process-wide switches;
* where the kernels do not apply (``kernels_for`` returns None) the library path runs, under FX and tracing too;
* without AVX-512 or AVX2, or when the build fails: one warning and the library convolutions;
* benchmarks/cpu_kernels_ab.py, which times two builds of the source on whole models.

Tests that need the real kernels skip when they cannot be built here (neither AVX-512 nor AVX2, no compiler). The
first test that needs them builds the extension (about 15 s, cached under ``TORCH_EXTENSIONS_DIR``). The tests of the
kernels run with this CPU's build and, on an AVX-512 CPU, once more with the AVX2 build (which runs there too): that
second round is marked slow (one more build).

Tolerances. Float32 model outputs: ``rtol=1e-4, atol=1e-4 * max|reference|``. The library fast path
(``cpu_kernels=False``) itself deviates from the reference by up to 2.4e-5 * max|logit| over seeds 0-2 and batches
1-8 of both models below (the kernels: up to 5e-6), so this leaves a 4x margin over the library's own rounding;
both are asserted side by side in the inference test. Gradients: per parameter, ``|g - g_ref| / |g_ref| < 1e-3``
(norms; observed <= 1.6e-4 for the kernels and the library fast path alike). A pre-activation within float32
rounding of 0 may flip a ReLU's derivative in either fast path (the library's as well, test_models.py), which moves
a gradient by ~1%; the seeds below were checked to keep clear of that.
"""
import json
import os
import subprocess
import sys
import warnings
from collections import Counter

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import randomize_bn

import mlan_timm  # noqa: F401  (registers the models)
from mlan_timm.layers import PlusFusion, WeightedFusion, cpu_kernels, create_attention, same_conv
from mlan_timm.models.blocks import STREAMING_MIN_BATCH, MLANGroup

MODELS = ["mlan_resnet20_cifar10", "mlan_resnet14_cifar100"]
SMALL = "mlan_resnet14_cifar10"


# ---------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _restore_kernel_state(monkeypatch):
    """Every test leaves the process-wide switch and the loaded module as it found them."""
    for name in ("enabled", "module", "width", "error"):
        monkeypatch.setattr(cpu_kernels._State, name, getattr(cpu_kernels._State, name))


@pytest.fixture(scope="module")
def native_kernels():
    """The real compiled extension for this CPU (built once, cached on disk), or skip saying why it is unavailable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        module = cpu_kernels.load_cpu_kernels()
    if module is None:
        pytest.skip(f"compiled CPU kernels unavailable here: {cpu_kernels._State.error}")
    return module


def _isa_params():
    """This CPU's build, and the AVX2 build where the CPU has AVX-512 (it runs there: slow, one more build)."""
    params = [pytest.param(None, id="native")]
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        params.append(pytest.param("AVX2", id="avx2", marks=pytest.mark.slow))
    return params


@pytest.fixture(scope="module", params=_isa_params())
def kernels(request, native_kernels):
    """The extension every model uses during the test: this CPU's build, or the AVX2 build (``use_module``)."""
    if request.param is None:
        yield native_kernels
        return
    module = cpu_kernels.build_extension(isa=request.param)
    previous = (cpu_kernels._State.module, cpu_kernels._State.width, cpu_kernels._State.error)
    cpu_kernels.use_module(module)
    assert cpu_kernels.kernel_isa() == cpu_kernels.ISAS[request.param][0]
    yield module
    cpu_kernels._State.module, cpu_kernels._State.width, cpu_kernels._State.error = previous


def _skip_unless_whole_vectors(kernels, plane):
    if (plane[0] * plane[1]) % kernels.vector_width():
        pytest.skip(f"{plane[0]}x{plane[1]} is not a whole number of {kernels.vector_width()}-float vectors")


class Spy:
    """Stands in for the extension: counts calls of each function and forwards them to the real one."""

    def __init__(self, module):
        self._module = module
        self.calls = Counter()

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def call(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)
        return call


@pytest.fixture
def spy(kernels, monkeypatch):
    """The spy installed as the loaded extension: every model and ``kernels_for`` gets it (restored afterwards)."""
    s = Spy(kernels)
    monkeypatch.setattr(cpu_kernels._State, "module", s)
    return s




def _models(name, seed=0, **kwargs):
    """``(kernels, reference, library fast path)``: three copies of one randomly initialised model."""
    torch.manual_seed(seed)
    kern = randomize_bn(timm.create_model(name, **kwargs))
    ref = timm.create_model(name, **kwargs)
    lib = timm.create_model(name, **kwargs)
    for m in (ref, lib):
        m.load_state_dict(kern.state_dict())
    kern.set_fast_paths(True, cpu_kernels=True)
    ref.set_fast_paths(False)
    lib.set_fast_paths(True, cpu_kernels=False)
    return kern, ref, lib


def _x(batch, size=(32, 32), seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _n_blocks(model):
    return sum(len(g.blocks) for g in model.groups if isinstance(g, MLANGroup))


def _assert_logits_close(out, ref):
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def _train_step(model, x):
    model.train()
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    return out.detach()


def _assert_grads_close(model, ref):
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None, n
        err = ((p.grad - q.grad).norm() / q.grad.norm()).item()
        assert err < 1e-3, f"{n}: relative gradient error {err:.2e}"


# ---------------------------------------------------------------------------------------------------------------
# 1. The kernel functions against PyTorch
# ---------------------------------------------------------------------------------------------------------------

# AVX-512 (16 floats, tiles of 4 vectors): 4x4 is one vector, 8x8 and 8x16 have vectors spanning rows, 6x8 and 12x20
# a vector count that is not a multiple of the tile (the untiled path). AVX2 (8 floats, tiles of 2): 2x4 is one
# vector, 4x6 three (untiled); planes that are not whole vectors for a build are skipped for it.
PLANES = [(32, 32), (16, 16), (8, 8), (4, 4), (8, 16), (6, 8), (12, 20), (2, 4), (4, 6)]
OUT_CHANNELS = [1, 2, 3, 4, 5, 8]  # blocks of 4 output channels (3 for the weight gradient) and their remainders
IN_CHANNELS = [1, 3, 8, 16, 20]  # 16 and 20 on 32x32 planes: channel chunks of 8 (small_conv.cpp, channel_chunk)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("plane", PLANES, ids=lambda p: f"{p[0]}x{p[1]}")
def test_conv_same_equals_conv2d(kernels, plane, k):
    _skip_unless_whole_vectors(kernels, plane)
    gen = torch.Generator().manual_seed(0)
    for o in OUT_CHANNELS:
        for c in IN_CHANNELS:
            x = torch.randn(2, c, *plane, generator=gen)
            w = torch.randn(o, c, k, k, generator=gen)
            ref = F.conv2d(x, w, padding=k // 2)
            torch.testing.assert_close(kernels.conv_same(x, w), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item(),
                                       msg=lambda m: f"O={o} C={c}: {m}")


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("plane", PLANES, ids=lambda p: f"{p[0]}x{p[1]}")
def test_conv_same_grad_weight_equals_conv2d_weight(kernels, plane, k):
    _skip_unless_whole_vectors(kernels, plane)
    gen = torch.Generator().manual_seed(0)
    for o in OUT_CHANNELS:
        for c in IN_CHANNELS:
            x = torch.randn(2, c, *plane, generator=gen)
            grad = torch.randn(2, o, *plane, generator=gen)
            ref = torch.nn.grad.conv2d_weight(x, (o, c, k, k), grad, padding=k // 2)
            out = kernels.conv_same_grad_weight(x, grad, k)
            assert out.shape == (o, c, k, k)
            # sums of 2 * H * W products: float32 summation order differs from oneDNN's
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item(),
                                       msg=lambda m: f"O={o} C={c}: {m}")


@pytest.mark.parametrize("plane", [(8, 8), (6, 8)], ids=["tiled", "untiled"])
def test_conv_same_out_accumulates_in_place(kernels, plane):
    x, w = torch.randn(3, 5, *plane), torch.randn(6, 5, 3, 3)
    out = torch.randn(3, 6, *plane)
    before, ptr = out.clone(), out.data_ptr()
    result = kernels.conv_same(x, w, out)
    assert result is out and out.data_ptr() == ptr
    torch.testing.assert_close(out, before + F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    kernels.conv_same(x, w, out=out)  # keyword too; adds again
    torch.testing.assert_close(out, before + 2 * F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-4)


def test_kernels_take_non_contiguous_inputs(kernels):
    x = torch.randn(2, 16, 16, 8).permute(0, 3, 1, 2)  # (2, 8, 16, 16), channels-last strides
    w = torch.randn(12, 16, 3, 3)[::3, ::2]  # (4, 8, 3, 3), strided weight
    assert not x.is_contiguous() and not w.is_contiguous()
    torch.testing.assert_close(kernels.conv_same(x, w), F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-4)
    x2 = torch.randn(2, 10, 8, 8)[:, ::2]  # a channel slice
    torch.testing.assert_close(kernels.conv_same(x2, w[:, :5]), F.conv2d(x2, w[:, :5], padding=1),
                               rtol=1e-5, atol=1e-4)
    grad = torch.randn(2, 16, 8, 4).permute(0, 3, 1, 2)  # (2, 4, 16, 8)
    xg = torch.randn(2, 8, 8, 16).transpose(2, 3)  # (2, 8, 16, 8)
    torch.testing.assert_close(kernels.conv_same_grad_weight(xg, grad, 3),
                               torch.nn.grad.conv2d_weight(xg, (4, 8, 3, 3), grad, padding=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call,match", [
    (lambda k: k.conv_same(torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 3, 3)), "float32 only"),
    (lambda k: k.conv_same(torch.randn(1, 4, 6, 6), torch.randn(3, 4, 3, 3)), r"H \* W must be a multiple of {width}"),
    (lambda k: k.conv_same(torch.randn(1, 4, 8, 8), torch.randn(3, 5, 3, 3)),
     "weight has 5 input channels, x has 4"),
    (lambda k: k.conv_same(torch.randn(1, 4, 8, 8), torch.randn(3, 4, 2, 2)), "odd square kernels only"),
    (lambda k: k.conv_same(torch.randn(1, 4, 8), torch.randn(3, 4, 3, 3)), r"x \(N, C, H, W\)"),
    (lambda k: k.conv_same(torch.randn(1, 4, 8, 8), torch.randn(3, 4, 3, 3), torch.zeros(1, 2, 8, 8)),
     r"out must be a contiguous float32 \(N, O, H, W\)"),
    (lambda k: k.conv_same_grad_weight(torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8, 8, dtype=torch.float64), 3),
     "float32 only"),
    (lambda k: k.conv_same_grad_weight(torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 3, 8, 8), 3),
     "float32 only"),
    (lambda k: k.conv_same_grad_weight(torch.randn(1, 4, 8, 8), torch.randn(2, 3, 8, 8), 3),
     r"grad must be \(N, O, H, W\) with x's N, H, W"),
    (lambda k: k.conv_same_grad_weight(torch.randn(1, 4, 6, 6), torch.randn(1, 3, 6, 6), 3),
     r"H \* W must be a multiple of {width}"),
    (lambda k: k.conv_same_grad_weight(torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8, 8), 9),
     "kernel sizes 1, 3, 5, 7 only, got 9"),
], ids=["float64", "hw36", "channels", "even-k", "3d", "out-shape", "grad-float64", "gw-x-float64", "grad-batch",
        "gw-hw36", "gw-k9"])
def test_kernel_errors_name_the_problem(kernels, call, match):
    with pytest.raises(RuntimeError, match=match.replace("{width}", str(kernels.vector_width()))):
        call(kernels)


# ---------------------------------------------------------------------------------------------------------------
# 2. same_conv with the kernels
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_same_conv_with_kernels_equals_conv2d_values_and_gradients(spy, k, bias):
    x = torch.randn(3, 5, 8, 12)
    w = torch.randn(3, 5, k, k)
    b = torch.randn(3) if bias else None
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = same_conv(*leaves, kernels=spy) if bias else same_conv(*leaves, None, kernels=spy)
    ref = F.conv2d(*ref_leaves, padding=k // 2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-5)
    assert spy.calls == Counter(conv_same=1, conv_same_grad_weight=1)  # forward and weight gradient: the kernels


def test_same_conv_with_kernels_without_autograd(spy):
    x, w, b = torch.randn(2, 4, 8, 8), torch.randn(3, 4, 3, 3), torch.randn(3)
    with torch.no_grad():
        torch.testing.assert_close(same_conv(x, w, b, kernels=spy), F.conv2d(x, w, b, padding=1),
                                   rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(same_conv(x, w, kernels=spy), F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    assert spy.calls == Counter(conv_same=2)


def test_same_conv_without_kernels_is_unchanged(spy):
    """``kernels=None`` is PyTorch's conv (bit for bit); a float64 weight drops the kernels too."""
    x, w, b = torch.randn(2, 4, 8, 8), torch.randn(3, 4, 3, 3), torch.randn(3)
    with torch.no_grad():
        assert torch.equal(same_conv(x, w, b, kernels=None), F.conv2d(x, w, b, padding=1))
    xg = x.clone().requires_grad_()
    assert torch.equal(same_conv(xg, w, b, kernels=None), F.conv2d(x, w, b, padding=1))
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    out = same_conv(x64, w64, kernels=spy)
    assert out.dtype == torch.float64 and torch.equal(out, F.conv2d(x64, w64, padding=1))
    out.sum().backward()
    assert w64.grad.dtype == torch.float64
    assert not spy.calls


# ---------------------------------------------------------------------------------------------------------------
# 3. Models with the kernels equal the reference
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_mode", [torch.inference_mode, torch.no_grad], ids=["inference_mode", "no_grad"])
@pytest.mark.parametrize("name", MODELS)
def test_model_inference_with_kernels_equals_the_reference(spy, name, grad_mode):
    kern, ref, lib = (m.eval() for m in _models(name))
    for batch in (1, 3, 5, 8):
        x = _x(batch, seed=batch)
        spy.calls.clear()
        with grad_mode():
            out, expected, library = kern(x), ref(x), lib(x)
        assert spy.calls == Counter(mlan_block_forward=_n_blocks(kern))  # the fused path ran, at every batch size
        _assert_logits_close(library, expected)  # the tolerance holds the library fast path too
        _assert_logits_close(out, expected)


@pytest.mark.parametrize("name", MODELS)
def test_model_training_with_kernels_equals_the_reference(spy, name):
    kern, ref, _ = _models(name)
    x = _x(STREAMING_MIN_BATCH + 1)
    out, expected = _train_step(kern, x), _train_step(ref, x)
    _assert_logits_close(out, expected)
    _assert_grads_close(kern, ref)
    blocks = _n_blocks(kern)  # one fused forward and one fused backward per block, nothing else
    assert spy.calls == Counter(mlan_block_forward=blocks, mlan_block_backward=blocks)
    # BN's running statistics follow the same batch statistics
    for (n, a), b in zip(kern.named_buffers(), ref.buffers()):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


def test_train_mode_without_autograd_runs_the_fused_path_with_batch_statistics(spy):
    """``model.train()`` under ``no_grad`` (e.g. BN recalibration): fused kernels, BN in batch mode, same stats."""
    kern, ref, _ = _models(SMALL)
    x = _x(STREAMING_MIN_BATCH + 1)
    with torch.no_grad():
        out, expected = kern.train()(x), ref.train()(x)
    assert spy.calls == Counter(mlan_block_forward=_n_blocks(kern))
    _assert_logits_close(out, expected)
    for (n, a), b in zip(kern.named_buffers(), ref.buffers()):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("size", [(16, 16), (32, 48), (12, 20), (16, 24)],
                         ids=["4x4-plane", "non-square", "odd-vectors", "3-vector-plane"])
def test_model_on_other_image_sizes_equals_the_reference(spy, kernels, size):
    """16x16 images: group 3 runs on 4x4 planes (one AVX-512 vector); 32x48: non-square planes; 12x20: group 1's
    240-pixel plane is 15 AVX-512 vectors (the untiled, one-vector projection path), group 2's 6x10 plane is not
    whole vectors (the library path runs there); 16x24: group 3's 4x6 plane is 3 AVX2 vectors (untiled), not whole
    AVX-512 vectors."""
    kern, ref, _ = (m.eval() for m in _models(SMALL))
    groups = [g for g in kern.groups if isinstance(g, MLANGroup)]
    planes = [(-(-size[0] // 2 ** i), -(-size[1] // 2 ** i)) for i in range(len(groups))]  # stride 2 per group
    fused = sum(len(g.blocks) for g, (h, w) in zip(groups, planes) if (h * w) % kernels.vector_width() == 0)
    assert fused > 0
    for batch in (1, STREAMING_MIN_BATCH + 1):
        x = _x(batch, size)
        spy.calls.clear()
        with torch.inference_mode():
            _assert_logits_close(kern(x), ref(x))
        assert spy.calls["mlan_block_forward"] == fused


# ---------------------------------------------------------------------------------------------------------------
# 4. Dispatch
# ---------------------------------------------------------------------------------------------------------------

def test_inference_and_training_run_one_fused_kernel_per_mlan_block(spy):
    kern, _, _ = _models("mlan_resnet20_cifar10")
    blocks = _n_blocks(kern)
    assert blocks == 7  # groups of 3, 2 and 2 MLAN blocks
    with torch.inference_mode():
        kern.eval()(_x(1))
    assert spy.calls == Counter(mlan_block_forward=blocks)  # everything else of the attention inside it
    spy.calls.clear()
    out = kern.train()(_x(STREAMING_MIN_BATCH + 1))
    assert spy.calls == Counter(mlan_block_forward=blocks)  # saving masks and sigmoids for the backward
    out.sum().backward()
    assert spy.calls == Counter(mlan_block_forward=blocks, mlan_block_backward=blocks)
    # without the fused block (here: another fusion), the streaming path's six mask convs per block (T_1, T_2,
    # LA's two partials, BA's two partials) run on the kernels, forward and weight gradient
    unfused, _, _ = _models("mlan_resnet20_cifar10", fusion="conv1x1")
    spy.calls.clear()
    unfused.train()(_x(STREAMING_MIN_BATCH + 1)).sum().backward()
    assert spy.calls == Counter(conv_same=6 * blocks, conv_same_grad_weight=6 * blocks)


@pytest.mark.parametrize("batch", [1, STREAMING_MIN_BATCH + 1])
def test_grad_checkpointing_with_kernels_matches_the_reference(spy, batch):
    kern, ref, _ = _models(SMALL)
    kern.set_grad_checkpointing(True)
    blocks = _n_blocks(kern)
    x = _x(batch)
    with torch.no_grad():  # nothing to checkpoint without autograd: the inference kernels
        out, expected = kern.eval()(x), ref.eval()(x)
    assert spy.calls == Counter(mlan_block_forward=blocks)
    _assert_logits_close(out, expected)
    spy.calls.clear()
    out, expected = _train_step(kern, x), _train_step(ref, x)
    _assert_logits_close(out, expected)
    _assert_grads_close(kern, ref)
    # each checkpointed block runs its fused forward again in the backward pass
    assert spy.calls == Counter(mlan_block_forward=2 * blocks, mlan_block_backward=blocks)


def test_per_model_switch_off_overrides_the_process_wide_switch(spy):
    assert cpu_kernels.enable_cpu_kernels(True)
    kern, ref, lib = _models(SMALL)
    kern.set_fast_paths(True, cpu_kernels=False)
    assert all(g.cpu_kernels is False for g in kern.groups)
    for batch in (1, STREAMING_MIN_BATCH + 1):
        with torch.no_grad():
            _assert_logits_close(kern.eval()(_x(batch)), ref.eval()(_x(batch)))
    x = _x(STREAMING_MIN_BATCH + 1)
    _assert_logits_close(_train_step(kern, x), _train_step(ref, x))
    _assert_grads_close(kern, ref)
    assert not spy.calls  # no kernel at all: inference, training forward and backward


def test_per_model_default_follows_the_process_wide_switch(spy):
    kern, ref, _ = (m.eval() for m in _models(SMALL))
    kern.set_fast_paths(True)  # cpu_kernels=None
    assert all(g.cpu_kernels is None for g in kern.groups)
    x = _x(2)
    cpu_kernels.enable_cpu_kernels(False)
    assert not cpu_kernels.cpu_kernels_enabled() and cpu_kernels.cpu_kernels_status() == "off"
    with torch.no_grad():
        expected = ref(x)
        _assert_logits_close(kern(x), expected)
    assert not spy.calls
    assert cpu_kernels.enable_cpu_kernels(True) is True
    assert cpu_kernels.cpu_kernels_enabled()
    assert cpu_kernels.cpu_kernels_status().startswith(f"on ({cpu_kernels.kernel_isa()}, small_conv.cpp ")
    assert cpu_kernels.kernel_isa() in ("AVX-512", "AVX2")
    with torch.no_grad():
        _assert_logits_close(kern(x), expected)
    assert spy.calls == Counter(mlan_block_forward=_n_blocks(kern))
    spy.calls.clear()
    cpu_kernels.enable_cpu_kernels(False)
    with torch.no_grad():
        kern(x)
    assert not spy.calls


def test_group_whose_own_fusion_is_not_plus_ends_with_the_library_fusion(spy):
    """Blocks with plus fusion run the fused kernel; a group fusion other than plus is applied after it."""
    torch.manual_seed(0)
    group = randomize_bn(MLANGroup(None, 8, 2, lambda c, level: create_attention("sma", c, level),
                                    "plus")).eval()
    group.fusion = WeightedFusion(8)
    group.cpu_kernels = True
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        out = group.forward_streaming(x)
        expected = group.forward_reference(x)
    assert isinstance(group.blocks[0].fusion, PlusFusion)
    assert spy.calls == Counter(mlan_block_forward=2)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# 5. Where the kernels do not apply
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,applies", [
    (lambda: torch.randn(2, 8, 32, 32), True),
    (lambda: torch.randn(2, 8, 4, 4), True),  # 16 pixels: one vector
    (lambda: torch.randn(2, 8, 8, 6), True),  # 48 pixels
    (lambda: torch.randn(2, 8, 6, 6), False),  # 36 pixels
    (lambda: torch.randn(2, 8, 2, 12), None),  # 24 pixels: whole vectors of 8 floats (AVX2), not of 16
    (lambda: torch.randn(2, 8, 32, 32, dtype=torch.bfloat16), False),
    (lambda: torch.randn(2, 8, 32, 32, dtype=torch.float64), False),
    (lambda: torch.randn(2, 8, 32, 32).contiguous(memory_format=torch.channels_last), False),
    (lambda: torch.randn(2, 8, 32, 32)[:, ::2], False),
    (lambda: torch.randn(8, 32, 32), False),
], ids=["32x32", "4x4", "8x6", "6x6", "2x12", "bfloat16", "float64", "channels_last", "strided", "3d"])
def test_kernels_for_applies_to_float32_nchw_planes_of_whole_vectors(kernels, make, applies):
    x = make()
    applies = kernels.vector_width() == 8 if applies is None else applies
    assert (cpu_kernels.kernels_for(x, True) is kernels) == applies
    assert cpu_kernels.kernels_for(x, False) is None


def test_kernels_for_follows_the_switches(kernels):
    x = torch.randn(1, 4, 8, 8)
    cpu_kernels.enable_cpu_kernels(False)
    assert cpu_kernels.kernels_for(x) is None and cpu_kernels.kernels_for(x, True) is kernels
    cpu_kernels.enable_cpu_kernels(True)
    assert cpu_kernels.kernels_for(x) is kernels and cpu_kernels.kernels_for(x, False) is None


def test_kernels_for_is_none_under_autocast_fx_and_tracing(kernels):
    x = torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_kernels.kernels_for(x, True) is None
    seen = []

    def f(t):
        seen.append(cpu_kernels.kernels_for(t, True))
        return t * 2
    torch.fx.symbolic_trace(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated
        torch.jit.trace(f, x, check_trace=False)
    assert seen == [None, None]


def test_model_under_autocast_channels_last_or_bfloat16_uses_no_kernel(spy):
    """The library fast path runs, bit for bit the same as with the kernels switched off for the model."""
    kern, _, lib = (m.eval() for m in _models(SMALL))
    x = _x(STREAMING_MIN_BATCH + 1)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(kern(x), lib(x))
        for m in (kern, lib):
            m.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(kern(xc), lib(xc))
        kern.bfloat16()
        lib.bfloat16()
        assert torch.equal(kern(x.bfloat16()), lib(x.bfloat16()))
    assert not spy.calls


def test_fx_symbolic_trace_with_kernels_traces_the_library_path(spy):
    kern, ref, _ = (m.eval() for m in _models(SMALL))
    gm = torch.fx.symbolic_trace(kern)
    assert not spy.calls
    for batch in (1, STREAMING_MIN_BATCH + 1):
        x = _x(batch)
        spy.calls.clear()
        with torch.inference_mode():
            traced, expected = gm(x), ref(x)
        assert not spy.calls  # the graph holds PyTorch ops only
        _assert_logits_close(traced, expected)
        with torch.inference_mode():
            _assert_logits_close(traced, kern(x))  # eager: the kernels
        assert spy.calls == Counter(mlan_block_forward=_n_blocks(kern))


def test_timm_fx_feature_extraction_with_kernels_matches_eager(spy):
    pytest.importorskip("torchvision.models.feature_extraction")
    cpu_kernels.enable_cpu_kernels(True)
    torch.manual_seed(0)
    fx = timm.create_model(SMALL, features_only=True, feature_cls="fx").eval()
    torch.manual_seed(0)  # same seed, same weights
    eager = timm.create_model(SMALL).eval()
    ref = timm.create_model(SMALL).eval()
    ref.load_state_dict(eager.state_dict())
    ref.set_fast_paths(False)
    x = _x(2)
    with torch.inference_mode():
        feats = fx(x)
        assert not spy.calls
        kernel_feats = eager.forward_intermediates(x, intermediates_only=True)
        assert spy.calls["mlan_block_forward"] == _n_blocks(eager)
        ref_feats = ref.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(ref_feats) == 4
    for f, k, r in zip(feats, kernel_feats, ref_feats):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
        torch.testing.assert_close(k, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


@pytest.mark.parametrize("batch", [1, STREAMING_MIN_BATCH + 1])
def test_jit_trace_with_kernels_traces_the_library_path(spy, batch):
    """Traced under no_grad: torch.jit.trace's own check re-runs the model under no_grad, where conv2 and T_1's
    mask convs merge into one conv; traced with autograd on, the two graphs differ and the check fails (with the
    kernels on or off)."""
    kern, ref, _ = (m.eval() for m in _models(SMALL))
    x = _x(batch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and TracerWarnings
        traced = torch.jit.trace(kern, x, check_trace=False)
        assert not spy.calls  # tracing took the library path
        torch.jit.trace(kern, x)  # the default check (traced vs eager, which runs the kernels) passes
    graph = str(traced.inlined_graph)
    assert "prim::PythonOp" not in graph and "aten::_convolution" in graph
    x = _x(batch, seed=7)  # another input: a kernel result baked into the graph would not follow it
    spy.calls.clear()
    with torch.no_grad():
        out = traced(x)
        assert not spy.calls
        _assert_logits_close(out, ref(x))


# ---------------------------------------------------------------------------------------------------------------
# 6. Variants
# ---------------------------------------------------------------------------------------------------------------

VARIANTS = [
    (SMALL, dict(num_masks=1), True),
    (SMALL, dict(num_masks=4), True),
    (SMALL, dict(mask_kernel_size=5), True),
    (SMALL, dict(mask_kernel_size=7), True),
    ("mlan_v2_resnet14_cifar10", {}, False),  # SMAv2: no fused kernel, its mask convs are on one channel
    (SMALL, dict(fusion="concat"), False),
    (SMALL, dict(fusion="conv1x1"), False),
    (SMALL, dict(fusion="weighted"), False),
    (SMALL, dict(widths=(6, 10, 14)), True),  # widths not a multiple of the 4-channel projection blocks
    (SMALL, dict(widths=(5, 7, 9), num_masks=5), True),
    (SMALL, dict(widths=(20, 12, 14)), True),  # 20 channels of 32x32: channel chunks of 8, 8 and 4 (channel_chunk)
]


@pytest.mark.parametrize("name,kwargs,fused", VARIANTS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={v}" for k, v in v.items()) if isinstance(v, dict) else None)
def test_variants_with_kernels_equal_the_reference(spy, name, kwargs, fused):
    kern, ref, _ = _models(name, **kwargs)
    blocks = _n_blocks(kern)
    for batch in (1, STREAMING_MIN_BATCH + 1):
        x = _x(batch)
        spy.calls.clear()
        with torch.inference_mode():
            _assert_logits_close(kern.eval()(x), ref.eval()(x))
        assert spy.calls["mlan_block_forward"] == (blocks if fused else 0)
        if not fused and batch >= STREAMING_MIN_BATCH and name == SMALL:
            assert spy.calls["conv_same"] > 0  # the streaming path, its mask convs on the kernels
    x = _x(STREAMING_MIN_BATCH + 1)
    spy.calls.clear()
    _assert_logits_close(_train_step(kern, x), _train_step(ref, x))
    _assert_grads_close(kern, ref)
    assert spy.calls["mlan_block_forward"] == spy.calls["mlan_block_backward"] == (blocks if fused else 0)


@pytest.mark.parametrize("bias", [95.0, -95.0, 30.0])
def test_saturated_masks_with_kernels_equal_the_reference(spy, bias):
    """Mask logits far outside the kernels' exp range ([-88, 88], clamped; with AVX2, 2^-127 is built as 0): every
    mask conv's bias shifted by ``bias``, so the sigmoids saturate at 1 or 0 (or sit in exp's upper range: 30)."""
    kern, ref, _ = _models(SMALL)
    with torch.no_grad():
        for model in (kern, ref):
            biases = [p for name, p in model.named_parameters() if name.endswith("conv.bias")]
            assert len(biases) == 3 * _n_blocks(model) + 3  # T_1, T_2, LA per block, BA per group: the mask convs
            for p in biases:
                p.add_(bias)
    x = _x(STREAMING_MIN_BATCH + 1)
    with torch.inference_mode():
        out, expected = kern.eval()(x), ref.eval()(x)
    assert torch.isfinite(out).all()
    _assert_logits_close(out, expected)
    assert spy.calls["mlan_block_forward"] == _n_blocks(kern)
    spy.calls.clear()
    _assert_logits_close(_train_step(kern, x), _train_step(ref, x))
    # saturated sigmoids have (near) zero derivatives: a mask conv's gradient may be 0 in both, or ~1e-39 against
    # ~1e-42 (the kernels clamp exp's input), so gradients are compared relative to the largest one beside their own
    scale = max(q.grad.norm().item() for q in ref.parameters())
    for (n, p), q in zip(kern.named_parameters(), ref.parameters()):
        err = ((p.grad - q.grad).norm() / max(q.grad.norm().item(), 1e-3 * scale)).item()
        assert err < 1e-3, f"{n}: gradient error {err:.2e}"
    assert spy.calls["mlan_block_backward"] == _n_blocks(kern)


def test_mask_kernel_size_9_inference_with_kernels_equals_the_reference(spy):
    kern, ref, _ = (m.eval() for m in _models(SMALL, mask_kernel_size=9))
    x = _x(2)
    with torch.no_grad():
        _assert_logits_close(kern(x), ref(x))
    assert spy.calls["mlan_block_forward"] == _n_blocks(kern)


def test_mask_kernel_size_9_training_with_kernels_equals_the_reference(spy):
    """The kernels' weight gradients cover k <= 7: for k = 9 training runs the streaming path, its mask convs'
    forward on the kernels and their weight gradient in PyTorch (no fused block)."""
    kern, ref, _ = _models(SMALL, mask_kernel_size=9)
    x = _x(STREAMING_MIN_BATCH + 1)
    _assert_logits_close(_train_step(kern, x), _train_step(ref, x))
    _assert_grads_close(kern, ref)
    assert spy.calls["conv_same"] > 0
    assert spy.calls["conv_same_grad_weight"] == spy.calls["mlan_block_forward"] == 0


def test_partially_frozen_model_with_kernels_gets_the_reference_gradients(spy):
    """Frozen stem and projections, trainable mask convs: the group input and projections need no gradient, the
    mask convs do, so the forward must record autograd (the fused training kernels), not the inference kernel."""
    kern, ref, _ = _models(SMALL)
    for m in (kern, ref):
        for n, p in m.named_parameters():
            p.requires_grad_(n.startswith("fc.") or ".layer_attn." in n)
    x = _x(STREAMING_MIN_BATCH + 1)
    _assert_logits_close(_train_step(kern, x), _train_step(ref, x))
    for (n, p), q in zip(kern.named_parameters(), ref.parameters()):
        if q.requires_grad:
            assert p.grad is not None, f"{n}: no gradient"
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6, msg=n)


# ---------------------------------------------------------------------------------------------------------------
# 7. Unavailable kernels
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_state(monkeypatch):
    """No load tried yet (the autouse fixture puts the real module back afterwards)."""
    monkeypatch.setattr(cpu_kernels._State, "module", None)
    monkeypatch.setattr(cpu_kernels._State, "error", None)


def test_without_avx512_or_avx2_the_kernels_warn_once_and_models_use_pytorch(fresh_state, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    reason = "this CPU (PyTorch capability DEFAULT) has neither AVX-512 nor AVX2"
    with pytest.warns(RuntimeWarning, match=r"mlan_timm CPU kernels unavailable, using PyTorch's convolutions: "
                      + reason.replace("(", r"\(").replace(")", r"\)")) as record:
        assert cpu_kernels.load_cpu_kernels() is None
    assert len([w for w in record if w.category is RuntimeWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        assert cpu_kernels.load_cpu_kernels() is None
        assert cpu_kernels.enable_cpu_kernels(True) is False
        assert cpu_kernels.cpu_kernels_enabled()
        assert cpu_kernels.cpu_kernels_status() == f"requested but unavailable: {reason}"
        assert cpu_kernels.kernels_for(torch.randn(1, 4, 8, 8), True) is None
        kern, ref, _ = _models(SMALL)
        for batch in (1, STREAMING_MIN_BATCH + 1):
            with torch.no_grad():
                _assert_logits_close(kern.eval()(_x(batch)), ref.eval()(_x(batch)))
        _assert_logits_close(_train_step(kern, _x(STREAMING_MIN_BATCH)), _train_step(ref, _x(STREAMING_MIN_BATCH)))
        _assert_grads_close(kern, ref)
    cpu_kernels.enable_cpu_kernels(False)
    assert cpu_kernels.cpu_kernels_status() == "off"


def test_build_failure_warns_and_falls_back(fresh_state, monkeypatch, tmp_path):
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")  # reach the build
    bad = tmp_path / "bad_conv.cpp"
    bad.write_text("this is not C++ {\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", bad)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    with pytest.warns(RuntimeWarning, match=r"unavailable, using PyTorch's convolutions: building bad_conv\.cpp "
                                            r"failed \("):
        assert cpu_kernels.load_cpu_kernels() is None
    assert cpu_kernels._State.error.startswith("building bad_conv.cpp failed (")
    cpu_kernels.enable_cpu_kernels(True)
    assert cpu_kernels.cpu_kernels_status() == f"requested but unavailable: {cpu_kernels._State.error}"
    assert cpu_kernels.kernels_for(torch.randn(1, 4, 8, 8)) is None


# ---------------------------------------------------------------------------------------------------------------
# 8. The environment variable
# ---------------------------------------------------------------------------------------------------------------

def test_environment_variable_enables_the_kernels_at_import(subprocess_env):
    code = "from mlan_timm.layers.cpu_kernels import cpu_kernels_enabled; print(cpu_kernels_enabled())"
    cases = {"1": "True", "0": "False", None: "False"}
    procs = {}
    for value in cases:  # concurrently: each child imports torch and timm
        env = subprocess_env()
        env.pop(cpu_kernels.ENV_VAR, None)
        if value is not None:
            env[cpu_kernels.ENV_VAR] = value
        procs[value] = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=os.path.dirname(__file__),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for value, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == cases[value], f"{cpu_kernels.ENV_VAR}={value!r}: {out!r}"


# ---------------------------------------------------------------------------------------------------------------
# 9. benchmarks/cpu_kernels_ab.py: two builds timed on whole models
# ---------------------------------------------------------------------------------------------------------------

def test_kernels_ab_times_both_builds_and_the_backbone_each_round(native_kernels, load_script, tmp_path, capsys):
    ab = load_script("benchmarks/cpu_kernels_ab.py")
    out = tmp_path / "ab.json"
    res = ab.main(["--base", str(cpu_kernels.SOURCE), "--models", "mlan_resnet14_cifar10", "--rounds", "2",
                   "--min-run-time", "0.01", "--batch", "4", "--train", "--json-out", str(out)])
    samples = res["mlan_resnet14_cifar10"]
    assert set(samples) == {"infer", "train"}
    for kind in samples.values():
        assert set(kind) == {"backbone", "base", "new"}
        assert all(len(v) == 2 and all(t > 0 for t in v) for v in kind.values())
    assert json.loads(out.read_text())["results"] == res
    printed = capsys.readouterr().out
    assert "mlan_resnet14_cifar10 infer: backbone" in printed and "new speed-up (base / new)" in printed
    assert cpu_kernels._State.module is not None  # a build stays in use, the switch is the model's own


def test_kernels_ab_reads_a_git_revision_of_the_source(load_script, tmp_path):
    ab = load_script("benchmarks/cpu_kernels_ab.py")
    head = subprocess.run(["git", "show", f"HEAD:{ab.SOURCE_IN_REPO}"], cwd=ab.ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"no git history here: {head.stderr.strip()}")
    assert ab.source_file("HEAD", tmp_path).read_text() == head.stdout
    with pytest.raises(SystemExit, match="'no-such-rev' is neither a file nor a git revision holding "
                                         "mlan_timm/layers/csrc/small_conv.cpp"):
        ab.source_file("no-such-rev", tmp_path)
    with pytest.raises(SystemExit, match="'resnet20_cifar10' is not an MLAN model"):
        ab.backbone_name("resnet20_cifar10")
    assert ab.backbone_name("mlan_v2_resnet20_cifar100") == "resnet20_cifar100"


def test_kernels_ab_names_a_source_that_does_not_build(native_kernels, load_script, tmp_path, monkeypatch):
    ab = load_script("benchmarks/cpu_kernels_ab.py")
    bad = tmp_path / "bad.cpp"
    bad.write_text("this is not C++ {\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    with pytest.raises(SystemExit, match=r"cpu_kernels_ab: building the base source \(.*bad\.cpp\) failed: "):
        ab.main(["--base", str(bad), "--models", "mlan_resnet14_cifar10", "--rounds", "1"])


def test_kernels_ab_times_mlan_without_kernels_as_base(native_kernels, load_script, capsys):
    ab = load_script("benchmarks/cpu_kernels_ab.py")
    res = ab.main(["--base", "library", "--models", "mlan_resnet14_cifar10", "--rounds", "1", "--min-run-time",
                   "0.01", "--batch", "4"])
    assert all(len(v) == 1 and v[0] > 0 for v in res["mlan_resnet14_cifar10"]["infer"].values())
    printed = capsys.readouterr().out
    assert f"PyTorch at {torch.backends.cpu.get_cpu_capability()}; base library, new " in printed


def test_kernels_ab_refuses_an_instruction_set_the_cpu_lacks(load_script, monkeypatch):
    ab = load_script("benchmarks/cpu_kernels_ab.py")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # as in the child process: held, yet not at AVX2
    with pytest.raises(SystemExit, match="PyTorch runs at DEFAULT although held to AVX2: this CPU does not have AVX2"):
        ab.main(["--base", "library", "--isa", "AVX2", "--models", "mlan_resnet14_cifar10"])


@pytest.mark.slow
def test_kernels_ab_holds_pytorch_and_onednn_to_avx2(native_kernels, load_script, tmp_path, capfd):
    """On an AVX-512 CPU, ``--isa AVX2`` times in a child process with PyTorch and oneDNN held to AVX2."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("needs a CPU with AVX-512 (to hold it to AVX2)")
    ab = load_script("benchmarks/cpu_kernels_ab.py")
    out = tmp_path / "ab.json"
    res = ab.main(["--base", "library", "--isa", "AVX2", "--models", "mlan_resnet14_cifar10", "--rounds", "1",
                   "--min-run-time", "0.01", "--batch", "4", "--json-out", str(out)])
    assert set(res["mlan_resnet14_cifar10"]["infer"]) == {"backbone", "base", "new"}
    assert json.loads(out.read_text())["capability"] == "AVX2"
    printed = capfd.readouterr().out
    assert "held to AVX2: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" in printed
    assert "PyTorch at AVX2; base library" in printed
