"""The evaluate and report stages on top of ``evaluate.plane``.

Variants are built from the run's model, adapter and intervention directory:

- ``base`` / ``cla``: the model without / with the alignment adapter. Loading an adapter injects
  LoRA layers into the base model in place, so ``base*`` variants run inside the adapter's
  ``disable_adapter()`` context when an adapter is loaded (one copy of the weights).
- ``+en`` / ``+loc`` / ``+surgical``: the EN-transfer / LOC / both interventions of the steering
  stage's directory (told apart by name: ``en_transfer*`` and ``loc*``).

Vectors made per language (``en_transfer_ko``, ``loc_ko``) only apply to prompts in that language,
and ``evaluate_plane`` applies one config per variant, so such directories are evaluated one
language per work unit, and the units are spread over ``accelerate launch`` processes with
:func:`recipes.distributed.distributed_map` (each unit is computed identically wherever it runs,
so the merge equals the single-process result). Language-agnostic vectors give one unit.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

from .schema import LANGUAGES


def intervention_kind(name: str) -> tuple[str | None, str | None]:
    """('en' | 'loc' | None, language or None) from an intervention's name."""
    kind = "en" if name.startswith("en") else "loc" if name.startswith("loc") else None
    tail = name.rsplit("_", 1)[-1]
    return kind, (tail if "_" in name and tail in LANGUAGES else None)


def _subset(config, kinds: set[str], language: str | None):
    from interventions.config import InterventionConfig

    chosen = []
    for iv in config.interventions:
        kind, lang = intervention_kind(iv.name)
        if kind in kinds and (lang is None or lang == language):
            chosen.append(iv)
    missing = kinds - {intervention_kind(iv.name)[0] for iv in chosen}
    if missing:
        where = f" for language {language}" if language else ""
        raise ValueError(f"steering: the intervention directory has no {'/'.join(sorted(missing)).upper()} "
                         f"intervention{where} (names: {[iv.name for iv in config.interventions]})")
    return InterventionConfig(chosen, dict(config.base_model))


def build_variants(ctx, language: str | None, config):
    """``evaluate.plane.Variant`` objects for the recipe's variants (steering for ``language``)."""
    from evaluate.plane import Variant

    peft_model = ctx.aligned_model() if ctx.adapter_source() is not None else None

    class BaseVariant(Variant):
        def context(self):
            stack = contextlib.ExitStack()
            if peft_model is not None:
                stack.enter_context(peft_model.disable_adapter())
            stack.enter_context(super().context())
            return stack

    needs = {"": set(), "en": {"en"}, "loc": {"loc"}, "surgical": {"en", "loc"}}
    variants = []
    for name in ctx.recipe.evaluate.variants:
        base, _, steer = name.partition("+")
        interventions = _subset(config, needs[steer], language) if steer else None
        if base == "cla":
            variants.append(Variant(name, peft_model, interventions))
        else:
            variants.append(BaseVariant(name, ctx.model, interventions))
    return variants


def _load_interventions(ctx):
    steering = ctx.output("steering")
    if steering is None:
        return None
    from interventions.config import InterventionConfig

    return InterventionConfig.from_pretrained(steering / "intervention")


def work_units(ctx, config) -> list[str | None]:
    """One unit per language when any intervention is language-specific, else one unit (None)."""
    per_language = config is not None and any(intervention_kind(iv.name)[1] for iv in config.interventions)
    return list(ctx.recipe.evaluate.languages) if per_language else [None]


def merge_results(parts: list[dict]) -> dict:
    """Concatenate per-language plane results (every row carries its language)."""
    if len(parts) == 1:
        return parts[0]
    merged = dict(parts[0])
    merged["config"] = {**parts[0]["config"], "languages": [p["config"]["languages"][0] for p in parts],
                        "evaluated_per_language": True}
    for key in ("metrics", "task_metrics"):
        merged[key] = [row for p in parts for row in p.get(key, [])
                       if not (row.get("language") == "en" and p is not parts[0])]
    # each part's "mean" facet is its single language; the cross-language mean needs language-aware
    # variants in evaluate.plane, so it is left out rather than approximated
    merged["plane"] = [row for p in parts for row in p.get("plane", []) if row.get("language") != "mean"]
    merged["n_items"] = {k: v for p in parts for k, v in p.get("n_items", {}).items()}
    merged["timings_s"] = {"total": round(sum(p.get("timings_s", {}).get("total") or 0 for p in parts), 2),
                           **{p["config"]["languages"][0]: p.get("timings_s") for p in parts}}
    return merged


def run_evaluate(ctx, stage, out: Path) -> dict:
    from evaluate.plane import evaluate_plane

    from .distributed import distributed_map

    e = ctx.recipe.evaluate
    config = _load_interventions(ctx)
    units = work_units(ctx, config)
    extra = {"recipe": ctx.recipe.name, "stage_hash": stage.hash}

    def unit(language):
        ctx.seed()
        languages = [language] if language else list(e.languages)
        return evaluate_plane(build_variants(ctx, language, config), ctx.tokenizer, list(e.tasks), languages,
                              split=e.split, out_dir=out if language is None else None, seed=ctx.recipe.seed,
                              n_boot=e.bootstrap, batch_size=e.batch_size, limit=e.n, config=extra)

    parts = distributed_map(unit, units, state=ctx.state, desc="languages")
    results = merge_results(parts)
    if units != [None]:
        from evaluate.plane import atomic_write

        atomic_write(out / "results.json", json.dumps(results, indent=2, default=str, ensure_ascii=False))
    plane = [r for r in results["plane"] if r.get("language") in ("mean", *e.languages)]
    return {"plane": [{k: r.get(k) for k in ("variant", "language", "score", "value", "ci_low", "ci_high")}
                      for r in plane]}


def _measure_claims(ctx, results: dict) -> dict:
    from .claims import measure_claims

    model_info = ctx.output("model") / "model.json"
    layers = json.loads(model_info.read_text())["num_hidden_layers"] if model_info.is_file() else None
    return measure_claims(results, ctx.output("steering"), ctx.output("analysis"), layers)


def run_report(ctx, stage, out: Path) -> dict:
    from evaluate import plots, report
    from evaluate.plane import CSV_FIELDS

    r = ctx.recipe.report
    results = json.loads((ctx.output("evaluate") / "results.json").read_text(encoding="utf-8"))
    figures = plots.plot_all(results, out) if r.plots else {}
    claims = _measure_claims(ctx, results)
    written = ["claims.json"]
    (out / "claims.json").write_text(json.dumps(claims, indent=2, default=str, ensure_ascii=False))
    if "md" in r.formats:
        from .claims import render_claims

        text = report.render_report(results, figures) + "\n" + render_claims(claims) + "\n"
        title = r.title or ctx.recipe.description or ctx.recipe.name
        (out / "report.md").write_text(f"# {title}\n\n{text}", encoding="utf-8")
        written.append("report.md")
    if "json" in r.formats:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str, ensure_ascii=False))
        written.append("results.json")
    if "csv" in r.formats:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results.get("metrics", []))
        writer.writerows({**row, "task": "plane", "cue": "", "metric": row["score"]} for row in results["plane"])
        (out / "results.csv").write_text(buf.getvalue(), encoding="utf-8")
        written.append("results.csv")
    verdicts = {"layers": claims["layers"]["verdict"], "orthogonality": claims["orthogonality"]["verdict"],
                **{d["variant"]: d["verdict"] for d in claims["surgical"]},
                **{f"erasure {e['variant']}": e["verdict"] for e in claims["erasure"]}}
    return {"files": written + sorted(figures.values() if isinstance(figures, dict) else []), "claims": verdicts}
