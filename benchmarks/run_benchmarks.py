"""Re-run the project's benchmarks and regenerate docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/run_benchmarks.py                 # CPU: measure everything, render (merging saved GPU results)
    python benchmarks/run_benchmarks.py --cuda --out-dir DIR   # on a GPU machine: write CUDA JSONs into DIR
    python benchmarks/run_benchmarks.py --render-only   # re-render docs and README's speed summary, no measuring
    python benchmarks/run_benchmarks.py --quick --out-dir DIR  # smoke run: tiny subset, results and Markdown in DIR

Everything is measured by ``mlan-bench``. Raw results live in benchmarks/results/: ``cpu.json`` (``mlan-bench
--paper-tables`` on CPU: params and MACs of every paper grid, and the speed section of issue 10's targets, which
also times each fast path against its reference, ``?fast_paths=False``, in the same interleaved run),
``profile_cpu.json`` (``mlan-bench --profile``), ``conv_costs_cpu.json`` (``mlan-bench --conv-costs``: per-call
times of single convs of MLAN's and the backbone's shapes), ``cpu_compile.json`` (``--cpu-compile``, optional),
and, once a GPU run was made, ``cuda.json`` and ``cuda_compile.json`` (copy them there from ``--out-dir``). The docs
are always rendered by ``mlan-bench`` from these files, so every number in docs/benchmarks.md has the command that
measured it beside it. The full CPU run and ``--render-only`` also rewrite README.md's speed summary (``--readme-out``:
the block between its ``speed-summary`` markers) from the same report, so README.md and docs/benchmarks.md agree;
``--quick``, ``--cuda`` and a non-default ``--md-out`` leave README.md alone.
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join("benchmarks", "results")  # relative to ROOT (commands run there; docs show short paths)
DOCS_MD = os.path.join("docs", "benchmarks.md")
README = "README.md"
CPU_JSON = os.path.join(RESULTS, "cpu.json")
#: CPU defaults, sized so that the whole CPU regeneration takes about 10-15 minutes on 2 cores.
CPU_MIN_RUN_TIME, CPU_ROUNDS = "0.2", "5"


def sh(*cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(list(cmd), check=True, cwd=ROOT)


def bench(*args):
    sh(sys.executable, "-m", "mlan_timm.tools.bench", *args)


def render_args(report, md_out, root=".", results_dir=RESULTS, readme_out=None):
    """The ``mlan-bench`` arguments that render ``report`` merged with the other result files found in
    ``results_dir`` into ``md_out`` (and, with ``readme_out``, that file's speed summary)."""
    cmd = ["--render-only", report, "--md-out", md_out, "--root", root]
    if readme_out:
        cmd += ["--readme-out", readme_out]
    if os.path.isfile(os.path.join(ROOT, results_dir, "profile_cpu.json")):
        cmd += ["--profile-json", os.path.join(results_dir, "profile_cpu.json")]
    if os.path.isfile(os.path.join(ROOT, results_dir, "conv_costs_cpu.json")):
        cmd += ["--conv-costs-json", os.path.join(results_dir, "conv_costs_cpu.json")]
    for name in ("cpu_compile.json", "cuda.json", "cuda_compile.json"):
        if os.path.isfile(os.path.join(ROOT, results_dir, name)):
            cmd += ["--merge", os.path.join(results_dir, name)]
    return cmd


def render(report, md_out, root=".", results_dir=RESULTS, readme_out=None):
    """Render ``report`` merged with the other result files found in ``results_dir``."""
    bench(*render_args(report, md_out, root, results_dir, readme_out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cuda", action="store_true", help="GPU run: write CUDA results into --out-dir")
    p.add_argument("--out-dir", default=RESULTS)
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--cpu-compile", action="store_true",
                   help="also time the torch.compile'd ResNet-20 CIFAR-10 backbone and MLAN on CPU (minutes more)")
    p.add_argument("--min-run-time", default=None, help="seconds per blocked_autorange (default per device)")
    p.add_argument("--rounds", default=None, help="interleaved rounds of the speed section (default per device)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run of the pipeline (the CIFAR-10 ResNet-14 grids and speed section with tiny "
                        "repeat counts, profile, conv costs, render) in seconds; needs --out-dir (results and "
                        "benchmarks.md go there, docs untouched)")
    p.add_argument("--md-out", default=None, help=f"Markdown output (default {DOCS_MD})")
    args = p.parse_args(argv)
    out = args.out_dir
    os.makedirs(os.path.join(ROOT, out), exist_ok=True)

    if args.quick:
        if out == RESULTS:
            p.error("--quick needs --out-dir DIR (it must not overwrite benchmarks/results)")
        report = os.path.join(out, "cpu.json")
        md = args.md_out or os.path.join(out, "benchmarks.md")
        bench("--paper-tables", "--quick", "--device", "cpu", "--depths", "14", "--datasets", "cifar10",
              "--json-out", report, "--md-out", md)
        bench("--profile", "--quick", "--device", "cpu", "resnet14_cifar10",
              "--json-out", os.path.join(out, "profile_cpu.json"))
        # one round of 1 ms blocks: --quick's own 2 rounds of 20 ms blocks take ~15 s over the 52 conv-cost cells
        bench("--conv-costs", "--quick", "--device", "cpu", "--min-run-time", "0.001", "--rounds", "1",
              "--json-out", os.path.join(out, "conv_costs_cpu.json"))
        render(report, md, root=out, results_dir=out)
        return

    if args.cuda:
        mrt, rounds = args.min_run_time or "0.1", args.rounds or "5"
        bench("--paper-tables", "--speed-only", "--device", "cuda", "--cuda-variants", "eager,channels_last",
              "--min-run-time", mrt, "--rounds", rounds,
              "--json-out", os.path.join(out, "cuda.json"), "--md-out", os.path.join(out, "cuda.md"))
        bench("--paper-tables", "--speed-only", "--device", "cuda", "--cuda-variants", "compile", "--depths", "20",
              "--datasets", "cifar10", "--rounds", "3", "--min-run-time", mrt,
              "--json-out", os.path.join(out, "cuda_compile.json"), "--md-out", os.path.join(out, "cuda_compile.md"))
        return

    cpu_json = CPU_JSON
    md = args.md_out or DOCS_MD
    # README.md's speed summary follows docs/benchmarks.md only (a Markdown written elsewhere leaves it alone)
    readme = ["--readme-out", README] if os.path.normpath(md) == os.path.normpath(DOCS_MD) else []
    if not args.render_only:
        mrt, rounds = args.min_run_time or CPU_MIN_RUN_TIME, args.rounds or CPU_ROUNDS
        # --readme-out here too: a README.md without its markers fails before the minutes of measuring
        bench("--paper-tables", "--device", "cpu", "--min-run-time", mrt, "--rounds", rounds,
              "--json-out", cpu_json, "--md-out", md, *readme)
        bench("--profile", "--device", "cpu", "--json-out", os.path.join(RESULTS, "profile_cpu.json"))
        bench("--conv-costs", "--device", "cpu", "--json-out", os.path.join(RESULTS, "conv_costs_cpu.json"))
        if args.cpu_compile:
            bench("--paper-tables", "--speed-only", "--device", "cpu", "--cpu-variants", "compile", "--depths", "20",
                  "--datasets", "cifar10", "--rounds", "3", "--min-run-time", mrt,
                  "--json-out", os.path.join(RESULTS, "cpu_compile.json"),
                  "--md-out", os.path.join(RESULTS, "cpu_compile.md"))
    render(cpu_json, md, readme_out=readme[1] if readme else None)


if __name__ == "__main__":
    main()
