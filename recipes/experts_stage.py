"""The optional ``experts`` stage: find language-expert units, their matched controls, and measure them.

On the recipe's model (the base model; the stage runs before any adapter is loaded) it ranks the units of
``experts.components`` as experts of each target language against the contrast pool (one streaming pass over
``experts.n`` FLORES dev sentences per language, :func:`evaluate.contrasts.flores_experts`); with
``experts.separate_components`` each component is a pool of its own (ranked from the same pass). It writes, per
language ``L`` (and pool, ``L/<pool>/...``, when there are several):

- ``L/experts_k<k>/``: the top-``k`` experts forced to their median response over positives at every position,
  a ``set``-kind intervention directory (``InterventionConfig.save_pretrained``; each intervention's ``source``
  records ``method: finding_experts`` and the language), loadable with
  ``steering: {load: <stage dir>/L/experts_k<k>}`` and evaluated on the plane as the ``base+experts`` /
  ``cla+experts`` variant (:mod:`recipes.evaluation`: L's experts steer L's prompts, so ``evaluate.languages``
  is ``[L]``);
- ``L/<control>_k<k>/`` for each of ``experts.controls``: the matched control (``role: control``), forced alike;
- ``L/ranking/``: AP of every unit, every unit's median over L's sentences and between-language variance.

Unless ``experts.retrieval_n`` is 0, the sweep (:func:`evaluate.experts_report.run_report`): FLORES devtest top-1
retrieval L->en and en->L before and after forcing every set at each k of ``experts.ks`` (``retrieval.json``,
``retrieval.csv``, ``hits.safetensors``; ``ratios.csv``: the pre-registered summaries, mean over layers and the
middle layer, with 95% paired bootstrap CIs), with ``experts.side_effects`` the side effects of every set
(``side_effects.json``), with controls the pre-registered tests experts vs each control (``tests.json``; Holm),
``retrieval_L*.png`` and ``REPORT.md``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CSV_FIELDS = ("pool", "language", "set", "apply_to", "k", "direction", "layer", "middle_layer", "n", "top1_before",
              "top1", "top1_ci_low", "top1_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high")


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """Retrieval rows as CSV (the CI pairs split into low/high columns)."""
    from interventions.fsutil import atomic_write

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "top1_ci_low": r["top1_ci"][0], "top1_ci_high": r["top1_ci"][1],
                         "ratio_ci_low": r["ratio_ci"][0], "ratio_ci_high": r["ratio_ci"][1]})
    atomic_write(path, buffer.getvalue())


def run_experts(ctx, stage, out: Path) -> dict:
    from evaluate import experts_report
    from evaluate.contrasts import flores_experts
    from evaluate.experts_eval import capacity_problem, pools, side_effect_ks, unit_sets
    from interventions.fsutil import atomic_write

    from .errors import RecipeError

    x = stage.config
    model, tokenizer = ctx.model, ctx.tokenizer
    ks = sorted(set(x["ks"]))
    k_max = max([x["k"], *ks])
    problem = capacity_problem(model, x["components"], x["separate_components"], x["controls"], k_max)
    if problem:  # before the finding pass
        raise RecipeError("experts.ks", problem)
    ctx.seed()
    t0 = time.time()
    rankings = flores_experts(model, tokenizer, x["contrast"], targets=x["languages"], n=x["n"], k_max=k_max,
                              components=x["components"], bins=x["bins"],
                              batch_size=ctx.recipe.evaluate.batch_size)
    find_s = time.time() - t0
    by_pool = pools(rankings, x["separate_components"])
    unit_sets(by_pool, sorted({x["k"], *ks}), x["controls"], x["seed"])  # every set drawn before any is written
    for lang, ranking in rankings.items():
        ranking.save(out / lang / "ranking")
    saved = experts_report.save_sets(model, by_pool, x["k"], out, x["controls"], x["seed"])
    first = next(iter(by_pool))
    interventions = {r["language"]: r["path"] for r in saved if r["set"] == "experts" and r["pool"] == first}
    for pool, by_lang in by_pool.items():
        for lang, ranking in by_lang.items():
            top = ranking.average_precision[ranking.order[: x["k"]]]
            logger.info("experts %s (%s): top-%d AP %.3f..%.3f", lang, pool, x["k"], float(top.max()),
                        float(top.min()))
    result = {"interventions": interventions, "saved": saved, "find_seconds": round(find_s, 1),
              "top_k_min_ap": {f"{lang}/{pool}": float(r.average_precision[r.order[x["k"] - 1]])
                               for pool, by_lang in by_pool.items() for lang, r in by_lang.items()}}
    if x["retrieval_n"]:
        t1 = time.time()
        report = experts_report.run_report(
            model, tokenizer, by_pool, ks, out, controls=x["controls"], retrieval_n=x["retrieval_n"],
            apply_to=x["apply_to"], side_effect_ks=side_effect_ks(x["side_effects"], ks), seed=x["seed"],
            batch_size=ctx.recipe.evaluate.batch_size, meta={"model": ctx.recipe.model.name, "stage": "experts", **x})
        rows = report["rows"]
        write_rows_csv(rows, out / "retrieval.csv")
        summary = experts_report.summary_rows(rows)
        write_rows_csv(summary, out / "ratios.csv")
        atomic_write(out / "ratios.json", json.dumps(summary, indent=1, ensure_ascii=False))
        result["retrieval_seconds"] = round(time.time() - t1, 1)
        result["passes"] = report["passes"]
        result["ratios"] = [{key: r[key] for key in ("pool", "language", "set", "apply_to", "k", "direction",
                                                     "layer", "ratio", "ratio_ci")} for r in summary]
        result["tests"] = [{key: t[key] for key in ("control", "pool", "apply_to", "k", "direction", "summary",
                                                    "diff", "ci", "p_holm", "verdict")}
                           for family in report["tests"].values() for t in family]
    return result
