"""report.md and plane.png of a cross-fitted run (:mod:`evaluate.crossfit_stats` results).

The figure is the out-of-fold transfer-localization plane in margin units: x = mean transfer margin
difference against the model alone, y = mean localization margin difference, one point per variant with
its 95% bootstrap CI as bars, pooled over languages (items resampled within each language) and one facet
per language; the random-direction controls are drawn hollow, the model alone sits at (0, 0).
"""

from __future__ import annotations

from pathlib import Path

import seaborn as sns

from .crossfit_stats import NONINFERIORITY_MARGIN
from .generations import render_generations
from .plots import facet_axes, figure_legend, save_figure
from .tables import markdown_table, number
from .stats import format_p


def _d(x) -> str:
    """A signed difference (``n/a`` for None and NaN)."""
    return number(x, "+.3f")


def _points(results: dict) -> dict[tuple[str, str], dict]:
    """{(variant, language): {"transfer": row, "localization": row}} of the rows with a difference."""
    out: dict[tuple[str, str], dict] = {}
    for r in results["plane"]:
        out.setdefault((r["variant"], r["language"]), {})[r["axis"]] = r
    return out


def plot_crossfit_plane(results: dict, path: Path) -> Path | None:
    points = _points(results)
    facets = ["pooled", *results["languages"]]
    variants = sorted({v for v, _ in points if "+" in v})
    if not variants:
        return None
    fig, axes = facet_axes(len(facets), 3, (4.4, 4.0))
    colors = dict(zip(variants, sns.color_palette("colorblind", len(variants))))
    for ax, facet in zip(axes, facets):
        for v in variants:
            p = points.get((v, facet), {})
            t, loc = p.get("transfer"), p.get("localization")
            if not t or not loc or t.get("margin_diff") is None or loc.get("margin_diff") is None:
                continue
            x, y = t["margin_diff"], loc["margin_diff"]
            xerr = [[x - t["margin_diff_ci_low"]], [t["margin_diff_ci_high"] - x]]
            yerr = [[y - loc["margin_diff_ci_low"]], [loc["margin_diff_ci_high"] - y]]
            control = "random" in v
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=colors[v], label=v, capsize=2,
                        markerfacecolor="white" if control else colors[v], markersize=7)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.axvline(-NONINFERIORITY_MARGIN, color="grey", lw=0.8, ls=":")
        ax.set_title(facet)
        ax.set_xlabel("transfer margin vs model alone (nats)")
        ax.set_ylabel("localization margin vs model alone (nats)")
    figure_legend(fig, axes[0], 4, loc="lower center", bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Out-of-fold transfer-localization plane (95% CIs; hollow: random-direction controls)")
    return save_figure(fig, path, dpi=110)


def tests_table(results: dict) -> str:
    rows = []
    for t in results["tests"]:
        ci = f" [{_d(t.get('ci_low'))}, {_d(t.get('ci_high'))}]" if t.get("ci_low") is not None else ""
        rows.append([t["test"], t["claim"], t.get("compared") or t.get("outcome", ""), t.get("n", 0),
                     f"{_d(t.get('estimate'))}{ci}", format_p(t.get("p")), format_p(t.get("p_holm")), t["verdict"]])
    return markdown_table(["test", "claim", "compared", "n", "estimate [95% CI]", "p", "p (Holm)", "verdict"], rows)


def plane_table(results: dict, language: str = "pooled") -> str:
    def ci(r: dict, key: str) -> str:
        return f"{number(r[key])} [{number(r[key + '_ci_low'])}, {number(r[key + '_ci_high'])}]"

    rows = [[r["variant"], r["axis"], r["n"], ci(r, "margin"), ci(r, "accuracy"),
             f"{_d(r['margin_diff'])} [{_d(r.get('margin_diff_ci_low'))}, {_d(r.get('margin_diff_ci_high'))}]"
             if r.get("margin_diff") is not None else "", format_p(r.get("p_margin_diff"))]
            for r in results["plane"] if r["language"] == language]
    return markdown_table(["variant", "axis", "n", "margin [95% CI]", "accuracy [95% CI]",
                           "margin vs model alone [95% CI]", "p"], rows)


def selections_table(results: dict) -> str:
    def choice(m: dict) -> str:
        where = f"layer {m['layer']}, alpha {m['alpha']:g}" if m["steered"] else "unsteered"
        return f"{where} ({m['folds']}/{m['n_folds']})"

    rows = [[run, lang, choice(modal["en"]), choice(modal["loc"]),
             f"{results['n_items'][run][lang]['transfer']} / {results['n_items'][run][lang]['localization']}"]
            for run, langs in results["selections"].items() for lang, modal in langs.items()]
    return markdown_table(["model", "language", "EN: modal choice (folds)", "LOC: modal choice (folds)",
                           "items (transfer / localization)"], rows)


def render_crossfit_report(results: dict, title: str, figure: str | None) -> str:
    s = results["settings"]
    parts = [f"# {title}", "",
             "Every number is out of fold: items were dealt into "
             f"{s['k']} folds by group (a fact, a concept); for each fold the layer and alpha of each vector were "
             "chosen on the other folds only (alpha = 0, the unsteered model, always a candidate), and the LOC "
             "vector applied to a fold was estimated without it. Primary outcome: the per-item log-prob margin "
             "(localization: local minus US answer; transfer: gold minus the best distractor); accuracy is "
             f"secondary. Grid: layers {s['layers']}, alphas {s['alphas']} (multiples of the estimated mean "
             f"difference), tolerance {s['tolerance']} nats, KL budget {s['max_kl']}.", "",
             "## Pre-registered tests (Holm-corrected family)", "", tests_table(results), "",
             f"Non-inferiority margin: {NONINFERIORITY_MARGIN} nats of mean transfer margin. `depth_order` and "
             "`not_orthogonal` pool over languages (modal layers; Fisher's combination of per-language permutation "
             f"p-values at layer {results['cosine_layer']}). With 5 languages the exact one-sided depth test "
             "cannot go below 1/32.", ""]
    if figure:
        parts += [f"![out-of-fold plane]({figure})", ""]
    parts += ["## Pooled out-of-fold plane", "", plane_table(results), "",
              "## Selections (modal choice over folds; the artifact uses it)", "", selections_table(results), ""]
    for lang in results["languages"]:
        parts += [f"### {lang} (descriptive)", "", plane_table(results, lang), ""]
    if results.get("generations"):
        parts += [render_generations(results["generations"], results.get("generations_settings")), ""]
    return "\n".join(parts)


__all__ = ["plot_crossfit_plane", "render_crossfit_report"]
