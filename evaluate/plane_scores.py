"""Summary rows of a plane run: one per (variant, task, language, cue, metric) and the plane scores.

Every 0/1 row carries ``chance`` and the trivial baselines ``baseline_majority`` / ``baseline_fewer_tokens``
(:mod:`evaluate.baselines`) next to its value; margin rows carry the mean log-prob margin with its CI
(the primary outcome) and no chance. Rows of variants other than the reference (the first) carry the
paired difference on the same items.

Plane scores per (variant, language | "mean"):

- ``transfer_score`` / ``localization_score``: mean over transfer tasks of accuracy / over localization
  tasks of localization_score on implicit items; ``transfer_score_on_gap``: accuracy on the gap items;
- ``transfer_margin`` / ``localization_margin``: the same averages of the per-item margin.

Averages are over (task, language) cells, CIs from a bootstrap stratified by cell. Paired differences vs the
reference: exact McNemar / paired bootstrap for 0/1 scores; for margins a paired bootstrap resampling
items within each (task, language) cell (language-stratified when pooled over languages).
"""

from __future__ import annotations

from . import stats

MEAN = "mean"
BINARY_NONE = {"chance": None, "p_vs_chance": None, "above_chance": None}
# score -> (task kind, metric, cue)
PLANE_SCORES = {
    "transfer_score": ("transfer", "accuracy", ""),
    "localization_score": ("localization", "localization_score", "implicit"),
    "transfer_score_on_gap": ("transfer", "accuracy_on_gap", ""),
    "transfer_margin": ("transfer", "margin", ""),
    "localization_margin": ("localization", "margin", "implicit"),
}
MARGIN_SCORES = ("transfer_margin", "localization_margin")


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(sum(xs) / len(xs)) if xs else None


def _baselines(cell_lists) -> dict:
    """baseline_majority / baseline_fewer_tokens: the mean over cells of each cell's mean expected outcome."""
    out = {}
    for name in ("majority", "fewer_tokens"):
        per_cell = [_mean(getattr(o, name) for o in cell) for cell in cell_lists]
        out[f"baseline_{name}"] = None if any(v is None for v in per_cell) else _mean(per_cell)
    return out


def _summary(cell: dict, n_boot: int, seed: int) -> dict:
    ids = sorted(cell)
    values = [cell[i].value for i in ids]
    chances = [cell[i].chance for i in ids]
    if all(c is not None for c in chances):
        return {**stats.summarize(values, chances, n_boot=n_boot, seed=seed), **_baselines([[cell[i] for i in ids]])}
    return {**stats.summarize(values, n_boot=n_boot, seed=seed), **BINARY_NONE,
            "baseline_majority": None, "baseline_fewer_tokens": None}


def metric_rows(variants, outcomes: dict, base: str, n_boot: int, seed: int) -> list[dict]:
    """One row per (variant, task, language, cue, metric), with paired tests vs ``base``."""
    rows = []
    keys = sorted({k for cells in outcomes.values() for k in cells})
    for v in variants:
        for key in keys:
            cell = outcomes[v.name].get(key)
            if not cell:
                continue
            row = {"variant": v.name, "language": key[1], "task": key[0], "cue": key[2], "metric": key[3],
                   **_summary(cell, n_boot, seed)}
            ref = outcomes[base].get(key, {})
            if v.name != base and ref:
                common = [i for i in sorted(cell) if i in ref]
                cmp = stats.compare([ref[i].value for i in common], [cell[i].value for i in common],
                                    n_boot=n_boot, seed=seed)
                row.update(diff_vs_base=cmp["diff"], p_vs_base=cmp.get("p_mcnemar", cmp["p_paired_bootstrap"]),
                           comparison=cmp)
            rows.append(row)
    return rows


def _keys(cells: dict, kinds: dict, kind: str, metric: str, cue: str, facet: str, languages) -> list[tuple]:
    return sorted(k for k in cells if kinds[k[0]] == kind and k[2] == cue and k[3] == metric
                  and (k[1] == facet or (facet == MEAN and k[1] in languages and k[1] != "en")))


def plane_rows(variants, outcomes: dict, kinds: dict, languages, base: str, n_boot: int, seed: int) -> list[dict]:
    """The plane scores per (variant, language) and over languages ("mean")."""
    rows = []
    for v in variants:
        for facet in [*languages, MEAN]:
            for score, (kind, metric, cue) in PLANE_SCORES.items():
                cells = outcomes[v.name]
                keys = _keys(cells, kinds, kind, metric, cue, facet, languages)
                if not keys:
                    continue
                groups = [[cells[k][i].value for i in sorted(cells[k])] for k in keys]
                value, low, high = stats.mean_of_means(groups, n_boot=n_boot, seed=seed)
                row = {"variant": v.name, "language": facet, "score": score, "value": value, "ci_low": low,
                       "ci_high": high, "n": sum(map(len, groups)), "tasks": sorted({k[0] for k in keys})}
                if score in MARGIN_SCORES:
                    row.update(BINARY_NONE, baseline_majority=None, baseline_fewer_tokens=None)
                else:
                    pooled = [cells[k][i] for k in keys for i in sorted(cells[k])]
                    test = stats.vs_chance([o.value for o in pooled], [o.chance for o in pooled])
                    row.update(chance=test["chance"], p_vs_chance=test["p_vs_chance"],
                               above_chance=test["above_chance"],
                               **_baselines([[cells[k][i] for i in sorted(cells[k])] for k in keys]))
                if v.name != base:
                    row.update(_paired(outcomes[base], cells, keys, score, n_boot, seed))
                rows.append(row)
    return rows


def _paired(ref_cells: dict, cells: dict, keys: list[tuple], score: str, n_boot: int, seed: int) -> dict:
    a, b, strata = [], [], []
    for k in keys:
        ref = ref_cells.get(k, {})
        for i in sorted(cells[k]):
            if i in ref:
                a.append(ref[i].value)
                b.append(cells[k][i].value)
                strata.append(f"{k[0]}/{k[1]}")
    if not a:
        return {}
    if score in MARGIN_SCORES:
        res = stats.stratified_paired_bootstrap(a, b, strata, n_boot=n_boot, seed=seed, weighting="strata")
        return {"diff_vs_base": res["diff"], "diff_ci_low": res["ci_low"], "diff_ci_high": res["ci_high"],
                "p_vs_base": res["p_value"]}
    cmp = stats.compare(a, b, n_boot=n_boot, seed=seed)
    return {"diff_vs_base": cmp["diff"], "diff_ci_low": cmp["diff_ci_low"], "diff_ci_high": cmp["diff_ci_high"],
            "p_vs_base": cmp.get("p_mcnemar", cmp["p_paired_bootstrap"])}
