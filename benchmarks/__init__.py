"""Quality and speed benchmarks (issue 7). Scripts, not library code: run them from the repository root.

``python benchmarks/quality.py``, ``python benchmarks/speed.py`` write JSON to ``benchmarks/out/``;
``python benchmarks/report.py`` renders ``benchmarks/RESULTS.md`` from those files. See ``benchmarks/README.md``.
"""
