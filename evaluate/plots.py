"""Figures for a plane run (seaborn on the Agg backend): ``plane.png`` and ``tasks.png``.

- ``plane.png``: x = transfer_score, y = localization_score, one marker per variant, one facet per language
  plus "mean", 95% CIs as error bars, dashed lines at chance.
- ``tasks.png``: per-task bars of each task's headline metric (accuracy / implicit-cue localization_score)
  per language and variant, CI error bars; chance (dashed), the majority baseline (dotted) and the
  fewer-tokens baseline (dash-dot) as grey lines.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from interventions.fsutil import atomic_write  # noqa: E402

from .outputs import HEADLINE, MEAN  # noqa: E402


def facet_axes(n: int, max_cols: int, size: tuple[float, float]):
    """``(fig, axes)``: ``n`` facets (seaborn whitegrid) in rows of at most ``max_cols``, each ``size`` inches; the
    grid's cells beyond ``n`` are hidden and ``axes`` lists the ``n`` in use."""
    sns.set_theme(style="whitegrid", context="notebook")
    ncol = min(max_cols, n)
    nrow = math.ceil(n / ncol)
    fig, grid = plt.subplots(nrow, ncol, figsize=(size[0] * ncol, size[1] * nrow), squeeze=False)
    for ax in list(grid.flat)[n:]:
        ax.set_visible(False)
    return fig, list(grid.flat)[:n]


def figure_legend(fig, ax, max_cols: int, **where) -> None:
    """One legend for the figure from ``ax``'s labelled artists (none when it has none), ``where`` placing it."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, ncol=min(len(labels), max_cols), **where)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return Path(path)


def _palette(variants):
    return dict(zip(variants, sns.color_palette("colorblind", len(variants))))


def plot_plane(results: dict, path: Path) -> Path | None:
    rows = results["plane"]
    variants = [v["name"] for v in results["variants"]]
    facets = [lang for lang in [*results["config"]["languages"], MEAN]
              if any(r["language"] == lang for r in rows)]
    points = {}
    for r in rows:
        points.setdefault((r["variant"], r["language"]), {})[r["score"]] = r
    facets = [f for f in facets if any({"transfer_score", "localization_score"} <= set(points.get((v, f), {}))
                                       for v in variants)]
    if not facets:
        return None
    fig, axes = facet_axes(len(facets), 3, (4.2, 3.8))
    colors = _palette(variants)
    markers = ["o", "s", "D", "^", "v", "P", "X", "*"]
    for ax, facet in zip(axes, facets):
        for k, v in enumerate(variants):
            p = points.get((v, facet), {})
            if not {"transfer_score", "localization_score"} <= set(p):
                continue
            t, loc = p["transfer_score"], p["localization_score"]
            ax.errorbar(t["value"], loc["value"],
                        xerr=[[t["value"] - t["ci_low"]], [t["ci_high"] - t["value"]]],
                        yerr=[[loc["value"] - loc["ci_low"]], [loc["ci_high"] - loc["value"]]],
                        fmt=markers[k % len(markers)], color=colors[v], markersize=8, capsize=3, label=v)
            ax.axvline(t["chance"], color="grey", ls="--", lw=0.8)
            ax.axhline(loc["chance"], color="grey", ls="--", lw=0.8)
        ax.set_title(facet)
        ax.set_xlabel("transfer_score")
        ax.set_ylabel("localization_score")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    figure_legend(fig, axes[0], 5, loc="upper center", bbox_to_anchor=(0.5, 0.965))
    fig.suptitle("transfer-localization plane (95% CI; dashed = chance)", y=1.0)
    return save_figure(fig, path)


def plot_tasks(results: dict, path: Path) -> Path | None:
    kinds = results["config"]["task_kinds"]
    rows = [r for r in results["metrics"]
            if r["metric"] == HEADLINE[kinds[r["task"]]] and r["cue"] in ("", "implicit")]
    if not rows:
        return None
    variants = [v["name"] for v in results["variants"]]
    tasks = [t for t in results["config"]["tasks"] if any(r["task"] == t for r in rows)]
    fig, axes = facet_axes(len(tasks), 2, (6.5, 3.4))
    colors = _palette(variants)
    width = 0.8 / len(variants)
    for ax, task in zip(axes, tasks):
        trs = [r for r in rows if r["task"] == task]
        langs = [lang for lang in [*results["config"]["languages"], "en"] if any(r["language"] == lang for r in trs)]
        langs = list(dict.fromkeys(langs))
        for k, v in enumerate(variants):
            xs, ys, lo, hi = [], [], [], []
            for i, lang in enumerate(langs):
                r = next((r for r in trs if r["variant"] == v and r["language"] == lang), None)
                if r is None:
                    continue
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(r["value"])
                lo.append(r["value"] - r["ci_low"])
                hi.append(r["ci_high"] - r["value"])
            ax.bar(xs, ys, width=width * 0.95, color=colors[v], label=v)
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor="black", capsize=2, lw=0.8)
        for i, lang in enumerate(langs):
            first = next((r for r in trs if r["language"] == lang), {})
            for key, style, label in (("chance", "--", "chance"), ("baseline_majority", ":", "majority"),
                                      ("baseline_fewer_tokens", "-.", "fewer tokens")):
                if first.get(key) is not None:
                    ax.hlines(first[key], i - 0.45, i + 0.45, colors="grey", linestyles=style, lw=1,
                              label=label if i == 0 and ax is axes[0] else None)
        ax.set_xticks(range(len(langs)), langs)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: {HEADLINE[kinds[task]]}")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    figure_legend(fig, axes[0], 5, loc="upper center", bbox_to_anchor=(0.5, 1.0))
    return save_figure(fig, path)


def plot_all(results: dict, out_dir: Path) -> dict[str, str]:
    """Write every figure into ``out_dir``; returns {figure name: file name} for the report."""
    out = {}
    for name, fn in (("plane", plot_plane), ("tasks", plot_tasks)):
        p = fn(results, Path(out_dir) / f"{name}.png")
        if p is not None:
            out[name] = p.name
    return out
