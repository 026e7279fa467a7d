"""MLAN's two library formulations of a group, timed group by group on CPU: streaming vs concatenated.

    python benchmarks/mlan_group_formulations.py --models mlan_resnet20_cifar10,mlan_resnet32_cifar100

``MLANGroup.forward_streaming`` (no concatenation: per-part partial convs and projections) against
``MLANGroup.forward_concatenated`` (the reference's concatenations, the reference blocks), on each group's real
input (captured from one forward of the model on random images), interleaved over ``--rounds`` rounds, batch-128
fp32 inference and, with ``--train``, forward + backward of the group's output sum. Prints per group its blocks'
feature shape and the median of the per-round speed-ups (concatenated time / streaming time): what
``mlan_timm.models.blocks.STREAMING_MIN_PLANE`` is chosen from.
"""
import argparse
import statistics
from typing import Dict, List

import torch

import mlan_timm  # noqa: F401  (registers the models)
from mlan_timm.models.blocks import MLANGroup
from mlan_timm.tools.bench.measure import ab_timing, add_ab_arguments, time_fn
from mlan_timm.tools.common import HelpFormatter, create_model


def group_inputs(model: torch.nn.Module, batch: int) -> List[torch.Tensor]:
    """Each MLAN group's input in one forward of ``model`` on ``batch`` random 3x32x32 images."""
    groups = [g for g in model.modules() if isinstance(g, MLANGroup)]
    seen: Dict[int, torch.Tensor] = {}
    hooks = [g.register_forward_pre_hook(lambda mod, inp, i=i: seen.__setitem__(i, inp[0].detach().clone()))
             for i, g in enumerate(groups)]
    try:
        with torch.no_grad():
            model(torch.randn(batch, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    return [seen[i] for i in range(len(groups))]


def main(argv=None) -> Dict[str, List[Dict[str, object]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_ab_arguments(p, models="mlan_resnet20_cifar10", rounds=5, min_run_time=0.2)
    args = p.parse_args(argv)
    cfg = ab_timing(args, warmup=2)
    results: Dict[str, List[Dict[str, object]]] = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name)
        model.set_fast_paths(True, cpu_kernels=False)
        groups = [g for g in model.modules() if isinstance(g, MLANGroup)]
        results[name] = []
        for kind in ("infer", "train") if args.train else ("infer",):
            model.train(kind == "train")
            for i, (group, x) in enumerate(zip(groups, group_inputs(model, args.batch))):
                x = x.requires_grad_(kind == "train")

                def run(formulation, x=x, group=group, kind=kind):
                    def fn():
                        if kind == "train":
                            formulation(x).sum().backward()
                            return None
                        with torch.inference_mode():
                            return formulation(x)
                    return fn
                fns = {"streaming": run(group.forward_streaming),
                       "concatenated": run(lambda t, group=group: group.forward_concatenated(t, small_batch=False))}
                samples: Dict[str, List[float]] = {k: [] for k in fns}
                for _ in range(args.rounds):
                    for k, fn in fns.items():
                        samples[k].append(1e3 * time_fn(fn, cfg))
                with torch.no_grad():
                    shape = tuple(group.down_block(x).shape[1:])
                speedup = statistics.median(c / s for c, s in zip(samples["concatenated"], samples["streaming"]))
                results[name].append({"group": i, "kind": kind, "block_features": shape, "samples_ms": samples,
                                      "streaming_speedup": speedup})
                print(f"{name} group {i} ({len(group.blocks)} MLAN blocks, features {shape}) {kind}: streaming "
                      f"{statistics.median(samples['streaming']):.2f} ms, concatenated "
                      f"{statistics.median(samples['concatenated']):.2f} ms; streaming speed-up {speedup:.3f}")
    return results


if __name__ == "__main__":
    main()
