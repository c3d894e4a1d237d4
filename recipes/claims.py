"""Verdicts on the seed paper's claims for a run with FIXED layers and alphas, computed from its files.

A recipe with ``layer``/``alpha`` ``auto`` runs the cross-fitted protocol instead, whose report carries the
pre-registered, Holm-corrected tests (:mod:`evaluate.crossfit_stats`, :mod:`recipes.crossfit_stage`); this
module is not called there. Each claim gets ``verdict`` in {"true", "false", "inconclusive", "not measured"},
the numbers it rests on, and whether those numbers are above chance / noise:

* **(b) layers** -- EN steering works best at middle depth, LOC deeper: "not measured" here (the layers are
  the recipe's input); the applied layers and alphas (``steering.json``) are listed.
* **(c) near-orthogonality** -- |cos(v_EN, v_LOC)| at the applied layers (the analysis stage's
  ``selected_cosines``) against the 95% quantile of |cos| between random directions of that dimension.
* **(d) surgical** -- the surgical variant against its reference (``base+surgical`` vs ``base``,
  ``cla+surgical`` vs ``cla``) on the plane: "true" only when localization rises significantly
  (paired p < 0.05) and transfer does not fall significantly; "false" when either falls
  significantly; else "inconclusive".
* **cultural erasure** -- the ``us_rate`` (US answer chosen, implicit-cue localization items) of the
  EN-steered variant vs its reference: "true" when it rises significantly.

Per-language paired p-values come from results.json (exact McNemar). The overall test is the pooled
"mean" row (a run evaluated one language at a time gets it from :mod:`recipes.pooling`); results without
one (older runs) combine the languages' signed p-values with Stouffer's method (weights sqrt(n)), the
pooled difference being the n-weighted mean.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

from evaluate.tables import markdown_table
from evaluate.stats import LEVEL, format_p

from .artifacts import SteeringResult

_N = NormalDist()


def _fmt(x, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def stouffer(parts: list[tuple[float, float, int]]) -> tuple[float | None, float | None, int]:
    """Pooled (diff, two-sided p, n) from per-stratum (diff, two-sided p, n) by weighted Stouffer."""
    parts = [(d, p, n) for d, p, n in parts if d is not None and p is not None and n and not math.isnan(p)]
    if not parts:
        return None, None, 0
    total = sum(n for _, _, n in parts)
    diff = sum(d * n for d, _, n in parts) / total
    num = sum(math.copysign(_N.inv_cdf(1 - min(max(p, 1e-15), 1.0) / 2), d) * math.sqrt(n) if d else 0.0
              for d, p, n in parts)
    z = num / math.sqrt(total)
    return diff, 2 * (1 - _N.cdf(abs(z))), total


def overall(verdicts: list[str]) -> str:
    """Majority of the conclusive per-language verdicts; "inconclusive" on a tie or when none is conclusive."""
    t, f = verdicts.count("true"), verdicts.count("false")
    if t == f:
        return "inconclusive"
    return "true" if t > f else "false"


# ----------------------------------------------------------------------------- (b) layers

LAYERS_CLAIM = "EN steering best at middle depth, LOC deeper"


def _kind_language(name: str, entry: dict) -> tuple[str | None, str | None]:
    kind = entry.get("kind") or ("en" if name.startswith("en") else "loc" if name.startswith("loc") else None)
    return kind, entry.get("language") or name.rsplit("_", 1)[-1]


def claim_layers(selection: dict, num_layers: int | None) -> dict:
    """Claim (b) is not measured by a fixed-layer run: its layers are the recipe's input, not a finding.

    The applied layers (``steering.json``'s selection) are listed; the test of the claim is the cross-validated
    protocol's pre-registered ``depth_order`` (layer and alpha ``auto``, :mod:`evaluate.crossfit_stats`).
    """
    per: dict[str, dict] = {}
    for name, entry in selection.items():
        kind, lang = _kind_language(name, entry)
        if kind is None:
            continue
        cell = per.setdefault(lang, {"language": lang})
        cell[f"{kind}_layer"] = entry.get("layer")
        cell[f"{kind}_alpha"] = entry.get("alpha")
        cell[f"{kind}_how"] = entry.get("selected", "")
    rows = [per[lang] for lang in sorted(per)]
    for r in rows:
        if r.get("en_layer") is not None and r.get("loc_layer") is not None:
            r["en_below_loc"] = r["en_layer"] < r["loc_layer"]
    why = ("layers fixed in the recipe (an input, not a finding); set every layer and alpha to auto for the "
           "cross-validated protocol and its pre-registered depth_order test" if rows else
           "no computed EN/LOC selection (steering loaded from a directory, or a vector disabled)")
    return {"claim": LAYERS_CLAIM, "verdict": "not measured", "why": why, "languages": rows,
            "num_layers": num_layers}


# ----------------------------------------------------------------------------- (c) cosines

def claim_orthogonality(analysis: dict | None) -> dict:
    claim = "v_EN and v_LOC are near-orthogonal"
    if analysis is None:
        return {"claim": claim, "verdict": "not measured", "why": "the analysis stage is off (analysis.enabled: false)"}
    sel = analysis.get("selected_cosines") or []
    if not sel:
        return {"claim": claim, "verdict": "not measured", "why": analysis.get("note") or "no selected cosines"}
    base_key = next(k for k in sel[0] if k.startswith("random_abs_cos"))
    rows = []
    for lang in sorted({r["language"] for r in sel}):
        mine = [r for r in sel if r["language"] == lang]
        above = [r for r in mine if r["above_random"]]
        rows.append({"language": lang, **{f"cos_{r['at']}": r["cosine"] for r in mine},
                     "max_abs_cos": max(r["abs_cosine"] for r in mine), "random_q95": mine[0][base_key],
                     "verdict": "false" if above else "true"})
    per_layer = analysis.get("vector_cosines") or []
    return {"claim": claim, "verdict": overall([r["verdict"] for r in rows]), "languages": rows,
            "random_q95": sel[0][base_key],
            "mean_abs_cos_all_layers": (sum(abs(r["cosine"]) for r in per_layer) / len(per_layer)
                                        if per_layer else None),
            "layers_above_random": sum(bool(r["above_random"]) for r in per_layer), "layers_total": len(per_layer)}


# ----------------------------------------------------------------------------- (d) surgical, erasure

def _pairs(variants: list[str], steer: str) -> list[tuple[str, str]]:
    return [(f"{ref}+{steer}", ref) for ref in ("base", "cla") if f"{ref}+{steer}" in variants and ref in variants]


def _compare(rows: list[dict], variant: str, ref: str, first: str) -> dict | None:
    """diff / p of ``variant`` vs ``ref`` from rows carrying paired tests vs the first variant."""
    mine = next((r for r in rows if r["variant"] == variant), None)
    theirs = next((r for r in rows if r["variant"] == ref), None)
    if mine is None or theirs is None:
        return None
    out = {"value": mine["value"], "ci_low": mine.get("ci_low"), "ci_high": mine.get("ci_high"),
           "ref_value": theirs["value"], "n": mine.get("n"), "above_chance": mine.get("above_chance"),
           "chance": mine.get("chance")}
    if ref == first and "diff_vs_base" in mine:
        out.update(diff=mine["diff_vs_base"], p=mine["p_vs_base"], paired=True)
        cmp = mine.get("comparison") or {}
        if "diff_ci_low" in cmp:
            out.update(diff_ci_low=cmp["diff_ci_low"], diff_ci_high=cmp["diff_ci_high"])
    else:
        out.update(diff=mine["value"] - theirs["value"], p=None, paired=False)
    return out


def _pooled(cells: list[dict]) -> dict | None:
    if not cells or not all(c.get("paired") for c in cells):
        return None
    diff, p, n = stouffer([(c["diff"], c["p"], c["n"]) for c in cells])
    return {"diff": diff, "p": p, "n": n, "pooled": "stouffer"}


def _surgical_verdict(loc: dict | None, tr: dict | None) -> str:
    if loc is None or loc.get("p") is None:
        return "inconclusive"
    loc_up = loc["diff"] > 0 and loc["p"] < LEVEL
    loc_down = loc["diff"] < 0 and loc["p"] < LEVEL
    tr_down = tr is not None and tr.get("p") is not None and tr["diff"] < 0 and tr["p"] < LEVEL
    if loc_down or tr_down:
        return "false"
    return "true" if loc_up else "inconclusive"


def claim_surgical(results: dict) -> list[dict]:
    variants = [v["name"] for v in results["variants"]]
    first = variants[0]
    langs = [l for l in results["config"]["languages"] if l != "en"]
    out = []
    for variant, ref in _pairs(variants, "surgical"):
        rows = []
        for lang in [*langs, "mean"]:
            plane = [r for r in results["plane"] if r["language"] == lang]
            loc = _compare([r for r in plane if r["score"] == "localization_score"], variant, ref, first)
            tr = _compare([r for r in plane if r["score"] == "transfer_score"], variant, ref, first)
            if loc is None and tr is None:
                continue
            rows.append({"language": lang, "localization": loc, "transfer": tr, "verdict": _surgical_verdict(loc, tr)})
        mean = next((r for r in rows if r["language"] == "mean"), None)
        per = [r for r in rows if r["language"] != "mean"]
        if mean is None and per:
            loc = _pooled([r["localization"] for r in per if r["localization"]])
            tr = _pooled([r["transfer"] for r in per if r["transfer"]])
            mean = {"language": "pooled", "localization": loc, "transfer": tr, "verdict": _surgical_verdict(loc, tr)}
        paired = ref == first
        out.append({"claim": f"{variant} raises localization without losing transfer (vs {ref})",
                    "variant": variant, "reference": ref, "paired": paired,
                    "verdict": mean["verdict"] if (mean and paired) else "inconclusive",
                    "overall": mean, "languages": per,
                    **({} if paired else {"why": f"results.json has paired tests vs {first} only, not vs {ref}"})})
    return out


def claim_erasure(results: dict) -> list[dict]:
    variants = [v["name"] for v in results["variants"]]
    first = variants[0]
    out = []
    for variant, ref in _pairs(variants, "en"):
        metrics = [r for r in results["metrics"] if r["metric"] == "us_rate" and r["cue"] == "implicit"]
        cells = []
        for task, lang in sorted({(r["task"], r["language"]) for r in metrics}):
            c = _compare([r for r in metrics if r["task"] == task and r["language"] == lang], variant, ref, first)
            if c is not None:
                cells.append({"task": task, "language": lang, **c})
        pooled = _pooled(cells)
        if pooled is None or not (ref == first):
            verdict = "inconclusive" if cells else "not measured"
        elif pooled["p"] < LEVEL:
            verdict = "true" if pooled["diff"] > 0 else "false"
        else:
            verdict = "inconclusive"
        out.append({"claim": f"EN steering alone ({variant}) moves answers toward the US answer (vs {ref})",
                    "variant": variant, "reference": ref, "metric": "us_rate (implicit-cue localization items)",
                    "verdict": verdict, "overall": pooled, "cells": cells})
    return out


# ----------------------------------------------------------------------------- assemble + render

def _read_json(path: Path | None):
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def measure_claims(results: dict, steering_dir: Path | None, analysis_dir: Path | None,
                   num_layers: int | None = None) -> dict:
    steering = SteeringResult.find(steering_dir)
    analysis = _read_json(analysis_dir / "analysis.json") if analysis_dir else None
    return {"level": LEVEL,
            "layers": claim_layers(steering.selection_dicts() if steering else {}, num_layers),
            "orthogonality": claim_orthogonality(analysis),
            "surgical": claim_surgical(results),
            "erasure": claim_erasure(results)}


def _cell(c: dict | None) -> str:
    if not c:
        return "n/a"
    p = f", p={format_p(c['p'])}" if c.get("p") is not None else ", no paired test"
    return f"{_fmt(c.get('ref_value'))} -> {_fmt(c.get('value'))} ({_fmt(c['diff'], sign=True)}{p})" \
        if "value" in c else f"{_fmt(c['diff'], sign=True)} pooled{p}, n={c.get('n')}"


def render_claims(claims: dict) -> str:
    out = ["## Claims as measured", "",
           f"Computed by `recipes.claims` from this run's files; significance level {claims['level']} "
           "(paired exact McNemar per language; Stouffer-combined across languages).", ""]
    b = claims["layers"]
    out += [f"### (b) {b['claim']}: **{b['verdict']}**", "", b["why"] + ".", ""]
    if b["languages"]:
        def at(r, k):
            layer = r.get(f"{k}_layer")
            return "n/a" if layer is None else f"{layer} ({_fmt(r.get(f'{k}_alpha'), 2)})"
        out += [markdown_table(["language", "EN layer (alpha)", "LOC layer (alpha)"],
                               [[r["language"], at(r, "en"), at(r, "loc")] for r in b["languages"]]), ""]
    c = claims["orthogonality"]
    out += [f"### (c) {c['claim']}: **{c['verdict']}**", ""]
    if c["verdict"] == "not measured":
        out += [c["why"] + ".", ""]
    else:
        out += [f"|cos| at the selected layers vs the random-direction 95% quantile {_fmt(c['random_q95'])}: "
                "\"true\" when every |cos| is below it. Over all layers and languages, mean |cos| "
                f"{_fmt(c['mean_abs_cos_all_layers'])}; {c['layers_above_random']} of {c['layers_total']} "
                "(language, layer) cosines exceed the random quantile.", "",
                markdown_table(["language", "cos at EN layer", "cos at LOC layer", "cos of applied pair", "max |cos|",
                                "verdict"],
                               [[r["language"], *(_fmt(r.get(f"cos_{where}"), sign=True)
                                                  for where in ("en_layer", "loc_layer", "applied_pair")),
                                 _fmt(r["max_abs_cos"]), r["verdict"]] for r in c["languages"]]), ""]
    if not claims["surgical"]:
        out += ["### (d) Surgical improves localization without losing transfer: **not measured**", "",
                "No `base+surgical`/`cla+surgical` variant with its reference in evaluate.variants.", ""]
    for d in claims["surgical"]:
        o = d["overall"] or {}
        out += [f"### (d) {d['claim']}: **{d['verdict']}**", "",
                (f"Overall ({o.get('language')}): localization {_cell(o.get('localization'))}, transfer "
                 f"{_cell(o.get('transfer'))}." if o else "") + (f" {d['why']}." if d.get("why") else ""), "",
                markdown_table(["language", "localization ref -> surgical (diff, p)", "above chance",
                                "transfer ref -> surgical (diff, p)", "above chance", "verdict"],
                               [[r["language"], *(x for s in (r["localization"], r["transfer"])
                                                  for x in (_cell(s), "yes" if s and s["above_chance"] else "no")),
                                 r["verdict"]] for r in d["languages"]]), ""]
    for e in claims["erasure"]:
        o = e["overall"]
        out += [f"### Cultural erasure: {e['claim']}: **{e['verdict']}**", "",
                f"Metric: {e['metric']}. " + (f"Pooled over {len(e['cells'])} task x language cells: "
                                              f"{_cell(o)}." if o else ""), "",
                markdown_table(["task", "language", "US answer chosen: ref -> EN-steered (diff, p)", "chance"],
                               [[cell["task"], cell["language"], _cell(cell), _fmt(cell.get("chance"))]
                                for cell in e["cells"]]), ""]
    return "\n".join(out)
