"""The optional ``experts`` stage: find language-expert units and save them as set-kind interventions.

On the recipe's model (the base model; the stage runs before any adapter is loaded) it ranks the units of
``experts.components`` as experts of each target language against the contrast pool (one streaming pass over
``experts.n`` FLORES dev sentences per language, :func:`evaluate.contrasts.flores_experts`) and writes, per
language ``L``:

- ``L/experts_k<k>/``: the top-``k`` experts forced to their median response over positives at every position,
  a ``set``-kind intervention directory (``InterventionConfig.save_pretrained``; each intervention's ``source``
  records ``method: finding_experts`` and the language), loadable with
  ``steering: {load: <stage dir>/L/experts_k<k>}`` and evaluated on the plane as the ``base+experts`` /
  ``cla+experts`` variant (:mod:`recipes.evaluation`: L's experts steer L's prompts, so ``evaluate.languages``
  is ``[L]``);
- ``L/ranking/``: AP of every unit and the medians of the best ``max(ks)``.

Unless ``experts.retrieval_n`` is 0, FLORES devtest top-1 retrieval L->en and en->L before and after forcing the
top-k experts for each k of ``experts.ks`` (:func:`evaluate.experts_eval.run_report`): ``retrieval.json`` and
``retrieval.csv`` (every layer), ``ratios.csv`` (the pre-registered summaries: mean over layers and the middle
layer, with 95% paired bootstrap CIs), ``retrieval_L.png`` per language, ``REPORT.md``, and with
``experts.side_effects`` also ``side_effects.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CSV_FIELDS = ("language", "apply_to", "k", "direction", "layer", "middle_layer", "n", "top1_before", "top1",
              "top1_ci_low", "top1_ci_high", "ratio", "ratio_ci_low", "ratio_ci_high")


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """Retrieval rows as CSV (the CI pairs split into low/high columns)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "top1_ci_low": r["top1_ci"][0], "top1_ci_high": r["top1_ci"][1],
                             "ratio_ci_low": r["ratio_ci"][0], "ratio_ci_high": r["ratio_ci"][1]})


def run_experts(ctx, stage, out: Path) -> dict:
    from evaluate import experts_eval
    from evaluate.contrasts import flores_experts

    x = stage.config
    model, tokenizer = ctx.model, ctx.tokenizer
    ctx.seed()
    k_max = max([x["k"], *x["ks"]])
    t0 = time.time()
    rankings = flores_experts(model, tokenizer, x["contrast"], targets=x["languages"], n=x["n"], k_max=k_max,
                              components=x["components"], bins=x["bins"],
                              batch_size=ctx.recipe.evaluate.batch_size)
    find_s = time.time() - t0
    interventions = {}
    for lang, ranking in rankings.items():
        ranking.save(out / lang / "ranking")
        directory = out / lang / f"experts_k{x['k']}"
        ranking.config(model, x["k"]).save_pretrained(directory, model=model)
        interventions[lang] = str(directory.relative_to(out))
        top = ranking.average_precision[ranking.order[: x["k"]]]
        logger.info("experts %s: top-%d AP %.3f..%.3f -> %s", lang, x["k"], float(top.max()), float(top.min()),
                    directory.name)
    result = {"interventions": interventions, "find_seconds": round(find_s, 1),
              "top_k_min_ap": {lang: float(r.average_precision[r.order[x["k"] - 1]]) for lang, r in rankings.items()}}
    if x["retrieval_n"]:
        t1 = time.time()
        report = experts_eval.run_report(
            model, tokenizer, rankings, x["ks"], out, retrieval_n=x["retrieval_n"], apply_to=x["apply_to"],
            side_effect_k=x["k"] if x["side_effects"] else None, seed=x["seed"],
            batch_size=ctx.recipe.evaluate.batch_size,
            meta={"model": ctx.recipe.model.name, "stage": "experts", **x})
        rows = report["rows"]
        write_rows_csv(rows, out / "retrieval.csv")
        summary = experts_eval.summary_rows(rows)
        write_rows_csv(summary, out / "ratios.csv")
        (out / "ratios.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
        result["retrieval_seconds"] = round(time.time() - t1, 1)
        result["ratios"] = [{key: r[key] for key in ("language", "apply_to", "k", "direction", "layer", "ratio",
                                                     "ratio_ci")} for r in summary]
    return result
