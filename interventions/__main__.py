"""``python -m interventions validate DIR_OR_REPO [--model NAME]`` / ``info DIR_OR_REPO`` /
``export-llamacpp DIR --out OUT.gguf [--adapter ADAPTER_DIR]`` (see :mod:`interventions.llamacpp`).

Exit code 0 when the intervention directory is valid (for the model, when given), 2 with one
message naming the field otherwise. Names from the directory are printed with control characters
and ANSI escapes escaped (``\\x1b``), so a crafted file cannot rewrite the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import InterventionConfig, InterventionConfigError
from .fsutil import printable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interventions", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("validate", "info"):
        p = sub.add_parser(name)
        p.add_argument("path", help="intervention directory or Hub repo id")
        p.add_argument("--model", default=None, help="validate against this model (name, Hub id or path)")
        p.add_argument("--revision", default=None)
    from .llamacpp import add_parser as add_export_llamacpp

    add_export_llamacpp(sub)
    args = parser.parse_args(argv)
    if args.command == "export-llamacpp":
        return args.run(args)
    model = None
    try:
        if args.model:
            from .models import load_model

            try:
                model = load_model(args.model)
            except (OSError, ValueError) as err:  # not a model name, path or cached Hub id
                raise InterventionConfigError("--model", f"cannot load {args.model!r}: {type(err).__name__}: "
                                              f"{err}") from None
        config = InterventionConfig.from_pretrained(args.path, model=model, revision=args.revision)
    except InterventionConfigError as err:
        print(f"error: {printable(err)}", file=sys.stderr)
        return 2
    if args.command == "info":  # ensure_ascii: every non-ASCII or control character is a \\u escape
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True, ensure_ascii=True))
    else:
        print(f"ok: {printable(repr(config))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
