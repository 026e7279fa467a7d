"""Re-run the project's benchmarks and regenerate docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/run_benchmarks.py                 # CPU: measure everything, render (merging saved GPU results)
    python benchmarks/run_benchmarks.py --cuda --out-dir DIR   # on a GPU machine: write CUDA JSONs into DIR
    python benchmarks/run_benchmarks.py --render-only   # re-render docs and README's speed summary, no measuring
    python benchmarks/run_benchmarks.py --quick --out-dir DIR  # smoke run: tiny subset, results and Markdown in DIR

Everything is measured by ``mlan-bench``. Raw results live in benchmarks/results/: ``cpu.json`` (``mlan-bench
--paper-tables`` on CPU: params and MACs of every paper grid, and the speed section of issue 10's targets, which
also times each fast path against its reference, ``?fast_paths=False``, and, where the compiled CPU kernels load
(AVX-512 or AVX2), MLAN with them, ``?cpu_kernels=True``, in the same interleaved run; where they do not load, cpu.json
records why), ``profile_cpu.json`` (``mlan-bench --profile``), ``conv_costs_cpu.json`` (``mlan-bench --conv-costs``:
per-call times of single convs of MLAN's and the backbone's shapes, and of the CPU kernels' convs for the mask
convs where they load), ``cpu_compile.json`` (``--cpu-compile``, optional),
and, once a GPU run was made, ``cuda_graphs.json``, ``cuda.json`` and ``cuda_compile.json`` (copy them there from
``--out-dir``): the ``--cuda`` run times the speed section with CUDA graphs, then eager, then the torch.compile'd
ResNet-20 CIFAR-10 backbone and MLAN; in the CUDA-graph and eager runs, where the Triton kernels work on the machine,
MLAN with them (``?gpu_kernels=True``, inference only) is timed beside the default MLAN in the same interleaved run
(where they do not, the JSON records why). It prints its number of timed cells and a duration estimate first
(calibrated on an H100 run's wall times: ``CUDA_CALIBRATION``); ``--depths`` and ``--datasets`` limit it (e.g.
``--depths 20``: only what issue 10's target 3 reads). The docs
are always rendered by ``mlan-bench`` from these files, so every number in docs/benchmarks.md has the command that
measured it beside it. The full CPU run and ``--render-only`` also rewrite README.md's speed summary (``--readme-out``:
the block between its ``speed-summary`` markers) from the same report, so README.md and docs/benchmarks.md agree;
``--quick``, ``--cuda`` and a non-default ``--md-out`` leave README.md alone.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join("benchmarks", "results")  # relative to ROOT (commands run there; docs show short paths)
DOCS_MD = os.path.join("docs", "benchmarks.md")
README = "README.md"
CPU_JSON = os.path.join(RESULTS, "cpu.json")
#: CPU defaults, sized so that the whole CPU regeneration took about 10-15 minutes on 2 cores before the CPU-kernels
#: model ("mlan (cpu kernels)", timed where the kernels load). It adds 20 timed cells to the speed section's 156
#: (batch 1 and 128 in each of the 8 groups, the train step in the 4 target-1 groups) and 8 to the conv costs' 51
#: (the kernels' forward and weight gradient of the 4 mask-conv shapes): about 13% more cells, so roughly 11-17
#: minutes there (an estimate from the cell counts, not a measurement); without the kernels, as before.
CPU_MIN_RUN_TIME, CPU_ROUNDS = "0.2", "5"
#: CUDA defaults: short blocks and 3 rounds (one GPU call of these small models takes from well under a millisecond,
#: a graph replay, to tens of ms, an eager train step); the three runs took 63, 61 and 133 s on an H100
#: (CUDA_CALIBRATION).
CUDA_MIN_RUN_TIME, CUDA_ROUNDS = "0.01", "3"
#: The --cuda run, one mlan-bench run each: (JSON name in --out-dir, --cuda-variants, only these depths / datasets
#: or None). Each writes its JSON when it ends, so a run cut short keeps the earlier ones: CUDA graphs first (target
#: 3's verdict, and Tables 6/9 with CUDA graphs), then eager (targets 1 to 3, Tables 6/9; channels_last is left out
#: to save device time: ``mlan-bench --cuda-variants channels_last`` times it), then torch.compile for the ResNet-20
#: CIFAR-10 backbone and MLAN only (a compilation per model and measure).
CUDA_RUNS = (("cuda_graphs", "cuda_graphs", None, None), ("cuda", "eager", None, None),
             ("cuda_compile", "compile", (20,), ("cifar10",)))
#: What the --cuda run took on an H100 (torch 2.11, min_run_time 0.01 s, 3 rounds, before the GPU kernels' cells):
#: (JSON, timed cells, torch.compile'd functions, wall seconds as the run printed them, each including its mlan-bench
#: run's start). The eager run had no channels_last.
CUDA_CALIBRATION = (("cuda_graphs", 144, 0, 63), ("cuda", 156, 0, 61), ("cuda_compile", 6, 6, 133))
CALIBRATION_ROUNDS, CALIBRATION_MIN_RUN_TIME = 3, 0.01
#: The printed estimate's costs, calibrated on CUDA_CALIBRATION: the start of one mlan-bench run (imports, CUDA
#: init, params/MACs; about 15 s per run on that H100); per timed cell and round, in units of min_run_time, the wall
#: time of the runs without compilations, less their starts, over their cells x rounds x min_run_time (about 10x; the
#: cells' set-up, i.e. build, copy to the GPU, warm-up and graph capture, is folded in: those runs, all at 3 rounds
#: of 0.01 s, cannot tell it apart); one torch.compile'd function: the compile run's wall time less its start and its
#: cells' share. The worst case: blocked_autorange multiplies its block by 10 until one block passes min_run_time,
#: then times one block, i.e. up to ~21x min_run_time per cell and round when a call is shorter than it; a
#: compilation twice the calibrated one. Not calibrated: the GPU kernels' Triton compilations (their first launches,
#: in the warm-up of their cells).
EST_RUN_START_S = 15
_TIMED = [(cells, seconds) for _, cells, compiled, seconds in CUDA_CALIBRATION if not compiled]
EST_CELL_ROUND = (sum(s - EST_RUN_START_S for _, s in _TIMED)
                  / sum(c * CALIBRATION_ROUNDS * CALIBRATION_MIN_RUN_TIME for c, _ in _TIMED))
EST_CELL_ROUND_MAX = 21
EST_COMPILE_S = next((s - EST_RUN_START_S - c * CALIBRATION_ROUNDS * CALIBRATION_MIN_RUN_TIME * EST_CELL_ROUND) / n
                     for _, c, n, s in CUDA_CALIBRATION if n)
EST_COMPILE_MAX_S = 2 * EST_COMPILE_S


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
    for name in ("cpu_compile.json", "cuda.json", "cuda_graphs.json", "cuda_compile.json"):
        if os.path.isfile(os.path.join(ROOT, results_dir, name)):
            cmd += ["--merge", os.path.join(results_dir, name)]
    return cmd


def render(report, md_out, root=".", results_dir=RESULTS, readme_out=None):
    """Render ``report`` merged with the other result files found in ``results_dir``."""
    bench(*render_args(report, md_out, root, results_dir, readme_out))


def cuda_plan(depths=None, datasets=None):
    """The --cuda run's mlan-bench runs within ``depths`` x ``datasets`` (default: all): a list of (JSON name,
    --cuda-variants, depths, datasets, {variant: timed cells}), counted with mlan-bench's own speed plan."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from mlan_timm import zoo
    from mlan_timm.tools.bench.measure import count_speed_cells, default_target1_depths

    depths = tuple(zoo.DEPTHS) if depths is None else tuple(depths)
    datasets = tuple(zoo.DATASETS) if datasets is None else tuple(datasets)
    bad = [x for x in depths if x not in zoo.DEPTHS] + [x for x in datasets if x not in zoo.DATASETS]
    if bad:
        raise ValueError(f"unknown depth/dataset {bad}: depths are {sorted(zoo.DEPTHS)}, datasets "
                         f"{sorted(zoo.DATASETS)}")
    plan = []
    for name, variants, only_depths, only_datasets in CUDA_RUNS:
        d = [x for x in depths if only_depths is None or x in only_depths]
        ds = [x for x in datasets if only_datasets is None or x in only_datasets]
        if d and ds:
            t1 = default_target1_depths(d)  # as mlan-bench picks them for these depths
            plan.append((name, variants, d, ds, {v: count_speed_cells(ds, d, v, t1, device="cuda")
                                                 for v in variants.split(",")}))
    return plan


def estimate_seconds(plan, rounds, min_run_time):
    """(expected, worst) seconds of the --cuda run ``plan`` by the EST_* costs above (calibrated on
    CUDA_CALIBRATION)."""
    cells = sum(n for *_, c in plan for n in c.values())
    compiled = sum(c.get("compile", 0) for *_, c in plan)
    timing = cells * int(rounds) * float(min_run_time)
    fixed = EST_RUN_START_S * len(plan)
    return (EST_CELL_ROUND * timing + fixed + EST_COMPILE_S * compiled,
            EST_CELL_ROUND_MAX * timing + fixed + EST_COMPILE_MAX_S * compiled)


def describe_cuda_plan(plan, rounds, min_run_time):
    cells = sum(n for *_, c in plan for n in c.values())
    compiled = sum(c.get("compile", 0) for *_, c in plan)
    runs = "; ".join(f"{name}.json: " + ", ".join(f"{v} {n}" for v, n in c.items()) for name, _, _, _, c in plan)
    expected, worst = estimate_seconds(plan, rounds, min_run_time)
    return (f"CUDA run: {len(plan)} mlan-bench runs, {cells} timed cells x {rounds} rounds (min_run_time "
            f"{min_run_time} s) [{runs}]" + (f", {compiled} torch.compile'd functions" if compiled else "")
            + f". Estimated ~{expected / 60:.1f} min (up to ~{worst / 60:.1f} min): an estimate from the cell count, "
            f"calibrated on an H100 run's wall times ({_calibration_phrase()}), not a measurement of this run.")


def _calibration_phrase():
    """'cuda_graphs.json 144 cells in 63 s, ...': the runs the estimate was calibrated on."""
    return ", ".join(f"{name}.json {cells} cells" + (f" with {n} compilations" if n else "") + f" in {s} s"
                     for name, cells, n, s in CUDA_CALIBRATION)


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
    p.add_argument("--depths", default=None, help="with --cuda: only these depths (comma list; default all)")
    p.add_argument("--datasets", default=None, help="with --cuda: only these datasets (comma list; default all)")
    args = p.parse_args(argv)
    if (args.depths or args.datasets) and not args.cuda:
        p.error("--depths / --datasets limit the --cuda run only (the CPU run regenerates all of cpu.json)")
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
        # one round of 1 ms blocks: --quick's own 2 rounds of 20 ms blocks take ~15 s over the 51 conv-cost cells
        # (59 with the CPU kernels' columns)
        bench("--conv-costs", "--quick", "--device", "cpu", "--min-run-time", "0.001", "--rounds", "1",
              "--json-out", os.path.join(out, "conv_costs_cpu.json"))
        render(report, md, root=out, results_dir=out)
        return

    if args.cuda:
        mrt, rounds = args.min_run_time or CUDA_MIN_RUN_TIME, args.rounds or CUDA_ROUNDS
        try:
            plan = cuda_plan(args.depths and [int(d) for d in args.depths.split(",")],
                             args.datasets and args.datasets.split(","))
        except ValueError as e:  # not an integer, or not a depth / dataset of the paper
            p.error(f"--depths / --datasets: {e}")
        if not plan:
            p.error("nothing to run: --depths / --datasets leave no speed group")
        print(describe_cuda_plan(plan, rounds, mrt), flush=True)
        t_all, failed = time.perf_counter(), []
        for name, variants, depths, datasets, _ in plan:
            t0 = time.perf_counter()
            try:  # a failed run loses its JSON only: the next ones still run
                bench("--paper-tables", "--speed-only", "--device", "cuda", "--cuda-variants", variants,
                      "--depths", ",".join(map(str, depths)), "--datasets", ",".join(datasets),
                      "--min-run-time", mrt, "--rounds", rounds,
                      "--json-out", os.path.join(out, f"{name}.json"), "--md-out", os.path.join(out, f"{name}.md"))
            except subprocess.CalledProcessError as e:
                failed.append(name)
                print(f"{name}.json: mlan-bench failed (exit status {e.returncode})", flush=True)
                continue
            print(f"{name}.json: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"CUDA run: {time.perf_counter() - t_all:.0f} s in all", flush=True)
        if failed:
            sys.exit(f"run_benchmarks: error: {', '.join(failed)} failed (see the output above)")
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
