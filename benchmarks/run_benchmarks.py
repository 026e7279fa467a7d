"""Re-run the project's benchmarks and regenerate docs/benchmarks.md and docs/benchmarks.json.

    python benchmarks/run_benchmarks.py                 # CPU: measure, then render (merging saved CUDA results)
    python benchmarks/run_benchmarks.py --cuda --out-dir DIR   # on a GPU machine: write CUDA JSONs into DIR
    python benchmarks/run_benchmarks.py --render-only   # re-render docs from the saved JSONs, no measuring

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
    sh(sys.executable, "-m", "mlan_timm.benchmark", *args)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cuda", action="store_true", help="GPU run: write CUDA results into --out-dir")
    p.add_argument("--out-dir", default=RESULTS)
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--cpu-compile", action="store_true",
                   help="also time the torch.compile'd backbone and MLAN on CPU (about 2 more minutes)")
    p.add_argument("--min-run-time", default=None, help="seconds per blocked_autorange (default per device)")
    args = p.parse_args(argv)
    out = args.out_dir
    os.makedirs(os.path.join(ROOT, out), exist_ok=True)
    fast_path = [sys.executable, os.path.join("benchmarks", "fast_path_speedup.py")]

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
    render = ["--render-only", cpu_json, "--md-out", os.path.join("docs", "benchmarks.md"),
              "--json-out", os.path.join("docs", "benchmarks.json")]
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
