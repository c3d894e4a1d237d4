"""Whole-recipe validation without loading a model, and recipe lookup by bare name.

Model-dependent checks (layers in range) use the model's depth from, in order: a small table of
known configs (the embedded gemma-3-270m and the shipped GPU recipes' models), ``config.json`` in
a local model directory, or ``config.json`` in the local Hugging Face cache. When none is
available the check is deferred to load time (:func:`recipes.checks.check_layers`, same message).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .checks import (check_contrast_data, check_layers, check_load_conflicts, check_plain_name, check_positive,
                     check_selection, check_task_languages)
from .crossfit_stage import uses_crossfit
from .errors import RecipeError, describe
from .variants import Variant
from .schema import LANGUAGES, Recipe, recipe_from_dict
from .inputs import check_adapter_dir, check_intervention_dir, looks_like_path
from .yaml_io import read_recipe_data

SEED_MAX = 2**32 - 1
"""numpy's legacy seeding (``np.random.seed``) takes seeds in [0, 2**32 - 1]."""
DEVICE = re.compile(r"(cpu|mps|cuda|xpu)(:\d{1,3})?")

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    source: str


KNOWN_MODELS = {
    "gemma-3-270m": ModelShape(18, 640, "embedded"),
    "google/gemma-3-270m": ModelShape(18, 640, "embedded"),
    "google/gemma-3-12b-it": ModelShape(48, 3840, "known config"),
    "Qwen/Qwen2.5-7B-Instruct": ModelShape(28, 3584, "known config"),
    "meta-llama/Llama-3.1-8B-Instruct": ModelShape(32, 4096, "known config"),
}


def check_hub_id_or_path(value: str, field: str, *, must_contain: str | None = None) -> str:
    """Check ``value`` is an existing directory (holding ``must_contain``) or a valid Hub id."""
    if not value.strip():
        raise RecipeError(field, "expected a local directory or a Hub id (owner/name), got an empty string")
    if looks_like_path(value):
        path = Path(os.path.expanduser(value))
        if not path.exists():
            raise RecipeError(field, f"no such file or directory: {value!r}")
        if not path.is_dir():
            raise RecipeError(field, f"expected a directory, got a file: {value}")
        if must_contain and not (path / must_contain).is_file():
            raise RecipeError(field, f"directory {value} has no {must_contain}")
        return "path"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as err:
        raise RecipeError(field, f"not an existing directory nor a valid Hub id ({err})") from None
    return "hub"


def _shape_from_config(cfg: dict, source: str) -> ModelShape | None:
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    layers = text.get("num_hidden_layers", text.get("n_layer"))
    hidden = text.get("hidden_size", text.get("n_embd"))
    if isinstance(layers, int) and isinstance(hidden, int):
        return ModelShape(layers, hidden, source)
    return None


def model_shape(name: str, revision: str | None = None) -> ModelShape | None:
    """Depth and width of a model without loading it, or None when unknown offline."""
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name]
    candidates = []
    if looks_like_path(name):
        candidates.append(Path(os.path.expanduser(name)) / "config.json")
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json", revision=revision)
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # noqa: BLE001 - an unusable cache only defers the check
            pass
    for path in candidates:
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict):
            shape = _shape_from_config(cfg, str(path))
            if shape:
                return shape
    return None


def validate_recipe(recipe: Recipe) -> Recipe:
    """Cross-field rules, files and Hub ids, and layer ranges where the model's depth is known."""
    m, a, s, e, p = recipe.model, recipe.alignment, recipe.steering, recipe.evaluate, recipe.publish
    check_plain_name(recipe.name)
    if not 0 <= recipe.seed <= SEED_MAX:
        raise RecipeError("seed", f"expected an int in [0, 2**32 - 1], got {describe(recipe.seed)}")
    if m.name not in KNOWN_MODELS:
        check_hub_id_or_path(m.name, "model.name", must_contain="config.json")
    if m.device is not None and not DEVICE.fullmatch(m.device):
        raise RecipeError("model.device", f"expected cpu, cuda, cuda:N, mps or xpu, got {describe(m.device)}")
    if m.device is not None and m.device_map is not None:
        raise RecipeError("model.device_map", "give model.device or model.device_map, not both")

    # alignment
    if a.adapter is not None:
        if a.method != "none":
            raise RecipeError("alignment.adapter",
                              f"give either alignment.method (train {a.method}) or alignment.adapter (load), not both")
        if check_hub_id_or_path(a.adapter, "alignment.adapter", must_contain="adapter_config.json") == "path":
            check_adapter_dir(a.adapter)
    for name in ("max_steps", "batch_size", "lora_r", "lora_alpha", "n"):
        check_positive(getattr(a, name), f"alignment.{name}")
    check_positive(a.learning_rate, "alignment.learning_rate")
    if a.method == "midalign" and a.batch_size is not None and a.batch_size < 2:
        raise RecipeError("alignment.batch_size", "midalign's InfoNCE needs in-batch negatives: expected >= 2, "
                                                  f"got {a.batch_size}")
    if a.seed is not None and not 0 <= a.seed <= SEED_MAX:
        raise RecipeError("alignment.seed", f"expected an int in [0, 2**32 - 1], got {describe(a.seed)}")
    if a.languages is not None:
        if not a.languages:
            raise RecipeError("alignment.languages", "expected at least one language")
        if "en" in a.languages:
            raise RecipeError("alignment.languages", "expected the non-English languages aligned to English, got 'en'")
    has_cla = a.method != "none" or a.adapter is not None

    # steering
    shape = model_shape(m.name, m.revision)
    non_english = [x for x in e.languages if x != "en"]
    if s.load is not None:
        check_load_conflicts(recipe)
        if check_hub_id_or_path(s.load, "steering.load", must_contain="intervention_config.json") == "path":
            check_intervention_dir(s.load, shape, m.name)
    else:
        for which in ("en", "loc"):
            vec = getattr(s, which)
            if not vec.enabled:
                continue
            check_positive(vec.n, f"steering.{which}.n")
            if s.method == "pca" and vec.n is not None and vec.n < 2:
                raise RecipeError(f"steering.{which}.n", f"steering.method pca needs at least 2 contrast prompts, "
                                                         f"got {vec.n}")
            if vec.alpha != "auto" and vec.alpha == 0:
                raise RecipeError(f"steering.{which}.alpha", "alpha 0 is the unsteered model: expected a non-zero "
                                                             "number or \"auto\" (or set enabled: false)")
            check_contrast_data(vec.data, which)
            if vec.layer == "auto" and s.layers is not None and not s.layers:
                raise RecipeError("steering.layers", f"steering.{which}.layer is \"auto\": expected a non-empty grid")
        if s.compute_on == "cla" and not has_cla:
            raise RecipeError("steering.compute_on", "\"cla\" needs an adapter: set alignment.method or alignment.adapter")
    has = {"en": s.load is not None or s.en.enabled, "loc": s.load is not None or s.loc.enabled}

    # evaluate
    for name in ("tasks", "languages", "variants"):
        values = getattr(e, name)
        if not values:
            raise RecipeError(f"evaluate.{name}", "expected at least one entry")
        if len(set(values)) != len(values):
            raise RecipeError(f"evaluate.{name}", f"duplicate entries in {values}")
    crossfit = uses_crossfit(recipe)
    for i, name in enumerate(e.variants):
        variant = Variant.parse(name)
        where = f"evaluate.variants[{i}]"
        if variant.adapter and not has_cla:
            raise RecipeError(where, f"{name!r} needs an adapter: set alignment.method or alignment.adapter")
        if variant.crossfit_only and not crossfit:
            raise RecipeError(where, f"{name!r} exists only in the out-of-fold plane: set the steering layers and "
                                     "alphas to auto (cross-validated selection)")
        for role in variant.roles:
            if role == "experts":
                if s.load is None or crossfit:
                    raise RecipeError(where, f"{name!r} evaluates a loaded experts directory: set steering.load to "
                                             "an experts stage's intervention directory")
            elif not has[role]:
                raise RecipeError(where, f"{name!r} needs the {role.upper()} vector: steering.{role}.enabled is false")
    check_positive(e.n, "evaluate.n")
    check_positive(e.batch_size, "evaluate.batch_size")
    for which in ("en", "loc") if s.load is None and not non_english else ():
        if getattr(s, which).enabled:
            raise RecipeError("evaluate.languages", f"the {which.upper()} vector needs at least one language "
                              f"other than en (or set steering.{which}.enabled: false)")
    if e.bootstrap < 1:
        raise RecipeError("evaluate.bootstrap", f"expected at least 1 resample (confidence intervals), "
                                                f"got {e.bootstrap}")
    check_task_languages(recipe)
    if crossfit and e.split != "test":
        raise RecipeError("evaluate.split", f"{e.split!r}: with auto selection every item of every split goes "
                                            "through the folds (out of fold); leave evaluate.split at test")
    check_positive(e.n_localization, "evaluate.n_localization")

    # analysis
    an = recipe.analysis
    if an.n < 2:
        raise RecipeError("analysis.n", f"expected at least 2 sentences per language (silhouette, retrieval), got {an.n}")
    if an.layers is not None:
        if not an.layers:
            raise RecipeError("analysis.layers", "expected a non-empty list of layers, or null for an even spread")
        if len(set(an.layers)) != len(an.layers):
            raise RecipeError("analysis.layers", f"duplicate entries in {an.layers}")

    # publish
    if p.enabled:
        if not p.repo_id:
            raise RecipeError("publish.repo_id", "publish.enabled is true: expected a Hub repo id (owner/name)")
        if "adapter" in p.push and not has_cla:
            raise RecipeError("publish.push", "'adapter' needs an adapter: set alignment.method or alignment.adapter")
        if "intervention" in p.push and s.load is None and not (s.en.enabled or s.loc.enabled):
            raise RecipeError("publish.push", "'intervention' needs the steering stage: steering.load or an "
                                              "enabled vector")
        if "report" in p.push and not recipe.report.enabled:
            raise RecipeError("publish.push", "'report' needs the report stage: report.enabled is false")
    if p.repo_id is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(p.repo_id)
        except HFValidationError as err:
            raise RecipeError("publish.repo_id", f"not a valid Hub repo id: {err}") from None
    if not p.token_env.strip():
        raise RecipeError("publish.token_env", "expected an environment variable name")

    if shape is not None:
        check_layers(recipe, shape.num_layers)
    if s.load is None:
        check_selection(recipe)
    return recipe


def find_recipe(name_or_path: str) -> Path:
    """A path to a recipe file, or a bare name (``surgical`` / ``surgical.yaml``) among the shipped ones."""
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        return path
    if path.name == name_or_path:  # bare name
        for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml",
                          CONFIG_DIR / f"{name_or_path}.yml"):
            if candidate.is_file():
                return candidate
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise RecipeError("recipe", f"no such recipe file or shipped recipe: {name_or_path!r} (shipped: {shipped})")


def shipped_recipes() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Find, read, override, convert and validate a recipe; every problem is one RecipeError."""
    path = find_recipe(str(name_or_path))
    data = read_recipe_data(path, list(overrides))
    try:
        return validate_recipe(recipe_from_dict(data, name=path.stem))
    except RecipeError as err:
        err.file = err.file or str(path)
        raise
    except RecursionError:
        raise RecipeError("recipe", "nesting too deep", str(path)) from None


__all__ = ["LANGUAGES", "KNOWN_MODELS", "ModelShape", "find_recipe", "load_recipe", "model_shape", "shipped_recipes",
           "validate_recipe"]
