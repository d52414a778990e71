"""Benchmarks: the pipeline on real exports and renamed copies (:mod:`.runner`); concurrent cached
reads during a reload (:mod:`.reads`)."""

from etl.bench.runner import bench, find_real_export, run_bench

__all__ = ["bench", "find_real_export", "run_bench"]
