"""``python -m interventions validate DIR_OR_REPO [--model NAME]`` / ``info DIR_OR_REPO``.

Exit code 0 when the intervention directory is valid (for the model, when given), 2 with one
message naming the field otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import InterventionConfig, InterventionConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interventions", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("validate", "info"):
        p = sub.add_parser(name)
        p.add_argument("path", help="intervention directory or Hub repo id")
        p.add_argument("--model", default=None, help="validate against this model (name, Hub id or path)")
        p.add_argument("--revision", default=None)
    args = parser.parse_args(argv)
    try:
        model = None
        if args.model:
            from .models import load_model

            model = load_model(args.model)
        config = InterventionConfig.from_pretrained(args.path, model=model, revision=args.revision)
    except InterventionConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "info":
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    else:
        print(f"ok: {config!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
