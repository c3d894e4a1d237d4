"""The sweep figure (seaborn on the Agg backend): ``plot_sweep(rows, path)``.

For the rows of :func:`evaluate.sweep.sweep` / ``cached_sweep`` of one or several vectors, one figure
row per vector (facet) with four panels:

* heatmaps layer x coefficient of ``transfer_gain`` and ``localization_gain`` (diverging, centred on 0,
  values written in the cells of small grids);
* each gain against the layer, one line per coefficient (dashed line at 0 = the unsteered model).

A relative sweep (rows with ``alpha``) is drawn against ``alpha``: its absolute coefficient differs per
layer. An axis scored on no items (gain ``None``) gets an empty panel that says so.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from interventions.fsutil import atomic_write  # noqa: E402

REQUIRED = ("vector", "layer", "coefficient", "transfer_gain", "localization_gain")
GAINS = ("transfer_gain", "localization_gain")


def _frame(rows) -> pd.DataFrame:
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError("rows: expected a non-empty list of sweep rows (dicts from evaluate.sweep.sweep)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"rows[{i}]: expected a dict (a sweep row), got {type(row).__name__}")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ValueError(f"rows[{i}]: missing key(s) {missing}; expected sweep rows with {list(REQUIRED)}")
    df = pd.DataFrame([{k: r.get(k) for k in (*REQUIRED, "alpha")} for r in rows])
    for k in GAINS:
        df[k] = pd.to_numeric(df[k], errors="raise").astype(float)  # None -> NaN
    df["vector"] = df["vector"].astype(str)
    return df


def _column(df: pd.DataFrame) -> str:
    """``alpha`` for a relative sweep (every row has one), else ``coefficient``."""
    return "alpha" if df["alpha"].notna().all() else "coefficient"


def _label(value: float) -> str:
    return f"{value:g}"


def _empty(ax, title: str) -> None:
    ax.text(0.5, 0.5, "no items on this axis", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _heatmap(ax, df: pd.DataFrame, gain: str, column: str, limit: float) -> None:
    title = f"{df['vector'].iloc[0]}: {gain}"
    if df[gain].isna().all():
        _empty(ax, title)
        return
    table = df.pivot_table(index="layer", columns=column, values=gain, aggfunc="mean", dropna=False)
    table.columns = [_label(c) for c in table.columns]
    small = table.size <= 96
    sns.heatmap(table, ax=ax, cmap="vlag", center=0.0, vmin=-limit, vmax=limit, annot=small, fmt="+.2f",
                annot_kws={"fontsize": 7}, linewidths=0.5, cbar_kws={"label": gain})
    ax.set_title(title)
    ax.set_xlabel(column)
    ax.set_ylabel("layer")
    ax.invert_yaxis()  # deeper layers up


def _curves(ax, df: pd.DataFrame, gain: str, column: str) -> None:
    title = f"{df['vector'].iloc[0]}: {gain} by layer"
    if df[gain].isna().all():
        _empty(ax, title)
        return
    data = df.dropna(subset=[gain]).sort_values([column, "layer"]).assign(**{column: lambda d: d[column].map(_label)})
    order = [_label(c) for c in sorted(df[column].unique())]
    sns.lineplot(data=data, x="layer", y=gain, hue=column, hue_order=order, marker="o", ax=ax,
                 palette=sns.color_palette("viridis", len(order)), errorbar=None)
    ax.axhline(0.0, color="grey", ls="--", lw=0.8)
    ax.set_title(title)
    ax.set_xticks(sorted(data["layer"].unique()))
    ax.legend(title=column, fontsize=7, title_fontsize=8)


def plot_sweep(rows: list[dict], path: str | Path) -> Path:
    """Write the sweep figure of ``rows`` (one facet row per vector) to ``path`` (PNG); returns ``path``.

    Raises ``ValueError`` naming the first row that lacks one of ``vector``, ``layer``, ``coefficient``,
    ``transfer_gain``, ``localization_gain``; nothing is written then.
    """
    df = _frame(rows)
    vectors = list(dict.fromkeys(df["vector"]))
    limit = max(float(df[list(GAINS)].abs().max().max()), 1e-3) if df[list(GAINS)].notna().any().any() else 1.0
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(vectors), 4, figsize=(19, 3.8 * len(vectors)), squeeze=False)
    for axrow, name in zip(axes, vectors):
        part = df[df["vector"] == name]
        column = _column(part)
        for k, gain in enumerate(GAINS):
            _heatmap(axrow[k], part, gain, column, limit)
            _curves(axrow[2 + k], part, gain, column)
    fig.suptitle("sweep: gain over the unsteered model per (layer, coefficient)", y=1.0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    atomic_write(path, buf.getvalue())
    return path
