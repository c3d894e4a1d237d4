"""Per-item outcomes of a plane run, with per-item chance and trivial baselines.

:func:`variant_outcomes` turns one variant's scores into
``{(task, language, cue, metric): {item_id: Outcome}}``. Metrics per task kind:

- transfer: ``accuracy`` and ``consistency_with_en`` (0/1, from ``Task.item_outcomes``), ``margin``
  (log-prob of the gold minus the best distractor), and on the *gap* items (the reference variant right in
  English, wrong in L) ``accuracy_on_gap`` and ``margin_on_gap``;
- localization: ``localization_score`` and ``us_rate`` (0/1) and ``margin`` (log-prob of the local minus
  the US answer).

0/1 outcomes carry the item's chance (1 / candidates) and the expected outcome of the ``majority`` and
``fewer_tokens`` baselines (:mod:`evaluate.baselines`); margins carry none.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from .baselines import expected_outcome
from .margins import english_twin, gap_items, item_margin


MARGIN = "margin"
GAP_METRICS = {"accuracy": "accuracy_on_gap", MARGIN: "margin_on_gap"}


class Outcome(NamedTuple):
    value: float
    chance: float | None = None
    majority: float | None = None
    fewer_tokens: float | None = None


def _binary(metric: str, item, value: float, baselines: Mapping, en_id: str | None) -> Outcome:
    b = baselines.get(item.id, {})
    en = baselines.get(en_id, {}) if en_id else {}
    exp = {name: (expected_outcome(metric, item, b[name], en.get(name)) if name in b else None)
           for name in ("majority", "fewer_tokens")}
    return Outcome(value, 1.0 / len(item.candidates), exp["majority"], exp["fewer_tokens"])


def reference_gaps(task_objs, languages: Sequence[str], by_cell: Mapping, ref_scores: Mapping) -> dict:
    """{(task, language): gap item ids} of every transfer task under the reference variant's scores."""
    out = {}
    for task in task_objs:
        if task.kind != "transfer":
            continue
        en_items = by_cell.get((task.name, "en"), [])
        for lang in languages:
            items = by_cell.get((task.name, lang))
            if lang != "en" and items:
                out[(task.name, lang)] = gap_items(items + en_items, ref_scores)
    return out


def variant_outcomes(task_objs, languages: Sequence[str], by_cell: Mapping, scores: Mapping, baselines: Mapping,
                     gaps: Mapping) -> tuple[dict, list[dict]]:
    """(cells, task_metrics) of one variant; ``scores``: {item_id: ItemScore}; ``gaps`` from :func:`reference_gaps`.

    ``task_metrics`` are each task's own point metrics (``Task.metrics``), kept beside ours as a cross-check.
    """
    cells: dict[tuple, dict[str, Outcome]] = {}
    task_metrics = []
    for task in task_objs:
        en_items = by_cell.get((task.name, "en"), []) if task.kind == "transfer" else []
        langs = languages if task.kind == "localization" else list(dict.fromkeys([*languages, "en"]))
        for lang in langs:
            items = by_cell.get((task.name, lang))
            if not items:
                continue
            pool = items + [it for it in en_items if lang != "en"]
            chosen = {it.id: scores[it.id].choice for it in pool}
            by_id = {it.id: it for it in items}
            for metric, vals in task.item_outcomes(pool, chosen).items():
                for item_id, value in vals.items():
                    it = by_id.get(item_id)
                    if it is None:  # an English item pooled in for consistency
                        continue
                    cue = it.cue if task.kind == "localization" else ""
                    en_id = english_twin(it) if metric == "consistency_with_en" else None
                    cells.setdefault((task.name, lang, cue, metric), {})[item_id] = \
                        _binary(metric, it, value, baselines, en_id)
            gap = gaps.get((task.name, lang), set())
            for it in items:
                margin = item_margin(it, scores[it.id], task.kind)
                cue = it.cue if task.kind == "localization" else ""
                if margin is not None:
                    cells.setdefault((task.name, lang, cue, MARGIN), {})[it.id] = Outcome(margin)
                if it.id in gap:
                    acc = cells.get((task.name, lang, cue, "accuracy"), {}).get(it.id)
                    if acc is not None:
                        cells.setdefault((task.name, lang, cue, GAP_METRICS["accuracy"]), {})[it.id] = acc
                    if margin is not None:
                        cells.setdefault((task.name, lang, cue, GAP_METRICS[MARGIN]), {})[it.id] = Outcome(margin)
            task_metrics.append({"language": lang, **task.metrics(items, chosen)})  # the task's own point metrics
    return cells, task_metrics
