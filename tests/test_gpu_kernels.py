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


@pytest.fixture
def launches(monkeypatch):
    """Names of the kernels launched, in order."""
    calls = []
    real = gpu_kernels._launch

    def spy(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(gpu_kernels, "_launch", spy)
    return calls


def _sma_reference(x, weight, bias):
    return torch.sigmoid(F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2)).mean(1, keepdim=True)


@pytest.mark.parametrize("b,c,h,w,n,k", [(2, 8, 8, 8, 3, 3), (3, 5, 6, 10, 1, 5), (1, 20, 4, 4, 4, 3),
                                         (2, 3, 5, 5, 3, 1), (1, 2, 9, 7, 2, 7)])
def test_shared_mask_matches_conv_sigmoid_mean(b, c, h, w, n, k):
    g = torch.Generator().manual_seed(b * 100 + c)
    x = torch.randn(b, c, h, w, generator=g).to(DEVICE)
    weight = (0.3 * torch.randn(n, c, k, k, generator=g)).to(DEVICE)
    bias = torch.randn(n, generator=g).to(DEVICE)
    ref = _sma_reference(x, weight, bias)
    torch.testing.assert_close(gpu_kernels.shared_mask(x, weight, bias), ref, rtol=1e-5, atol=1e-6)
    # x * mask into the second half of a buffer (the LA input layout); the first half stays untouched
    buf = torch.full((b, 2 * c, h, w), 7.0, device=DEVICE)
    mask = gpu_kernels.shared_mask(x, weight, bias, out=buf[:, c:])
    torch.testing.assert_close(mask, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(buf[:, c:], x * ref, rtol=1e-5, atol=1e-6)
    assert (buf[:, :c] == 7.0).all()


def test_shared_mask_without_bias_and_with_strided_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 8, 8, generator=g).to(DEVICE)
    weight = torch.randn(3, 6, 3, 3, generator=g).to(DEVICE)
    part = x[:, 3:9]  # a channel slice: batch stride 12 * 64
    torch.testing.assert_close(gpu_kernels.shared_mask(part, weight), _sma_reference(part, weight, None),
                               rtol=1e-5, atol=1e-6)
    cl = part.contiguous(memory_format=torch.channels_last)
    out = torch.empty_like(cl)
    mask = gpu_kernels.shared_mask(cl, weight, None, out=out)
    torch.testing.assert_close(out, part * _sma_reference(part, weight, None), rtol=1e-5, atol=1e-6)
    assert mask.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("c,k,hw", [(4, 16, 8), (16, 96, 4), (3, 5, 6), (20, 40, 5)])
def test_project_fuse_matches_conv1x1_plus_relu(c, k, hw, with_mask):
    g = torch.Generator().manual_seed(c * k)
    full = torch.randn(2, k + 4, hw, hw, generator=g).to(DEVICE)
    src = full[:, 2:2 + k]  # strided, as a block attention sliced from its group's buffer
    weight = torch.randn(c, k, 1, 1, generator=g).to(DEVICE)
    feature, residual = (torch.randn(2, c, hw, hw, generator=g).to(DEVICE) for _ in range(2))
    mask = torch.rand(2, 1, hw, hw, generator=g).to(DEVICE) if with_mask else None
    proj = F.conv2d(src, weight)
    ref = torch.relu(feature + (proj * mask if with_mask else proj) + residual)
    out = gpu_kernels.project_fuse(src, weight, feature, residual, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.shape == feature.shape


def test_bad_arguments_name_the_problem():
    x = torch.randn(1, 4, 8, 8, device=DEVICE)
    with pytest.raises(ValueError, match="x must be a 4-d float32 tensor"):
        gpu_kernels.shared_mask(x.double(), torch.randn(3, 4, 3, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"weight must be \(N, 4, k, k\) with k odd"):
        gpu_kernels.shared_mask(x, torch.randn(3, 5, 3, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"weight must be \(N, 4, k, k\) with k odd"):
        gpu_kernels.shared_mask(x, torch.randn(3, 4, 2, 2, device=DEVICE))
    with pytest.raises(ValueError, match=r"out has shape \(1, 4, 4, 4\)"):
        gpu_kernels.shared_mask(x, torch.randn(3, 4, 3, 3, device=DEVICE), out=torch.empty(1, 4, 4, 4, device=DEVICE))
    with pytest.raises(ValueError, match="weight has 6 input channels, src 4"):
        gpu_kernels.project_fuse(x, torch.randn(2, 6, device=DEVICE), x[:, :2], x[:, :2])
    with pytest.raises(ValueError, match=r"residual has shape \(1, 3, 8, 8\)"):
        gpu_kernels.project_fuse(x, torch.randn(2, 4, device=DEVICE), x[:, :2], x[:, :3])


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
    # per block: T_1, T_2 and LA's masks, then its projection + fusion; per group: BA's mask, projection + fusion
    expected = []
    for g in groups:
        expected += ["sma", "sma", "sma", "project_fuse"] * len(g.blocks) + ["sma", "project_fuse"]
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
    def broken(interpret):
        raise RuntimeError("no Triton backend for this device")

    monkeypatch.setattr(gpu_kernels, "_build", broken)
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
    assert [gpu_kernels._switched_on(v) for v in ("1", " TRUE", "yes", "on", "", None, "0", "off", "no")] == \
        [True] * 4 + [False] * 5
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
