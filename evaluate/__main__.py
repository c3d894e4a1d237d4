"""Evaluate a model on the transfer-localization plane.

    python -m evaluate --model gemma-3-270m --tasks global_mmlu blend locale_probe fact_probe \\
        --languages ar es id ko zh --out runs/base

Variants: ``base`` (the model), plus ``adapter`` when ``--adapter DIR`` is given (a PEFT adapter on the same
model), plus ``<previous>+steer`` when ``--interventions DIR`` is given (an intervention directory applied
with ``interventions.steer`` on top of the last variant). Writes results.json, results.csv,
predictions.jsonl, plane.png, tasks.png and report.md into ``--out``.

Exit codes: 0 done; 2 a bad flag or flag value (one line naming the flag, before any model is loaded).
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


class UsageError(ValueError):
    """A flag's value is unusable: one line on stderr, exit 2, before any model is loaded."""


def _hub_id_or_dir(value: str, flag: str, must_contain: str) -> None:
    path = Path(os.path.expanduser(value))
    if path.is_dir():
        if not (path / must_contain).is_file():
            raise UsageError(f"{flag}: {value} has no {must_contain}; expected a directory written by "
                             f"save_pretrained")
        return
    if path.exists():
        raise UsageError(f"{flag}: {value} is a file; expected a directory or a Hub id (owner/name)")
    if value.startswith(("/", "./", "../", "~", ".")) or value.count("/") != 1:
        raise UsageError(f"{flag}: no such directory: {value}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as err:
        raise UsageError(f"{flag}: {value!r} is neither a directory nor a valid Hub id ({err})") from None


def check_args(args) -> None:
    """Every flag value the run would refuse later, refused now (:class:`UsageError`)."""
    from .loaders import FLORES_CODES
    from .tasks import get_task, list_tasks

    for flag, value, least in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                               ("--n-boot", args.n_boot, 1), ("--threads", args.threads, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag}: expected an integer >= {least}, got {value}")
    if args.seed < 0 or args.seed >= 2 ** 32:
        raise UsageError(f"--seed: expected an integer in [0, 2**32), got {args.seed}")
    for flag, values in (("--tasks", args.tasks), ("--languages", args.languages)):
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise UsageError(f"{flag}: duplicate entries {duplicates}")
    unknown = [t for t in args.tasks if t not in list_tasks()]
    if unknown:
        raise UsageError(f"--tasks: unknown {unknown}; registered: {list_tasks()}")
    unknown = [x for x in args.languages if x not in FLORES_CODES]
    if unknown:
        raise UsageError(f"--languages: unknown {unknown}; expected ISO 639-1 codes among {sorted(FLORES_CODES)}")
    for name in args.tasks:
        served = tuple(get_task(name, seed=args.seed).languages)
        lacking = [x for x in args.languages if served and x not in served]
        if lacking:
            raise UsageError(f"--languages: task {name} has no items in {lacking} (it serves {list(served)})")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: expected a directory, got an existing file: {args.out}")
    if args.adapter:
        _hub_id_or_dir(args.adapter, "--adapter", "adapter_config.json")
    if args.interventions:
        _hub_id_or_dir(args.interventions, "--interventions", "intervention_config.json")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # unknown flags / non-integers: argparse, exit 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        check_args(args)
        from interventions.models import parse_dtype

        try:
            parse_dtype(args.dtype)
        except ValueError as err:
            raise UsageError(f"--dtype: {str(err).split(': ', 1)[-1]}") from None
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from interventions.models import load_model, load_tokenizer

    from .plane import Variant, evaluate_plane

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
