"""The CUDA path: fp32 CUDA matches CPU, channels_last matches contiguous, bf16/fp16 autocast trains,
torch.compile (inductor, CUDA graphs) matches eager, and mlan-bench's cuda_graphs variant (a captured eval forward)
gives eager's logits and its cells. Skipped where no CUDA device is present (CI)."""
import json

import pytest
import timm
import torch

import mlan_timm  # noqa: F401

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FAMILIES = ["resnet20_cifar10", "mlan_resnet20_cifar10", "mlan_v2_resnet20_cifar100", "se_resnet20_cifar10",
            "cbam_resnet20_cifar10", "ta_resnet20_cifar10", "gc_resnet20_cifar10"]
MLAN_VARIANTS = [dict(attn=a) for a in ("fma", "se", "cbam", "ta", "gc")] + \
    [dict(fusion=f) for f in ("concat", "conv1x1", "weighted")] + [dict(levels="single"), dict(mask_kernel_size=3)]


@pytest.fixture
def no_tf32():
    """fp32 comparisons against the CPU need true fp32 convs and matmuls (cuDNN uses TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


@pytest.mark.parametrize("name", FAMILIES)
@torch.no_grad()
def test_cuda_fp32_matches_cpu_and_channels_last(name, no_tf32):
    model = _model(name)
    x = torch.randn(8, 3, 32, 32)
    ref = model(x)
    model = model.cuda()
    torch.testing.assert_close(model(x.cuda()).cpu(), ref, rtol=1e-3, atol=1e-3)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.cuda().contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kwargs", MLAN_VARIANTS, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_training_step(kwargs, dtype):
    model = _model("mlan_resnet14_cifar10", **kwargs).cuda().train().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
    assert out.dtype == dtype
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name,mode", [("mlan_resnet20_cifar10", "reduce-overhead")])
@torch.no_grad()
def test_compile_matches_eager(name, mode, no_tf32):
    model = _model(name).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    ref = model(x)
    compiled = torch.compile(model, mode=mode)
    for _ in range(3):  # CUDA graphs record on a later call
        out = compiled(x).clone()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("batch", [1, 128])  # MLAN's forward picks its formulation by batch size: one graph each
@pytest.mark.parametrize("name", ["resnet20_cifar10", "mlan_resnet20_cifar10"])
def test_cuda_graph_replay_matches_eager(name, batch, no_tf32):
    from mlan_timm.tools.bench.measure import make_graph_infer_fn

    model = _model(name)
    fn = make_graph_infer_fn(model, batch, "cuda")  # moves the model to the GPU, in place
    for _ in range(2):  # new images each time: the replay reads the static input
        x = torch.randn(batch, 3, 32, 32, device="cuda")
        fn.static_input.copy_(x)
        out = fn().clone()
        with torch.no_grad():
            ref = model(x)
        assert out.shape == (batch, 10)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_cuda_graph_outlives_the_callers_model(no_tf32):
    """The replay reads the parameters at their captured addresses, so the timed function keeps the model alive:
    the caller dropping its model, the cache emptied and the memory handed out again must not change the logits.
    (mlan-bench dropped its models once; on an H200 its CIFAR-100 ResNet-32 group then hit an illegal access.)"""
    import gc

    from mlan_timm.tools.bench.measure import make_graph_infer_fn

    model = _model("mlan_resnet20_cifar10")
    fn = make_graph_infer_fn(model, 8, "cuda")
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        ref = model(x)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    junk = [torch.full((1 << 20,), float("nan"), device="cuda") for _ in range(8)]  # reuses any freed memory
    fn.static_input.copy_(x)
    out = fn().clone()
    torch.cuda.synchronize()
    del junk
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bench_cuda_graphs_variant_end_to_end(tmp_path):
    """A tiny mlan-bench CUDA run (quick settings, ResNet-20 CIFAR-10): the cuda_graphs cells (batch 1 and the
    large batch, no train step) land in the JSON, and the Markdown has target 3's table and verdict."""
    from mlan_timm.tools.bench import cli

    js, md = tmp_path / "cuda_graphs.json", tmp_path / "cuda_graphs.md"
    assert cli.main(["--paper-tables", "--speed-only", "--quick", "--device", "cuda", "--cuda-variants",
                     "eager,cuda_graphs", "--depths", "20", "--datasets", "cifar10", "--json-out", str(js),
                     "--md-out", str(md), "--root", str(tmp_path)]) == 0
    report = json.loads(js.read_text())
    graphs = report["speed"]["cuda cuda_graphs"]["cifar10/20"]
    assert set(graphs) == set(report["speed"]["cuda"]["cifar10/20"])  # every model of the group
    for name, cells in graphs.items():  # medians, and the per-round samples beside each (``*_rounds``)
        medians = {k: v for k, v in cells.items() if not k.endswith("_rounds")}
        assert set(medians) == {"latency_b1_ms", "infer_b128_ms"} and all(v > 0 for v in medians.values()), name
    assert "train_step_b128_ms" in report["speed"]["cuda"]["cifar10/20"]["mlan"]
    text = md.read_text()
    assert "### Target 3 (cuda)" in text and "Within 1.2x with CUDA graphs:" in text
    assert "| CIFAR-10 | CUDA graphs | 8 |" in text  # --quick's batch, stated


@pytest.mark.parametrize("batch", [1, 128])
def test_triton_kernels_run_and_match_reference_at_cifar_size(batch, no_tf32, launches):
    """MLAN's CUDA inference runs its attention in the Triton kernels (compiled here; tests/test_gpu_kernels.py has
    the kernel-level checks) with the reference forward's logits."""
    from mlan_timm.layers import gpu_kernels

    if gpu_kernels.triton_version() is None:
        pytest.skip("needs Triton")
    model = _model("mlan_resnet20_cifar100").cuda()
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    with torch.no_grad():
        model.set_fast_paths(False)
        ref = model(x)
        model.set_fast_paths(True, gpu_kernels=True)
        out = model(x)
    # MLAN-20: 3 MLAN blocks in group 1; a D block then 2 MLAN blocks in groups 2 and 3; 2 launches per block, 1
    # per group
    assert len(launches) == (3 * 2 + 1) + 2 * (2 * 2 + 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert gpu_kernels.triton_version() is not None and gpu_kernels._State.error is None
