"""report.md and plane.png of a cross-fitted run (:mod:`evaluate.crossfit_stats` results).

The figure is the out-of-fold transfer-localization plane in margin units: x = mean transfer margin
difference against the model alone, y = mean localization margin difference, one point per variant with
its 95% bootstrap CI as bars, pooled over languages (items resampled within each language) and one facet
per language; the random-direction controls are drawn hollow, the model alone sits at (0, 0).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .crossfit_stats import NONINFERIORITY_MARGIN  # noqa: E402
from .generations import render_generations  # noqa: E402
from .stats import format_p  # noqa: E402


def _n(x, fmt: str = "+.3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


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
    sns.set_theme(style="whitegrid", context="notebook")
    ncol = min(3, len(facets))
    nrow = math.ceil(len(facets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 4.0 * nrow), squeeze=False)
    colors = dict(zip(variants, sns.color_palette("colorblind", len(variants))))
    for ax, facet in zip(axes.flat, facets):
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
    for ax in list(axes.flat)[len(facets):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Out-of-fold transfer-localization plane (95% CIs; hollow: random-direction controls)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def tests_table(results: dict) -> str:
    lines = ["| test | claim | compared | n | estimate [95% CI] | p | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for t in results["tests"]:
        ci = (f" [{_n(t.get('ci_low'))}, {_n(t.get('ci_high'))}]" if t.get("ci_low") is not None else "")
        lines.append(f"| {t['test']} | {t['claim']} | {t.get('compared') or t.get('outcome', '')} | {t.get('n', 0)} "
                     f"| {_n(t.get('estimate'))}{ci} | {format_p(t.get('p'))} | {format_p(t.get('p_holm'))} "
                     f"| {t['verdict']} |")
    return "\n".join(lines)


def plane_table(results: dict, language: str = "pooled") -> str:
    lines = ["| variant | axis | n | margin [95% CI] | accuracy [95% CI] | margin vs model alone [95% CI] | p |",
             "|---|---|---|---|---|---|---|"]
    for r in results["plane"]:
        if r["language"] != language:
            continue
        diff = (f"{_n(r.get('margin_diff'))} [{_n(r.get('margin_diff_ci_low'))}, {_n(r.get('margin_diff_ci_high'))}]"
                if r.get("margin_diff") is not None else "")
        lines.append(f"| {r['variant']} | {r['axis']} | {r['n']} | {_n(r['margin'], '.3f')} "
                     f"[{_n(r['margin_ci_low'], '.3f')}, {_n(r['margin_ci_high'], '.3f')}] | {_n(r['accuracy'], '.3f')} "
                     f"[{_n(r['accuracy_ci_low'], '.3f')}, {_n(r['accuracy_ci_high'], '.3f')}] | {diff} "
                     f"| {format_p(r.get('p_margin_diff'))} |")
    return "\n".join(lines)


def selections_table(results: dict) -> str:
    lines = ["| model | language | EN: modal choice (folds) | LOC: modal choice (folds) | items (transfer / localization) |",
             "|---|---|---|---|---|"]
    for run, langs in results["selections"].items():
        for lang, modal in langs.items():
            cells = []
            for w in ("en", "loc"):
                m = modal[w]
                where = f"layer {m['layer']}, alpha {m['alpha']:g}" if m["steered"] else "unsteered"
                cells.append(f"{where} ({m['folds']}/{m['n_folds']})")
            n = results["n_items"][run][lang]
            lines.append(f"| {run} | {lang} | {cells[0]} | {cells[1]} | {n['transfer']} / {n['localization']} |")
    return "\n".join(lines)


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
