"""lm-evaluation-harness side of benchmarks/bench_lmeval.py: ``HFLM.loglikelihood`` over requests from a JSON file.

Runs in the lm-eval virtual environment (benchmarks/lmeval_env.sh), from a working directory outside this
repository and without PYTHONPATH, so Hugging Face's ``evaluate`` package (which lm-eval imports) is not
shadowed by the project's ``evaluate/``. Imports nothing from the project.

    .venv-lmeval/bin/python benchmarks/lmeval_worker.py --model DIR --requests requests.json --out lmeval.json \
        --batch-size 16 --threads 2

``requests.json``: ``[[context, continuation], ...]``. Writes ``{"results": [[logprob, is_greedy], ...],
"encodings": [[context_ids, continuation_ids], ...], "seconds", "cpu_seconds", "load_seconds", ...}``; the
timed call excludes the model load and a warm-up call on the first ``--warmup`` requests. The encodings are
captured in a separate, untimed call (``_loglikelihood_tokens`` replaced by a recorder).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="local model folder (safetensors + tokenizer)")
    ap.add_argument("--requests", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=4, help="requests scored once before the timed call")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    with open(args.requests, encoding="utf-8") as f:
        pairs = json.load(f)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
                 for i, (c, x) in enumerate(pairs)]

    t0 = time.perf_counter()
    lm = HFLM(pretrained=args.model, backend="causal", dtype="float32", device="cpu", batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    if args.warmup:
        lm.loglikelihood(instances[: args.warmup], disable_tqdm=True)
    t0, c0 = time.perf_counter(), time.process_time()
    results = lm.loglikelihood(instances, disable_tqdm=True)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0

    captured: list = []

    def record(requests, **_):
        captured.extend(requests)
        return [(0.0, False)] * len(requests)

    lm._loglikelihood_tokens = record  # the pairs exactly as HFLM.loglikelihood encodes them
    lm.loglikelihood(instances, disable_tqdm=True)

    out = {
        "results": [[float(lp), bool(g)] for lp, g in results],
        "encodings": [[list(ctx), list(cont)] for _, ctx, cont in captured],
        "seconds": seconds, "cpu_seconds": cpu_seconds, "load_seconds": load_s,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "warmup": args.warmup,
        "max_length": lm.max_length,
        "versions": {"lm_eval": version("lm-eval"), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
