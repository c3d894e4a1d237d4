"""The steering and evaluate stages when ``layer``/``alpha`` are ``auto``: the cross-fitted protocol.

Steering stage (:func:`run_crossfit`): for every evaluated model (``base`` when a ``base*`` variant is asked,
``cla`` when a ``cla*`` one is) and every evaluated language other than English,
:func:`evaluate.crossfit.crossfit_language` estimates the vectors on that model, scores one grid per vector,
selects (layer, alpha) per fold on the other folds and scores every item out of fold. Writes:

- ``outcomes.jsonl``: per run, language, item and out-of-fold variant: margin and correct;
- ``crossfit.json``: settings, folds, per-fold selections, stability and the modal choice per vector;
- ``grid.json`` / ``grid.csv``: every cell's mean margins, scores, gains and KL (descriptive);
- ``cosines.json``: cos(v_EN, v_LOC) per layer with its sign-flip null and split-half reliabilities;
- ``vectors/`` (all layers, the primary run's) and ``intervention/``: the artifact, the primary run's
  (``cla`` when evaluated, else ``base``) full-data vectors at each vector's modal out-of-fold choice,
  with ``role``, ``language`` and the selection in each intervention's provenance; a vector whose modal
  choice is "unsteered" (it did not gain on its selection data) is left out (the directory may be empty).

Evaluate stage (:func:`evaluate_crossfit`): the out-of-fold plane pooled over languages and the
pre-registered tests (:mod:`evaluate.crossfit_stats`), from those files, and the report's generations: greedy
continuations of a seeded prompt sample under base, cla, +en, +loc, +surgical and a random control
(:mod:`recipes.crossfit_generations`; the only model calls of the stage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path

from .artifacts import (CrossfitLanguage, CrossfitResult, ModalChoice, SelectionSettings, SteeringResult,
                        VectorSelection)
from .variants import Variant


GRID_ROWS = "grid.json"
"""The selection grid's rows (``steering.json``'s ``grid_rows``); ``grid.csv`` holds the same rows."""


def runs_of(variants) -> list[str]:
    models = {Variant.parse(v).model for v in variants}
    return [m for m in ("base", "cla") if m in models]


def uses_crossfit(recipe) -> bool:
    """Layer/alpha ``auto``: the recipe's steering (when it runs) is the cross-fitted protocol."""
    s = recipe.steering
    return s.load is None and any(getattr(s, w).enabled and "auto" in (getattr(s, w).layer, getattr(s, w).alpha)
                                  for w in ("en", "loc"))


def crossfit_evaluation(recipe) -> bool:
    """The evaluate/report stages read the cross-fitted steering stage: ``auto`` and the stage runs (a steered
    variant, or analysis/publish asks for its vectors); otherwise the plain plane evaluates base/cla."""
    steered = any(Variant.parse(v).steered for v in recipe.evaluate.variants)
    return uses_crossfit(recipe) and (steered or recipe.analysis.enabled or recipe.publish.enabled)


def settings_of(recipe, num_layers: int):
    from evaluate.crossfit import CrossfitSettings

    s = recipe.steering
    return CrossfitSettings(layers=list(s.layers or range(num_layers)), alphas=list(s.alphas), k=s.selection.folds,
                            tolerance=s.selection.tolerance, max_kl=s.selection.max_kl, seed=recipe.seed,
                            batch_size=recipe.evaluate.batch_size, control_seed=recipe.seed)


def _finite(obj):
    """NaN/inf (an estimate that does not exist, e.g. a test with no items) as null: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_finite(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False),
                    encoding="utf-8")


def _model_for(ctx, run: str):
    """(model, context manager): the base model with any loaded adapter disabled, or the aligned model."""
    if run == "cla":
        return ctx.aligned_model(), contextlib.nullcontext()
    peft = ctx._adapter_model
    return ctx.model, (peft.disable_adapter() if peft is not None else contextlib.nullcontext())


def run_crossfit(ctx, stage, out: Path) -> dict:
    from evaluate.outputs import write_csv
    from evaluate.crossfit import crossfit_language, modal_choice, unsteered_outcomes
    from evaluate.crossfit_data import language_data
    from interventions.components import num_layers
    from interventions.config import InterventionConfig
    from interventions.controls import cosine_test
    from interventions.vector_io import save_vectors

    from .schema import RecipeError

    recipe, e = ctx.recipe, ctx.recipe.evaluate
    settings = settings_of(recipe, num_layers(ctx.model))
    tasks = {kind: [t for t in e.tasks if _kind(t) == kind] for kind in ("transfer", "localization")}
    languages = [x for x in e.languages if x != "en"]
    data = {lang: language_data(lang, tasks["transfer"], tasks["localization"], n_transfer=e.n,
                                n_localization=e.n_localization, n_en=recipe.steering.en.n,
                                n_neutral=recipe.steering.selection.neutral_n, seed=recipe.seed)
            for lang in languages}
    # the models whose vectors are chosen (base when only analysis/publish asks for vectors)
    steered = {Variant.parse(v).model for v in e.variants if Variant.parse(v).steered} or {"base"}
    runs = [m for m in ("base", "cla") if m in steered or m in runs_of(e.variants)]
    primary = "cla" if "cla" in steered else "base"
    outcomes, report, grid, cosines, interventions, selection = [], {}, [], {}, [], {}
    middle = settings.layers[len(settings.layers) // 2]
    for run in runs:
        model, context = _model_for(ctx, run)
        if run in steered:
            report[run], cosines[run] = {}, {}
        with context:
            for lang in languages:
                ctx.seed()
                if run not in steered:  # only the unsteered model is evaluated: one pass, no grid
                    outcomes += [dict(o, run=run) for o in unsteered_outcomes(model, ctx.tokenizer, data[lang],
                                                                              settings)]
                    continue
                res = crossfit_language(model, ctx.tokenizer, data[lang], settings)
                outcomes += [dict(o, run=run) for o in res.outcomes]
                grid += [dict(r, run=run) for r in res.grid_rows]
                modal = {w: modal_choice(res.selections[w]) for w in ("en", "loc")}
                report[run][lang] = CrossfitLanguage(
                    folds=res.folds, selections=_finite(res.selections), stability=_finite(res.stability),
                    modal={w: ModalChoice(**m) for w, m in modal.items()},
                    n_items={"transfer": len(data[lang].transfer_items),
                             "localization": len(data[lang].localization_items)})
                cosines[run][lang] = {str(layer): dict(cosine_test(res.diffs["en"][layer], res.diffs["loc"][layer],
                                                                   seed=recipe.seed), preregistered=layer == middle)
                                      for layer in settings.layers}
                if run != primary:
                    continue
                for w, vec in res.vectors.items():
                    save_vectors(vec, out / "vectors")
                    m = modal[w]
                    how = (f"cross-validated ({settings.k} folds by group): modal choice in {m['folds']} of "
                           f"{m['n_folds']} folds")
                    selection[vec.name] = VectorSelection(layer=m["layer"], alpha=m["alpha"], steered=m["steered"],
                                                          positions=vec.positions, kind=w, language=lang,
                                                          selected=how)
                    if m["steered"]:
                        iv = vec.intervention(m["layer"], alpha=m["alpha"])
                        iv.source.update(selected=how, selection_folds=m["folds"], n_folds=m["n_folds"])
                        interventions.append(iv)
    if not all(math.isfinite(o["margin"]) for o in outcomes):  # the scorer raises first; never write NaN
        raise RecipeError("steering", "non-finite out-of-fold margins (the model overflowed)")
    (out / "outcomes.jsonl").write_text("".join(json.dumps(o, sort_keys=True, allow_nan=False) + "\n"
                                                for o in outcomes), encoding="utf-8")
    CrossfitResult(protocol="crossfit", runs=report, primary_run=primary, preregistered_cosine_layer=middle,
                   settings=SelectionSettings(**_finite({f: getattr(settings, f) for f in
                                                         ("layers", "alphas", "k", "tolerance", "max_kl", "seed")}))
                   ).save(out)
    _write_json(out / "cosines.json", cosines)
    _write_json(out / GRID_ROWS, grid)
    write_csv(grid, out / "grid.csv")
    # always written: an empty directory is the honest artifact when no vector gained on its selection data
    model = ctx.aligned_model() if primary == "cla" else ctx.model
    InterventionConfig.for_model(model, interventions, revision=recipe.model.revision).save_pretrained(
        out / "intervention", model=model)
    result = SteeringResult(computed=True, source=None, protocol="crossfit", selection=selection,
                            primary_run=primary, intervention=bool(interventions), grid_rows=GRID_ROWS)
    result.save(out)
    return {"protocol": "crossfit", "selection": result.selection_dicts()}


def _kind(task: str) -> str:
    from evaluate.tasks import get_task

    return get_task(task).kind


def evaluate_crossfit(ctx, stage, out: Path) -> dict:
    from evaluate.crossfit_stats import plane_rows, preregistered_tests

    steering = ctx.output("steering")
    info = CrossfitResult.load(steering)
    cosines = json.loads((steering / "cosines.json").read_text(encoding="utf-8"))
    outcomes = [json.loads(line) for line in (steering / "outcomes.jsonl").read_text(encoding="utf-8").splitlines()]
    languages = [x for x in ctx.recipe.evaluate.languages if x != "en"]
    wanted = {}
    for name in ctx.recipe.evaluate.variants:
        v = Variant.parse(name)
        wanted.setdefault(v.model, set()).add(v.addition or "base")
    runs = {run: [o for o in outcomes if o["run"] == run and o["variant"] in wanted[run] | {"base"}]
            for run in ("base", "cla") if run in wanted}
    primary = info.primary_run
    layer = str(info.preregistered_cosine_layer)
    selections = info.plain("modal")
    modal = {lang: selections[primary][lang] for lang in languages}
    tests = preregistered_tests(runs, modal, {lang: cosines[primary][lang][layer] for lang in languages}, languages,
                                n_boot=max(ctx.recipe.evaluate.bootstrap, 1000), seed=ctx.recipe.seed, run=primary)
    rows = plane_rows(runs, languages, n_boot=ctx.recipe.evaluate.bootstrap, seed=ctx.recipe.seed)
    results = {"protocol": "crossfit", "plane": rows, "tests": tests, "languages": languages,
               "selections": selections, "stability": info.plain("stability"), "n_items": info.plain("n_items"),
               "settings": dataclasses.asdict(info.settings), "cosine_layer": int(layer)}
    from .crossfit_generations import crossfit_generations

    results["generations"], results["generations_settings"] = crossfit_generations(ctx, steering, primary)
    _write_json(out / "results.json", results)
    return {"tests": {t["test"]: t["verdict"] for t in tests}}





def report_crossfit(ctx, stage, out: Path) -> dict:
    from evaluate.crossfit_report import plot_crossfit_plane, render_crossfit_report

    results = json.loads((ctx.output("evaluate") / "results.json").read_text(encoding="utf-8"))
    r = ctx.recipe.report
    written = []
    figure = plot_crossfit_plane(results, out / "plane.png") if r.plots else None
    if figure:
        written.append("plane.png")
    if "md" in r.formats:
        title = r.title or ctx.recipe.description or ctx.recipe.name
        text = render_crossfit_report(results, title, "plane.png" if figure else None)
        (out / "report.md").write_text(text + "\n", encoding="utf-8")
        written.append("report.md")
    if "json" in r.formats:
        _write_json(out / "results.json", results)
        written.append("results.json")
    if "csv" in r.formats:
        from evaluate.outputs import write_csv

        write_csv(results["plane"], out / "results.csv")
        write_csv(results["tests"], out / "tests.csv")
        written += ["results.csv", "tests.csv"]
    return {"files": written, "tests": {t["test"]: t["verdict"] for t in results["tests"]}}

__all__ = ["crossfit_evaluation", "evaluate_crossfit", "report_crossfit", "run_crossfit", "runs_of", "settings_of", "uses_crossfit"]
