"""mlan-bench: parameters, MACs, latency, throughput and train-step time of mlan_timm models.

* :mod:`.measure`: model specs, the paper's grids, timing, profiler, provenance;
* :mod:`.report`: Markdown from measured reports, with the paper's numbers beside ours;
* :mod:`.cli`: the ``mlan-bench`` command (``python -m mlan_timm.tools.bench``).
"""
