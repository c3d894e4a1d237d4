"""Benchmark: collecting every layer's block_output vs one plain forward over the same prompts.

    python benchmarks/bench_collect.py [--n 64] [--batch-size 16] [--repeats 5] [--reduce mean]

Side by side in one process, interleaved repeats, median wall time. Baselines: the same forward of
the decoder stack (``model.model(...)``: what collection runs, no LM head) and the full
``model(...)`` (with the 262k-vocabulary logits). Target: collect / stack forward <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluate.loaders import load_flores  # noqa: E402
from interventions.models import load_model, load_tokenizer  # noqa: E402
from interventions.vectors import collect_activations, decoder_stack, tokenize  # noqa: E402


def plain(model, tokenizer, texts, batch_size, full: bool):
    module = model if full else decoder_stack(model)
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            b = tokenize(tokenizer, texts[s:s + batch_size])
            attn = b["attention_mask"]
            position_ids = (attn.long().cumsum(1) - 1).clamp(min=0)
            module(input_ids=b["input_ids"], attention_mask=attn, position_ids=position_ids, use_cache=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reduce", default="mean", choices=["mean", "last"])
    ap.add_argument("--languages", default="en,ko,zh,ar")
    ap.add_argument("--out", default=None, help="write the timings as JSON here")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    langs = args.languages.split(",")
    texts = [load_flores(langs[i % len(langs)], "dev")[i] for i in range(args.n)]

    runs = {
        "collect_all_layers": lambda: collect_activations(model, tokenizer, texts, reduce=args.reduce,
                                                          batch_size=args.batch_size, progress=False),
        "stack_forward": lambda: plain(model, tokenizer, texts, args.batch_size, full=False),
        "full_forward": lambda: plain(model, tokenizer, texts, args.batch_size, full=True),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model, "n": args.n, "batch_size": args.batch_size, "repeats": args.repeats,
        "reduce": args.reduce, "threads": torch.get_num_threads(), "median_s": med, "all_s": times,
        "ratio_vs_stack_forward": med["collect_all_layers"] / med["stack_forward"],
        "ratio_vs_full_forward": med["collect_all_layers"] / med["full_forward"],
    }
    for k, v in med.items():
        print(f"{k:>20}: {v:.3f} s (median of {args.repeats})")
    print(f"collect / stack forward (model.model): {result['ratio_vs_stack_forward']:.3f}  (target <= 1.15)")
    print(f"collect / full forward  (model(...)):  {result['ratio_vs_full_forward']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
