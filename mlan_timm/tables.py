"""Parameter counts of the zoo beside the paper's tables (Tables 1, 3-6 for CIFAR-10; 8, 9, 11-13 for CIFAR-100).

``python -m mlan_timm.tables`` prints the Markdown tables; ``--update README.md`` rewrites the block between the
``<!-- param-table:start -->`` and ``<!-- param-table:end -->`` markers. Paper values come from
:mod:`mlan_timm.paper_tables` (empty until transcribed), never from here.
"""
import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch

from .complexity import count_params
from .models.cifar_resnet import DEPTHS
from .paper_tables import NOT_TRANSCRIBED, paper_value

START, END = "<!-- param-table:start -->", "<!-- param-table:end -->"
#: dataset -> (paper table ids for: backbone/MLAN, single vs multi, FMA vs SMA, fusion, attention types, classic)
PAPER_TABLES = {
    "cifar10": dict(main="table1", levels="table3", fma="table4", fusion="table5", attn="table6", classic="table7"),
    "cifar100": dict(main="table8", levels="table11", fma="table12", fusion="table13", attn="table9", classic="table14"),
}


@dataclass(frozen=True)
class Variant:
    """One row of the table: a model family (name prefix) with extra kwargs, and the paper table it belongs to."""
    label: str
    prefix: str
    table: str
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def model_name(self, depth: int, dataset: str) -> str:
        return f"{self.prefix}resnet{depth}_{dataset}"

    def paper_key(self, depth: int) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.prefix}resnet{depth}{extra}"


VARIANTS: Tuple[Variant, ...] = (
    Variant("ResNet backbone", "", "main"),
    Variant("MLAN (SMA, plus, N=3)", "mlan_", "main"),
    Variant("MLAN SMAv2", "mlan_v2_", "attn"),
    Variant("MLAN FMA (full masks)", "mlan_", "fma", dict(attn="fma")),
    Variant("MLAN single level (SMA)", "mlan_", "levels", dict(levels="single")),
    Variant("MLAN fusion: concat + 3x3 conv", "mlan_", "fusion", dict(fusion="concat")),
    Variant("MLAN fusion: concat + 1x1 conv", "mlan_", "fusion", dict(fusion="conv1x1")),
    Variant("MLAN fusion: weighted plus", "mlan_", "fusion", dict(fusion="weighted")),
    Variant("multi-level SE", "mlan_", "attn", dict(attn="se")),
    Variant("multi-level CBAM", "mlan_", "attn", dict(attn="cbam")),
    Variant("multi-level triplet attention", "mlan_", "attn", dict(attn="ta")),
    Variant("multi-level GC", "mlan_", "attn", dict(attn="gc")),
    Variant("classic SE-ResNet", "se_", "classic"),
    Variant("classic CBAM-ResNet", "cbam_", "classic"),
    Variant("classic TA-ResNet", "ta_", "classic"),
    Variant("classic GC-ResNet", "gc_", "classic"),
)


def variant_params(variant: Variant, depth: int, dataset: str) -> int:
    with torch.device("meta"):
        model = timm.create_model(variant.model_name(depth, dataset), **variant.kwargs)
    return count_params(model)


def param_rows(datasets: Sequence[str] = ("cifar10", "cifar100")) -> List[Dict[str, Any]]:
    """One dict per (dataset, variant, depth): our parameter count and the paper's printed value (or None)."""
    rows = []
    for dataset in datasets:
        for variant in VARIANTS:
            table = PAPER_TABLES[dataset][variant.table]
            for depth in DEPTHS:
                rows.append(dict(
                    dataset=dataset, label=variant.label, depth=depth, table=table,
                    model=variant.model_name(depth, dataset), kwargs=dict(variant.kwargs),
                    params=variant_params(variant, depth, dataset),
                    paper=paper_value(table, variant.paper_key(depth)),
                ))
    return rows


def parse_paper_count(value: str) -> Optional[float]:
    """``"0.27M"`` -> 270000.0, ``"72,132"`` -> 72132.0, ``"15.3K"`` -> 15300.0; None if not a count."""
    m = re.fullmatch(r"\s*([\d.,]+)\s*([KkMm]?)\s*", value)
    if not m:
        return None
    number = float(m.group(1).replace(",", ""))
    return number * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]


def compare_to_paper(rows: List[Dict[str, Any]], tolerance: float = 0.05) -> List[str]:
    """Rows whose count differs from the paper's by more than ``tolerance`` (relative), as messages."""
    problems = []
    for row in rows:
        if row["paper"] is None:
            continue
        paper = parse_paper_count(row["paper"])
        if paper is None:
            problems.append(f"{row['model']} {row['kwargs']}: paper value {row['paper']!r} is not a count")
        elif abs(row["params"] - paper) > tolerance * paper:
            problems.append(f"{row['model']} {row['kwargs']}: ours {row['params']:,} vs paper {row['paper']} "
                            f"({row['table']}), off by more than {tolerance:.0%}")
    return problems


def render_markdown(rows: List[Dict[str, Any]]) -> str:
    """Two Markdown tables (CIFAR-10, CIFAR-100): variants x depths, with the paper's values beside ours."""
    depths = sorted({r["depth"] for r in rows})
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        ds_rows = [r for r in rows if r["dataset"] == dataset]
        widths = "8/16/32" if dataset == "cifar10" else "16/32/64"
        out.append(f"**{dataset.upper()}** (widths {widths}), parameters:\n")
        out.append("| variant | paper table | " + " | ".join(f"ResNet-{d}" for d in depths) + " | paper |")
        out.append("|---|---|" + "---:|" * len(depths) + "---|")
        for label in dict.fromkeys(r["label"] for r in ds_rows):
            cells = {r["depth"]: r for r in ds_rows if r["label"] == label}
            papers = [cells[d]["paper"] for d in depths]
            paper = NOT_TRANSCRIBED if all(p is None for p in papers) else " / ".join(p or "-" for p in papers)
            table = cells[depths[0]]["table"].replace("table", "Table ")
            out.append(f"| {label} | {table} | " + " | ".join(f"{cells[d]['params']:,}" for d in depths)
                       + f" | {paper} |")
        out.append("")
    return "\n".join(out)


def update_file(path: Path, markdown: str) -> bool:
    """Replace the marked block of ``path`` with ``markdown``; True if the file changed."""
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} block to update")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{markdown}\n{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", type=Path, help="file with param-table markers to rewrite (e.g. README.md)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative tolerance vs transcribed values")
    args = parser.parse_args(argv)
    rows = param_rows()
    markdown = render_markdown(rows)
    if args.update:
        print(f"{args.update}: {'updated' if update_file(args.update, markdown) else 'already up to date'}")
    else:
        print(markdown)
    problems = compare_to_paper(rows, args.tolerance)
    for p in problems:
        print("MISMATCH:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
