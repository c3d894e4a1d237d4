"""Plane scores over several evaluation work units, recomputed from their predictions.

A recipe whose interventions are made per language evaluates one language per work unit (one
``evaluate_plane`` call each, :mod:`recipes.evaluation`), so no single call sees every language and none
gives the pooled cross-language ("mean") rows. :func:`pooled_rows` rebuilds every unit's per-item outcomes
from its predictions, exactly as its own call computed them: the items it scored (its language and, for
transfer tasks, the English control, looked up by id in the tasks), each variant's scores, and the plane's
own functions for the rest (``evaluate.baselines.baseline_choices``, ``evaluate.outcomes.reference_gaps`` /
``variant_outcomes`` against the first variant, ``evaluate.plane_scores.plane_rows``). So each language's
rows equal its unit's rows, and the "mean" rows pool the units' items as one call would if the variants'
steering could follow each item's language (both tested).
"""

from __future__ import annotations

from types import SimpleNamespace


def _item_score(p: dict):
    from evaluate.scoring import ItemScore

    return ItemScore(item_id=p["item_id"], logprob=tuple(p["logprob"]), n_tokens=tuple(p["n_tokens"]),
                     choice=p["choice"], choice_sum=p["choice_sum"], choice_mean=p["choice_mean"],
                     scoring=p["scoring"], normalization=p["normalization"])


def unit_outcomes(tasks, language: str, predictions: list[dict], variants: list[str], split: str) -> dict:
    """{variant: {(task, language, cue, metric): {item_id: Outcome}}} of one unit (its ``predictions``)."""
    from evaluate.baselines import baseline_choices
    from evaluate.outcomes import reference_gaps, variant_outcomes

    cells: dict[tuple, list] = {}
    for task in tasks:
        ids = {p["item_id"] for p in predictions if p["task"] == task.name}
        for lang in dict.fromkeys([language, "en"] if task.kind == "transfer" else [language]):
            items = [it for it in task.items(lang, split=split) if it.id in ids]  # a cell may hold other
            if items:                                                           # languages' items (controls)
                cells[(task.name, lang)] = items
        missing = ids - {it.id for (name, _), items in cells.items() if name == task.name for it in items}
        if missing:
            raise RuntimeError(f"pooling: {len(missing)} predicted {task.name} items of unit {language} are not "
                               f"in the task's {split!r} split (e.g. {sorted(missing)[0]})")
    scores = {v: {p["item_id"]: _item_score(p) for p in predictions if p["variant"] == v} for v in variants}
    kinds = {t.name: t.kind for t in tasks}
    reference = scores[variants[0]]
    baselines = baseline_choices(cells, kinds, reference)
    gaps = reference_gaps(tasks, [language], cells, reference)
    return {v: variant_outcomes(tasks, [language], cells, scores[v], baselines, gaps)[0] for v in variants}


def pooled_rows(results: dict, predictions: list[dict]) -> list[dict]:
    """Plane rows (every unit's language and "mean") from merged ``results`` and unit-tagged ``predictions``."""
    from evaluate.plane_scores import plane_rows
    from evaluate.tasks import get_task

    cfg = results["config"]
    tasks = [get_task(name, seed=cfg["seed"]) for name in cfg["tasks"]]
    variants = [v["name"] for v in results["variants"]]
    languages = list(cfg["languages"])
    outcomes: dict[str, dict] = {v: {} for v in variants}
    for language in languages:
        mine = [p for p in predictions if p["unit"] == language]
        for v, cells in unit_outcomes(tasks, language, mine, variants, cfg["split"]).items():
            outcomes[v].update({key: cell for key, cell in cells.items() if key[1] == language})
    return plane_rows([SimpleNamespace(name=v) for v in variants], outcomes, {t.name: t.kind for t in tasks},
                      languages, variants[0], cfg["n_boot"], cfg["seed"])
