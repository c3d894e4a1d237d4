"""CLI for finding experts: ``python -m evaluate.experts find --language ko --k 100 --out DIR``.

``find`` ranks the units of the model as experts of each ``--language`` against the other FLORES languages
(one streaming pass), writes for each language an intervention directory (``set`` kind: unit indices and
values in safetensors, provenance in JSON) for the experts and each ``--controls`` set, plus the full ranking,
and, unless ``--no-eval``, reports top-1 FLORES-devtest retrieval L->en and en->L per layer before and after
forcing each set, as after/before ratios with bootstrap CIs.

``report`` runs the sweep of issue 16: languages x pools x (experts + controls) x k, retrieval per layer, side
effects (script share of generated continuations, held-out perplexity) at ``--side-effect-ks``, the pre-registered
tests (:mod:`evaluate.experts_verdict`), plots, into ``--out`` (e.g. ``runs/experts``). ``--dry-run`` prints the
forward passes it needs and stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

SWEEP_KS = [5, 10, 20, 50]


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
    common.add_argument("--per-component", action="store_true",
                        help="rank and force each component's units separately (one finding pass); default: "
                             "the components' units ranked together")
    common.add_argument("--controls", nargs="*", default=[], choices=["random", "variance"],
                        help="matched control sets forced like the experts: random units, or the non-expert "
                             "units of highest between-language variance (same layers and count)")
    common.add_argument("--bins", type=int, default=512, help="histogram bins per unit (AP/median accuracy)")
    common.add_argument("--batch-size", type=int, default=16)
    common.add_argument("--retrieval-n", type=int, default=200, help="FLORES devtest sentences for retrieval")
    common.add_argument("--apply-to", nargs="+", choices=["source", "both"], default=["source", "both"],
                        help="force the sets when encoding only the L sentences (source) and/or L and en (both); "
                             "both modes share the forward passes")
    common.add_argument("--seed", type=int, default=0, help="seed of the random controls and the bootstraps")
    f = sub.add_parser("find", parents=[common], help="find experts, save intervention directories")
    f.add_argument("--language", nargs="+", required=True, help="target language(s), ISO 639-1")
    f.add_argument("--k", type=int, default=100, help="number of experts to force")
    f.add_argument("--out", required=True, help="output directory (one subdirectory per language)")
    f.add_argument("--no-eval", action="store_true", help="skip the retrieval before/after report")
    r = sub.add_parser("report", parents=[common], help="the controlled sweep: retrieval, side effects, tests")
    r.add_argument("--languages", nargs="+", default=["ar", "es", "id", "ko", "zh"])
    r.add_argument("--ks", nargs="+", type=int, default=SWEEP_KS)
    r.add_argument("--side-effect-ks", "--side-effect-k", nargs="*", type=int, default=None,
                   help="ks at which side effects are measured for every set (default: every k; none: no side "
                        "effects)")
    r.add_argument("--n-prompts", type=int, default=30)
    r.add_argument("--new-tokens", type=int, default=20)
    r.add_argument("--n-perplexity", type=int, default=50)
    r.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples of the pre-registered tests")
    r.add_argument("--out", default="runs/experts")
    r.add_argument("--rankings", default=None,
                   help="reuse rankings saved by an earlier run (DIR/<language>/ranking) instead of finding")
    r.add_argument("--dry-run", action="store_true", help="print the forward passes the sweep needs and stop")
    return p


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad flags before any model is loaded or anything is written (exit 2, like argparse)."""
    from evaluate.loaders import FLORES_CODES

    positive = ["n", "batch_size", "retrieval_n"] + (["k"] if args.command == "find" else
                                                     ["n_prompts", "new_tokens", "n_perplexity", "n_boot"])
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    if args.bins < 2:
        parser.error(f"--bins: expected an integer >= 2, got {args.bins}")
    if args.retrieval_n > 500:
        parser.error(f"--retrieval-n: expected at most 500 devtest sentences, got {args.retrieval_n}")
    if not 0 <= args.seed < 2 ** 63:
        parser.error(f"--seed: expected an integer in [0, 2**63), got {args.seed}")
    for flag, values in (("--components", args.components), ("--controls", args.controls)):
        if len(set(values)) != len(values):
            parser.error(f"{flag}: expected no duplicates, got {values}")
    if args.command == "report":
        if any(k < 1 for k in args.ks):
            parser.error(f"--ks: expected integers >= 1, got {args.ks}")
        stray = [k for k in args.side_effect_ks or [] if k not in args.ks]
        if stray:
            parser.error(f"--side-effect-ks: {stray} not among --ks {args.ks}")
    targets = args.language if args.command == "find" else args.languages
    target_flag = "--language" if args.command == "find" else "--languages"
    for flag, langs in ((target_flag, targets), ("--contrast", args.contrast)):
        unknown = [lang for lang in langs if lang not in FLORES_CODES]
        if unknown:
            parser.error(f"{flag}: {unknown} not bundled with FLORES-200; expected some of {sorted(FLORES_CODES)}")
    if "en" in targets:
        parser.error(f"{target_flag}: expected languages other than 'en' (the retrieval pivot), got {targets}")
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
    targets = args.language if args.command == "find" else args.languages
    contrast = list(dict.fromkeys(list(args.contrast) + list(targets)))
    ks = [args.k] if args.command == "find" else sorted(set(args.ks))
    from evaluate.experts_eval import side_effect_ks

    side_ks = [] if args.command == "find" else side_effect_ks(args.side_effect_ks, ks)
    if getattr(args, "dry_run", False):
        from evaluate.experts_eval import planned_passes

        print(json.dumps(planned_passes(
            len(targets), len(args.components) if args.per_component else 1, args.controls, ks, args.apply_to,
            args.retrieval_n, 0 if args.rankings else args.n, len(contrast), side_ks, args.n_perplexity,
            args.n_prompts, args.new_tokens), indent=1))
        return 0
    import torch

    from evaluate import experts_report
    from evaluate.contrasts import flores_experts
    from evaluate.experts_eval import capacity_problem, pools, unit_sets
    from interventions.experts import ExpertRanking
    from interventions.models import load_model, load_tokenizer

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    problem = capacity_problem(model, args.components, args.per_component, args.controls, max(ks))
    if problem:  # checked before finding; nothing is written yet
        print(f"error: {'--k' if args.command == 'find' else '--ks'}: {problem}", file=sys.stderr)
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
    try:  # every set drawn before anything is written (rankings saved before controls existed cannot draw them)
        by_pool = pools(rankings, args.per_component)
        unit_sets(by_pool, ks, args.controls, args.seed)
    except ValueError as err:
        print(f"error: {'--rankings: ' if getattr(args, 'rankings', None) else ''}{err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for lang, ranking in rankings.items():
        ranking.save(out / lang / "ranking")
    if args.command == "find":
        for row in experts_report.save_sets(model, by_pool, args.k, out, args.controls, args.seed):
            print(f"{row['language']}: wrote {out / row['path']}")
        if args.no_eval:
            return 0
    report = experts_report.run_report(
        model, tokenizer, by_pool, ks, out, controls=args.controls, retrieval_n=args.retrieval_n,
        apply_to=args.apply_to, side_effect_ks=side_ks, n_prompts=getattr(args, "n_prompts", 30),
        new_tokens=getattr(args, "new_tokens", 20), n_perplexity=getattr(args, "n_perplexity", 50), seed=args.seed,
        n_boot=getattr(args, "n_boot", 10_000), batch_size=args.batch_size,
        meta={"argv": sys.argv, "find_seconds": find_s, **vars(args)})
    print(experts_report.format_ratios(report["rows"]) if args.command == "find" else f"wrote {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
