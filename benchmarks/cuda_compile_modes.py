"""Train-step time of a model on CUDA under eager and torch.compile modes (bf16 autocast, channels_last).

    python benchmarks/cuda_compile_modes.py --models resnet20_cifar10 mlan_resnet20_cifar10

One SGD step (forward, backward, update) on a fixed batch of 128 random 3x32x32 images; 5 warm-up steps
(compilation included, reported separately), then the mean of --steps timed steps after a CUDA sync.
"""
import argparse
import time

import timm
import torch

import mlan_timm  # noqa: F401  (registers the models)


def step_time(name: str, mode: str, steps: int, batch: int = 128) -> tuple:
    torch.manual_seed(0)
    model = timm.create_model(name).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True)
    x = torch.randn(batch, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch,), device="cuda")
    fwd = model if mode == "eager" else torch.compile(model, mode=mode)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return warmup, (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20_cifar10", "mlan_resnet20_cifar10"])
    parser.add_argument("--modes", nargs="+", default=["eager", "default", "reduce-overhead"])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, timm {timm.__version__}")
    print("| model | mode | warm-up (s) | ms / step | img / s |\n|---|---|---:|---:|---:|")
    for name in args.models:
        for mode in args.modes:
            warmup, dt = step_time(name, mode, args.steps)
            print(f"| {name} | {mode} | {warmup:.1f} | {dt * 1e3:.2f} | {128 / dt:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
