"""Layer x coefficient sweep: prefix-cached vs naive (full forward per cell), side by side.

    python benchmarks/bench_sweep.py [--language ko] [--n-items 8] [--layers 9 12 15] [--coefficients 2 4 8 16]

Both sweeps score the same extract items of fact_probe (transfer) and locale_probe (localization)
for every cell; the script prints both wall and CPU times, the ratio cached/naive (target <= 0.5)
and the largest difference between the two tables' scores (must be <= 1e-5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate.tasks import get_task  # noqa: E402
from interventions import load_model, load_tokenizer  # noqa: E402
from interventions.sweep import cached_sweep, sweep  # noqa: E402
from interventions.vectors import en_transfer_vectors  # noqa: E402


def clocked(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--language", default="ko")
    ap.add_argument("--n-items", type=int, default=8)
    ap.add_argument("--layers", type=int, nargs="+", default=[9, 12, 15])
    ap.add_argument("--coefficients", type=float, nargs="+", default=[2.0, 4.0, 8.0, 16.0])
    args = ap.parse_args()
    model, tok = load_model("gemma-3-270m"), load_tokenizer("gemma-3-270m")
    vectors = en_transfer_vectors(model, tok, args.language, n=16, progress=False)
    transfer = get_task("fact_probe").items(args.language, split="extract")[: args.n_items]
    local = [it for it in get_task("locale_probe").items(args.language, split="extract") if it.cue == "implicit"]
    local = local[: args.n_items]
    common = (model, tok, vectors, args.layers, args.coefficients, transfer, local)
    cached_sweep(*common, progress=False)  # warm-up (allocator, tokenizer caches)
    naive_rows, naive_wall, naive_cpu = clocked(lambda: sweep(*common, progress=False))
    cached_rows, cached_wall, cached_cpu = clocked(lambda: cached_sweep(*common, progress=False))
    keys = ("transfer_score", "localization_score")
    diff = max(abs((a[k] or 0.0) - (b[k] or 0.0)) for a, b in zip(naive_rows, cached_rows) for k in keys)
    same_cells = [(a["layer"], a["coefficient"]) for a in naive_rows] == [(b["layer"], b["coefficient"])
                                                                          for b in cached_rows]
    result = {"cells": len(naive_rows), "items": len(transfer) + len(local), "naive_wall_s": naive_wall,
              "cached_wall_s": cached_wall, "naive_cpu_s": naive_cpu, "cached_cpu_s": cached_cpu,
              "ratio_wall": cached_wall / naive_wall, "ratio_cpu": cached_cpu / naive_cpu,
              "max_score_difference": diff, "same_cells": same_cells}
    print(json.dumps(result, indent=2))
    print(f"cached / naive sweep: {result['ratio_wall']:.2f} wall, {result['ratio_cpu']:.2f} CPU "
          f"(target <= 0.5); max score difference {diff:.1e}")


if __name__ == "__main__":
    main()
