"""Command line: ``python -m alignment train METHOD --languages ar es id ko zh --out DIR``.

METHOD is ``multilingual_sft`` (alias ``sft``), ``midalign`` or ``clo``. Any config field can be set
with ``--set field=value`` (JSON values), e.g. ``--set lora_r=16 --set learning_rate=1e-4``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set: expected field=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train an alignment adapter")
    p.add_argument("method", choices=["multilingual_sft", "sft", "midalign", "clo"])
    p.add_argument("--languages", nargs="+", default=None, help="non-English ISO 639-1 codes")
    p.add_argument("--out", required=True, help="adapter output directory")
    p.add_argument("--model", default=None, help="base model name/path (default gemma-3-270m)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any other config field")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint under OUT")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from . import config_for, train

    overrides = {"languages": args.languages, "model": args.model, "max_steps": args.max_steps,
                 "batch_size": args.batch_size, "seed": args.seed, **_parse_sets(args.set)}
    try:
        config = config_for(args.method, **overrides)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    out = train(config, args.out, resume=args.resume)
    from .adapters import read_metadata

    meta = read_metadata(out)
    print(json.dumps({"out": str(out), "steps": meta["steps"], "wall_time_s": meta["wall_time_s"],
                      "final_losses": meta["final_losses"]}, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
