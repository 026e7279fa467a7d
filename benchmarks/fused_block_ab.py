"""A/B of MLANBlock's fused layer+block attention (``fused_sma``) against the unfused path, same process.

Backbone, unfused and fused MLAN are timed interleaved over ``--rounds`` rounds (torch.utils.benchmark
blocked_autorange, median), inference and train step at batch 128.

    python benchmarks/fused_block_ab.py [--model mlan_resnet20_cifar10] [--rounds 4] [--device cpu]
"""
import argparse
import statistics
import sys

import timm
import torch

import mlan_timm  # noqa: F401
from mlan_timm.layers.reference import set_fused_block_attention
from mlan_timm.tools.bench import measure as B


def build(name, fused=None):
    torch.manual_seed(0)
    model = timm.create_model(name)
    if fused is not None:
        set_fused_block_attention(model, fused)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlan_resnet20_cifar10")
    p.add_argument("--backbone", default="resnet20_cifar10")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--min-run-time", type=float, default=0.3)
    args = p.parse_args(argv)
    cfg = B.TimingConfig(min_run_time=args.min_run_time, warmup=2, batch=128)
    makers = {"backbone": lambda: build(args.backbone), "unfused": lambda: build(args.model, False),
              "fused": lambda: build(args.model, True)}
    fns = {}
    for name, mk in makers.items():
        fns[name, "infer"] = B.make_infer_fn(mk(), cfg.batch, args.device)
        fns[name, "train"] = B.make_train_fn(mk(), cfg.batch, args.device)
    samples = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            samples[k].append(1e3 * B.time_fn(fn, cfg))
    med = {k: statistics.median(v) for k, v in samples.items()}
    print("Command: `python benchmarks/fused_block_ab.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`")
    print(f"Machine: {B.machine_line([args.device])}\n")
    print("| variant | b128 inference ms | train step b128 ms | inference / backbone | train / backbone |")
    print("|---|---|---|---|---|")
    for name in makers:
        i, t = med[name, "infer"], med[name, "train"]
        print(f"| {name} | {i:.2f} | {t:.2f} | {i / med['backbone', 'infer']:.3f} | "
              f"{t / med['backbone', 'train']:.3f} |")


if __name__ == "__main__":
    main()
