"""mlan-bench: benchmark mlan_timm models; ``--paper-tables`` measures the paper's grids into a report JSON
(default ``benchmarks/results/<devices>.json``) and renders Markdown (default docs/benchmarks.md).

* ``mlan-bench resnet20_cifar10 "mlan_resnet20_cifar10?attn=cbam"`` measures the named models (``?k=v&k=v``:
  ``create_model`` kwargs in the ``--model-kwargs`` syntax);
* ``"mlan_resnet20_cifar10?fast_paths=False"`` builds the model with its fast paths off (the reference equations);
  ``"mlan_resnet20_cifar10?cpu_kernels=True"`` with the compiled CPU kernels for its mask convs (the speed section
  times it as ``mlan (cpu kernels)`` on CPU where they load), ``"mlan_resnet20_cifar10?gpu_kernels=True"`` with the
  Triton kernels for its attention in CUDA inference (timed as ``mlan (gpu kernels)`` in the CUDA eager and
  cuda_graphs sections, inference only, where they compile); the bench never switches either on process-wide;
* ``--merge other.json`` folds the device timings of another run (e.g. a CUDA run) into the tables;
* ``--cuda-variants eager,channels_last,compile,cuda_graphs``: the CUDA variants of the speed section;
  ``cuda_graphs`` times each eval forward replayed from a captured CUDA graph (inference only, CUDA only);
* ``--render-only report.json`` re-renders Markdown without measuring;
* ``--conv-costs --json-out FILE`` times single convs of MLAN's and the backbone's shapes (forward, backward-data,
  backward-weight, backward-data as a forward conv, 1x1 as bmm, and for the mask convs the compiled CPU kernels'
  forward and weight gradient where they load); ``--conv-costs-json FILE`` adds them to a render;
* ``--readme-out README.md`` (with ``--paper-tables`` or ``--render-only``) rewrites README.md's speed summary, the
  block between its ``<!-- speed-summary:start ... -->`` and ``<!-- speed-summary:end -->`` markers, from the same
  report as the Markdown.
"""
import argparse
import datetime
import json
import os
import sys
from typing import Optional, Sequence

import torch

from ... import zoo
from ...atomic import atomic_write_text
from ..common import UsageError, check_model_registered, resolve_device, run_cli, set_threads, tune_cpu
from .measure import (
    TimingConfig,
    check_variants,
    code_version,
    cpu_kernels_info,
    default_target1_depths,
    machine_line,
    measure,
    measure_conv_costs,
    merge_reports,
    parse_spec,
    profile_ops,
    run_paper_tables,
    speed_plan,
    timing_environment,
)
from .report import (
    README_END,
    README_START,
    readme_summary_span,
    render_conv_costs,
    render_profiles,
    render_readme_summary,
    render_report,
    render_results_table,
    replace_readme_summary,
)

__all__ = ['build_parser', 'add_results', 'update_readme', 'main']


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlan-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="timm model names, optionally 'name?kwarg=value&...'; "
                                              "default: the paper grids (same as --paper-tables)")
    p.add_argument("--paper-tables", action="store_true", help="regenerate the paper comparison grids")
    p.add_argument("--device", default=None, help="comma list of devices (default: cpu, plus cuda if present)")
    p.add_argument("--cuda-variants", default="eager,channels_last,compile,cuda_graphs",
                   help="CUDA variants of the speed section (eager, channels_last, compile, cuda_graphs: inference "
                        "replayed from a captured CUDA graph, no train step)")
    p.add_argument("--cpu-variants", default="eager",
                   help="CPU variants of the speed section (eager, compile; channels_last training on CPU crashes "
                        "in torch 2.14.1: heap corruption in the backward of a 1x1 stride-2 conv)")
    p.add_argument("--depths", default=",".join(map(str, zoo.DEPTHS)))
    p.add_argument("--speed-depths", "--timed-depths", dest="speed_depths", default=None,
                   help="depths of the speed section (issue 10's targets; its eager timings fill Tables 6/9's time "
                        "columns; default: --depths)")
    p.add_argument("--b1-depths", default=None, help="speed-section depths that get batch-1 timings (default: all)")
    p.add_argument("--datasets", default=",".join(zoo.DATASETS))
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per blocked_autorange")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the speed section")
    p.add_argument("--batch", type=int, default=None, help="large batch size (default 128)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true",
                   help="tiny repeat counts and batch 8 (for tests)")
    p.add_argument("--no-time", action="store_true", help="params and MACs only")
    p.add_argument("--speed-only", "--ratio-only", dest="speed_only", action="store_true",
                   help="with --paper-tables: only the speed section (no paper grids)")
    p.add_argument("--merge", action="append", default=[], help="report JSON(s) whose device timings to merge")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler top operators of the named models, default the ResNet-20 CIFAR-10 backbone "
                        "and MLAN (inference and train step)")
    p.add_argument("--profile-json", default=None, help="a --profile JSON to include in the rendered report")
    p.add_argument("--conv-costs", action="store_true",
                   help="per-call times of single convs of MLAN's and the backbone's shapes (forward, backward-data, "
                        "backward-data as a forward conv, backward-weight, 1x1 as bmm; for the mask convs on CPU the "
                        "compiled CPU kernels' forward and weight gradient where they load) at --batch")
    p.add_argument("--conv-costs-json", default=None, help="a --conv-costs JSON to include in the rendered report")
    p.add_argument("--render-only", default=None, help="re-render Markdown from this JSON without measuring")
    p.add_argument("--md-out", default=None, help="Markdown output (paper tables: default docs/benchmarks.md)")
    p.add_argument("--readme-out", default=None,
                   help=f"rewrite the speed summary between the {README_START} ... --> and {README_END} markers of "
                        "this file (README.md) from the rendered report; with --paper-tables or --render-only")
    p.add_argument("--json-out", default=None,
                   help="JSON output (paper tables: default benchmarks/results/<devices>.json; none with "
                        "--render-only)")
    p.add_argument("--root", default=".", help="project root for eval-results lookup")
    return p


def _load_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise UsageError(f"{what} {path} is not valid JSON: {e}") from e


def _read_readme(path: str) -> str:
    """The text of the --readme-out file, checked to hold the speed-summary markers (one-line UsageError)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        readme_summary_span(text)
    except OSError as e:
        raise UsageError(f"--readme-out {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise UsageError(f"--readme-out {path}: {e}") from e
    return text


def update_readme(path: str, report) -> bool:
    """Rewrite only the speed summary of ``path`` (atomically) from ``report``; True if the file changed."""
    text = _read_readme(path)
    new = replace_readme_summary(text, render_readme_summary(report))
    if new != text:
        atomic_write_text(path, new)
    return new != text


def add_results(report, args):
    """``report`` with the results of ``--merge``, ``--profile-json`` and ``--conv-costs-json`` folded in: the
    report that is rendered into Markdown (and README.md's speed summary)."""
    for path in args.merge:
        report = merge_reports(report, _load_json(path, "--merge"))
    if args.profile_json:
        report["profile"] = _load_json(args.profile_json, "--profile-json")
    if args.conv_costs_json:
        report["conv_costs"] = _load_json(args.conv_costs_json, "--conv-costs-json")
    return report


def _write(path: str, text: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def run(args, argv_list) -> int:
    command = timing_environment() + "mlan-bench " + " ".join(argv_list)
    set_threads(args.threads)
    devices = args.device.split(",") if args.device else (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if not (args.no_time or args.render_only):
        for dev in devices:  # before anything is measured: an unknown device, or CUDA without a GPU
            resolve_device(dev)
    for text in args.models or ():  # an unknown model is an error, not a row that says so
        check_model_registered(parse_spec(text).model)
    if "cpu" in devices:
        tune_cpu()  # subnormal floats and mmap'ed activations slow CPU kernels (mlan_timm.tools.common)
    cfg = TimingConfig.quick() if args.quick else TimingConfig()
    if args.min_run_time is not None:
        cfg.min_run_time = args.min_run_time
    if args.rounds is not None:
        cfg.rounds = args.rounds
    if args.batch is not None:
        cfg.batch = args.batch
    paper = args.paper_tables or not args.models
    md_out = args.md_out or ("docs/benchmarks.md" if paper else None)
    json_out = args.json_out or (os.path.join("benchmarks", "results", "_".join(devices) + ".json")
                                 if paper and not args.render_only else None)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        depths = tuple(int(d) for d in args.depths.split(","))
        speed_depths = tuple(int(d) for d in args.speed_depths.split(",")) if args.speed_depths else depths
        b1_depths = tuple(int(d) for d in args.b1_depths.split(",")) if args.b1_depths else None
    except ValueError as e:
        raise UsageError(f"--depths / --speed-depths / --b1-depths take comma-separated integers: {e}") from e
    bad = sorted({d for d in depths + speed_depths + (b1_depths or ()) if d not in zoo.DEPTHS})
    bad += [d for d in args.datasets.split(",") if d not in zoo.DATASETS]
    if bad:
        raise UsageError(f"unknown depth/dataset {bad}: depths are {sorted(zoo.DEPTHS)}, datasets "
                         f"{sorted(zoo.DATASETS)}")
    cuda_variants, cpu_variants = tuple(args.cuda_variants.split(",")), tuple(args.cpu_variants.split(","))
    for flag, dev, variants in (("--cuda-variants", "cuda", cuda_variants), ("--cpu-variants", "cpu", cpu_variants)):
        try:  # before measuring: e.g. cuda_graphs on CPU is refused now, not after minutes of CPU timings
            check_variants(dev, variants)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from e

    if args.profile and args.conv_costs:
        raise UsageError("--profile and --conv-costs are separate runs (one JSON each)")
    if args.readme_out:
        if args.profile or args.conv_costs or not (paper or args.render_only):
            raise UsageError("--readme-out needs --paper-tables or --render-only (README.md's speed summary is "
                             "rendered from the paper-tables report)")
        _read_readme(args.readme_out)  # before measuring: a missing marker fails now, not after the run
    if args.conv_costs:
        dev = devices[-1]
        rows = measure_conv_costs(dev, cfg.batch, cfg)
        config = dict(min_run_time=cfg.min_run_time, warmup=cfg.warmup, batch=cfg.batch, rounds=cfg.rounds)
        if torch.device(dev).type == "cpu":  # whether the kernel columns were timed, and why not
            config["cpu_kernels"] = cpu_kernels_info()
        report = dict(command=command, machine=machine_line([dev]), code=code_version(), device=dev,
                      config=config, conv_costs=rows)
        if args.json_out:
            _write(args.json_out, json.dumps(report, indent=1) + "\n")
        print(render_conv_costs(report))
        return 0
    if args.profile:
        dev = devices[-1]
        plan = speed_plan("cifar10", 20, target1=True, cpu_kernels=False)  # backbone and MLAN only
        specs = [parse_spec(m) for m in args.models] or [plan["backbone"][0], plan["mlan"][0]]
        profs = [profile_ops(sp, dev, cfg.batch, iters=1 if args.quick else 3, top=12, train=t)
                 for sp in specs for t in (False, True)]
        report = dict(command=command, machine=machine_line([dev]), code=code_version(), profiles=profs)
        if args.json_out:
            _write(args.json_out, json.dumps(report, indent=1) + "\n")
        print(render_profiles(report))
        return 0
    if args.render_only:
        report = _load_json(args.render_only, "--render-only")
    elif paper:
        # issue 10's target 1 is for ResNet-20 and -32; a run without them (e.g. --quick) uses its smallest depth
        target1 = default_target1_depths(speed_depths)
        report = run_paper_tables(devices=[] if args.no_time else devices, cfg=cfg, depths=depths,
                                  datasets=tuple(args.datasets.split(",")), speed_depths=speed_depths,
                                  cuda_variants=cuda_variants, log=log, speed_only=args.speed_only,
                                  cpu_variants=cpu_variants, target1_depths=target1, b1_depths=b1_depths)
    else:
        specs = [parse_spec(m) for m in args.models]
        what = () if args.no_time else ("b1", "b128", "train")
        results = measure(specs, devices, cfg, what=what, cuda_variants=cuda_variants, log=log)
        report = dict(devices=devices if what else [], results=results,
                      config=dict(min_run_time=cfg.min_run_time, warmup=cfg.warmup, batch=cfg.batch))
    if not args.render_only:
        report["command"] = command
        report["machine"] = machine_line(devices)
        report["code"] = code_version()
        report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = add_results(report, args)

    if paper or args.render_only:
        md = render_report(report, args.root)
    else:
        md = "\n".join([f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", "",
                        render_results_table(report["results"], report["devices"]), ""])
    if json_out:
        _write(json_out, json.dumps(report, indent=1, sort_keys=False) + "\n")
    if md_out:
        _write(md_out, md + "\n")
        print(f"wrote {md_out}" + (f" and {json_out}" if json_out else ""))
    else:
        print(md)
    if args.readme_out:
        changed = update_readme(args.readme_out, report)
        print(f"{args.readme_out}: speed summary {'rewritten' if changed else 'already up to date'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    return run_cli("mlan-bench", lambda: run(args, argv_list))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
