"""The evaluate and report stages on top of ``evaluate.plane``, for fixed layers and alphas or a loaded
steering directory (with ``layer``/``alpha`` ``auto`` both stages are :mod:`recipes.crossfit_stage`'s: the
out-of-fold plane and the pre-registered tests, no ``recipes.claims``).

Variants are built from the run's model, adapter and intervention directory:

- ``base`` / ``cla``: the model without / with the alignment adapter. Loading an adapter injects
  LoRA layers into the base model in place, so ``base*`` variants run inside the adapter's
  ``disable_adapter()`` context when an adapter is loaded (one copy of the weights).
- ``+en`` / ``+loc`` / ``+surgical`` / ``+experts`` (:mod:`recipes.variants`): the interventions of the
  steering stage's directory with that role (:func:`intervention_role`): EN-transfer, LOC, both, or the
  language-expert units of an experts stage directory loaded with
  ``steering: {load: <experts stage>/L/experts_k<k>}``.

Interventions made for one language (``en_transfer_ko``, ``loc_ko``, the experts of ``ko``) only apply to
prompts in that language, and ``evaluate_plane`` applies one config per variant, so such directories are
evaluated one language per work unit, and the units are spread over ``accelerate launch`` processes with
:func:`recipes.distributed.distributed_map` (each unit is computed identically wherever it runs, so the
merge equals the single-process result). Language-agnostic interventions give one unit. Every unit's
interventions are looked up before anything is scored.

Either way the stage writes what one ``evaluate_plane`` call writes (results.json, results.csv,
predictions.jsonl, plane.png, tasks.png, report.md) plus ``item_ids.json``: the ids of the items each
(task, language) number rests on. Merged units get the pooled cross-language ("mean") rows recomputed from
every unit's per-item choices with the plane's own definitions (:mod:`recipes.pooling`), and every
prediction records its ``unit`` (the language whose interventions steered it; null for a single unit).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluate import generations, plots, report
from evaluate.outputs import results_csv
from evaluate.plane import Variant, evaluate_plane
from evaluate.scoring import NonFiniteScores
from evaluate.tables import markdown_table
from interventions.config import InterventionConfig
from interventions.fsutil import atomic_write

from .artifacts import ModelInfo
from .distributed import distributed_map
from .pooling import pooled_rows
from .schema import RecipeError
from .variants import Variant as VariantName

ITEM_IDS = "item_ids.json"


ROLE_VARIANT = {"en_transfer": "en", "loc_cultural": "loc", "experts": "experts"}
"""The variant role each intervention role serves (controls and others serve none)."""


def intervention_role(iv) -> tuple[str | None, str | None]:
    """(variant role: ``en`` / ``loc`` / ``experts`` / None, language or None) from the intervention's typed
    ``role`` and ``language`` fields (format 2; version-1 directories are migrated when loaded)."""
    return ROLE_VARIANT.get(iv.role), iv.language


def _holdings(config) -> str:
    found = sorted({f"{role or 'unnamed'}" + (f" ({lang})" if lang else "")
                    for role, lang in map(intervention_role, config.interventions)})
    return ", ".join(found) or "nothing"


def _subset(config, roles: frozenset, language: str | None, variant: str = "", index: int | None = None):
    """The interventions of ``config`` with one of ``roles`` that apply to ``language``; a role with none
    is refused (RecipeError naming the variant)."""
    chosen = [iv for iv in config.interventions
              if (r := intervention_role(iv))[0] in roles and r[1] in (None, language)]
    missing = roles - {intervention_role(iv)[0] for iv in chosen}
    if missing:
        where = f" for language {language}" if language else ""
        field = f"evaluate.variants[{index}]" if index is not None else "evaluate.variants"
        hint = "; the English control of transfer tasks is scored anyway: drop en from evaluate.languages" \
            if language == "en" else ""
        raise RecipeError(field, f"{variant or 'variant'} needs {'/'.join(sorted(missing)).upper()} "
                                 f"interventions{where}, but the steering directory holds {_holdings(config)}{hint}")
    return InterventionConfig(chosen, dict(config.base_model))


def variant_interventions(variants: list[str], config, language: str | None) -> dict[str, Any]:
    """{variant: InterventionConfig or None} for ``language``'s work unit (no model needed)."""
    out = {}
    for i, name in enumerate(variants):
        try:
            parsed = VariantName.parse(name)
        except ValueError as err:
            raise RecipeError(f"evaluate.variants[{i}]", str(err)) from None
        if parsed.control or parsed.positions or parsed.crossfit_only:  # never the plain vectors under its name
            raise RecipeError(f"evaluate.variants[{i}]", f"{name!r} is defined by the cross-fitted protocol only; "
                                                         "the evaluate stage applies the steering directory as it is")
        roles = frozenset(parsed.roles)
        if roles and config is None:
            raise RecipeError(f"evaluate.variants[{i}]", f"{name!r} needs the steering stage's interventions")
        out[name] = _subset(config, roles, language, name, i) if roles else None
    return out


@dataclass
class RecipeVariant(Variant):
    """A plane variant that switches the adapter off (``base*``) and names itself when scores overflow."""

    adapter_off: Any = None
    unit: str | None = None

    @contextlib.contextmanager
    def _named(self):
        try:
            yield
        except NonFiniteScores as err:
            where = f"variant {self.name!r}" + (f" (work unit {self.unit})" if self.unit else "")
            raise NonFiniteScores(err.item_id, err.language, where) from None

    def context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(self._named())
        if self.adapter_off is not None:
            stack.enter_context(self.adapter_off.disable_adapter())
        stack.enter_context(super().context())
        return stack


def build_variants(ctx, language: str | None, config):
    """``evaluate.plane.Variant`` objects for the recipe's variants (steering for ``language``)."""
    peft_model = ctx.aligned_model() if ctx.adapter_source() is not None else None
    variants = []
    for name, interventions in variant_interventions(list(ctx.recipe.evaluate.variants), config, language).items():
        if VariantName.parse(name).adapter:
            variants.append(RecipeVariant(name, peft_model, interventions, unit=language))
        else:
            variants.append(RecipeVariant(name, ctx.model, interventions, adapter_off=peft_model, unit=language))
    return variants


def _load_interventions(ctx):
    steering = ctx.output("steering")
    if steering is None:
        return None
    return InterventionConfig.from_pretrained(steering / "intervention")


def work_units(ctx, config) -> list[str | None]:
    """One unit per language when any intervention is language-specific, else one unit (None)."""
    per_language = config is not None and any(intervention_role(iv)[1] for iv in config.interventions)
    return list(ctx.recipe.evaluate.languages) if per_language else [None]


def merge_results(parts: list[dict]) -> dict:
    """Concatenate per-language plane results (every row carries its language); the English control rows
    come from the first unit (``config.english_control_unit``)."""
    if len(parts) == 1:
        return parts[0]
    merged = dict(parts[0])
    merged["config"] = {**parts[0]["config"], "languages": [p["config"]["languages"][0] for p in parts],
                        "evaluated_per_language": True,
                        "english_control_unit": parts[0]["config"]["languages"][0]}
    for key in ("metrics", "task_metrics"):
        merged[key] = [row for p in parts for row in p.get(key, [])
                       if not (row.get("language") == "en" and p is not parts[0])]
    # each part's "mean" facet is its single language: the pooled rows are recomputed from the items
    merged["plane"] = [row for p in parts for row in p.get("plane", []) if row.get("language") != "mean"]
    for key in ("n_items", "n_gap_items"):
        merged[key] = {k: v for p in parts for k, v in p.get(key, {}).items()}
    merged["timings_s"] = {"total": round(sum(p.get("timings_s", {}).get("total") or 0 for p in parts), 2),
                           **{p["config"]["languages"][0]: p.get("timings_s") for p in parts}}
    return merged


def read_predictions(path: Path, unit: str | None) -> list[dict]:
    """The plane's predictions.jsonl, each line tagged with its work unit; a NaN/inf anywhere is refused."""
    def refuse(name):
        raise ValueError(f"{path}: {name} in a prediction; expected finite numbers")

    lines = path.read_text(encoding="utf-8").splitlines()
    return [{**json.loads(line, parse_constant=refuse), "unit": unit} for line in lines if line.strip()]


def item_ids(predictions: list[dict]) -> dict[str, list[str]]:
    """{"task/language": [item id, ...]}: the items every (task, language) number rests on, keyed like the
    results' ``n_items`` (the language of the task's item set, from the id ``task/language/...``: a cell's
    English control-cue twins count in the cell of their question's language)."""
    out: dict[str, dict[str, None]] = {}
    for p in predictions:
        parts = p["item_id"].split("/")
        language = parts[1] if len(parts) > 2 and parts[0] == p["task"] else p["language"]
        out.setdefault(f"{p['task']}/{language}", {})[p["item_id"]] = None
    return {key: list(ids) for key, ids in sorted(out.items())}


def write_outputs(out: Path, results: dict, predictions: list[dict]) -> None:
    """Everything one ``evaluate_plane`` call writes, plus item_ids.json, from (merged) results."""
    lines = "".join(json.dumps(p, ensure_ascii=False, allow_nan=False) + "\n" for p in predictions)  # NaN: raise
    atomic_write(out / "predictions.jsonl", lines)
    atomic_write(out / ITEM_IDS, json.dumps(item_ids(predictions), indent=1, ensure_ascii=False))
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=str, ensure_ascii=False))
    atomic_write(out / "results.csv", results_csv(results))
    figures = plots.plot_all(results, out)
    atomic_write(out / "report.md", report.render_report(results, figures) + "\n" + items_section(results) + "\n")


def items_section(results: dict, where: str = ITEM_IDS) -> str:
    """Markdown: how many items each number rests on, and the file listing their ids."""
    langs = [x for x in results["config"]["languages"] if x != "en"]
    lines = ["## Items behind each number", "",
             f"Every row's `n` counts the items it averages; `{where}` lists their ids per task/language. A plane "
             "score for a language averages its tasks' items in that language (localization: implicit-cue items "
             f"only); the `mean` row pools the items of {', '.join(langs) or 'every language'}.", "",
             markdown_table(["task/language", "items"], sorted(results.get("n_items", {}).items()))]
    if results["config"].get("evaluated_per_language"):
        lines += ["", "Evaluated one language per work unit (per-language interventions); each prediction's `unit` "
                      "names the language whose interventions steered it; the English control rows come from unit "
                      f"`{results['config'].get('english_control_unit')}`."]
    return "\n".join(lines)


def run_evaluate(ctx, stage, out: Path) -> dict:
    e = ctx.recipe.evaluate
    config = _load_interventions(ctx)
    units = work_units(ctx, config)
    for language in units:  # every unit's interventions exist, before anything is scored
        variant_interventions(list(e.variants), config, language)
    extra = {"recipe": ctx.recipe.name, "stage_hash": stage.hash}

    how = generations.settings(list(e.tasks), ctx.recipe.seed)

    def unit(language):
        ctx.seed()
        languages = [language] if language else list(e.languages)
        variants = build_variants(ctx, language, config)
        with tempfile.TemporaryDirectory(prefix="plane-") as tmp:
            results = evaluate_plane(variants, ctx.tokenizer, list(e.tasks),
                                     languages, split=e.split, out_dir=tmp, seed=ctx.recipe.seed,
                                     n_boot=e.bootstrap, batch_size=e.batch_size, limit=e.n, config=extra)
            predictions = read_predictions(Path(tmp) / "predictions.jsonl", language)
        # the report's generations: the same variants' greedy continuations of a seeded prompt sample
        prompts = generations.sample_prompts(how["tasks"], [x for x in languages if x != "en"], how["n_local"],
                                             how["n_transfer"], seed=ctx.recipe.seed)
        rows = generations.generate_side_by_side(variants, ctx.tokenizer, prompts, how["max_new_tokens"])
        return results, predictions, rows

    parts = distributed_map(unit, units, state=ctx.state, desc="languages")
    results = merge_results([r for r, _, _ in parts])
    predictions = [p for _, preds, _ in parts for p in preds]
    results["generations"] = [row for _, _, rows in parts for row in rows]
    results["generations_settings"] = how
    if units != [None]:
        results["plane"] += [r for r in pooled_rows(results, predictions) if r["language"] == "mean"]
        results["config"]["pooled"] = "mean rows recomputed from every unit's per-item choices (predictions.jsonl)"
    results["item_ids"] = ITEM_IDS
    write_outputs(out, results, predictions)
    plane = [r for r in results["plane"] if r.get("language") in ("mean", *e.languages)]
    return {"plane": [{k: r.get(k) for k in ("variant", "language", "score", "value", "ci_low", "ci_high", "n")}
                      for r in plane]}


def _measure_claims(ctx, results: dict) -> dict:
    from .claims import measure_claims

    info = ModelInfo.find(ctx.output("model"))
    return measure_claims(results, ctx.output("steering"), ctx.output("analysis"),
                          info.num_hidden_layers if info else None)


def run_report(ctx, stage, out: Path) -> dict:
    r = ctx.recipe.report
    evaluated = ctx.output("evaluate")
    results = json.loads((evaluated / "results.json").read_text(encoding="utf-8"))
    figures = plots.plot_all(results, out) if r.plots else {}
    claims = _measure_claims(ctx, results)
    written = ["claims.json"]
    if (evaluated / ITEM_IDS).is_file():  # the report's numbers and the ids of the items they rest on
        (out / ITEM_IDS).write_bytes((evaluated / ITEM_IDS).read_bytes())
        written.append(ITEM_IDS)
    (out / "claims.json").write_text(json.dumps(claims, indent=2, default=str, ensure_ascii=False))
    if "md" in r.formats:
        from .claims import render_claims

        text = "\n".join([report.render_report(results, figures), items_section(results), render_claims(claims), ""])
        title = r.title or ctx.recipe.description or ctx.recipe.name
        (out / "report.md").write_text(f"# {title}\n\n{text}", encoding="utf-8")
        written.append("report.md")
    if "json" in r.formats:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str, ensure_ascii=False))
        written.append("results.json")
    if "csv" in r.formats:
        (out / "results.csv").write_text(results_csv(results), encoding="utf-8")
        written.append("results.csv")
    verdicts = {"layers": claims["layers"]["verdict"], "orthogonality": claims["orthogonality"]["verdict"],
                **{d["variant"]: d["verdict"] for d in claims["surgical"]},
                **{f"erasure {e['variant']}": e["verdict"] for e in claims["erasure"]}}
    return {"files": written + sorted(figures.values() if isinstance(figures, dict) else []), "claims": verdicts}
