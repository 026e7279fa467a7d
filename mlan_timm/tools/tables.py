"""Parameter counts of the zoo beside every count the paper prints (Tables 4-6, 8, 9, 12, 13).

``python -m mlan_timm.tools.tables`` prints the comparison and exits non-zero unless the architecture fits the
paper (:func:`fit_summary`); ``--update README.md`` rewrites the block between the ``<!-- param-table:start -->``
and ``<!-- param-table:end -->`` markers. Paper values come from :mod:`mlan_timm.paper_tables`, the grid (which
model each paper variant is) from :data:`mlan_timm.zoo.PAPER_VARIANTS`.

The paper truncates counts to 0.01M, so a printed ``0.10`` allows a true count in ``[100,000, 110,000)``; a count
in that interval is ``exact``. Most misses sit a little under it (docs/architecture.md, "What the counts do not
explain"): a count in ``[printed - 3,400, printed)`` is ``near``; anything else is reported with its distance.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch

from .. import zoo
from ..atomic import atomic_write_text
from ..complexity import count_params
from ..paper_tables import params_interval, records

__all__ = ["ParamRow", "param_rows", "fit_summary", "render_markdown", "update_file", "main"]

START, END = "<!-- param-table:start -->", "<!-- param-table:end -->"
NEAR_BELOW = 3_400  # how far under the truncation interval a count may sit and still be "near"
MIN_FIT, MAX_REL_ERROR = 60, 0.08  # the acceptance bar of the fidelity issue: >= 60 fit, none > 8% off


@dataclass(frozen=True)
class ParamRow:
    """One model the paper gives a parameter count for: ours beside the paper's (possibly in several tables)."""
    dataset: str
    variant: str
    depth: int
    tables: Tuple[str, ...]
    paper_m: float
    ours: int

    @property
    def model(self) -> str:
        return zoo.PAPER_VARIANTS[self.variant].model_name(self.depth, self.dataset)

    @property
    def kwargs(self) -> Dict[str, object]:
        return dict(zoo.PAPER_VARIANTS[self.variant].kwargs)

    @property
    def status(self) -> str:
        """``exact`` (inside the truncation interval), ``near`` (up to 3.4k under it) or ``off``."""
        low, high = params_interval(self.paper_m)
        if low <= self.ours < high:
            return "exact"
        return "near" if low - NEAR_BELOW <= self.ours < low else "off"

    @property
    def signed_error(self) -> float:
        """Signed distance to the truncation interval, relative to the printed value (0 inside it)."""
        low, high = params_interval(self.paper_m)
        gap = self.ours - low if self.ours < low else max(0, self.ours - (high - 1))
        return gap / low

    @property
    def rel_error(self) -> float:
        return abs(self.signed_error)


def count_model(name: str, **kwargs: object) -> int:
    """Parameters of ``timm.create_model(name, **kwargs)``, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        return count_params(timm.create_model(name, **kwargs))


def param_rows() -> List[ParamRow]:
    """One row per distinct model with a printed count (a model printed in several tables is one row)."""
    grouped: Dict[Tuple[str, object, int], List] = {}
    for rec in records(metric="params_M"):
        variant = zoo.PAPER_VARIANTS[rec.variant]
        grouped.setdefault((rec.dataset, variant.config, rec.depth), []).append(rec)
    rows = []
    for (dataset, _, depth), recs in grouped.items():
        values = {r.value for r in recs}
        if len(values) != 1:
            raise ValueError(f"the paper prints different counts for one model: {recs}")
        variant = zoo.PAPER_VARIANTS[recs[0].variant]
        rows.append(ParamRow(dataset, recs[0].variant, depth, tuple(dict.fromkeys(r.table for r in recs)),
                             recs[0].value, count_model(variant.model_name(depth, dataset), **variant.kwargs)))
    return rows


def fit_summary(rows: Sequence[ParamRow]) -> Dict[str, object]:
    """How many rows are exact / near / off, the worst relative error, and whether the acceptance bar is met."""
    exact = sum(r.status == "exact" for r in rows)
    near = sum(r.status == "near" for r in rows)
    worst = max(rows, key=lambda r: r.rel_error)
    return dict(rows=len(rows), exact=exact, near=near, off=len(rows) - exact - near,
                worst=worst, ok=exact + near >= MIN_FIT and worst.rel_error <= MAX_REL_ERROR)


def _cell(row: Optional[ParamRow]) -> str:
    if row is None:
        return ""
    mark = {"exact": "", "near": " ≈"}.get(row.status, f" ✗ ({row.signed_error:+.1%})")
    return f"{row.ours:,} / {row.paper_m:.2f}M{mark}"


def render_zoo_markdown() -> str:
    """Markdown: the parameters of every registered model, one line per family and dataset."""
    depths = sorted(zoo.DEPTHS)
    out = ["| model | widths | classes | " + " | ".join(f"ResNet-{d}" for d in depths) + " |",
           "|---|---|---:|" + "---:|" * len(depths)]
    for family in zoo.FAMILIES:
        for dataset, info in zoo.DATASETS.items():
            counts = [count_model(zoo.model_name(family, d, dataset)) for d in depths]
            out.append(f"| `{family}resnet{{{','.join(map(str, depths))}}}_{dataset}` | "
                       f"{'/'.join(map(str, info.widths))} | {info.num_classes} | "
                       + " | ".join(f"{c:,}" for c in counts) + " |")
    return "\n".join(out)


def render_markdown(rows: Sequence[ParamRow]) -> str:
    """Markdown: every registered model's count; then per dataset, one line per paper variant with ``ours /
    paper`` per depth; then the fit summary."""
    depths = sorted(zoo.DEPTHS)
    out = ["All registered models (`timm.create_model(name)` with default kwargs), parameters:\n",
           render_zoo_markdown(), "",
           "Every count the paper prints (Tables 4, 5, 6, 8, 9, 12, 13), ours / paper; the paper truncates to "
           "0.01M.\n"]
    for dataset, info in zoo.DATASETS.items():
        ds_rows = [r for r in rows if r.dataset == dataset]
        out.append(f"**{dataset.upper()}** (widths {'/'.join(map(str, info.widths))}), parameters, ours / paper:\n")
        out.append("| paper variant | model | tables | " + " | ".join(f"ResNet-{d}" for d in depths) + " |")
        out.append("|---|---|---|" + "---:|" * len(depths))
        for variant in sorted({r.variant for r in ds_rows}, key=list(zoo.PAPER_VARIANTS).index):
            cells = {r.depth: r for r in ds_rows if r.variant == variant}
            spec = zoo.PAPER_VARIANTS[variant]
            model = f"`{spec.family}resnet*_{dataset}`" + "".join(f" {k}={v}" for k, v in sorted(spec.kwargs.items()))
            tables = ", ".join(sorted({t for r in cells.values() for t in r.tables}, key=lambda t: int(t[1:])))
            out.append(f"| {spec.label} | {model} | {tables} | "
                       + " | ".join(_cell(cells.get(d)) for d in depths) + " |")
        out.append("")
    s = fit_summary(rows)
    worst = s["worst"]
    out.append(f"{s['rows']} distinct models with a printed count: {s['exact']} exact (inside the paper's "
               f"truncation interval), {s['near']} near (≈: at most {NEAR_BELOW:,} under it), {s['off']} off (✗); "
               f"largest gap {worst.rel_error:.1%} ({worst.model} {worst.kwargs or ''}).".replace(" )", ")"))
    return "\n".join(out)


def update_file(path: Path, markdown: str, start: str = START, end: str = END) -> bool:
    """Replace the block of ``path`` between the ``start`` and ``end`` marker lines (the parameter table's by
    default) with ``markdown``, atomically; True if the file changed."""
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block to update")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{markdown}\n{end}{tail}"
    if new != text:
        atomic_write_text(path, new)
    return new != text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlan_timm.tools.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--update", type=Path, help="file with param-table markers to rewrite (e.g. README.md)")
    args = parser.parse_args(argv)
    rows = param_rows()
    markdown = render_markdown(rows)
    if args.update:
        try:
            changed = update_file(args.update, markdown)
        except (OSError, ValueError) as e:
            parser.error(str(e))
        print(f"{args.update}: {'updated' if changed else 'already up to date'}")
    else:
        print(markdown)
    return 0 if fit_summary(rows)["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
