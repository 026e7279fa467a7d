"""What the mlan-* tools do to a CPU process first (mlan_timm.tools.common.tune_cpu): subnormals flushed, large
allocations kept in the glibc heap; and that benchmarks say so."""
import sys

import pytest
import torch

from mlan_timm.tools import common
from mlan_timm.tools.bench.measure import machine_line


class _FakeLibc:
    def __init__(self, results):
        self.results, self.calls = list(results), []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.results.pop(0)


def _fake_cdll(monkeypatch, results):
    fake = _FakeLibc(results)
    monkeypatch.setattr(common.ctypes, "CDLL", lambda name: fake)
    monkeypatch.setattr(common, "_cpu_heap_tuned", False)
    return fake


def test_heap_settings_go_mmap_threshold_first(monkeypatch):
    fake = _fake_cdll(monkeypatch, [1, 1, 1])
    assert common.keep_cpu_memory_in_heap() and common.cpu_heap_tuned()
    assert fake.calls == [(common.M_MMAP_THRESHOLD, 1 << 30), (common.M_TRIM_THRESHOLD, 1 << 30),
                          (common.M_TOP_PAD, 1 << 26)]


def test_a_refused_mmap_threshold_changes_nothing_else(monkeypatch):
    """A raised trim threshold alone would pin the mmap threshold at 128 KiB (every activation mmap'ed)."""
    fake = _fake_cdll(monkeypatch, [0])
    assert not common.keep_cpu_memory_in_heap() and not common.cpu_heap_tuned()
    assert fake.calls == [(common.M_MMAP_THRESHOLD, 1 << 30)]


def test_no_mallopt_is_not_an_error(monkeypatch):
    def no_libc(name):
        raise OSError("no C library")
    monkeypatch.setattr(common.ctypes, "CDLL", no_libc)
    monkeypatch.setattr(common, "_cpu_heap_tuned", False)
    assert common.keep_cpu_memory_in_heap() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_applies_on_glibc_and_the_machine_line_records_it():
    assert common.keep_cpu_memory_in_heap()
    assert "glibc mmap/trim thresholds 1 GiB" in machine_line(["cpu"])
    assert "glibc" not in machine_line(["cuda"])


def test_resolve_device_tunes_the_cpu_process(monkeypatch):
    seen = []
    monkeypatch.setattr(common, "flush_denormals", lambda: seen.append("denormals") or True)
    monkeypatch.setattr(common, "keep_cpu_memory_in_heap", lambda: seen.append("heap") or True)
    assert common.resolve_device("cpu") == torch.device("cpu")
    assert seen == ["denormals", "heap"]
