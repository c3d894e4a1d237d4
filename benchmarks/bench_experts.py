"""Streaming histogram AP vs the exact (keep-every-response) baseline: memory, time and AP error.

    python benchmarks/bench_experts.py --units 2048 --n 1200 --groups 6 --bins 512

The baseline keeps the full ``[n, units]`` response matrix and computes each unit's AP by sorting
(``average_precision_exact``); the streaming accumulator keeps ``groups x units x (bins + 2)`` counts.
Synthetic responses: Gaussian units, a random subset shifted for the positive group, a few skewed ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from interventions.experts import StreamingAP, average_precision_exact  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--units", type=int, default=2048)
    p.add_argument("--n", type=int, default=1200)
    p.add_argument("--groups", type=int, default=6)
    p.add_argument("--bins", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--exact-units", type=int, default=200, help="units to check against the exact AP")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    g = rng.integers(0, args.groups, args.n)
    x = rng.normal(0, 1, (args.n, args.units)).astype(np.float32)
    x += (g == 1)[:, None] * rng.normal(0, 1, args.units).astype(np.float32)[None] * (rng.random(args.units) < 0.2)
    x[:, :10] = rng.exponential(1, (args.n, 10))

    acc = StreamingAP(args.groups, bins=args.bins)
    t0 = time.perf_counter()
    for s in range(0, args.n, args.batch):
        acc.update(torch.from_numpy(x[s:s + args.batch]), g[s:s + args.batch])
    t_update = time.perf_counter() - t0
    t0 = time.perf_counter()
    ap = acc.average_precision(1).numpy()
    t_ap = time.perf_counter() - t0

    check = min(args.exact_units, args.units)
    t0 = time.perf_counter()
    exact = np.array([average_precision_exact(x[:, u], g == 1) for u in range(check)])
    t_exact = (time.perf_counter() - t0) * args.units / check
    err = np.abs(ap[:check] - exact)
    result = {
        **vars(args),
        "streaming_bytes": acc.nbytes, "full_matrix_bytes": x.nbytes,
        "streaming_update_s": t_update, "streaming_ap_s": t_ap, "exact_ap_s_extrapolated": t_exact,
        "ap_abs_error_mean": float(err.mean()), "ap_abs_error_max": float(err.max()),
        "top10_overlap": len(set(np.argsort(-ap[:check])[:10]) & set(np.argsort(-exact)[:10])),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
