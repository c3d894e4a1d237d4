"""Hypothesis fuzz of the recipe parser: any input gives a Recipe or a RecipeError, nothing else."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes.crossfit_stage import uses_crossfit
from recipes.plan import make_plan
from recipes.schema import Recipe, RecipeError, recipe_from_dict
from recipes.yaml_io import apply_override, parse_yaml
from recipes.validate import load_recipe, validate_recipe
from recipes.variants import Variant

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _all_keys(cls=Recipe, prefix="") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, f"{prefix}{f.name}."))
    return keys


KEYS = _all_keys()
LEAF_NAMES = sorted({k.rsplit(".", 1)[-1] for k in KEYS})
WORDS = ["auto", "gemma-3-270m", "ko", "en", "base", "cla+surgical", "base+random_en", "base+experts", "blend",
         "locale_probe", "flores", "none", "clo",
         "float32", "block_output", "org/model", "./missing", "", "1e-4", "nan", "on", "~", "a--b", "~nouser/x", "a\x00b", "x.jsonl", "a/b/c"]

scalars = (st.none() | st.booleans() | st.integers(-100, 100) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(WORDS) | st.text(max_size=12) | st.binary(max_size=4) | st.dates())
keys = st.sampled_from(LEAF_NAMES) | st.text(max_size=8) | st.integers(-3, 3) | st.booleans() | st.none()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=12)
sections = st.fixed_dictionaries({}, optional={
    "name": scalars, "seed": scalars,
    "model": st.dictionaries(st.sampled_from(["name", "dtype", "device", "device_map", "revision", "x"]), values),
    "alignment": st.dictionaries(st.sampled_from(["method", "adapter", "languages", "max_steps", "n", "lr"]), values),
    "steering": st.dictionaries(st.sampled_from(["en", "loc", "load", "layers", "alphas", "selection"]),
                                values | st.dictionaries(st.sampled_from(["layer", "alpha", "enabled", "data", "n",
                                                                          "folds", "tolerance", "max_kl",
                                                                          "neutral_n"]), values)),
    "evaluate": st.dictionaries(st.sampled_from(["tasks", "languages", "variants", "n", "n_localization", "split"]),
                                values),
    "publish": st.dictionaries(st.sampled_from(["enabled", "repo_id", "push", "token"]), values),
})


def _parse(data):
    try:
        recipe = validate_recipe(recipe_from_dict(data, name="fuzz"))
    except RecipeError as err:
        assert err.field and err.message
        return None
    assert isinstance(recipe, Recipe)
    _protocol_invariants(recipe)
    plan = make_plan(recipe, Path("runs") / recipe.name)  # a valid recipe always hashes and describes
    assert plan.describe() and all(len(st.hash) == 64 for st in plan)
    return recipe


def _protocol_invariants(recipe: Recipe) -> None:
    """What validation promises the cross-validated protocol (recipes.crossfit_stage) and the fixed path."""
    s, e = recipe.steering, recipe.evaluate
    if uses_crossfit(recipe):
        assert s.en.enabled and s.loc.enabled and s.load is None
        assert {s.en.layer, s.en.alpha, s.loc.layer, s.loc.alpha} == {"auto"}
        assert s.loc.n is None and e.split == "test" and s.method == "mean_difference" and s.compute_on == "base"
        assert sorted([s.loc.data] if isinstance(s.loc.data, str) else s.loc.data) == sorted(
            t for t in e.tasks if t in ("blend", "locale_probe"))
        assert s.selection.folds >= 2 and s.selection.neutral_n >= s.selection.folds
        assert s.alphas and all(a > 0 for a in s.alphas) and len(set(s.alphas)) == len(s.alphas)
    else:
        assert not any(Variant.parse(v).crossfit_only for v in e.variants)
        for which in ("en", "loc"):
            vec = getattr(s, which)
            if s.load is None and vec.enabled:
                assert vec.alpha != 0 and "auto" not in (vec.layer, vec.alpha)


@SETTINGS
@given(values)
def test_arbitrary_values(data):
    _parse(data)


@SETTINGS
@given(sections)
def test_recipe_shaped_dicts(data):
    _parse(data)


@SETTINGS
@given(st.text(max_size=200) | st.text(alphabet=":-[]{}#&*!|>'\"%@`, \n\tabcon0123.", max_size=120))
def test_yaml_ish_strings(text):
    try:
        data = parse_yaml(text, "fuzz.yaml")
    except RecipeError as err:
        assert err.file == "fuzz.yaml"
        return
    _parse(data)


@SETTINGS
@given(sections, st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=10), st.text(max_size=10)), max_size=3))
def test_overrides(data, assignments):
    try:
        for key, value in assignments:
            apply_override(data, f"{key}={value}")
    except RecipeError:
        return
    _parse(data)


@SETTINGS
@given(sections)
def test_round_trip_through_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except yaml.YAMLError:
        return
    try:
        recipe = load_recipe(path)
    except RecipeError as err:
        assert err.file == str(path)
        return
    # a valid recipe re-serialises to an equivalent one
    again = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    again.write_text(yaml.safe_dump(recipe.to_dict()))
    assert load_recipe(again).to_dict() == recipe.to_dict()


def _nested(dotted: str, lines: list[str]) -> str:
    *parents, leaf = dotted.split(".")
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents))
    return text + "".join(f"{'  ' * len(parents)}{leaf}: {line}\n" for line in lines)


@SETTINGS
@given(st.sampled_from(KEYS), st.lists(st.integers(-5, 5) | st.sampled_from(["a", "auto", "null", "[1, 2]"]),
                                       min_size=2, max_size=3))
def test_a_key_given_twice_is_always_refused(dotted, values):
    with pytest.raises(RecipeError) as err:
        parse_yaml(_nested(dotted, [str(v) for v in values]), "dup.yaml")
    assert err.value.field == dotted and "duplicate key" in err.value.message


@SETTINGS
@given(st.sampled_from(KEYS), st.text(alphabet="abc", min_size=1, max_size=3))
def test_any_alias_is_refused(dotted, anchor):
    text = f"description: &{anchor} x\n" + _nested(dotted, [f"*{anchor}"])
    with pytest.raises(RecipeError, match=f"alias \\*{anchor} is not allowed"):
        parse_yaml(text, "alias.yaml")
