"""The transfer-localization plane: variants x tasks x languages, every number with a CI.

``evaluate_plane(variants, tokenizer, tasks, languages, out_dir=...)`` scores every variant on every
task's items (plus the English items of transfer tasks, for ``consistency_with_en`` and as the English
control), computes each task's per-item outcomes (``Task.item_outcomes``), and summarises them:

- per (variant, task, language, cue, metric): value, bootstrap 95% CI, n, chance, ``p_vs_chance``,
  ``above_chance``;
- per (variant, language) and over all languages ("mean"): ``transfer_score`` = mean over transfer tasks of
  their accuracy, ``localization_score`` = mean over localization tasks of their ``localization_score`` on
  implicit-cue items (the question without the country mention), CIs from a stratified bootstrap;
- paired tests of every other variant against the first (the base) on the same items: paired bootstrap of
  the difference and, for 0/1 outcomes, exact McNemar.

Outputs (atomic writes) in ``out_dir``: ``results.json``, ``results.csv``, ``predictions.jsonl``,
``plane.png``, ``tasks.png``, ``report.md``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from . import stats
from .scoring import score_items

logger = logging.getLogger(__name__)

CSV_FIELDS = ("variant", "language", "task", "cue", "metric", "value", "ci_low", "ci_high", "n", "chance",
              "p_vs_chance", "above_chance", "diff_vs_base", "p_vs_base")
HEADLINE = {"transfer": "accuracy", "localization": "localization_score"}
MEAN = "mean"


@dataclass
class Variant:
    """One point on the plane: a model (base or PeftModel) and optionally an InterventionConfig to steer it."""

    name: str
    model: Any
    interventions: Any = None

    def context(self):
        if self.interventions is None:
            return contextlib.nullcontext()
        try:
            from interventions import steer
        except ImportError as e:  # the steering module is written by another part of the project
            raise ImportError(f"variant {self.name!r} has interventions, but `from interventions import steer` "
                              f"failed ({e}); install/finish the interventions package or drop them") from e
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
def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "transformers", "pyvene", "peft", "trl", "datasets", "numpy", "seaborn"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is simply not listed
            continue
    with contextlib.suppress(Exception):
        root = Path(__file__).resolve().parents[1]
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                           timeout=10).stdout.strip()
    return out


def _resolve_tasks(tasks, seed: int):
    from .tasks import get_task

    out = []
    for t in tasks:
        out.append(get_task(t, seed=seed) if isinstance(t, str) else t)
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: each task may appear once, got {names}")
    return out


def collect_items(tasks, languages: Sequence[str], split: str = "test", limit: int | None = None):
    """{(task name, language): items}; transfer tasks also get English items (consistency and control).

    ``limit`` keeps the first ``limit`` items (sorted by id) of each (task, language, cue); ids are parallel
    across languages, so the same questions are kept in every language.
    """
    out: dict[tuple[str, str], list] = {}
    for task in tasks:
        langs = list(dict.fromkeys(list(languages) + (["en"] if task.kind == "transfer" else [])))
        supported = getattr(task, "languages", ()) or langs
        for lang in langs:
            if lang not in supported:
                logger.info("task %s has no items in %s; skipped", task.name, lang)
                continue
            items = task.items(lang, split=split)
            if limit is not None:
                kept, seen = [], {}
                for it in items:
                    seen[it.cue] = seen.get(it.cue, 0) + 1
                    if seen[it.cue] <= limit:
                        kept.append(it)
                items = kept
            if items:
                out[(task.name, lang)] = items
    if not out:
        raise ValueError(f"no items for tasks {[t.name for t in tasks]} in languages {list(languages)} "
                         f"(split {split!r})")
    return out


def _row(variant, language, task, cue, metric, summary) -> dict:
    return {"variant": variant, "language": language, "task": task, "cue": cue, "metric": metric, **summary}


# ------------------------------------------------------------------------------------------ main entry
def evaluate_plane(variants: Sequence[Variant], tokenizer, tasks, languages: Sequence[str], split: str = "test",
                   out_dir: str | Path | None = None, seed: int = 0, n_boot: int = 1000, batch_size: int = 16,
                   limit: int | None = None, progress: bool = True, config: dict | None = None) -> dict:
    """Score every variant x task x language, compute metrics with CIs and paired tests vs ``variants[0]``.

    ``tasks`` are registered names or Task objects. Returns the results dict that is also written to
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
    by_cell = collect_items(task_objs, languages, split=split, limit=limit)
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

    # per-item outcomes: {variant: {(task, language, cue, metric): {item_id: (value, chance)}}}
    outcomes: dict[str, dict[tuple, dict[str, tuple[float, float]]]] = {}
    task_metrics = []
    for v in variants:
        cells: dict[tuple, dict[str, tuple[float, float]]] = {}
        for task in task_objs:
            en_items = by_cell.get((task.name, "en"), []) if task.kind == "transfer" else []
            for lang in languages if task.kind == "localization" else list(dict.fromkeys([*languages, "en"])):
                items = by_cell.get((task.name, lang))
                if not items:
                    continue
                pool = items + [it for it in en_items if lang != "en"]
                chosen = {it.id: scores[v.name][it.id].choice for it in pool}
                per_item = task.item_outcomes(pool, chosen)
                by_id = {it.id: it for it in items}
                for metric, vals in per_item.items():
                    for item_id, value in vals.items():
                        it = by_id.get(item_id)
                        if it is None:  # an English item pooled in for consistency
                            continue
                        cue = it.cue if task.kind == "localization" else ""
                        cells.setdefault((task.name, lang, cue, metric), {})[item_id] = (value, 1 / len(it.candidates))
                try:  # the task's own point metrics, recorded next to ours as a cross-check
                    tm = task.metrics(items, chosen)
                    task_metrics.append({"variant": v.name, "language": lang, **tm})
                except Exception as e:  # noqa: BLE001 - a cross-check must not sink the run
                    logger.warning("task %s: metrics() failed for %s/%s: %s", task.name, v.name, lang, e)
        outcomes[v.name] = cells

    base = variants[0].name
    rows: list[dict] = []
    keys = sorted({k for cells in outcomes.values() for k in cells})
    for v in tqdm(variants, desc="statistics", unit="variant", disable=not progress):
        for key in keys:
            cell = outcomes[v.name].get(key)
            if not cell:
                continue
            ids = sorted(cell)
            values = [cell[i][0] for i in ids]
            row = _row(v.name, key[1], key[0], key[2], key[3],
                       stats.summarize(values, [cell[i][1] for i in ids], n_boot=n_boot, seed=seed))
            if v.name != base and key in outcomes[base]:
                common = [i for i in ids if i in outcomes[base][key]]
                cmp = stats.compare([outcomes[base][key][i][0] for i in common], [cell[i][0] for i in common],
                                    n_boot=n_boot, seed=seed)
                row.update(diff_vs_base=cmp["diff"], p_vs_base=cmp.get("p_mcnemar", cmp["p_paired_bootstrap"]),
                           comparison=cmp)
            rows.append(row)

    plane_rows = _plane_scores(variants, outcomes, kinds, languages, base, n_boot, seed)
    results = {
        "format_version": 1,
        "config": {"tasks": [t.name for t in task_objs], "languages": list(languages), "split": split,
                   "seed": seed, "n_boot": n_boot, "batch_size": batch_size, "limit": limit,
                   "task_kinds": kinds, **(config or {})},
        "definitions": {
            "transfer_score": "mean over transfer tasks of accuracy (0/1 per item: gold candidate chosen)",
            "localization_score": "mean over localization tasks of localization_score on implicit-cue items "
                                  "(0/1 per item: the local answer is preferred over the US answer)",
            "ci": f"percentile bootstrap {int(100 * (1 - stats.ALPHA))}% CI over items ({n_boot} resamples; "
                  "stratified by task for the plane scores)",
            "p_vs_chance": "one-sided exact Poisson-binomial test against per-item chance 1/len(candidates)",
            "p_vs_base": "exact McNemar on paired 0/1 outcomes vs the first variant (paired bootstrap otherwise)",
        },
        "versions": library_versions(),
        "variants": [v.describe() for v in variants],
        "n_items": {f"{t}/{lang}": len(items) for (t, lang), items in by_cell.items()},
        "timings_s": {**timings, "total": round(time.time() - started, 2)},
        "metrics": rows,
        "plane": plane_rows,
        "task_metrics": task_metrics,
    }
    if out_dir is not None:
        write_outputs(results, variants, by_cell, scores, Path(out_dir))
    return results


def _plane_scores(variants, outcomes, kinds, languages, base, n_boot, seed) -> list[dict]:
    """transfer_score / localization_score per (variant, language) and over languages ('mean')."""
    rows = []
    facets = list(languages) + [MEAN]
    for v in variants:
        for lang in facets:
            for score, kind in (("transfer_score", "transfer"), ("localization_score", "localization")):
                metric = HEADLINE[kind]
                cue = "implicit" if kind == "localization" else ""
                keys = sorted(k for k in outcomes[v.name] if kinds[k[0]] == kind and k[2] == cue and k[3] == metric
                              and (k[1] == lang or (lang == MEAN and k[1] in languages and k[1] != "en")))
                if not keys:
                    continue
                groups = [[outcomes[v.name][k][i][0] for i in sorted(outcomes[v.name][k])] for k in keys]
                value, low, high = stats.mean_of_means(groups, n_boot=n_boot, seed=seed)
                pooled = [outcomes[v.name][k][i] for k in keys for i in sorted(outcomes[v.name][k])]
                test = stats.vs_chance([p[0] for p in pooled], [p[1] for p in pooled])
                row = {"variant": v.name, "language": lang, "score": score, "value": value, "ci_low": low,
                       "ci_high": high, "n": len(pooled), "tasks": sorted({k[0] for k in keys}),
                       "chance": test["chance"],
                       "p_vs_chance": test["p_vs_chance"], "above_chance": test["above_chance"]}
                if v.name != base:
                    a, b = [], []
                    for k in keys:
                        for i in sorted(outcomes[v.name][k]):
                            if i in outcomes[base].get(k, {}):
                                a.append(outcomes[base][k][i][0])
                                b.append(outcomes[v.name][k][i][0])
                    cmp = stats.compare(a, b, n_boot=n_boot, seed=seed)
                    row.update(diff_vs_base=cmp["diff"], p_vs_base=cmp.get("p_mcnemar", cmp["p_paired_bootstrap"]))
                rows.append(row)
    return rows


def write_outputs(results: dict, variants, by_cell, scores, out_dir: Path) -> None:
    from . import plots, report

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "results.json", json.dumps(results, indent=2, default=str, ensure_ascii=False))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in results["metrics"]:
        writer.writerow(r)
    for r in results["plane"]:
        writer.writerow({**r, "task": "plane", "cue": "", "metric": r["score"]})
    atomic_write(out_dir / "results.csv", buf.getvalue())
    lines = []
    for v in variants:
        for (task, lang), items in by_cell.items():
            for it in items:
                s = scores[v.name][it.id]
                lines.append(json.dumps({"variant": v.name, "task": task, "language": it.language, "cue": it.cue,
                                         "gold": it.gold, "local": it.local, "us": it.us, **s.to_dict()},
                                        ensure_ascii=False))
    atomic_write(out_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    figures = plots.plot_all(results, out_dir)
    atomic_write(out_dir / "report.md", report.render_report(results, figures))
