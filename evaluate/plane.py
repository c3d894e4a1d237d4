"""The transfer-localization plane: variants x tasks x languages, every number with a CI.

``evaluate_plane(variants, tokenizer, tasks, languages, out_dir=...)`` scores every variant on every
task's items (plus the English items of transfer tasks, for ``consistency_with_en`` and as the English
control), computes each task's per-item outcomes (:mod:`evaluate.outcomes`: 0/1 metrics and the primary
outcome, the log-prob ``margin`` of :mod:`evaluate.margins`), and summarises them
(:mod:`evaluate.plane_scores`):

- per (variant, task, language, cue, metric): value, bootstrap 95% CI, n, chance, ``p_vs_chance``,
  ``above_chance`` and the trivial baselines ``baseline_majority`` / ``baseline_fewer_tokens``
  (:mod:`evaluate.baselines`);
- per (variant, language) and over all languages ("mean"): ``transfer_score`` = mean over transfer tasks of
  their accuracy, ``localization_score`` = mean over localization tasks of their ``localization_score`` on
  implicit-cue items (the question without the country mention), ``transfer_score_on_gap`` (accuracy on
  the items the base gets right in English and wrong in L), and the mean margins ``transfer_margin`` /
  ``localization_margin``; CIs from a bootstrap stratified by (task, language);
- paired tests of every other variant against the first (the base) on the same items: paired bootstrap of
  the difference (margins: resampling within each task and language) and, for 0/1 outcomes, exact McNemar.

``limit=n`` evaluates a seeded sample of ``n`` question groups per task, stratified by relation / subject /
topic, the same groups in every language, with the share of one gold answer capped
(:func:`evaluate.sampling.stratified_sample`).

Outputs (atomic writes) in ``out_dir``: ``results.json``, ``results.csv``, ``predictions.jsonl``,
``plane.png``, ``tasks.png``, ``report.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from .baselines import baseline_choices
from .margins import item_margin
from interventions.fsutil import atomic_write
from interventions.provenance import versions

from .outputs import results_csv
from .outcomes import reference_gaps, variant_outcomes
from .plane_scores import metric_rows, plane_rows
from .sampling import MAX_GOLD_SHARE, stratified_sample
from . import stats
from .scoring import score_items

logger = logging.getLogger(__name__)

@dataclass
class Variant:
    """One point on the plane: a model (base or PeftModel) and optionally an InterventionConfig to steer it."""

    name: str
    model: Any
    interventions: Any = None

    def context(self):
        if self.interventions is None:
            return contextlib.nullcontext()
        from interventions.steer import steer

        return steer(self.model, self.interventions)

    def describe(self) -> dict:
        from interventions.models import model_id

        d = {"name": self.name, "model": model_id(self.model), "peft": hasattr(self.model, "peft_config")}
        if hasattr(self.model, "peft_config"):
            d["adapters"] = {k: str(getattr(v, "peft_type", "")) for k, v in self.model.peft_config.items()}
        iv = self.interventions
        if iv is not None:
            to_dict = getattr(iv, "to_dict", None)
            d["interventions"] = to_dict() if callable(to_dict) else repr(iv)
        return d


# ------------------------------------------------------------------------------------------ helpers
def _resolve_tasks(tasks, seed: int):
    from .tasks import get_task

    out = []
    for t in tasks:
        out.append(get_task(t, seed=seed) if isinstance(t, str) else t)
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: each task may appear once, got {names}")
    return out


def collect_items(tasks, languages: Sequence[str], split: str = "test", limit: int | None = None, seed: int = 0,
                  max_gold_share: float | None = MAX_GOLD_SHARE):
    """{(task name, language): items}; transfer tasks also get English items (consistency and control).

    ``limit=n`` keeps the items of ``n`` question groups drawn by :func:`evaluate.sampling.stratified_sample`
    (seeded, stratified by relation / subject / topic, at most ``max_gold_share`` of the groups with one gold
    answer; all twins of a group): for transfer tasks (parallel translations) one sample over all languages,
    English included, so the same questions are kept in every language; for localization tasks (per-country
    data, only partly parallel) ``n`` groups per language from one seeded ranking shared by the languages (a
    concept ranks the same in each; languages with the same concepts get the same sample). Never the first n
    by id. ``limit`` may also map a task kind (``transfer`` / ``localization``) to its own n (None: all).
    """
    out: dict[tuple[str, str], list] = {}
    for task in tasks:
        langs = list(dict.fromkeys(list(languages) + (["en"] if task.kind == "transfer" else [])))
        supported = getattr(task, "languages", ()) or langs
        lim = limit.get(task.kind) if isinstance(limit, Mapping) else limit
        per_lang = {}
        for lang in langs:
            if lang not in supported:
                logger.info("task %s has no items in %s; skipped", task.name, lang)
                continue
            per_lang[lang] = task.items(lang, split=split)
        if lim is not None and task.kind == "transfer":  # parallel translations: one sample, English included
            kept = {it.id for it in stratified_sample([it for items in per_lang.values() for it in items], lim,
                                                      seed=seed, max_gold_share=max_gold_share)}
            per_lang = {lang: [it for it in items if it.id in kept] for lang, items in per_lang.items()}
        elif lim is not None:  # per-country data, partly parallel: n groups in each language, one shared ranking
            per_lang = {lang: stratified_sample(items, lim, seed=seed, max_gold_share=max_gold_share)
                        for lang, items in per_lang.items()}
        for lang, items in per_lang.items():
            if items:
                out[(task.name, lang)] = items
    if not out:
        raise ValueError(f"no items for tasks {[t.name for t in tasks]} in languages {list(languages)} "
                         f"(split {split!r})")
    return out


# ------------------------------------------------------------------------------------------ main entry
def evaluate_plane(variants: Sequence[Variant], tokenizer, tasks, languages: Sequence[str], split: str = "test",
                   out_dir: str | Path | None = None, seed: int = 0, n_boot: int = 1000, batch_size: int = 16,
                   limit: int | None = None, progress: bool = True, config: dict | None = None,
                   max_gold_share: float | None = MAX_GOLD_SHARE) -> dict:
    """Score every variant x task x language, compute metrics with CIs and paired tests vs ``variants[0]``.

    ``tasks`` are registered names or Task objects; ``limit`` / ``max_gold_share``: see :func:`collect_items`
    (sampled with ``seed``). Returns the results dict that is also written to
    ``out_dir/results.json`` (with results.csv, predictions.jsonl, plane.png, tasks.png, report.md).
    """
    variants = list(variants)
    if not variants:
        raise ValueError("variants: expected at least one Variant (the first is the base for paired tests)")
    if len({v.name for v in variants}) != len(variants):
        raise ValueError(f"variants: names must be unique, got {[v.name for v in variants]}")
    if not languages:
        raise ValueError("languages: expected at least one ISO 639-1 code")
    started = time.time()
    task_objs = _resolve_tasks(tasks, seed)
    kinds = {t.name: t.kind for t in task_objs}
    by_cell = collect_items(task_objs, languages, split=split, limit=limit, seed=seed, max_gold_share=max_gold_share)
    all_items = list({it.id: it for items in by_cell.values() for it in items}.values())

    scores: dict[str, dict[str, Any]] = {}
    timings = {}
    for v in tqdm(variants, desc="variants", unit="variant", disable=not progress):
        t0, c0 = time.time(), time.process_time()
        with v.context():
            result = score_items(v.model, tokenizer, all_items, batch_size=batch_size, progress=progress)
        scores[v.name] = {s.item_id: s for s in result}
        timings[v.name] = round(time.time() - t0, 2)
        timings[f"{v.name}_cpu"] = round(time.process_time() - c0, 2)  # CPU seconds (all threads)

    # per-item outcomes: {variant: {(task, language, cue, metric): {item_id: Outcome}}}
    base = variants[0].name
    baselines = baseline_choices(by_cell, kinds, scores[base])
    gaps = reference_gaps(task_objs, languages, by_cell, scores[base])
    outcomes, task_metrics = {}, []
    for v in variants:
        outcomes[v.name], tm = variant_outcomes(task_objs, languages, by_cell, scores[v.name], baselines, gaps)
        task_metrics += [{"variant": v.name, **m} for m in tm]
    rows = metric_rows(tqdm(variants, desc="statistics", unit="variant", disable=not progress), outcomes, base,
                       n_boot, seed)
    plane = plane_rows(variants, outcomes, kinds, languages, base, n_boot, seed)
    results = {
        "format_version": 1,
        "config": {"tasks": [t.name for t in task_objs], "languages": list(languages), "split": split,
                   "seed": seed, "n_boot": n_boot, "batch_size": batch_size, "limit": limit,
                   "max_gold_share": max_gold_share if limit is not None else None,
                   "task_kinds": kinds, **(config or {})},
        "definitions": {
            "transfer_score": "mean over transfer tasks of accuracy (0/1 per item: gold candidate chosen)",
            "localization_score": "mean over localization tasks of localization_score on implicit-cue items "
                                  "(0/1 per item: the local answer is preferred over the US answer)",
            "ci": f"percentile bootstrap {int(100 * (1 - stats.LEVEL))}% CI over items ({n_boot} resamples; "
                  "stratified by task for the plane scores)",
            "p_vs_chance": "one-sided exact Poisson-binomial test against per-item chance 1/len(candidates)",
            "p_vs_base": "exact McNemar on paired 0/1 outcomes vs the first variant (paired bootstrap otherwise; "
                         "margins in the plane: paired bootstrap resampling items within each task and language)",
            "margin": "primary outcome per item: log-prob (as the scorer chose by: summed, or per token for "
                      "length-normalised tasks) of the local minus the US answer (localization), of the gold "
                      "minus the best distractor (transfer); > 0 exactly when the choice is right",
            "gap": "transfer items in L whose English twin the first variant gets right while it gets the L item "
                   "wrong; transfer_score_on_gap is accuracy on them",
            "baseline_majority": "expected score of always giving the cell's most frequent answer string (gold; "
                                 "for localization the local or US answer, whichever is more frequent), "
                                 "uniform guess where it is not a candidate",
            "baseline_fewer_tokens": "expected score of picking the candidate with the fewest tokens",
        },
        "versions": versions(),
        "variants": [v.describe() for v in variants],
        "n_items": {f"{t}/{lang}": len(items) for (t, lang), items in by_cell.items()},
        "n_gap_items": {f"{t}/{lang}": len(ids) for (t, lang), ids in gaps.items()},
        "timings_s": {**timings, "total": round(time.time() - started, 2)},
        "metrics": rows,
        "plane": plane,
        "task_metrics": task_metrics,
    }
    if out_dir is not None:
        write_outputs(results, variants, by_cell, scores, Path(out_dir), gaps)
    return results


def write_outputs(results: dict, variants, by_cell, scores, out_dir: Path, gaps: dict | None = None) -> None:
    from . import plots, report

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "results.json", json.dumps(results, indent=2, default=str, ensure_ascii=False))
    atomic_write(out_dir / "results.csv", results_csv(results))
    lines = []
    kinds = results["config"]["task_kinds"]
    gap_ids = set().union(*gaps.values()) if gaps else set()
    for v in variants:
        for (task, lang), items in by_cell.items():
            for it in items:
                s = scores[v.name][it.id]
                extra = {"margin": item_margin(it, s, kinds.get(task))}
                if kinds.get(task) == "transfer" and it.language != "en":
                    extra["gap"] = it.id in gap_ids
                lines.append(json.dumps({"variant": v.name, "task": task, "language": it.language, "cue": it.cue,
                                         "gold": it.gold, "local": it.local, "us": it.us, **s.to_dict(), **extra},
                                        ensure_ascii=False))
    atomic_write(out_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    figures = plots.plot_all(results, out_dir)
    atomic_write(out_dir / "report.md", report.render_report(results, figures))
