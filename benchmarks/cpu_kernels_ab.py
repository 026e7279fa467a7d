"""A/B of two builds of the CPU kernels (``mlan_timm/layers/csrc/small_conv.cpp``) on whole models, interleaved.

    python benchmarks/cpu_kernels_ab.py --base 0cc4e11 --models mlan_resnet20_cifar100,mlan_resnet32_cifar100
    python benchmarks/cpu_kernels_ab.py --base library --isa AVX2 --models mlan_resnet20_cifar10

Builds the kernels from ``--base`` (a git revision, or a path to a .cpp file; ``library``: no build, MLAN on
PyTorch's operators, the library fast path) and from ``--new`` (default: the working tree's source), then, per
model, times in each of ``--rounds`` rounds, back to back: the backbone (the model's name without
``mlan_``/``mlan_v2_``), MLAN with the base build, MLAN with the new build (batch-128 fp32 inference,
``torch.utils.benchmark`` blocked_autorange medians; ``--train`` adds the train step). Prints, per model and
measure, the medians and the medians of the per-round ratios: MLAN / backbone for each build (issue 10's target 1
divides it by the MACs ratio), and base / new (the new build's speed-up). ``--json-out`` saves every sample.

``--isa AVX2`` builds the kernels for AVX2 and, on a CPU with more (AVX-512), runs the timings in a child process
with PyTorch and oneDNN held to AVX2 too (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``): every side of the
comparison as on an AVX2-only CPU of this core's kind.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

import mlan_timm  # noqa: F401  (registers the models)
from mlan_timm.complexity import count_macs
from mlan_timm.layers import cpu_kernels
from mlan_timm.tools.bench.measure import ab_timing, add_ab_arguments, make_infer_fn, make_train_fn, time_fn
from mlan_timm.tools.common import HelpFormatter, create_model

ROOT = Path(__file__).resolve().parents[1]
SOURCE_IN_REPO = cpu_kernels.SOURCE.relative_to(ROOT).as_posix()
#: ``--base`` / ``--new`` value for MLAN without the kernels (the library fast path)
LIBRARY = "library"
#: What holds PyTorch and oneDNN to an instruction set, by ``--isa`` (read at start-up: set for a child process).
ISA_ENV = {"AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
           "AVX512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}}


def source_file(ref: str, workdir: Path) -> Path:
    """``ref`` as a .cpp path: an existing file, else a git revision of the repository's source."""
    path = Path(ref)
    if path.is_file():
        return path
    try:
        text = subprocess.run(["git", "show", f"{ref}:{SOURCE_IN_REPO}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise SystemExit(f"cpu_kernels_ab: {ref!r} is neither a file nor a git revision holding {SOURCE_IN_REPO} "
                         f"({detail.strip()})")
    out = workdir / f"small_conv_{ref.replace('/', '_')}.cpp"
    out.write_text(text)
    return out


def backbone_name(model: str) -> str:
    for prefix in ("mlan_v2_", "mlan_"):
        if model.startswith(prefix):
            return model[len(prefix):]
    raise SystemExit(f"cpu_kernels_ab: {model!r} is not an MLAN model (mlan_... or mlan_v2_...)")


def median_ratio(a: List[float], b: List[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def run_held_to_isa(isa: str, argv: List[str], json_out: Optional[str]) -> Dict[str, Dict[str, Dict[str, List[float]]]]:
    """Run this script again in a child process with PyTorch and oneDNN held to ``isa`` (:data:`ISA_ENV`); returns
    the child's results (through a JSON file)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = json_out or os.path.join(tmp, "ab.json")
        if "--json-out" not in argv:
            argv = [*argv, "--json-out", out]
        print(f"cpu_kernels_ab: timing with PyTorch and oneDNN held to {isa}: "
              + " ".join(f"{k}={v}" for k, v in ISA_ENV[isa].items()), flush=True)
        proc = subprocess.run([sys.executable, __file__, *argv], env={**os.environ, **ISA_ENV[isa]})
        if proc.returncode != 0:
            raise SystemExit(proc.returncode)
        return json.loads(Path(out).read_text())["results"]


def main(argv=None) -> Dict[str, Dict[str, Dict[str, List[float]]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--base", required=True, help=f"git revision or .cpp path of the base build; {LIBRARY!r}: MLAN "
                                                  "without the kernels")
    p.add_argument("--new", default=str(cpu_kernels.SOURCE), help="git revision or .cpp path of the new build")
    p.add_argument("--isa", choices=sorted(cpu_kernels.ISAS), default=None,
                   help="instruction set to build for and hold PyTorch and oneDNN to (default: this CPU's)")
    add_ab_arguments(p, models="mlan_resnet20_cifar100", rounds=7, min_run_time=0.3)
    p.add_argument("--json-out", default=None)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    capability = torch.backends.cpu.get_cpu_capability()
    if args.isa is not None and args.isa != capability:
        if os.environ.get("ATEN_CPU_CAPABILITY") == ISA_ENV[args.isa]["ATEN_CPU_CAPABILITY"]:
            raise SystemExit(f"cpu_kernels_ab: PyTorch runs at {capability} although held to {args.isa}: this CPU "
                             f"does not have {args.isa}")
        return run_held_to_isa(args.isa, argv, args.json_out)
    cfg = ab_timing(args, warmup=0)
    if capability not in cpu_kernels.ISAS:
        raise SystemExit(f"cpu_kernels_ab: the CPU kernels need AVX-512 or AVX2; this CPU has {capability}")
    builds: Dict[str, Optional[object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ref in (("base", args.base), ("new", args.new)):
            if ref == LIBRARY:
                builds[name] = None
                continue
            try:
                builds[name] = cpu_kernels.build_extension(source_file(ref, Path(tmp)))
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                raise SystemExit(f"cpu_kernels_ab: building the {name} source ({ref}) failed: "
                                 f"{cpu_kernels._build_error(exc)}")
    kinds = ("infer", "train") if args.train else ("infer",)
    results: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.rounds} rounds; PyTorch at {capability}; "
          f"base {args.base}, new {args.new}")
    for model_name in args.models.split(","):
        backbone = backbone_name(model_name)
        macs_ratio = count_macs(create_model(model_name)) / count_macs(create_model(backbone))
        results[model_name] = {}
        for kind in kinds:
            make: Callable = make_infer_fn if kind == "infer" else make_train_fn
            torch.manual_seed(0)
            fns = {"backbone": make(create_model(backbone), args.batch, "cpu")}
            mlan = create_model(model_name)
            mlan.set_fast_paths(True, cpu_kernels=True)
            library = create_model(model_name)
            library.set_fast_paths(True, cpu_kernels=False)
            for name in ("base", "new"):
                fns[name] = make(mlan if builds[name] is not None else library, args.batch, "cpu")
            samples: Dict[str, List[float]] = {"backbone": [], "base": [], "new": []}
            for name in ("base", "new"):  # warm up with both builds
                if builds[name] is not None:
                    cpu_kernels.use_module(builds[name])
                fns[name]()
            fns["backbone"]()
            for _ in range(args.rounds):
                samples["backbone"].append(1e3 * time_fn(fns["backbone"], cfg))
                for name in ("base", "new"):
                    if builds[name] is not None:
                        cpu_kernels.use_module(builds[name])
                    samples[name].append(1e3 * time_fn(fns[name], cfg))
            results[model_name][kind] = samples
            med = {k: statistics.median(v) for k, v in samples.items()}
            rb, rn = (median_ratio(samples[k], samples["backbone"]) for k in ("base", "new"))
            print(f"{model_name} {kind}: backbone {med['backbone']:.2f} ms, base {med['base']:.2f} ms, "
                  f"new {med['new']:.2f} ms; MLAN / backbone: base {rb:.3f}, new {rn:.3f} (MACs ratio "
                  f"{macs_ratio:.3f}: / MACs ratio base {rb / macs_ratio:.3f}, new {rn / macs_ratio:.3f}); "
                  f"new speed-up (base / new) {median_ratio(samples['base'], samples['new']):.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"argv": argv, "capability": capability, "results": results},
                                                  indent=1))
    return results


if __name__ == "__main__":
    main()
