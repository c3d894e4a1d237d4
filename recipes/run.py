"""``python -m recipes.run RECIPE`` -- run a recipe (a file path or a shipped name such as ``surgical``).

    python -m recipes.run surgical --dry-run
    python -m recipes.run surgical --set "steering.alphas=[0.5, 1]" --set evaluate.n=20
    python -m recipes.run my.yaml --out runs/mine --force evaluate
    accelerate launch -m recipes.run surgical      # evaluation split across processes

Exit codes: 0 done, 2 bad recipe (one message naming the field; nothing written) or another run holding
the run directory's lock, 1 a stage failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import yaml

from .inputs import check_environment
from .plan import Plan, make_plan
from .run_dir import RunLock, StageWriter, clean_stale, is_complete
from .schema import STAGES, RecipeError
from .validate import find_recipe, load_recipe, model_shape

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes.run", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe file, or the name of a shipped recipe (e.g. surgical)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set evaluate.n=20 (value parsed as YAML)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate everything and print the plan without loading a model")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    parser.add_argument("--force", action="append", default=[], choices=STAGES + ("all",), metavar="STAGE",
                        help=f"redo this stage even if complete (one of {', '.join(STAGES)}, all); repeatable")
    return parser


def prepare(argv: list[str] | None = None) -> tuple[argparse.Namespace, Plan]:
    """Parse arguments, load + validate the recipe and make the plan (writes nothing)."""
    args = build_parser().parse_args(argv)
    path = find_recipe(args.recipe)
    recipe = load_recipe(path, args.overrides)
    run_dir = Path(os.path.expanduser(args.out)) if args.out else Path("runs") / recipe.name
    try:
        check_environment(recipe, run_dir)
    except RecipeError as err:
        err.file = err.file or str(path)
        raise
    args.recipe_path = str(path)
    plan = make_plan(recipe, run_dir)
    plan.forced = set(STAGES) if "all" in args.force else set(args.force)
    refresh(plan)
    return args, plan


def refresh(plan: Plan) -> None:
    """Mark each stage complete or not from the disk (forced stages are never complete)."""
    for stage in plan:
        stage.complete = (stage.active and stage.name not in plan.forced
                          and is_complete(stage.directory, stage.hash))


def execute(plan: Plan) -> None:
    """Run every active, incomplete stage in order under the run directory's lock; each one commits atomically."""
    from .distributed import is_main_process, partial_state

    state = partial_state()
    main = is_main_process(state)
    with RunLock(plan.run_dir) if main else contextlib.nullcontext():
        if main:
            stale = clean_stale(plan.run_dir)
            if stale:
                print(f"[run] removed {len(stale)} leftover(s) of an interrupted run: {', '.join(stale)}", flush=True)
        _execute(plan, state, main)


def _execute(plan: Plan, state, main: bool) -> None:
    from interventions.fsutil import atomic_write
    from interventions.provenance import versions

    from .distributed import shutdown, wait_for_everyone
    from .stages import STAGE_FUNCTIONS, RunContext

    ctx = RunContext(plan.recipe, plan, state)
    env = versions()
    # Every process decides skip/run from the same disk state (a late starter must not see stages
    # the main process already committed, or the per-stage barriers would not line up).
    wait_for_everyone(state)
    refresh(plan)
    wait_for_everyone(state)
    for stage in plan:
        if not stage.active:
            continue
        if stage.complete:
            if main:
                print(f"[{stage.name}] complete: {stage.directory}", flush=True)
            continue
        if main:
            print(f"[{stage.name}] {stage.action}", flush=True)
        meta: dict = {"versions": env, "seed": plan.recipe.seed}
        with StageWriter(stage, meta, commit=main) as out:
            meta["result"] = STAGE_FUNCTIONS[stage.name](ctx, stage, out) or {}
        wait_for_everyone(state)
        stage.complete = True
        if main:
            print(f"[{stage.name}] done: {stage.directory}", flush=True)
    if main:
        resolved = yaml.safe_dump(plan.recipe.to_dict(), sort_keys=False, allow_unicode=True)
        atomic_write(plan.run_dir / "recipe.yaml", resolved)
    shutdown(state)


def main(argv: list[str] | None = None) -> int:
    try:
        args, plan = prepare(argv)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan.describe())
        m = plan.recipe.model
        shape = model_shape(m.name, m.revision)
        print(f"model {m.name}: " + (f"{shape.num_layers} layers, hidden {shape.hidden_size} ({shape.source}); "
                                     "layers checked" if shape else
                                     "depth unknown offline; layer checks deferred to load time"))
        return 0
    try:
        execute(plan)
    except RecipeError as err:  # the run lock, checks deferred to load time (layers of an uncached Hub model)
        err.file = err.file or args.recipe_path
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
