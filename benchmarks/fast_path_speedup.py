"""Before/after timing of the mlan_timm fast paths (matmul 1x1 mask convs, no concatenation in LA/BA).

"Before" swaps in the straightforward reference implementations (``mask_reference``/``forward_reference``) that
tests/test_fast_paths.py compares with the fast paths; models, inputs and timer are otherwise identical, and the
variants are timed interleaved (median over rounds, torch.utils.benchmark blocked_autorange).

    python benchmarks/fast_path_speedup.py [--models mlan_resnet20_cifar10,...] [--out benchmarks/results/x.json]
"""
import argparse
import contextlib
import json
import os
import statistics
import sys

import torch

from mlan_timm.layers.reference import reference_paths
from mlan_timm.tools.bench import measure as B


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20_cifar10,mlan_resnet20_cifar10,mlan_v2_resnet20_cifar10")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg = B.TimingConfig(min_run_time=args.min_run_time, warmup=2, batch=args.batch)
    fns = {}
    for name in args.models.split(","):
        spec = B.parse_spec(name)
        for variant in ("reference", "fast"):
            torch.manual_seed(0)
            models = [spec.build(), spec.build()]
            infer = B.make_infer_fn(models[0], cfg.batch, args.device)
            train = B.make_train_fn(models[1], cfg.batch, args.device)

            def wrap(fn, ctx_factory=((lambda ms=tuple(models): reference_paths(*ms)) if variant == "reference"
                                      else contextlib.nullcontext)):
                def run():
                    with ctx_factory():
                        return fn()
                return run
            fns[spec.key, variant, "infer_b128_ms"] = wrap(infer)
            fns[spec.key, variant, "train_step_b128_ms"] = wrap(train)
    samples = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            samples[k].append(1e3 * B.time_fn(fn, cfg))
    res = {}
    for (key, variant, col), ts in samples.items():
        res.setdefault(key, {}).setdefault(variant, {})[col] = statistics.median(ts)
    print(f"machine: {B.machine_line([args.device])}")
    print("| model | reference b128 ms | fast b128 ms | speed-up | reference train ms | fast train ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for key, r in res.items():
        ri, fi = r["reference"]["infer_b128_ms"], r["fast"]["infer_b128_ms"]
        rt, ft = r["reference"]["train_step_b128_ms"], r["fast"]["train_step_b128_ms"]
        print(f"| `{key}` | {ri:.2f} | {fi:.2f} | {ri / fi:.2f}x | {rt:.2f} | {ft:.2f} | {rt / ft:.2f}x |")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(command="python benchmarks/fast_path_speedup.py " + " ".join(sys.argv[1:] if argv is None
                                                                                      else argv),
                           machine=B.machine_line([args.device]), results=res), f, indent=1)
    return res


if __name__ == "__main__":
    main()
