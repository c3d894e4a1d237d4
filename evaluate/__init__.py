"""Evaluation: bundled benchmarks, tasks, batched scoring, statistics, plots and reports."""
