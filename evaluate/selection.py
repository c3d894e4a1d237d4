"""Cross-validated choice of (layer, alpha) from ONE scored grid, and out-of-fold steering vectors.

The scored grid is what a sweep with ``per_item=True`` returns (:func:`evaluate.sweep.cached_sweep`):
per (layer, alpha) cell and item, the item's ``margin`` and ``correct`` on its axis (transfer or
localization), plus the cell's ``kl`` from the sweep rows. No model is called here.

:func:`cross_validate` splits the items into k folds by group (:func:`group_folds`: every item of a group --
a concept, a fact -- in the same fold; seeded; groups dealt per axis so each fold gets both axes) and for each
fold chooses a cell on the OTHER folds' items with :func:`evaluate.sweep.choose`: maximise the mean gain
over the unsteered model on the vector's own axis, subject to the other axis' mean gain >= -tolerance and
kl <= max_kl; alpha = 0 (unsteered) always a candidate and chosen unless a cell gained strictly on the
selection data; ties to the smaller |alpha|, then the smaller KL, then a seeded draw (never by depth). Each
item's out-of-fold outcome is its outcome under the cell chosen without it.

When the vector itself is estimated from the items (LOC), :func:`fold_mean_differences` /
:func:`fold_vectors` estimate it per fold from the training folds' pairs only, from per-pair differences of states
collected once; pass one grid per fold (each swept with that fold's vector) to :func:`cross_validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from evaluate.sweep import RULES, choose
from interventions.vectors import SteeringVectors

OUTCOMES = ("margin", "correct")


@dataclass
class ScoredGrid:
    """Per-item outcomes of every steered cell, the unsteered (alpha = 0) outcomes, and each cell's KL."""

    vector: str
    item_ids: list[str]
    groups: list[str]
    axes: list[str]                      # "transfer" | "localization" per item
    cells: list[tuple[int, float]]       # steered (layer, alpha), alpha != 0
    outcomes: dict[str, np.ndarray]      # outcome -> [n_items, n_cells]
    base: dict[str, np.ndarray]          # outcome -> [n_items] at alpha = 0
    kl: list[float | None] = field(default_factory=list)  # per cell

    @classmethod
    def from_records(cls, records: Sequence[Mapping], kl: Mapping[tuple[int, float], float] | None = None
                     ) -> "ScoredGrid":
        """From per-(cell, item) records (``vector, layer, alpha, item_id, group, axis, margin, correct``).

        alpha = 0 records (any layer: they are all the unsteered model) give the baseline; every item needs a
        record in every cell. ``kl`` maps ``(layer, alpha)`` to the cell's KL (missing cells: None).
        """
        if not records:
            raise ValueError("records: expected the per-item records of a sweep (per_item=True), got none")
        need = ("vector", "layer", "alpha", "item_id", "group", "axis", *OUTCOMES)
        for i, r in enumerate(records):
            missing = [k for k in need if k not in r]
            if missing:
                raise ValueError(f"records[{i}]: missing field(s) {missing}; expected {list(need)}")
        vectors = sorted({r["vector"] for r in records})
        if len(vectors) != 1:
            raise ValueError(f"records: expected the records of one vector, got {vectors}")
        items: dict[str, tuple[str, str]] = {}
        base: dict[str, dict[str, float]] = {}
        cell_values: dict[tuple[int, float], dict[str, dict[str, float]]] = {}
        for r in records:
            items.setdefault(r["item_id"], (str(r["group"]), r["axis"]))
            values = {k: float(r[k]) for k in OUTCOMES}
            if r["alpha"] == 0:
                if base.setdefault(r["item_id"], values) != values:
                    raise ValueError(f"records: item {r['item_id']!r} has different outcomes at alpha 0 in different "
                                     "layers; alpha = 0 must be the unsteered model")
            else:
                cell_values.setdefault((int(r["layer"]), float(r["alpha"])), {})[r["item_id"]] = values
        ids = sorted(items)
        missing_base = [i for i in ids if i not in base]
        if missing_base:
            raise ValueError(f"records: no alpha = 0 (unsteered) record for item(s) {missing_base[:3]}; sweep with "
                             "alpha 0 in the grid")
        cells = sorted(cell_values)
        for cell in cells:
            absent = [i for i in ids if i not in cell_values[cell]]
            if absent:
                raise ValueError(f"records: cell (layer {cell[0]}, alpha {cell[1]:g}) has no record for item(s) "
                                 f"{absent[:3]}")
        outcomes = {k: np.array([[cell_values[c][i][k] for c in cells] for i in ids], dtype=float).reshape(
            len(ids), len(cells)) for k in OUTCOMES}
        return cls(vectors[0], ids, [items[i][0] for i in ids], [items[i][1] for i in ids], cells, outcomes,
                   {k: np.array([base[i][k] for i in ids], dtype=float) for k in OUTCOMES},
                   [None if kl is None else kl.get(c) for c in cells])

    @classmethod
    def from_sweep(cls, rows: Sequence[Mapping], records: Sequence[Mapping]) -> "ScoredGrid":
        """From a sweep's ``(rows, records)`` (``per_item=True``): the rows give each cell's ``kl``."""
        kl = {(int(r["layer"]), float(r["alpha"])): r.get("kl") for r in rows if r.get("alpha") not in (None, 0)}
        return cls.from_records(records, kl)


def group_folds(groups: Sequence[str], k: int = 5, seed: int = 0, strata: Sequence[str] | None = None
                ) -> dict[str, int]:
    """``{group: fold}`` with folds ``0..k-1`` disjoint by group, balanced in groups per stratum, seeded.

    The distinct groups of each stratum (e.g. the items' axes; one stratum without ``strata``) are sorted,
    shuffled with ``numpy.random.default_rng([seed, stratum index])`` and dealt round-robin, continuing where
    the previous stratum stopped. A group in several strata gets the fold of its first stratum.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k: expected an int >= 2 folds, got {k!r}")
    groups = [str(g) for g in groups]
    strata = ["all"] * len(groups) if strata is None else [str(s) for s in strata]
    if len(strata) != len(groups):
        raise ValueError(f"strata: expected one stratum per group entry ({len(groups)}), got {len(strata)}")
    if len(set(groups)) < k:
        raise ValueError(f"k: {k} folds need at least {k} distinct groups, got {len(set(groups))}")
    folds: dict[str, int] = {}
    nxt = 0
    for s_index, stratum in enumerate(sorted(set(strata))):
        own = sorted({g for g, s in zip(groups, strata) if s == stratum and g not in folds})
        for j in np.random.default_rng([seed, s_index]).permutation(len(own)):
            folds[own[j]] = nxt % k
            nxt += 1
    return folds


def _train_cells(grid: ScoredGrid, train: np.ndarray, rule: str, outcome: str, other_outcome: str) -> list[dict]:
    own_axis, other_axis = RULES[rule]
    axes = np.array(grid.axes)
    out = []
    for j, (layer, alpha) in enumerate(grid.cells):
        cell = {"layer": layer, "alpha": alpha, "kl": grid.kl[j] if grid.kl else None}
        for key, axis, name in (("gain", own_axis, outcome), ("other_gain", other_axis, other_outcome)):
            rows = train & (axes == axis)
            cell[key] = float(np.mean(grid.outcomes[name][rows, j] - grid.base[name][rows])) if rows.any() else None
        out.append(cell)
    return out


@dataclass
class CrossValidation:
    """Per-fold selections and every item's out-of-fold outcome."""

    rule: str
    folds: dict[str, int]
    selections: list[dict]   # per fold: layer, alpha, steered, gain, other_gain, kl, n_train_items, n_test_items
    out_of_fold: list[dict]  # per item: item_id, group, axis, fold, layer, alpha, margin, correct, base_*

    def stability(self) -> dict[str, Any]:
        """How often each cell was chosen across folds (``"unsteered"`` for alpha = 0)."""
        counts: dict[str, int] = {}
        for s in self.selections:
            key = "unsteered" if not s["steered"] else f"layer {s['layer']}, alpha {s['alpha']:g}"
            counts[key] = counts.get(key, 0) + 1
        top = max(counts.values())
        return {"counts": counts, "modal_share": top / len(self.selections), "n_folds": len(self.selections)}

    def gains(self) -> dict[str, float | None]:
        """Mean out-of-fold gain over the unsteered model per axis and outcome."""
        out = {}
        for axis in ("transfer", "localization"):
            rows = [r for r in self.out_of_fold if r["axis"] == axis]
            for name in OUTCOMES:
                out[f"{axis}_{name}_gain"] = (float(np.mean([r[name] - r[f"base_{name}"] for r in rows]))
                                              if rows else None)
        return out


def cross_validate(grid: ScoredGrid | Mapping[int, ScoredGrid], rule: str, k: int = 5, seed: int = 0,
                   folds: Mapping[str, int] | None = None, tolerance: float = 0.0, max_kl: float | None = None,
                   outcome: str = "margin", other_outcome: str | None = None) -> CrossValidation:
    """Choose (layer, alpha) per fold on the other folds; score each fold's items under its fold's choice.

    ``rule``: ``"en"`` (own axis transfer, other localization) or ``"loc"``. ``grid``: one :class:`ScoredGrid`,
    or ``{fold: ScoredGrid}`` when the vector was estimated per fold (all grids over the same items).
    ``folds``: ``{group: fold}`` (default :func:`group_folds` of the items' groups, stratified by axis, with
    ``k`` and ``seed``). ``outcome`` is maximised on the own axis and ``other_outcome`` (default the same)
    bounds the other axis by ``tolerance`` (in its units: nats for ``"margin"``, a rate for ``"correct"``);
    ``max_kl`` bounds the cell's KL. Ties beyond |alpha| and KL are drawn with ``seed`` and the fold.
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, got {rule!r}")
    other_outcome = other_outcome or outcome
    for name, value in (("outcome", outcome), ("other_outcome", other_outcome)):
        if value not in OUTCOMES:
            raise ValueError(f"{name}: expected one of {list(OUTCOMES)}, got {value!r}")
    grids = dict(grid) if isinstance(grid, Mapping) else None
    first = next(iter(grids.values())) if grids else grid
    if not isinstance(first, ScoredGrid):
        raise ValueError("grid: expected a ScoredGrid or a mapping fold -> ScoredGrid")
    if folds is None:
        folds = group_folds(first.groups, k, seed, strata=first.axes)
    missing = sorted({g for g in first.groups if g not in folds})
    if missing:
        raise ValueError(f"folds: no fold for group(s) {missing[:3]}")
    fold_ids = sorted(set(folds[g] for g in first.groups))
    if grids is not None:
        absent = [f for f in fold_ids if f not in grids]
        if absent:
            raise ValueError(f"grid: no grid for fold(s) {absent}; expected one per fold {fold_ids}")
        for f in fold_ids:
            if grids[f].item_ids != first.item_ids:
                raise ValueError(f"grid[{f}]: its items differ from grid[{fold_ids[0]}]'s; every fold's grid must "
                                 "score the same items")
    item_fold = np.array([folds[g] for g in first.groups])
    selections, out_of_fold = [], []
    for f in fold_ids:
        g = grids[f] if grids is not None else first
        train, test = item_fold != f, item_fold == f
        chosen = choose(_train_cells(g, train, rule, outcome, other_outcome), "gain", "other_gain", tolerance,
                        max_kl, seed=int(np.random.SeedSequence([seed, f]).generate_state(1)[0]))
        j = g.cells.index((chosen["layer"], chosen["alpha"])) if chosen["steered"] else None
        selections.append({"fold": f, "vector": g.vector, **{k_: chosen[k_] for k_ in ("layer", "alpha", "steered",
                                                                                        "gain", "other_gain", "kl")},
                           "n_train_items": int(train.sum()), "n_test_items": int(test.sum())})
        for i in np.flatnonzero(test):
            rec = {"item_id": g.item_ids[i], "group": g.groups[i], "axis": g.axes[i], "fold": f,
                   "layer": chosen["layer"], "alpha": chosen["alpha"]}
            for name in OUTCOMES:
                rec[name] = float(g.outcomes[name][i, j]) if j is not None else float(g.base[name][i])
                rec[f"base_{name}"] = float(g.base[name][i])
            out_of_fold.append(rec)
    return CrossValidation(rule, {str(k_): int(v) for k_, v in folds.items()}, selections, out_of_fold)


# --------------------------------------------------------------------------- out-of-fold vectors

def fold_mean_differences(differences: torch.Tensor, groups: Sequence[str],
                          folds: Mapping[str, int]) -> dict[int, torch.Tensor]:
    """Per fold, the mean of the per-pair ``differences`` over the pairs NOT in that fold: ``{fold: [L, H]}``.

    ``differences``: ``h(positive) - h(negative)`` per pair, ``[n_layers, n_pairs, hidden]``, from states collected
    once (e.g. :func:`interventions.vectors.sentence_representations` with ``pooling="last"``); ``groups[i]`` the
    group of pair ``i``, which must have a fold (a pair outside every fold would leak into every fold's vector).
    """
    if differences.dim() != 3:
        raise ValueError(f"differences: expected a Tensor[n_layers, n_pairs, hidden], got shape "
                         f"{tuple(differences.shape)}")
    if len(groups) != differences.shape[1]:
        raise ValueError(f"groups: expected one group per pair ({differences.shape[1]}), got {len(groups)}")
    missing = sorted({str(g) for g in groups if str(g) not in folds})
    if missing:
        raise ValueError(f"groups: pair group(s) {missing[:3]} have no fold; give every pair's group a fold")
    fold_of = torch.tensor([folds[str(g)] for g in groups])
    diff = differences.double()
    out = {}
    for f in sorted(set(folds.values())):
        train = fold_of != f
        if not train.any():
            raise ValueError(f"folds: fold {f} leaves no training pairs")
        out[f] = diff[:, train].mean(1).float()
    return out


def fold_vectors(vectors: SteeringVectors, differences: torch.Tensor, groups: Sequence[str],
                 folds: Mapping[str, int]) -> dict[int, SteeringVectors]:
    """``vectors`` re-estimated per fold: the mean of the training folds' per-pair ``differences`` only
    (:func:`fold_mean_differences`).

    Keeps the name, layers, positions and provenance of ``vectors`` (whose layers the differences' first axis must
    follow); ``source`` gains ``fold`` and the training pair count. ``alpha_scale`` is 1 (mean difference).
    """
    if differences.shape[0] != len(vectors.layers):
        raise ValueError(f"differences: {differences.shape[0]} layers of states for {len(vectors.layers)} vector "
                         "layers")
    fold_of = [folds.get(str(g)) for g in groups]
    out = {}
    for f, diff in fold_mean_differences(differences, groups, folds).items():
        source = dict(vectors.source, method="mean_difference", fold=f, estimated_on="training folds",
                      n_prompts=sum(x != f for x in fold_of))
        source.pop("alpha_scale", None)
        out[f] = SteeringVectors(vectors.name, diff, list(vectors.layers), vectors.residual_norms.clone(), source,
                                 torch.ones(len(vectors.layers)), vectors.positions)
    return out
