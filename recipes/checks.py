"""The cross-field checks of a recipe, one rule each; :func:`recipes.validate.validate_recipe` runs them.

Each refuses with one :class:`RecipeError` naming the field. None loads a model: the layer check takes the
depth from :func:`recipes.validate.model_shape` (or from the loaded model, at load time).
"""

from __future__ import annotations

import dataclasses
import unicodedata

from .crossfit_stage import uses_crossfit
from .errors import RecipeError, describe
from .schema import Recipe, recipe_from_dict


def check_layers(recipe: Recipe, num_layers: int) -> None:
    """Every layer the recipe names must lie in [0, num_layers - 1] (also called at load time)."""
    top = num_layers - 1
    steering = recipe.steering
    if steering.load is None:
        for which in ("en", "loc"):
            vec = getattr(steering, which)
            if vec.enabled and vec.layer != "auto" and not 0 <= vec.layer <= top:
                raise RecipeError(f"steering.{which}.layer",
                                  f'expected an int in [0, {top}] or "auto", got {vec.layer}')
        for i, layer in enumerate(steering.layers or []):
            if not 0 <= layer <= top:
                raise RecipeError(f"steering.layers[{i}]", f"expected an int in [0, {top}], got {layer}")
    for i, layer in enumerate(recipe.analysis.layers or []):
        if not 0 <= layer <= top:
            raise RecipeError(f"analysis.layers[{i}]", f"expected an int in [0, {top}], got {layer}")


def check_positive(value, field: str, *, zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero)):
        raise RecipeError(field, f"expected a {'non-negative' if zero else 'positive'} number, got {value}")


def check_contrast_data(data: str | list[str], which: str) -> None:
    """Named data only (the schema's types); an empty list or a repeated name is refused here."""
    entries = [data] if isinstance(data, str) else data
    if not entries:
        raise RecipeError(f"steering.{which}.data", "expected at least one contrast data source")
    if len(set(entries)) != len(entries):
        raise RecipeError(f"steering.{which}.data", f"duplicate entries in {entries}")


def check_plain_name(name: str) -> None:
    bad = [c for c in name if unicodedata.category(c)[0] == "C" or c in "/\\"]
    if not name.strip() or bad or name.startswith((".", "-")) or len(name) > 128 or name != name.strip():
        raise RecipeError("name", "expected a plain run name (a file name: no '/', '\\' or control characters, "
                                  f"not starting with '.' or '-', at most 128 characters), got {describe(name)}")


def task_kinds_and_languages(names: list[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each task's (kind, languages), from the task itself (``evaluate.tasks``; imports no torch)."""
    from evaluate.tasks import get_task

    return {name: (task.kind, tuple(task.languages)) for name in names for task in [get_task(name)]}


def check_task_languages(recipe: Recipe) -> None:
    """Every evaluated (task, language) has items, every LOC vector language has contrast twins, and an
    ``auto`` selection has items of its own kind to select on."""
    e, s = recipe.evaluate, recipe.steering
    tasks = task_kinds_and_languages(list(dict.fromkeys(e.tasks + ["blend", "locale_probe"])))
    served = {name: langs for name, (_, langs) in tasks.items()}
    for task in e.tasks:
        for i, lang in enumerate(e.languages):
            if served[task] and lang not in served[task]:
                raise RecipeError(f"evaluate.languages[{i}]", f"task {task} has no items in {lang!r} (it serves "
                                  f"{', '.join(served[task])}); drop {lang} or the task")
    used = any("+" in v for v in e.variants) or recipe.publish.enabled or recipe.analysis.enabled
    if s.load is not None or not used:  # the steering stage is off or computes nothing
        return
    if s.loc.enabled:
        data = [s.loc.data] if isinstance(s.loc.data, str) else s.loc.data
        for i, lang in enumerate(e.languages):
            if lang != "en" and not any(lang in served[d] for d in data):
                raise RecipeError(f"evaluate.languages[{i}]", f"no LOC contrast data in {lang!r}: steering.loc.data "
                                  f"{data} serves {', '.join(sorted({x for d in data for x in served[d]}))}")
    for which, kind in (("en", "transfer"), ("loc", "localization")):
        vec = getattr(s, which)
        auto = [k for k in ("layer", "alpha") if getattr(vec, k) == "auto"]
        if vec.enabled and auto and not any(tasks[t][0] == kind for t in e.tasks):
            raise RecipeError(f"steering.{which}.{auto[0]}", f"\"auto\" selects on the items of the {kind} tasks "
                              "(cross-validated), and evaluate.tasks has none; add one or fix the layer and alpha")


def check_selection(recipe: Recipe) -> None:
    """The grid and the cross-validation settings of ``auto`` (one grid chooses both vectors)."""
    s = recipe.steering
    sel = s.selection
    if not s.alphas:
        raise RecipeError("steering.alphas", "expected a non-empty strength grid (alpha 0 is always added)")
    for i, a in enumerate(s.alphas):
        if a <= 0:
            raise RecipeError(f"steering.alphas[{i}]", f"expected a positive multiple of the mean difference (alpha 0, "
                                                      f"the unsteered model, is always a candidate), got {a}")
    if len(set(s.alphas)) != len(s.alphas):
        raise RecipeError("steering.alphas", f"duplicate entries in {s.alphas}")
    if sel.folds < 2:
        raise RecipeError("steering.selection.folds", f"expected at least 2 folds, got {sel.folds}")
    check_positive(sel.tolerance, "steering.selection.tolerance", zero=True)
    check_positive(sel.max_kl, "steering.selection.max_kl")
    if sel.neutral_n < sel.folds:
        raise RecipeError("steering.selection.neutral_n", f"expected at least one neutral sentence per fold "
                                                          f"({sel.folds}), got {sel.neutral_n}")
    if not uses_crossfit(recipe):
        return
    for which in ("en", "loc"):
        vec = getattr(s, which)
        if not vec.enabled:
            raise RecipeError(f"steering.{which}.enabled", "cross-validated selection (auto) chooses EN and LOC "
                                                          "together and scores Surgical: enable both, or fix every "
                                                          "layer and alpha")
        for key in ("layer", "alpha"):
            if getattr(vec, key) != "auto":
                raise RecipeError(f"steering.{which}.{key}", "auto selection chooses the layer and alpha of both "
                                                             "vectors on one grid: set every layer and alpha to "
                                                             "auto, or fix all four")
    if s.loc.n is not None:
        raise RecipeError("steering.loc.n", "with auto selection the LOC contrast of each fold is the explicit twins "
                                            "of the training folds' items: remove n (evaluate.n_localization sets "
                                            "how many localization items there are)")
    loc_tasks = sorted(t for t in recipe.evaluate.tasks if t in ("blend", "locale_probe"))
    data = sorted([s.loc.data] if isinstance(s.loc.data, str) else s.loc.data)
    if data != loc_tasks:
        raise RecipeError("steering.loc.data", f"with auto selection the LOC contrast is the explicit twins of the "
                                               f"scored localization items: expected {loc_tasks} (the localization "
                                               f"tasks of evaluate.tasks), got {data}")
    if s.method != "mean_difference":
        raise RecipeError("steering.method", "auto selection estimates mean-difference vectors per fold: expected "
                                             f"mean_difference, got {s.method!r}")
    if s.compute_on != "base":
        raise RecipeError("steering.compute_on", "with auto selection every evaluated model (base, cla) gets its "
                                                 "own vectors: leave compute_on at base")


def check_load_conflicts(recipe: Recipe) -> None:
    """With ``steering.load`` every other steering field is ignored: refuse any that differs from its default."""
    # the defaults of a recipe evaluating the same tasks (steering.loc.data defaults to their localization tasks)
    default = dataclasses.asdict(recipe_from_dict({"evaluate": {"tasks": list(recipe.evaluate.tasks)}}).steering)
    given = dataclasses.asdict(recipe.steering)
    for key, value in given.items():
        pairs = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in pairs:
            d = default[key][sub] if sub is not None else default[key]
            if key != "load" and v != d:
                where = f"steering.{key}" + (f".{sub}" if sub else "")
                raise RecipeError(where, "ignored when steering.load is set (the loaded directory fixes "
                                         "layers, alphas and components): remove it or steering.load")
