"""Evaluate a model on the transfer-localization plane.

    python -m evaluate --model gemma-3-270m --tasks global_mmlu blend locale_probe fact_probe \\
        --languages ar es id ko zh --out runs/base

Variants: ``base`` (the model), plus ``adapter`` when ``--adapter DIR`` is given (a PEFT adapter on the same
model), plus ``<previous>+steer`` when ``--interventions DIR`` is given (an intervention directory applied
with ``interventions.steer`` on top of the last variant). Writes results.json, results.csv,
predictions.jsonl, plane.png, tasks.png and report.md into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_TASKS = ("global_mmlu", "blend", "locale_probe", "fact_probe")
DEFAULT_LANGUAGES = ("ar", "es", "id", "ko", "zh")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="embedded name, Hub id or local path")
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    ap.add_argument("--languages", nargs="+", default=list(DEFAULT_LANGUAGES))
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--split", default="test", choices=("test", "extract", "all"))
    ap.add_argument("--limit", type=int, default=None, help="at most N items per task/language/cue (quick runs)")
    ap.add_argument("--adapter", default=None, help="PEFT adapter directory / Hub id -> variant 'adapter'")
    ap.add_argument("--interventions", default=None, help="intervention directory -> variant '<last>+steer'")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit: expected a positive integer")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from interventions.models import load_model, load_tokenizer

    from .plane import Variant, evaluate_plane
    from .tasks import list_tasks

    unknown = [t for t in args.tasks if t not in list_tasks()]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; registered: {list_tasks()}")
    model = load_model(args.model, dtype=args.dtype)
    tokenizer = load_tokenizer(args.model)
    variants = [Variant("base", model)]
    if args.adapter:
        from peft import PeftModel

        variants.append(Variant("adapter", PeftModel.from_pretrained(load_model(args.model, dtype=args.dtype),
                                                                     args.adapter).eval()))
    if args.interventions:
        from interventions import InterventionConfig

        last = variants[-1]
        variants.append(Variant(f"{last.name}+steer", last.model, InterventionConfig.from_pretrained(args.interventions)))
    results = evaluate_plane(variants, tokenizer, args.tasks, args.languages, split=args.split, out_dir=args.out,
                             seed=args.seed, n_boot=args.n_boot, batch_size=args.batch_size, limit=args.limit,
                             progress=not args.quiet,
                             config={"model": args.model, "adapter": args.adapter,
                                     "interventions": args.interventions, "dtype": args.dtype,
                                     "command": " ".join([Path(sys.executable).name, "-m", "evaluate",
                                                          *(argv if argv is not None else sys.argv[1:])])})
    print(f"wrote {args.out}/report.md ({results['timings_s']['total']} s)")
    for r in results["plane"]:
        if r["language"] == "mean":
            print(f"  {r['variant']:>12} {r['score']:>19} {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                  f"above chance: {r['above_chance']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
