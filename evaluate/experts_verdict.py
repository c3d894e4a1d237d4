"""Pre-registered tests of the controlled experts sweep: do language experts raise retrieval beyond a control?

Written (issue 16) before any number of the controlled sweep existed; the sweep is ``python -m recipes.run experts``
(``recipes/configs/experts.yaml``) or the equivalent ``python -m evaluate.experts report`` command in the README.

Outcome, per FLORES devtest sentence i of language L, with a unit set forced: its top-1 retrieval hit (1 when
its nearest neighbour by cosine, pooled without ``<bos>``, is its translation), L->en and en->L separately,
summarised over layers in the two pre-registered ways (:data:`evaluate.experts_eval.LAYER_SUMMARIES`): ``mean``
(the sentence's hits averaged over all layers) and ``middle`` (the hit at layer ``n_layers // 2``).

Tests (:func:`control_tests`):

- Primary family: experts minus the matched ``random`` control, for every pool (``mlp_hidden``,
  ``attention_heads``), ``apply_to`` (``source``, ``both``), k (5, 10, 20, 50), direction and summary: the
  per-sentence difference pooled over the languages by :func:`evaluate.stats.stratified_paired_bootstrap`
  (sentences resampled within their language, languages weighted by their sentences; 10,000 resamples; two-sided
  p), Holm-adjusted over the family (:func:`evaluate.stats.holm`; 64 tests at the shipped sweep), alpha 0.05.
- Secondary family: experts minus the matched ``variance`` control, the same 64 tests, Holm within the family.
- Per language: the same differences with 95% CIs, descriptive (no test).
- Headline (the README sentence): the primary tests at ``mlp_hidden``, ``both``, k = 10, ``mean``, both
  directions (the cell of the earlier, uncontrolled figures).
- Side-effect price (:func:`side_effect_price`, descriptive): held-out perplexity after/before and the change in
  the script share of continuations, for the experts and each control, per language and pooled over languages
  (geometric mean of the perplexity ratios, mean of the script-share changes).

Falsifiers, fixed before the numbers:

1. "Forcing L's experts raises retrieval beyond what any k matched units do" is false if the headline tests
   have a Holm-adjusted p >= 0.05 or a negative difference.
2. "It is expertise (AP), not language variance" is false if, where (1) holds, experts minus the ``variance``
   control is not positive (its CI reaches 0 or below): any units carrying language identity would do.
3. "Forcing experts moves L towards English" is false if experts beat the random control in ``both`` mode but
   not in ``source`` mode: the gain then comes from forcing the same constants on both sides (deleting a
   feature from both), not from aligning L with English.
4. "It aligns rather than breaks" is not supported where the experts' perplexity ratio or loss of script share
   exceeds the random control's at the same k: the report states the gain and this price together.
5. A language whose difference CI includes 0 is reported as "no gain beyond the control", whatever the pooled
   test says.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from evaluate.experts_eval import LAYER_SUMMARIES
from evaluate.tables import markdown_table
from evaluate.stats import holm, stratified_paired_bootstrap

ALPHA = 0.05
N_BOOT = 10_000
HEADLINE = {"pool": "mlp_hidden", "apply_to": "both", "k": 10, "summary": "mean"}
CONTROL_WORDS = {"random": "a matched random control", "variance": "a matched high-variance control"}


def sentence_outcome(hits, summary: str) -> np.ndarray:
    """Per-sentence outcome from bool hits ``[layers, n]``: ``mean`` over layers or the ``middle`` layer."""
    h = np.asarray(hits, dtype=np.float64)
    if summary == "mean":
        return h.mean(0)
    if summary == "middle":
        return h[h.shape[0] // 2]
    raise ValueError(f"summary: expected one of {list(LAYER_SUMMARIES)}, got {summary!r}")


def _difference(control: np.ndarray, experts: np.ndarray, strata: list, n_boot: int, seed: int) -> dict:
    r = stratified_paired_bootstrap(control, experts, strata, n_boot=n_boot, seed=seed)
    return {"diff": r["diff"], "ci": [r["ci_low"], r["ci_high"]], "p_value": r["p_value"], "n": r["n"]}


def control_tests(hits: Mapping, control: str = "random", summaries: Sequence[str] = LAYER_SUMMARIES,
                  n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """One family of tests: experts minus ``control`` per (pool, apply_to, k, direction, summary), pooled over
    languages (stratified paired bootstrap) with per-language differences; ``p_holm`` over the family.

    ``hits``: :attr:`evaluate.experts_eval.SweepResult.hits`. Cells without the control are skipped.
    """
    cells = sorted({(pool, k, mode, direction) for (pool, _, name, k, mode, direction) in hits
                    if name == "experts" and k > 0})
    rows = []
    for pool, k, mode, direction in cells:
        langs = sorted(lang for (p, lang, name, kk, m, d) in hits
                       if (p, name, kk, m, d) == (pool, "experts", k, mode, direction)
                       and (pool, lang, control, k, mode, direction) in hits)
        if not langs:
            continue
        for summary in summaries:
            e = {lang: sentence_outcome(hits[(pool, lang, "experts", k, mode, direction)], summary) for lang in langs}
            c = {lang: sentence_outcome(hits[(pool, lang, control, k, mode, direction)], summary) for lang in langs}
            strata = [lang for lang in langs for _ in e[lang]]
            pooled = _difference(np.concatenate([c[x] for x in langs]), np.concatenate([e[x] for x in langs]), strata,
                                 n_boot, seed)
            per = {lang: {**_difference(c[lang], e[lang], [lang] * len(e[lang]), n_boot, seed),
                          "experts_top1": float(e[lang].mean()), "control_top1": float(c[lang].mean())}
                   for lang in langs}
            rows.append({"pool": pool, "apply_to": mode, "k": k, "direction": direction, "summary": summary,
                         "control": control, "languages": langs, **pooled,
                         "experts_top1": float(np.concatenate(list(e.values())).mean()),
                         "control_top1": float(np.concatenate(list(c.values())).mean()), "per_language": per})
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = adjusted
        row["verdict"] = verdict(row)
        for lang, cell in row["per_language"].items():
            cell["verdict"] = verdict({**cell, "control": control}, tested=False)
    return rows


def verdict(row: dict, tested: bool = True) -> str:
    """The plain sentence of one comparison: tested (pooled, Holm) or descriptive (a language, its CI)."""
    words = CONTROL_WORDS.get(row["control"], f"the {row['control']} control")
    lo, hi = row["ci"]
    x = f"{row['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    if tested:
        p = row.get("p_holm", float("nan"))
        x += f" (Holm p = {p:.3g})"
        significant = p < ALPHA
    else:
        significant = lo > 0 or hi < 0
    if significant and row["diff"] > 0:
        return f"experts raise retrieval beyond {words} by {x}"
    if significant and row["diff"] < 0:
        return f"experts lower retrieval below {words} by {x}"
    return f"experts do not raise retrieval beyond {words}: {x}"


def headline(tests: Sequence[dict]) -> list[str]:
    """The pre-registered headline sentences (pooled and per language) of the primary family."""
    lines = []
    for row in tests:
        if all(row.get(key) == value for key, value in HEADLINE.items()):
            where = (f"{row['pool']}, {row['apply_to']}, k = {row['k']}, {row['summary']} over layers, "
                     f"{row['direction']}")
            lines.append(f"- {where}: pooled over {', '.join(row['languages'])}: {row['verdict']}")
            lines += [f"  - {lang}: {cell['verdict']}" for lang, cell in row["per_language"].items()]
    return lines


def side_effect_price(effects: Sequence[dict]) -> list[dict]:
    """Per (pool, k, set): the perplexity ratio after/before and script-share change per language, and pooled
    over languages (geometric mean of the ratios, mean of the changes)."""
    groups: dict[tuple, list[dict]] = {}
    for e in effects:
        if e["set"] != "base":
            groups.setdefault((e["pool"], e["k"], e["set"]), []).append(e)
    rows = []
    for (pool, k, name), cells in sorted(groups.items()):
        per = {e["language"]: {"perplexity_ratio": e["perplexity"] / e["perplexity_before"],
                               "script_share_change": e["script_share"] - e["script_share_before"]} for e in cells}
        ratios = [v["perplexity_ratio"] for v in per.values()]
        changes = [v["script_share_change"] for v in per.values() if math.isfinite(v["script_share_change"])]
        rows.append({"pool": pool, "k": k, "set": name, "per_language": per,
                     "perplexity_ratio": float(np.exp(np.mean(np.log(ratios)))),
                     "script_share_change": float(np.mean(changes)) if changes else float("nan")})
    return rows


def format_tests(tests: Sequence[dict]) -> str:
    """Markdown table of one family: pooled difference, Holm p, verdict, per-language differences."""
    def diff(c: Mapping) -> str:
        return f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"

    rows = [[r["pool"], r["apply_to"], r["k"], r["direction"], r["summary"], f"{r['experts_top1']:.3f}",
             f"{r['control_top1']:.3f}", diff(r), f"{r['p_holm']:.3g}",
             "; ".join(f"{lang} {diff(c)}" for lang, c in r["per_language"].items())] for r in tests]
    return markdown_table(["pool", "apply to", "k", "direction", "summary", "experts top-1", "control top-1",
                           "experts - control [95% CI]", "Holm p", "per language: difference [95% CI]"], rows)


def format_price(price: Sequence[dict]) -> str:
    """Markdown table of the side-effect price per (pool, k, set), pooled and per language."""
    rows = [[r["pool"], r["k"], r["set"], f"x{r['perplexity_ratio']:.2f}", f"{r['script_share_change']:+.3f}",
             "; ".join(f"{lang} x{v['perplexity_ratio']:.2f}, {v['script_share_change']:+.2f}"
                       for lang, v in r["per_language"].items())] for r in price]
    return markdown_table(["pool", "k", "set", "perplexity after/before (geo. mean)", "script share change (mean)",
                           "per language: perplexity ratio, script share change"], rows)
