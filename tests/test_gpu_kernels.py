"""The Triton kernels of MLAN's CUDA inference (mlan_timm.layers.gpu_kernels) against PyTorch's operators.

On a GPU machine they run compiled on CUDA tensors; elsewhere in Triton's interpreter on CPU tensors (tests/conftest.py
sets ``TRITON_INTERPRET=1`` before Triton is imported; the interpreter is slow, hence the small images). The
models' paths: the kernels run exactly where they apply (counted launches), and MLAN with them gives the
reference forward's logits.
"""
import subprocess
import sys
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import randomize_bn

import mlan_timm  # noqa: F401
from mlan_timm.layers import gpu_kernels
from mlan_timm.models.blocks import MLANGroup

pytestmark = [
    pytest.mark.skipif(gpu_kernels.triton_version() is None, reason="needs Triton"),
    pytest.mark.filterwarnings("ignore:overflow encountered in exp"),  # the interpreter's numpy sigmoid
]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def kernels_here(monkeypatch):
    """Kernels on, no failure recorded; on CPU they run in the interpreter; fp32 without TF32 on CUDA."""
    monkeypatch.setattr(gpu_kernels._State, "enabled", True)
    monkeypatch.setattr(gpu_kernels._State, "error", None)
    monkeypatch.setattr(gpu_kernels._State, "on_cpu", DEVICE == "cpu")
    if DEVICE == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _sma_reference(x, weight, bias):
    """SMA's shared mask (eqs. 1-3) with PyTorch's operators."""
    return torch.sigmoid(F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)).mean(1, keepdim=True)


def _randn(g, *shape, scale=1.0):
    return (scale * torch.randn(*shape, generator=g)).to(DEVICE)


@pytest.mark.parametrize("b,c,h,w,n,k", [(2, 8, 8, 8, 3, 3), (3, 5, 6, 10, 1, 5), (1, 20, 4, 4, 4, 3),
                                         (2, 3, 5, 5, 3, 1), (1, 2, 9, 7, 2, 7)])
def test_layer_attention_pair_matches_two_smas(b, c, h, w, n, k):
    g = torch.Generator().manual_seed(b * 100 + c)
    x1, x2 = _randn(g, b, c, h, w), _randn(g, b, c, h, w)
    w1, w2 = _randn(g, n, c, k, k, scale=0.3), _randn(g, n, c, k, k, scale=0.3)
    b1 = _randn(g, n)
    out = torch.full((b, 2 * c, h, w), 7.0, device=DEVICE)
    assert gpu_kernels.layer_attention_pair(x1, x2, w1, b1, w2, None, out) is out
    torch.testing.assert_close(out[:, :c], x1 * _sma_reference(x1, w1, b1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, c:], x2 * _sma_reference(x2, w2, None), rtol=1e-5, atol=1e-6)


def test_layer_attention_pair_with_strided_tensors():
    """Channel slices and channels-last inputs, written into a slice of a larger buffer."""
    g = torch.Generator().manual_seed(1)
    full = _randn(g, 2, 12, 8, 8)
    x1 = full[:, 3:9]  # batch stride 12 * 64
    x2 = _randn(g, 2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    w1, w2 = _randn(g, 3, 6, 3, 3), _randn(g, 3, 6, 3, 3)
    buf = torch.zeros(2, 16, 8, 8, device=DEVICE)
    gpu_kernels.layer_attention_pair(x1, x2, w1, None, w2, None, buf[:, 2:14])
    torch.testing.assert_close(buf[:, 2:8], x1 * _sma_reference(x1, w1, None), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(buf[:, 8:14], x2 * _sma_reference(x2, w2, None), rtol=1e-5, atol=1e-6)
    assert (buf[:, :2] == 0).all() and (buf[:, 14:] == 0).all()


@pytest.mark.parametrize("store_attn", [False, True])
@pytest.mark.parametrize("c,kin,hw,n,k", [(4, 16, 8, 3, 3), (16, 96, 4, 3, 3), (3, 5, 6, 1, 5), (20, 40, 5, 4, 1)])
def test_attend_project_fuse_matches_sma_conv1x1_plus_relu(c, kin, hw, n, k, store_attn):
    g = torch.Generator().manual_seed(c * kin)
    full = _randn(g, 2, kin + 4, hw, hw)
    src = full[:, 2:2 + kin]  # strided, as BA's input sliced from a larger buffer
    mask_w, mask_b = _randn(g, n, kin, k, k, scale=0.3), _randn(g, n)
    proj = _randn(g, c, kin, 1, 1)
    feature, residual = _randn(g, 2, c, hw, hw), _randn(g, 2, c, hw, hw)
    attn = src * _sma_reference(src, mask_w, mask_b)
    ref = torch.relu(feature + F.conv2d(attn, proj) + residual)
    attn_out = torch.full((2, kin + 2, hw, hw), 7.0, device=DEVICE)
    out = gpu_kernels.attend_project_fuse(src, mask_w, mask_b, proj, feature, residual,
                                          attn_out=attn_out[:, 1:1 + kin] if store_attn else None)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.shape == feature.shape
    if store_attn:
        torch.testing.assert_close(attn_out[:, 1:1 + kin], attn, rtol=1e-5, atol=1e-6)
    assert (attn_out[:, 0] == 7.0).all() and (attn_out[:, -1] == 7.0).all()


def test_bad_arguments_name_the_problem():
    x = torch.randn(1, 4, 8, 8, device=DEVICE)
    w = torch.randn(3, 4, 3, 3, device=DEVICE)
    buf = torch.empty(1, 8, 8, 8, device=DEVICE)
    with pytest.raises(ValueError, match="x1 must be a 4-d float32 tensor"):
        gpu_kernels.layer_attention_pair(x.double(), x, w, None, w, None, buf)
    with pytest.raises(ValueError, match=r"x2 has shape \(1, 4, 4, 4\)"):
        gpu_kernels.layer_attention_pair(x, x[:, :, :4, :4], w, None, w, None, buf)
    with pytest.raises(ValueError, match=r"weight2 must be \(N, 4, k, k\) with k odd"):
        gpu_kernels.layer_attention_pair(x, x, w, None, torch.randn(3, 5, 3, 3, device=DEVICE), None, buf)
    with pytest.raises(ValueError, match=r"weight1 must be \(N, 4, k, k\) with k odd"):
        gpu_kernels.layer_attention_pair(x, x, torch.randn(3, 4, 2, 2, device=DEVICE), None, w, None, buf)
    with pytest.raises(ValueError, match="the two layer attentions' convs differ in shape"):
        gpu_kernels.layer_attention_pair(x, x, w, None, torch.randn(1, 4, 3, 3, device=DEVICE), None, buf)
    with pytest.raises(ValueError, match=r"out has shape \(1, 4, 8, 8\)"):
        gpu_kernels.layer_attention_pair(x, x, w, None, w, None, x)
    with pytest.raises(ValueError, match="proj_weight has 6 input channels, src 4"):
        gpu_kernels.attend_project_fuse(x, w, None, torch.randn(2, 6, device=DEVICE), x[:, :2], x[:, :2])
    with pytest.raises(ValueError, match=r"residual has shape \(1, 3, 8, 8\)"):
        gpu_kernels.attend_project_fuse(x, w, None, torch.randn(2, 4, device=DEVICE), x[:, :2], x[:, :3])
    with pytest.raises(ValueError, match=r"attn_out has shape \(1, 2, 8, 8\)"):
        gpu_kernels.attend_project_fuse(x, w, None, torch.randn(2, 4, device=DEVICE), x[:, :2], x[:, :2],
                                        attn_out=x[:, :2])


def _model(name, **kwargs):
    torch.manual_seed(0)
    return randomize_bn(timm.create_model(name, **kwargs)).eval().to(DEVICE)


@pytest.mark.parametrize("name,kwargs", [
    ("mlan_resnet14_cifar10", {}),
    ("mlan_resnet20_cifar100", {}),
    ("mlan_resnet14_cifar10", dict(num_masks=1, mask_kernel_size=5)),
    ("mlan_resnet14_cifar10", dict(num_masks=4)),
], ids=str)
def test_model_with_kernels_matches_reference(name, kwargs, launches):
    model = _model(name, **kwargs)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        model.set_fast_paths(False)
        ref = model(x)
        assert launches == []
        model.set_fast_paths(True)
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    groups = [m for m in model.modules() if isinstance(m, MLANGroup)]
    # per block: the layer-attention pair, then LA + projection + fusion; per group: BA + projection + fusion
    expected = []
    for g in groups:
        expected += ["layer_attention_pair_kernel", "attend_project_fuse_kernel"] * len(g.blocks) + \
            ["attend_project_fuse_kernel"]
    assert launches == expected


@pytest.mark.parametrize("case", ["autograd", "model_off", "process_off", "smav2", "concat_fusion", "fast_paths_off",
                                  "fma"])
def test_kernels_run_only_where_they_apply(case, launches):
    name, kwargs = ("mlan_v2_resnet14_cifar10", {}) if case == "smav2" else ("mlan_resnet14_cifar10", {})
    if case == "concat_fusion":
        kwargs = dict(fusion="concat")
    if case == "fma":
        kwargs = dict(attn="fma")
    model = _model(name, **kwargs)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        model.set_fast_paths(False)
        ref = model(x)
    model.set_fast_paths(case != "fast_paths_off", gpu_kernels=False if case == "model_off" else None)
    if case == "process_off":
        gpu_kernels.enable_gpu_kernels(False)  # the fixture restores the process-wide setting
    with torch.set_grad_enabled(case == "autograd"):
        out = model(x)
    assert launches == []
    torch.testing.assert_close(out.detach(), ref, rtol=1e-4, atol=1e-4)


def test_cpu_tensors_never_use_the_kernels_outside_tests(monkeypatch, launches):
    monkeypatch.setattr(gpu_kernels._State, "on_cpu", False)
    model = _model("mlan_resnet14_cifar10").cpu()
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    assert launches == []


def test_a_failing_kernel_warns_once_and_falls_back(monkeypatch):
    from mlan_timm.layers import _triton_src

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("no Triton backend for this device")

    monkeypatch.setattr(_triton_src, "layer_attention_pair_kernel", Broken())
    model = _model("mlan_resnet14_cifar10")
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        model.set_fast_paths(False)
        ref = model(x)
        model.set_fast_paths(True)
        with pytest.warns(RuntimeWarning, match="GPU kernels failed.*no Triton backend for this device"):
            out = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: the kernels stay off afterwards
            again = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-4)
    assert gpu_kernels.gpu_kernels_status() == "unavailable: RuntimeError: no Triton backend for this device"
    assert not gpu_kernels.gpu_kernels_available()


def test_status_and_environment_switch():
    version = gpu_kernels.triton_version()
    assert gpu_kernels.gpu_kernels_available()
    assert gpu_kernels.gpu_kernels_status() == (f"available (Triton {version}), ON process-wide "
                                                "(MLAN_TIMM_GPU_KERNELS or enable_gpu_kernels): every MLAN model "
                                                "without gpu_kernels=False uses them")
    gpu_kernels.enable_gpu_kernels(False)
    assert not gpu_kernels.gpu_kernels_enabled()
    assert gpu_kernels.gpu_kernels_status() == (f"available (Triton {version}), used only by the models built with "
                                                "gpu_kernels=True")
    code = "from mlan_timm.layers import gpu_kernels as g; print(g.gpu_kernels_enabled())"  # read at import
    env = {"MLAN_TIMM_GPU_KERNELS": "1", "PATH": "", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_gpus_run_the_concatenated_formulation(monkeypatch):
    """Any non-CPU device (here the meta device, shapes only) takes the concatenated formulation at every batch
    size, never the CPU's streaming path; the Triton kernels are not tried for meta tensors."""
    calls = []
    def spy(meth):
        real = getattr(MLANGroup, meth)

        def wrapper(self, *args, **kwargs):
            calls.append(meth)
            return real(self, *args, **kwargs)
        monkeypatch.setattr(MLANGroup, meth, wrapper)

    for meth in ("forward_streaming", "forward_concatenated", "forward_gpu_kernels"):
        spy(meth)
    model = timm.create_model("mlan_resnet14_cifar10").to("meta").eval()
    for batch in (1, 128):
        calls.clear()
        with torch.no_grad():
            assert model(torch.empty(batch, 3, 32, 32, device="meta")).shape == (batch, 10)
        assert calls == ["forward_concatenated"] * 3


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_spills():
    """Both kernels through Triton's real compiler for sm_90 (cubin, no local-memory spills), on any machine
    (tests/aot_compile_triton.py; a fresh process: this one's Triton may be the interpreter, tests/conftest.py)."""
    import json
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "aot_compile_triton.py")
    run = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["kernel"] for r in results] == ["layer_attention_pair_kernel"] * 2 + ["attend_project_fuse_kernel"] * 2
    for r in results:
        assert r["cubin_bytes"] > 0 and not r["spills"], r
