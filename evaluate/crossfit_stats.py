"""The out-of-fold plane pooled over languages, and the pre-registered tests with Holm correction.

Input: per model run (``"base"``: the model alone; ``"cla"``: with the alignment adapter) the per-item
out-of-fold outcomes of :func:`evaluate.crossfit.crossfit_language` for every language. Primary outcome per
item: the log-prob **margin** (localization: local minus US answer; transfer: gold minus the best
distractor); accuracy (``correct``) is the secondary reading. Everything per language is descriptive; the
pooled estimates resample items within each language (:func:`evaluate.stats.stratified_paired_bootstrap`).

PRE-REGISTERED (written before any number was seen; the family is Holm-corrected at 0.05; one-sided in the
stated direction; ``R`` is the CLA run when the recipe has an adapter, else the base run):

* ``en_beats_control``      transfer margin of R+en above R+random_en (same layer, alpha, norm).
  Falsifier: the pooled difference is <= 0 or not significant -> the EN vector does nothing a random push
  of the same size does not.
* ``loc_beats_control``     localization margin of R+loc above R+random_loc.
* ``surgical_localization`` localization margin of R+surgical above R (claim d, superiority).
* ``surgical_transfer``     transfer margin of R+surgical minus R above -NONINFERIORITY_MARGIN nats (claim d,
  non-inferiority).
* ``erasure``               localization margin of R+en BELOW R+random_en (EN steering erases culture beyond
  what a random push of the same size does).
* ``depth_order``           over languages where both vectors were steered, the modal LOC layer deeper than
  the modal EN layer (claim b; exact one-sided sign-flip test on the layer differences).
* ``not_orthogonal``        |cos(v_EN, v_LOC)| at the middle grid layer beyond its sign-flip permutation null
  (Fisher's combination over languages). Claim c (near-orthogonal) is *contradicted* when this rejects.
* ``cla_transfer``          (only with an adapter) transfer margin of cla above base (claim a).

Verdicts: "supported" (Holm-adjusted p < 0.05 in the predicted direction), "contradicted" (the opposite
direction's p, Holm-adjusted within the same family, < 0.05), else "not reproduced at this scale".
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np

from . import stats

NONINFERIORITY_MARGIN = 0.1
"""nats of mean transfer margin that Surgical Steering may cost and still count as non-inferior."""
AXES = ("transfer", "localization")


def variant_label(run: str, variant: str) -> str:
    return run if variant == "base" else f"{run}+{variant}"


def _table(outcomes: Sequence[Mapping]) -> dict[tuple[str, str, str], dict[str, dict]]:
    """{(variant, axis, language): {item_id: outcome}}."""
    out: dict[tuple[str, str, str], dict[str, dict]] = {}
    for o in outcomes:
        out.setdefault((o["variant"], o["axis"], o["language"]), {})[o["item_id"]] = o
    return out


def _paired(table, a: str, b: str, axis: str, languages: Sequence[str], key: str = "margin"):
    """(values of a, values of b, language labels) over the items both have, languages in order."""
    xs, ys, labels = [], [], []
    for lang in languages:
        left, right = table.get((a, axis, lang), {}), table.get((b, axis, lang), {})
        for item_id in sorted(set(left) & set(right)):
            xs.append(left[item_id][key])
            ys.append(right[item_id][key])
            labels.append(lang)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), labels


def plane_rows(runs: Mapping[str, Sequence[Mapping]], languages: Sequence[str], n_boot: int = 1000, seed: int = 0
               ) -> list[dict]:
    """Per run x variant x axis x language (and ``pooled``): mean margin and accuracy with 95% CIs, and the
    paired margin difference against the run's unsteered model."""
    rows = []
    for run, outcomes in runs.items():
        table = _table(outcomes)
        variants = sorted({o["variant"] for o in outcomes}, key=lambda v: (v != "base", v))
        for variant, axis in itertools.product(variants, AXES):
            for lang in [*languages, "pooled"]:
                langs = list(languages) if lang == "pooled" else [lang]
                base, other, labels = _paired(table, "base", variant, axis, langs)
                _, correct, _ = _paired(table, "base", variant, axis, langs, key="correct")
                if not other.size:
                    continue
                m, lo, hi = stats.mean_of_means([other[np.asarray(labels) == x] for x in langs], n_boot, seed)
                acc, alo, ahi = stats.mean_of_means([correct[np.asarray(labels) == x] for x in langs], n_boot, seed)
                row = {"run": run, "variant": variant_label(run, variant), "axis": axis, "language": lang,
                       "n": int(other.size), "margin": m, "margin_ci_low": lo, "margin_ci_high": hi,
                       "accuracy": acc, "accuracy_ci_low": alo, "accuracy_ci_high": ahi}
                if variant != "base":
                    cmp = stats.stratified_paired_bootstrap(base, other, labels, n_boot=n_boot, seed=seed,
                                                            weighting="strata")
                    row.update(margin_diff=cmp["diff"], margin_diff_ci_low=cmp["ci_low"],
                               margin_diff_ci_high=cmp["ci_high"], p_margin_diff=cmp["p_value"])
                rows.append(row)
    return rows


def _one_sided(cmp: Mapping, direction: int) -> tuple[float, float]:
    """(p in the predicted direction, p in the opposite one) from a two-sided bootstrap result."""
    p2, diff = cmp["p_value"], cmp["diff"]
    if not np.isfinite(diff) or not np.isfinite(p2):
        return math.nan, math.nan
    toward = diff * direction > 0
    p = p2 / 2 if toward else 1 - p2 / 2
    return p, (1 - p2 / 2 if toward else p2 / 2)


def _margin_test(table, a: str, b: str, axis: str, languages, direction: int, shift: float, n_boot: int,
                 seed: int) -> dict:
    x, y, labels = _paired(table, a, b, axis, languages)
    if not x.size:
        return {"n": 0, "p": math.nan, "p_opposite": math.nan, "estimate": math.nan}
    cmp = stats.stratified_paired_bootstrap(x, y + shift, labels, n_boot=n_boot, seed=seed, weighting="strata")
    p, q = _one_sided(cmp, direction)
    return {"n": int(x.size), "estimate": cmp["diff"] - shift, "ci_low": cmp["ci_low"] - shift,
            "ci_high": cmp["ci_high"] - shift, "p": p, "p_opposite": q, "compared": f"{b} - {a}",
            "axis": axis, "outcome": "margin (nats)"}


def exact_one_sided_sign_flip(diffs: Sequence[float]) -> dict:
    """P(mean of randomly sign-flipped diffs >= observed mean), every pattern enumerated (n <= 16)."""
    d = np.asarray(list(diffs), dtype=float)
    if d.size == 0:
        return {"n": 0, "estimate": math.nan, "p": math.nan, "p_opposite": math.nan}
    if d.size > 16:
        raise ValueError(f"diffs: exact enumeration is for <= 16 values, got {d.size}")
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)[None, :]) & 1)
    means = signs @ d / d.size
    obs = d.mean()
    return {"n": int(d.size), "estimate": float(obs), "p": float((means >= obs - 1e-12).mean()),
            "p_opposite": float((means <= obs + 1e-12).mean())}


def fisher_combination(pvalues: Sequence[float]) -> float:
    """Fisher's combined p: P(chi2 with 2k dof >= -2 sum log p) (closed form for even dof)."""
    ps = [p for p in pvalues if np.isfinite(p)]
    if not ps:
        return math.nan
    x = -2 * sum(math.log(max(p, 1e-300)) for p in ps) / 2
    term, total = 1.0, 1.0
    for i in range(1, len(ps)):
        term *= x / i
        total += term
    return float(min(1.0, math.exp(-x) * total))


def preregistered_tests(runs: Mapping[str, Sequence[Mapping]], selections: Mapping[str, Mapping[str, dict]],
                        cosines: Mapping[str, Mapping], languages: Sequence[str], n_boot: int = 2000,
                        seed: int = 0, run: str | None = None) -> list[dict]:
    """The pre-registered family (module docstring) with Holm-adjusted p-values and verdicts.

    ``selections[language]["en" | "loc"]``: the modal choice (:func:`evaluate.crossfit.modal_choice`) of the
    run R (``run``; default ``cla`` when given, else ``base``); ``cosines[language]``: :func:`interventions.controls.cosine_test` at the middle grid layer.
    """
    run = run or ("cla" if "cla" in runs else "base")
    table = _table(runs[run])
    tests: list[dict] = []

    def margin(name, a, b, axis, direction, shift=0.0, claim=""):
        res = _margin_test(table, a, b, axis, languages, direction, shift, n_boot, seed)
        tests.append({"test": name, "claim": claim, "run": run, **res,
                      "compared": f"{variant_label(run, b)} - {variant_label(run, a)}"})

    margin("en_beats_control", "random_en", "en", "transfer", +1, claim="EN steering transfers")
    margin("loc_beats_control", "random_loc", "loc", "localization", +1, claim="LOC steering localizes")
    margin("surgical_localization", "base", "surgical", "localization", +1, claim="(d) superiority")
    margin("surgical_transfer", "base", "surgical", "transfer", +1, shift=NONINFERIORITY_MARGIN,
           claim=f"(d) non-inferiority, margin {NONINFERIORITY_MARGIN} nats")
    margin("erasure", "random_en", "en", "localization", -1, claim="EN steering erases culture")
    depth = [selections[x]["loc"]["layer"] - selections[x]["en"]["layer"] for x in languages
             if selections.get(x) and selections[x]["en"]["steered"] and selections[x]["loc"]["steered"]]
    tests.append({"test": "depth_order", "claim": "(b) LOC deeper than EN", "run": run,
                  "outcome": "modal LOC layer - modal EN layer", **exact_one_sided_sign_flip(depth)})
    ps = [cosines[x]["p_value"] for x in languages if x in cosines]
    p = fisher_combination(ps)
    tests.append({"test": "not_orthogonal", "claim": "(c) EN and LOC near-orthogonal (contradicted if rejected)",
                  "run": run, "n": len(ps), "p": p, "p_opposite": math.nan, "outcome": "|cos(v_EN, v_LOC)|",
                  "estimate": float(np.mean([abs(cosines[x]["cosine"]) for x in languages if x in cosines]))
                  if ps else math.nan})
    if "cla" in runs:
        both = _table([*runs["base"], *[dict(o, variant="cla") for o in runs["cla"] if o["variant"] == "base"]])
        res = _margin_test(both, "base", "cla", "transfer", languages, +1, 0.0, n_boot, seed)
        tests.append({"test": "cla_transfer", "claim": "(a) CLA raises transfer", "run": "cla", **res,
                      "compared": "cla - base"})
    adjusted = stats.holm([t["p"] for t in tests])
    opposite = stats.holm([t.get("p_opposite", math.nan) for t in tests])
    for t, adj, opp in zip(tests, adjusted, opposite):
        t["p_holm"] = float(adj)
        t["p_opposite_holm"] = float(opp)
        if t["test"] == "not_orthogonal":
            t["verdict"] = ("contradicted (not orthogonal)" if adj < stats.LEVEL else
                            "not contradicted (no departure from orthogonality detected at this scale)")
        elif np.isfinite(adj) and adj < stats.LEVEL:
            t["verdict"] = "supported"
        elif np.isfinite(opp) and opp < stats.LEVEL:
            t["verdict"] = "contradicted"
        else:
            t["verdict"] = "not reproduced at this scale" if t.get("n") else "not measured"
    return tests


__all__ = ["NONINFERIORITY_MARGIN", "exact_one_sided_sign_flip", "fisher_combination", "plane_rows",
           "preregistered_tests", "variant_label"]
