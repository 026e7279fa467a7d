"""Test accuracy vs epoch curves (the paper's Fig. 4/7 style) from training logs.

Reads JSONL logs (one JSON object per line with at least ``epoch`` and ``test_top1``, as ``mlan-train`` writes to
``runs/<name>/log.jsonl``) and saves one PNG with a curve per run, labelled by the run's folder name (or
``--labels``) and its best test top-1.

    python examples/plot_training.py runs/*/log.jsonl --out docs/img/training_curves.png
    python examples/plot_training.py "runs/*cifar10*/log.jsonl" --key test_top1 --title "CIFAR-10"

Arguments may be files, folders (their ``log.jsonl``) or glob patterns (quoted or expanded by the shell).
"""
import argparse
import glob
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

FIGSIZE = (6.4, 4.0)  # inches
DPI = 100


def figure_size_px() -> Tuple[int, int]:
    return int(round(FIGSIZE[0] * DPI)), int(round(FIGSIZE[1] * DPI))


def expand_paths(items: Sequence[str]) -> List[str]:
    """Files, folders (-> folder/log.jsonl) and glob patterns -> sorted, de-duplicated list of log files."""
    out: List[str] = []
    for item in items:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        for m in matches:
            path = os.path.join(m, "log.jsonl") if os.path.isdir(m) else m
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no training log at {path!r}")
            if path not in out:
                out.append(path)
    if not out:
        raise FileNotFoundError(f"no training logs match {list(items)}")
    return out


def read_log(path: str, key: str = "test_top1") -> Tuple[List[float], List[float]]:
    """(epochs, values) of ``key`` from a JSONL log; lines without the key (or blank/partial lines) are skipped.

    If an epoch appears more than once (a resumed run), the last entry wins."""
    by_epoch: Dict[float, float] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # e.g. a line cut short by a killed run
            if isinstance(rec, dict) and "epoch" in rec and isinstance(rec.get(key), (int, float)):
                by_epoch[rec["epoch"]] = float(rec[key])
    epochs = sorted(by_epoch)
    return epochs, [by_epoch[e] for e in epochs]


def run_label(path: str) -> str:
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent if os.path.basename(path) == "log.jsonl" else os.path.splitext(os.path.basename(path))[0]


def plot(paths: Sequence[str], out: str, key: str = "test_top1", labels: Optional[Sequence[str]] = None,
         title: Optional[str] = None, one_based: bool = True) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    plotted = 0
    for i, path in enumerate(paths):
        epochs, values = read_log(path, key)
        if not epochs:
            print(f"{path}: no '{key}' entries, skipped")
            continue
        xs = [e + 1 for e in epochs] if one_based else epochs
        name = labels[i] if labels and i < len(labels) else run_label(path)
        best = max(values) if "loss" not in key else min(values)
        ax.plot(xs, values, linewidth=1.2, label=f"{name} (best {best:.2f})")
        plotted += 1
    if not plotted:
        plt.close(fig)
        raise ValueError(f"none of the logs has '{key}' values")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel({"test_top1": "test top-1 accuracy (%)", "test_top5": "test top-5 accuracy (%)"}.get(key, key))
    ax.set_title(title or f"{key} vs epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right" if "loss" not in key else "upper right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=DPI)  # fixed size: FIGSIZE x DPI (no bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", help="log.jsonl files, run folders or glob patterns")
    p.add_argument("--key", default="test_top1", help="value to plot (default test_top1)")
    p.add_argument("--labels", default=None, help="comma-separated curve labels (default: run folder names)")
    p.add_argument("--title", default=None)
    p.add_argument("--zero-based", action="store_true", help="plot the logged 0-based epoch instead of epoch + 1")
    p.add_argument("--out", default="docs/img/training_curves.png")
    args = p.parse_args(argv)
    out = plot(expand_paths(args.logs), args.out, args.key, args.labels.split(",") if args.labels else None,
               args.title, one_based=not args.zero_based)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
