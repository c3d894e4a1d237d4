"""Scoring engine vs the naive loop on the real gemma-3-270m.

The naive loop runs one full-logit forward per option at batch size 1 (``model(prompt + option).logits``,
262k-vocabulary logits at every position); the engine (``evaluate.scoring.score_items``) encodes each prompt
once, expands its KV cache over the options and applies the LM head only where a token is scored.

    python benchmarks/bench_scoring.py --task global_mmlu_cloze --language es --n 20
    python benchmarks/bench_scoring.py --task global_mmlu --language ko --n 20     # letter scoring

Prints both times (wall clock, and CPU time of the process: the fair measure on a shared machine, where
wall-clock time depends on what else runs), the speedup ratios, whether every choice is identical and the largest |log-prob| difference.
Both runs see the same tokenisation (``evaluate.scoring.encode_item``), so choices must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--task", default="global_mmlu_cloze")
    ap.add_argument("--language", default="es")
    ap.add_argument("--n", type=int, default=20, help="number of questions")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from evaluate.scoring import encode_item, naive_score_items, score_items
    from evaluate.tasks import get_task
    from interventions.models import load_model, load_tokenizer

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    items = get_task(args.task).items(args.language, split="all")[: args.n]
    if not items:
        raise SystemExit(f"no items for task {args.task!r} language {args.language!r}")
    n_options = sum(len(it.candidates) for it in items)
    prompt_tokens = sum(len(encode_item(tokenizer, it)[0]) for it in items)

    score_items(model, tokenizer, items[:2], progress=False)  # warm-up (allocator, kernels)
    t0, c0 = time.perf_counter(), time.process_time()
    fast = score_items(model, tokenizer, items, batch_size=args.batch_size, progress=True)
    t_engine, c_engine = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    slow = naive_score_items(model, tokenizer, items, progress=True)
    t_naive, c_naive = time.perf_counter() - t0, time.process_time() - c0

    same = [f.choice == s.choice for f, s in zip(fast, slow)]
    max_diff = max(abs(a - b) for f, s in zip(fast, slow) for a, b in zip(f.logprob, s.logprob))
    result = {
        "model": args.model, "task": args.task, "language": args.language, "n_questions": len(items),
        "n_options": n_options, "mean_prompt_tokens": prompt_tokens / len(items), "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "naive_s": round(t_naive, 3), "engine_s": round(t_engine, 3),
        "naive_s_per_question": round(t_naive / len(items), 3),
        "engine_s_per_question": round(t_engine / len(items), 4),
        "speedup": round(t_naive / t_engine, 2),
        "naive_cpu_s": round(c_naive, 3), "engine_cpu_s": round(c_engine, 3),
        "speedup_cpu_time": round(c_naive / c_engine, 2), "identical_choices": all(same), "n_identical": sum(same),
        "max_abs_logprob_diff": max_diff,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
