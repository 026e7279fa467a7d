"""Command-line tools of mlan-timm: training, evaluation, export / push and benchmarks.

* :mod:`mlan_timm.tools.train` (``mlan-train``), :mod:`mlan_timm.tools.eval` (``mlan-eval``),
  :mod:`mlan_timm.tools.export` (``mlan-export``, ``mlan-push``), :mod:`mlan_timm.tools.bench`
  (``mlan-bench``: ``measure`` and ``report``);
* :mod:`mlan_timm.tools.common`: what they share (model creation from a name + ``k=v`` kwargs, device and
  threads, dataset and normalisation, weight loading, evaluation, :class:`~mlan_timm.tools.common.UsageError`).

``import mlan_timm`` never imports this package (``tests/test_tools_layout.py`` checks it), so the library stays
free of CLI dependencies and start-up cost. Each tool also runs as ``python -m mlan_timm.tools.<name>``.
"""
