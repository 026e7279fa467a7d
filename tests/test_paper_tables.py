"""mlan_timm.paper_tables against the paper's tables as shared with the project (``../shared/paper/tables.tsv``).

The transcription is what every paper column of the README, docs/benchmarks.md and the model cards reads, so it
is checked record by record against the shared TSV where that file is present (the development machines), and
for internal consistency everywhere.
"""
import csv
import os
from collections import defaultdict

import pytest

from mlan_timm import paper_tables as pt
from mlan_timm.zoo import PAPER_VARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSV = os.path.join(ROOT, "..", "shared", "paper", "tables.tsv")


def _tsv_records():
    if not os.path.isfile(TSV):
        pytest.skip(f"the paper's tables are not shared here ({os.path.normpath(TSV)} is absent)")
    with open(TSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [pt.PaperRecord(r["table"], r["dataset"], r["variant"], int(r["depth"]), r["metric"], float(r["value"]))
            for r in rows]


def test_records_equal_the_shared_tsv_in_order():
    expected = _tsv_records()
    assert len(pt.RECORDS) == len(expected)
    for ours, theirs in zip(pt.RECORDS, expected):
        assert ours == theirs


def test_fields_are_known_metrics_variants_and_depths():
    for r in pt.RECORDS:
        assert r.metric in pt.METRICS, r
        assert r.variant in PAPER_VARIANTS, r
        assert r.dataset in ("cifar10", "cifar100"), r
        assert r.depth in (14, 20, 26, 32), r


def test_one_model_has_one_value_wherever_the_paper_prints_it():
    # Tables 2-7 (9-14) repeat the default MLAN under several row labels (e.g. 'mlan_sma_plus', 'multi_level',
    # 'sma', 'fusion_plus', 'multilevel_sma'); variants with one zoo config are one model, so one number each.
    values = defaultdict(set)
    labels = defaultdict(set)
    for r in pt.RECORDS:
        key = (r.dataset, PAPER_VARIANTS[r.variant].config, r.depth, r.metric)
        values[key].add(r.value)
        labels[key].add((r.table, r.variant))
    repeated = {k for k, v in labels.items() if len(v) > 1}
    assert any(k[3] == "top1" and len(labels[k]) >= 5 for k in repeated), "MLAN's accuracy repeats in Tables 2-7"
    assert {k: v for k, v in values.items() if len(v) > 1} == {}


def test_paper_value_finds_a_record_and_returns_none_for_what_the_paper_does_not_print():
    first = pt.RECORDS[0]
    assert pt.paper_value(first.dataset, first.variant, first.depth, first.metric) == first.value
    assert pt.paper_value("cifar10", "mlan_sma_plus", 20, "top1") == 90.23    # Table 2, MLAN-20
    # The single-level variant has accuracies (Tables 3/11) but no printed parameter counts.
    assert pt.records(variant="single_level", metric="top1")
    assert pt.records(variant="single_level", metric="params_M") == []
    assert pt.paper_value("cifar10", "single_level", 20, "params_M") is None


def test_params_interval_is_the_truncation_interval():
    # 278,324 parameters print as 0.27 (truncated, not rounded): the interval is [0.27M, 0.28M).
    low, high = pt.params_interval(0.27)
    assert (low, high) == (270_000, 280_000)
    assert low <= 278_324 < high
    assert not (low <= 280_000 < high)
