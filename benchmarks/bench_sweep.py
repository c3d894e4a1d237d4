"""Layer x alpha sweep: prefix-cached vs naive (full forward per cell), side by side.

    python benchmarks/bench_sweep.py [--language ko] [--n-items 8] [--layers 9 12 15] [--alphas 0.5 1 2 4]

Both sweeps score the same extract items of fact_probe (transfer) and locale_probe (localization)
for every cell. The script prints wall and CPU times, the ratio cached/naive (target <= 0.5) and the
largest difference between the two tables' scores (must be <= 1e-5), and explains the ratio:

* ``head_share``: the share of the naive sweep spent in the LM head (the output embedding's forward,
  262k x 640 on gemma-3) and the log-softmax over its logits -- a cost per scored token and per cell that
  no layer caching removes;
* ``ideal_layer_cache_ratio``: the ratio a perfect layer cache would reach (the naive sweep minus the
  measured time of layers 0..l in every cell at layer l, free record pass and replay included);
* ``ratio_if_all_layers_free``: the ratio if every decoder layer of every cell cost nothing (the floor
  of any scheme that only caches layers).

Both come from timers around the head, the log-softmax and each decoder layer during the naive sweep
(hooks: a few microseconds per call). ``--threads 1`` (default) pins torch to one intra-op thread:
on a CPU shared with other jobs, OpenMP barriers of a 2-thread pool waiting for a descheduled thread
inflate small ops several-fold and swamp the comparison; ``--threads 0`` keeps torch's default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate.tasks import get_task  # noqa: E402
from interventions import load_model, load_tokenizer  # noqa: E402
from interventions.components import decoder_layers  # noqa: E402
from evaluate.sweep import cached_sweep, evaluate_axes, sweep  # noqa: E402
from evaluate.contrasts import en_transfer_vectors  # noqa: E402


def clocks() -> list[float]:
    return [time.perf_counter(), time.process_time()]


def since(start: list[float]) -> list[float]:
    return [now - then for now, then in zip(clocks(), start)]


def clocked(fn):
    start = clocks()
    out = fn()
    wall, cpu = since(start)
    return out, wall, cpu


class ComponentTimers:
    """Wall and CPU seconds inside the LM head + log-softmax, and inside each decoder layer."""

    def __init__(self, model):
        self.model = model
        self.layers = decoder_layers(model)
        self.head = [0.0, 0.0]  # (wall, cpu)
        self.per_layer = [[0.0, 0.0] for _ in self.layers]
        self._start: dict[int, list[float]] = {}

    def _pre(self, key):
        def hook(module, args):
            self._start[key] = clocks()
        return hook

    def _post(self, key, into):
        def hook(module, args, output):
            for k, spent in enumerate(since(self._start.pop(key))):
                into[k] += spent
        return hook

    def __enter__(self):
        head = self.model.get_output_embeddings()
        self.handles = [head.register_forward_pre_hook(self._pre(-1)),
                        head.register_forward_hook(self._post(-1, self.head))]
        for j, layer in enumerate(self.layers):
            self.handles += [layer.register_forward_pre_hook(self._pre(j)),
                             layer.register_forward_hook(self._post(j, self.per_layer[j]))]
        self._had_own = "log_softmax" in vars(torch.Tensor)
        self._log_softmax = torch.Tensor.log_softmax
        timers, original = self, self._log_softmax

        def log_softmax(tensor, *args, **kwargs):  # the scorer calls the tensor method
            start = clocks()
            out = original(tensor, *args, **kwargs)
            for k, spent in enumerate(since(start)):
                timers.head[k] += spent
            return out

        torch.Tensor.log_softmax = log_softmax
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        if self._had_own:
            torch.Tensor.log_softmax = self._log_softmax
        else:
            del torch.Tensor.log_softmax


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--language", default="ko")
    ap.add_argument("--n-items", type=int, default=8)
    ap.add_argument("--layers", type=int, nargs="+", default=[9, 12, 15])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                    help="strengths in multiples of the estimated mean difference")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, tok = load_model("gemma-3-270m"), load_tokenizer("gemma-3-270m")
    vectors = en_transfer_vectors(model, tok, args.language, n=16, progress=False)
    transfer = get_task("fact_probe").items(args.language, split="extract")[: args.n_items]
    local = [it for it in get_task("locale_probe").items(args.language, split="extract") if it.cue == "implicit"]
    local = local[: args.n_items]
    common = (model, tok, vectors, args.layers, transfer, local)
    evaluate_axes(model, tok, transfer, local)  # warm-up (allocator, tokenizer caches)
    load_before = os.getloadavg()
    with ComponentTimers(model) as timers:
        naive_rows, naive_wall, naive_cpu = clocked(lambda: sweep(*common, alphas=args.alphas, progress=False))
    cached_rows, cached_wall, cached_cpu = clocked(lambda: cached_sweep(*common, alphas=args.alphas, progress=False))
    load_after = os.getloadavg()

    keys = ("transfer_score", "localization_score")
    diff = max(abs((a[k] or 0.0) - (b[k] or 0.0)) for a, b in zip(naive_rows, cached_rows) for k in keys)
    same_cells = [(a["layer"], a["alpha"]) for a in naive_rows] == [(b["layer"], b["alpha"])
                                                                          for b in cached_rows]
    naive = torch.tensor([naive_wall, naive_cpu], dtype=torch.float64)
    per_layer = torch.tensor(timers.per_layer, dtype=torch.float64)  # [layer, (wall, cpu)] over the naive sweep
    per_pass = per_layer / (len(naive_rows) + 1)  # one pass: the unsteered baseline, then one per cell
    prefix_saved = sum(per_pass[: r["layer"] + 1].sum(0) for r in naive_rows)
    ideal = (naive - prefix_saved) / naive
    floor = (naive - per_layer.sum(0)) / naive
    head_share = torch.tensor(timers.head, dtype=torch.float64) / naive
    result = {"cells": len(naive_rows), "items": len(transfer) + len(local), "threads": torch.get_num_threads(),
              "naive_wall_s": naive_wall, "cached_wall_s": cached_wall, "naive_cpu_s": naive_cpu,
              "cached_cpu_s": cached_cpu, "ratio_wall": cached_wall / naive_wall, "ratio_cpu": cached_cpu / naive_cpu,
              "max_score_difference": diff, "same_cells": same_cells,
              "head_share_wall": float(head_share[0]), "head_share_cpu": float(head_share[1]),
              "decoder_layers_share_cpu": float(per_layer[:, 1].sum() / naive_cpu),
              "ideal_layer_cache_ratio_wall": float(ideal[0]), "ideal_layer_cache_ratio_cpu": float(ideal[1]),
              "ratio_if_all_layers_free_wall": float(floor[0]), "ratio_if_all_layers_free_cpu": float(floor[1]),
              "load_average_1min_before_after": [load_before[0], load_after[0]]}
    print(json.dumps(result, indent=2))
    print(f"cached / naive sweep: {result['ratio_wall']:.2f} wall, {result['ratio_cpu']:.2f} CPU "
          f"(target <= 0.5); max score difference {diff:.1e}")
    print(f"LM head + log-softmax: {head_share[1]:.0%} of the naive sweep's CPU time ({head_share[0]:.0%} wall); "
          f"a perfect layer cache would reach {ideal[1]:.2f} (CPU), and {floor[1]:.2f} if every decoder layer "
          f"were free; load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
