"""CLI for finding experts: ``python -m evaluate.experts find --language ko --k 100 --out DIR``.

``find`` ranks the units of the model as experts of each ``--language`` against the other FLORES languages
(one streaming pass), writes for each language an intervention directory (``set`` kind: unit indices and
values in safetensors, provenance in JSON) plus the full ranking, and, unless ``--no-eval``, reports top-1
FLORES-devtest retrieval L->en and en->L per layer before and after forcing the experts, as after/before ratios
with bootstrap CIs.

``report`` runs the sweep of the issue: languages x k, retrieval per layer, side effects (script share of
generated continuations, held-out perplexity), a plot per language, into ``--out`` (e.g. ``runs/experts``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.experts", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="gemma-3-270m", help="model name, Hub id or path")
    common.add_argument("--n", type=int, default=200, help="FLORES dev sentences per language for finding")
    common.add_argument("--contrast", nargs="+", default=["en", "ar", "es", "id", "ko", "zh"],
                        help="languages of the positive/negative pool")
    common.add_argument("--components", nargs="+", default=["mlp_hidden"],
                        choices=["mlp_hidden", "attention_heads"],
                        help="unit components: MLP neurons and/or concatenated attention head outputs")
    common.add_argument("--bins", type=int, default=512, help="histogram bins per unit (AP/median accuracy)")
    common.add_argument("--batch-size", type=int, default=16)
    common.add_argument("--retrieval-n", type=int, default=200, help="FLORES devtest sentences for retrieval")
    common.add_argument("--apply-to", nargs="+", choices=["source", "both"], default=["both"],
                        help="force experts when encoding only the L sentences (source) and/or L and en (both); "
                             "both modes share the forward passes")
    common.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("find", parents=[common], help="find experts, save intervention directories")
    f.add_argument("--language", nargs="+", required=True, help="target language(s), ISO 639-1")
    f.add_argument("--k", type=int, default=100, help="number of experts to force")
    f.add_argument("--out", required=True, help="output directory (one subdirectory per language)")
    f.add_argument("--no-eval", action="store_true", help="skip the retrieval before/after report")
    r = sub.add_parser("report", parents=[common], help="languages x k sweep with side effects and plots")
    r.add_argument("--languages", nargs="+", default=["ar", "es", "id", "ko", "zh"])
    r.add_argument("--ks", nargs="+", type=int, default=[50, 200, 1000])
    r.add_argument("--side-effect-k", type=int, default=None, help="k for side effects (default: largest)")
    r.add_argument("--n-prompts", type=int, default=30)
    r.add_argument("--new-tokens", type=int, default=20)
    r.add_argument("--n-perplexity", type=int, default=50)
    r.add_argument("--out", default="runs/experts")
    r.add_argument("--rankings", default=None,
                   help="reuse rankings saved by an earlier run (DIR/<language>/ranking) instead of finding")
    return p


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad flags before any model is loaded or anything is written (exit 2, like argparse)."""
    from evaluate.loaders import FLORES_CODES

    positive = ["n", "batch_size", "retrieval_n"] + (["k"] if args.command == "find" else
                                                     ["n_prompts", "new_tokens", "n_perplexity"])
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    if args.bins < 2:
        parser.error(f"--bins: expected an integer >= 2, got {args.bins}")
    if not 0 <= args.seed < 2 ** 63:
        parser.error(f"--seed: expected an integer in [0, 2**63), got {args.seed}")
    if args.command == "report":
        if any(k < 1 for k in args.ks):
            parser.error(f"--ks: expected integers >= 1, got {args.ks}")
        if args.side_effect_k is not None and args.side_effect_k < 1:
            parser.error(f"--side-effect-k: expected an integer >= 1, got {args.side_effect_k}")
    targets = args.language if args.command == "find" else args.languages
    for flag, langs in (("--language" if args.command == "find" else "--languages", targets),
                        ("--contrast", args.contrast)):
        unknown = [lang for lang in langs if lang not in FLORES_CODES]
        if unknown:
            parser.error(f"{flag}: {unknown} not bundled with FLORES-200; expected some of {sorted(FLORES_CODES)}")
    existing = next((d for d in [Path(args.out), *Path(args.out).parents] if d.exists()), None)
    if existing is not None and not existing.is_dir():
        parser.error(f"--out: {existing} exists and is not a directory")
    if getattr(args, "rankings", None):
        for lang in targets:
            if not (Path(args.rankings) / lang / "ranking").is_dir():
                parser.error(f"--rankings: no {Path(args.rankings) / lang / 'ranking'} (written by an earlier run)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    import torch

    from evaluate import experts_eval
    from evaluate.contrasts import flores_experts
    from interventions.experts import ExpertRanking, unit_widths
    from interventions.models import load_model, load_tokenizer

    torch.manual_seed(args.seed)
    targets = args.language if args.command == "find" else args.languages
    contrast = list(dict.fromkeys(list(args.contrast) + [t for t in targets]))
    ks = [args.k] if args.command == "find" else sorted(set(args.ks))
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    n_units = sum(unit_widths(model, args.components))
    if max(ks) > n_units:  # checked before finding; nothing is written yet
        print(f"error: k: {max(ks)} experts asked, the model has {n_units} units in {args.components}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.time()
    if getattr(args, "rankings", None):
        rankings = {lang: ExpertRanking.load(Path(args.rankings) / lang / "ranking") for lang in targets}
        find_s = 0.0
    else:
        rankings = flores_experts(model, tokenizer, contrast, targets=targets, n=args.n, k_max=max(ks),
                                  components=args.components, bins=args.bins, batch_size=args.batch_size)
        find_s = time.time() - t0
        print(f"found experts for {targets} in {find_s:.0f} s ({args.n} sentences x {len(contrast)} languages)")
    out.mkdir(parents=True, exist_ok=True)
    for lang, ranking in rankings.items():
        ranking.save(out / lang / "ranking")
        if args.command == "find":
            config = ranking.config(model, args.k)
            config.save_pretrained(out / lang / f"experts_k{args.k}", model=model)
            print(f"{lang}: wrote {out / lang / f'experts_k{args.k}'} "
                  f"(top-{args.k} AP {ranking.average_precision[ranking.order[0]]:.3f}.."
                  f"{ranking.average_precision[ranking.order[args.k - 1]]:.3f})")
    if args.command == "find":
        if args.no_eval:
            return 0
        rows = []
        en_base = experts_eval.english_representations(model, tokenizer, args.retrieval_n)
        for lang, ranking in rankings.items():
            rows += experts_eval.retrieval_sweep(model, tokenizer, ranking, ks, n=args.retrieval_n,
                                                 apply_to=args.apply_to, seed=args.seed, en_base=en_base)
        experts_eval.write_rows(rows, out / "retrieval.json")
        print(experts_eval.format_ratios(rows))
        return 0
    experts_eval.run_report(model, tokenizer, rankings, ks, out, retrieval_n=args.retrieval_n,
                            apply_to=args.apply_to, side_effect_k=args.side_effect_k or max(ks),
                            n_prompts=args.n_prompts, new_tokens=args.new_tokens,
                            n_perplexity=args.n_perplexity, seed=args.seed,
                            meta={"argv": sys.argv, "find_seconds": find_s, **vars(args)})
    print(f"wrote {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
