"""Re-run the project's benchmarks and regenerate docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/run_benchmarks.py                 # CPU: measure, then render (merging saved CUDA results)
    python benchmarks/run_benchmarks.py --cuda --out-dir DIR   # on a GPU machine: write CUDA JSONs into DIR
    python benchmarks/run_benchmarks.py --render-only   # re-render docs from the saved JSONs, no measuring
    python benchmarks/run_benchmarks.py --quick --out-dir DIR  # smoke run: tiny subset, results and Markdown in DIR

Raw results live in benchmarks/results/: ``cpu.json`` (mlan-bench --paper-tables on CPU), ``fast_path_cpu.json``
(benchmarks/fast_path_speedup.py), ``profile_cpu.json`` (mlan-bench --profile), ``cpu_compile.json``
(``--cpu-compile``), and, when a GPU run was made, ``cuda.json``, ``cuda_compile.json`` and
``fast_path_cuda.json`` (copy them there from ``--out-dir``). The docs are always rendered by ``mlan-bench``
from these files, so every number in docs/benchmarks.md has the command that measured it beside it.
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join("benchmarks", "results")  # relative to ROOT (commands run there; docs show short paths)


def sh(*cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(list(cmd), check=True, cwd=ROOT)


def bench(*args):
    sh(sys.executable, "-m", "mlan_timm.tools.bench", *args)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cuda", action="store_true", help="GPU run: write CUDA results into --out-dir")
    p.add_argument("--out-dir", default=RESULTS)
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--cpu-compile", action="store_true",
                   help="also time the torch.compile'd backbone and MLAN on CPU (about 2 more minutes)")
    p.add_argument("--min-run-time", default=None, help="seconds per blocked_autorange (default per device)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run of the pipeline (measure params/MACs of the CIFAR-10 ResNet-14 grids, profile, "
                        "render) in seconds; needs --out-dir (results and benchmarks.md go there, docs untouched)")
    p.add_argument("--md-out", default=None, help="Markdown output (default docs/benchmarks.md)")
    args = p.parse_args(argv)
    out = args.out_dir
    os.makedirs(os.path.join(ROOT, out), exist_ok=True)
    fast_path = [sys.executable, os.path.join("benchmarks", "fast_path_speedup.py")]

    if args.quick:
        if out == RESULTS:
            p.error("--quick needs --out-dir DIR (it must not overwrite benchmarks/results)")
        report = os.path.join(out, "cpu.json")
        bench("--paper-tables", "--quick", "--no-time", "--device", "cpu", "--depths", "14", "--datasets", "cifar10",
              "--json-out", report, "--md-out", os.path.join(out, "cpu.md"))
        bench("--profile", "--quick", "--device", "cpu", "resnet14_cifar10",
              "--json-out", os.path.join(out, "profile_cpu.json"))
        bench("--render-only", report, "--profile-json", os.path.join(out, "profile_cpu.json"),
              "--md-out", args.md_out or os.path.join(out, "benchmarks.md"), "--root", out)
        return

    if args.cuda:
        mrt = args.min_run_time or "0.1"
        bench("--paper-tables", "--device", "cuda", "--cuda-variants", "eager,channels_last", "--min-run-time", mrt,
              "--json-out", os.path.join(out, "cuda.json"), "--md-out", os.path.join(out, "cuda.md"))
        sh(*fast_path, "--device", "cuda", "--rounds", "3", "--min-run-time", mrt,
           "--out", os.path.join(out, "fast_path_cuda.json"))
        bench("--paper-tables", "--ratio-only", "--device", "cuda", "--cuda-variants", "compile", "--rounds", "3",
              "--min-run-time", mrt, "--json-out", os.path.join(out, "cuda_compile.json"),
              "--md-out", os.path.join(out, "cuda_compile.md"))
        return

    cpu_json = os.path.join(RESULTS, "cpu.json")
    if not args.render_only:
        mrt = args.min_run_time or "0.3"
        sh(*fast_path, "--device", "cpu", "--rounds", "5", "--min-run-time", mrt,
           "--out", os.path.join(RESULTS, "fast_path_cpu.json"))
        bench("--paper-tables", "--device", "cpu", "--min-run-time", mrt, "--json-out", cpu_json,
              "--md-out", os.path.join(RESULTS, "cpu.md"))
        bench("--profile", "--device", "cpu", "--json-out", os.path.join(RESULTS, "profile_cpu.json"))
        if args.cpu_compile:
            bench("--paper-tables", "--ratio-only", "--device", "cpu", "--cpu-variants", "compile", "--rounds", "3",
                  "--json-out", os.path.join(RESULTS, "cpu_compile.json"),
                  "--md-out", os.path.join(RESULTS, "cpu_compile.md"))
    render = ["--render-only", cpu_json, "--md-out", args.md_out or os.path.join("docs", "benchmarks.md")]
    if os.path.isfile(os.path.join(ROOT, RESULTS, "profile_cpu.json")):
        render += ["--profile-json", os.path.join(RESULTS, "profile_cpu.json")]
    for name in ("cpu_compile.json", "cuda.json", "cuda_compile.json"):
        if os.path.isfile(os.path.join(ROOT, RESULTS, name)):
            render += ["--merge", os.path.join(RESULTS, name)]
    for name in ("fast_path_cpu.json", "fast_path_cuda.json"):
        if os.path.isfile(os.path.join(ROOT, RESULTS, name)):
            render += ["--fast-path-json", os.path.join(RESULTS, name)]
    bench(*render)


if __name__ == "__main__":
    main()
