"""``report.md`` for a plane run: tables, the figures, and one paragraph of reading per figure.

The reading is generated from the numbers (which variants move which way and whether the move is
significant against the base; which cells are above chance), so it never says more than results.json.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .generations import render_generations
from .outputs import HEADLINE, MEAN
from .stats import LEVEL, format_p
from .tables import markdown_table, number


def _ci(r: dict) -> str:
    if r.get("value") is None or r["value"] != r["value"]:
        return "n/a"
    return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _mark(r: dict) -> str:
    return "yes" if r.get("above_chance") else "no"


def _refs(r: dict | None) -> str:
    """chance / majority / fewer-tokens of a row, the numbers its value has to beat."""
    if not r:
        return ""
    return " / ".join(number(r.get(k)) for k in ("chance", "baseline_majority", "baseline_fewer_tokens"))


def _cells(results: dict) -> dict[tuple, dict]:
    cells: dict[tuple, dict] = {}
    for r in results["plane"]:
        cells.setdefault((r["variant"], r["language"]), {})[r["score"]] = r
    return cells


def plane_table(results: dict) -> str:
    rows = []
    for (variant, lang), c in _cells(results).items():
        t, loc, gap = c.get("transfer_score"), c.get("localization_score"), c.get("transfer_score_on_gap")
        rows.append([variant, lang, _ci(t) if t else "n/a", _mark(t) if t else "", _refs(t),
                     _ci(loc) if loc else "n/a", _mark(loc) if loc else "", _refs(loc),
                     f"{_ci(gap)} ({gap['n']})" if gap else "n/a"])
    return markdown_table(["variant", "language", "transfer_score [95% CI]", "above chance",
                           "chance / majority / fewer tokens", "localization_score [95% CI]", "above chance",
                           "chance / majority / fewer tokens", "transfer_score_on_gap [95% CI] (n)"], rows)


def _diff(r: dict | None) -> str:
    if not r or r.get("diff_vs_base") is None:
        return ""
    ci = (f" [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}]" if r.get("diff_ci_low") is not None else "")
    return f"{r['diff_vs_base']:+.2f}{ci} (p={format_p(r.get('p_vs_base'))})"


def margin_table(results: dict) -> str:
    """The primary outcome: mean log-prob margin per (variant, language), paired difference vs the base."""
    base = results["variants"][0]["name"]
    f = (lambda r: f"{r['value']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if r else "n/a")
    rows = [[variant, lang, f(t), _diff(t), f(loc), _diff(loc)]
            for (variant, lang), c in _cells(results).items()
            for t, loc in [(c.get("transfer_margin"), c.get("localization_margin"))] if t or loc]
    return markdown_table(["variant", "language", "transfer_margin [95% CI]", f"diff vs {base} [95% CI]",
                           "localization_margin [95% CI]", f"diff vs {base} [95% CI]"], rows)


def metrics_table(results: dict) -> str:
    base = results["variants"][0]["name"]
    rows = [[r["variant"], r["task"], r["language"], r["cue"] or "-", r["metric"], _ci(r), r["n"],
             number(r.get("chance")), number(r.get("baseline_majority")), number(r.get("baseline_fewer_tokens")),
             format_p(r.get("p_vs_chance")), f"{r['diff_vs_base']:+.3f}" if "diff_vs_base" in r else "",
             format_p(r.get("p_vs_base")) if "p_vs_base" in r else ""] for r in results["metrics"]]
    return markdown_table(["variant", "task", "language", "cue", "metric", "value [95% CI]", "n", "chance",
                           "majority", "fewer tokens", "p vs chance", f"diff vs {base}", f"p vs {base}"], rows)


def read_plane(results: dict) -> str:
    headline = [r for r in results["plane"] if r["score"] in ("transfer_score", "localization_score")]
    rows = [r for r in headline if r["language"] == MEAN] or headline
    base = results["variants"][0]["name"]
    parts = []
    for r in rows:
        if r["variant"] != base:
            continue
        scope = "Averaged over languages" if r["language"] == MEAN else f"In {r['language']}"
        beats = [f"{name} {r[k]:.3f}" for name, k in (("majority", "baseline_majority"),
                                                       ("fewer-tokens", "baseline_fewer_tokens"))
                 if r.get(k) is not None]
        parts.append(f"{scope}, {base} has {r['score']} {r['value']:.3f} "
                     f"(95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f}, chance {r['chance']:.3f}"
                     + (f"; trivial baselines: {', '.join(beats)}" if beats else "") + "), which is "
                     f"{'above' if r['above_chance'] else 'not distinguishable from'} chance "
                     f"(p={format_p(r['p_vs_chance'])}).")
    for r in rows:
        if r["variant"] == base or "diff_vs_base" not in r:
            continue
        sig = r["p_vs_base"] < LEVEL
        if r["diff_vs_base"] == 0:
            where = "" if r["language"] == MEAN else f" in {r['language']}"
            parts.append(f"{r['variant']} leaves {r['score']}{where} unchanged vs {base}.")
            continue
        direction = "raises" if r["diff_vs_base"] > 0 else "lowers"
        where = "" if r["language"] == MEAN else f" in {r['language']}"
        parts.append(f"{r['variant']} {direction} {r['score']}{where} by {r['diff_vs_base']:+.3f} vs {base} "
                     f"({'significant' if sig else 'not significant'}, paired p={format_p(r['p_vs_base'])}).")
    by_lang = [r for r in headline if r["language"] != MEAN and r["variant"] == base]
    above = sorted({f"{r['language']} ({r['score']})" for r in by_lang if r["above_chance"]})
    if by_lang:
        parts.append("Per language, the base is above chance on: " + (", ".join(above) if above else "nothing") + ".")
    return " ".join(parts) or "No plane scores were computed."


def read_tasks(results: dict) -> str:
    kinds = results["config"]["task_kinds"]
    base = results["variants"][0]["name"]
    parts = []
    for task in results["config"]["tasks"]:
        metric = HEADLINE[kinds[task]]
        rs = [r for r in results["metrics"] if r["task"] == task and r["metric"] == metric
              and r["cue"] in ("", "implicit")]
        if not rs:
            continue
        b = [r for r in rs if r["variant"] == base]
        above = [r["language"] for r in b if r["above_chance"]]
        not_above = [r["language"] for r in b if not r["above_chance"]]
        if not above:
            s = f"{task} ({metric}): {base} is not above chance in any language ({', '.join(not_above)})."
        else:
            s = (f"{task} ({metric}): {base} is above chance in {', '.join(above)}"
                 + (f" and not in {', '.join(not_above)}" if not_above else "") + ".")
        moved = [r for r in rs if r["variant"] != base and r.get("p_vs_base", 1) < LEVEL]
        if moved:
            s += " Significant moves vs base: " + "; ".join(
                f"{r['variant']} {r['language']} {r['diff_vs_base']:+.3f}" for r in moved) + "."
        elif any(r["variant"] != base for r in rs):
            s += " No variant differs significantly from the base."
        parts.append(s)
    return " ".join(parts)


def render_report(results: dict, figures: dict[str, str]) -> str:
    cfg = results["config"]
    v = results["versions"]
    out = [
        "# Evaluation report",
        "",
        f"Variants: {', '.join(x['name'] for x in results['variants'])} (first = base for paired tests). "
        f"Tasks: {', '.join(cfg['tasks'])}. Languages: {', '.join(cfg['languages'])} (+ en control). "
        f"Split: {cfg['split']}, seed {cfg['seed']}, {cfg['n_boot']} bootstrap resamples"
        + (f", a seeded sample of {cfg['limit']} question groups per task (stratified by relation/subject/topic; "
           f"transfer: the same groups in every language; localization: per language from one shared ranking; "
           f"at most a share {cfg.get('max_gold_share')} of them with one gold answer)"
           if cfg.get("limit") else "") + ".",
        f"Versions: torch {v.get('torch', '?')}, transformers {v.get('transformers', '?')}, "
        f"commit {v.get('git_commit', '?')[:10]}. Time: {results['timings_s'].get('total')} s.",
        "",
        "Definitions: " + "; ".join(f"**{k}** = {d}" for k, d in results["definitions"].items()) + ".",
        "",
        "## Transfer-localization plane",
        "",
        plane_table(results),
        "",
        "Primary outcome: mean log-probability margin (local minus US answer; gold minus best distractor), "
        "paired differences vs the base resampled within each task and language.",
        "",
        margin_table(results),
        "",
    ]
    if "plane" in figures:
        out += [f"![transfer-localization plane]({figures['plane']})", ""]
    out += [read_plane(results), "", "## Per-task results", ""]
    if "tasks" in figures:
        out += [f"![per-task bars]({figures['tasks']})", ""]
    out += [read_tasks(results), "", "### All metrics", "", metrics_table(results), ""]
    if results.get("generations"):
        out += [render_generations(results["generations"], results.get("generations_settings")), ""]
    return "\n".join(out)
