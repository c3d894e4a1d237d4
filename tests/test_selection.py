"""Cross-validated selection on constructed scored grids, fold splits, and out-of-fold vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluate import selection as SEL
from interventions.vectors import SteeringVectors


def _records(items, cells, base=None, vector="en_transfer_ko"):
    """items: {item_id: (group, axis)}; cells: {(layer, alpha): {item_id: margin}}; base margins default 0."""
    base = base or {}
    out = []
    layers = sorted({layer for layer, _ in cells})
    for layer in layers:  # alpha 0 at every layer: the unsteered model
        for item, (group, axis) in items.items():
            m = base.get(item, 0.0)
            out.append({"vector": vector, "layer": layer, "alpha": 0.0, "item_id": item, "group": group, "axis": axis,
                        "margin": m, "correct": float(m > 0)})
    for (layer, alpha), margins in cells.items():
        for item, (group, axis) in items.items():
            m = margins.get(item, base.get(item, 0.0))
            out.append({"vector": vector, "layer": layer, "alpha": alpha, "item_id": item, "group": group,
                        "axis": axis, "margin": m, "correct": float(m > 0)})
    return out


def _items(n_transfer=8, n_local=8, per_group=2):
    items = {f"t{i}": (f"fact{i // per_group}", "transfer") for i in range(n_transfer)}
    items.update({f"l{i}": (f"concept{i // per_group}", "localization") for i in range(n_local)})
    return items


def test_group_folds_disjoint_by_group_balanced_and_seeded():
    groups = [f"g{i // 3}" for i in range(60)]  # 20 groups of 3 items
    strata = ["transfer" if i < 30 else "localization" for i in range(60)]
    folds = SEL.group_folds(groups, k=5, seed=1, strata=strata)
    assert set(folds) == set(groups) and set(folds.values()) == set(range(5))  # each group in exactly one fold
    for stratum in ("transfer", "localization"):
        own = {g for g, s in zip(groups, strata) if s == stratum}
        sizes = np.bincount([folds[g] for g in own], minlength=5)
        assert sizes.max() - sizes.min() <= 1  # balanced per stratum
    assert SEL.group_folds(groups, k=5, seed=1, strata=strata) == folds  # seeded
    assert SEL.group_folds(groups, k=5, seed=2, strata=strata) != folds
    assert SEL.group_folds(list(reversed(groups)), k=5, seed=1, strata=list(reversed(strata))) == folds  # order-free
    with pytest.raises(ValueError, match="k: expected an int >= 2"):
        SEL.group_folds(groups, k=1)
    with pytest.raises(ValueError, match="at least 30 distinct groups"):
        SEL.group_folds(groups, k=30)
    with pytest.raises(ValueError, match="strata"):
        SEL.group_folds(groups, k=2, strata=["a"])


def test_cross_validation_folds_never_split_a_group():
    items = _items(12, 12, per_group=3)
    grid = SEL.ScoredGrid.from_records(_records(items, {(2, 1.0): {"t0": 1.0}}))
    cv = SEL.cross_validate(grid, "en", k=4, seed=3)
    fold_of_group = {}
    for r in cv.out_of_fold:
        assert fold_of_group.setdefault(r["group"], r["fold"]) == r["fold"]
    assert sorted(r["item_id"] for r in cv.out_of_fold) == sorted(items)  # every item scored once, out of fold
    assert [s["n_train_items"] + s["n_test_items"] for s in cv.selections] == [24] * 4


def test_alpha_zero_when_every_gain_is_negative():
    items = _items()
    cells = {(layer, a): {i: -0.1 * a for i in items if i.startswith("t")} for layer in (3, 6) for a in (0.5, 1.0)}
    grid = SEL.ScoredGrid.from_records(_records(items, cells, base={i: 0.2 for i in items}))
    cv = SEL.cross_validate(grid, "en", k=4, seed=0)
    assert all(s["steered"] is False and s["alpha"] == 0.0 and s["layer"] is None for s in cv.selections)
    assert all(r["margin"] == r["base_margin"] == 0.2 for r in cv.out_of_fold)
    assert cv.stability() == {"counts": {"unsteered": 4}, "modal_share": 1.0, "n_folds": 4}
    assert cv.gains()["transfer_margin_gain"] == 0.0


def test_ties_go_to_the_smaller_alpha():
    items = _items()
    gain = {i: 0.5 for i in items if i.startswith("t")}  # the same gain at every alpha, layer 9 tying with 3
    cells = {(3, 1.0): gain, (3, 0.5): gain, (9, 2.0): gain, (9, 0.25): {i: 0.4 for i in gain}}
    grid = SEL.ScoredGrid.from_records(_records(items, cells))
    cv = SEL.cross_validate(grid, "en", k=4, seed=0)
    assert all((s["layer"], s["alpha"], s["steered"]) == (3, 0.5, True) for s in cv.selections)
    assert all(s["gain"] == pytest.approx(0.5) for s in cv.selections)


def test_kl_budget_and_tolerance_bound_the_choice():
    items = _items()
    own = {i: 1.0 for i in items if i.startswith("t")}
    cells = {(2, 1.0): own, (4, 1.0): {**{i: 0.5 for i in own}, **{i: -0.5 for i in items if i.startswith("l")}},
             (6, 0.5): {i: 0.3 for i in own}}
    rows = [{"layer": 2, "alpha": 1.0, "kl": 3.0}, {"layer": 4, "alpha": 1.0, "kl": 0.1},
            {"layer": 6, "alpha": 0.5, "kl": 0.2}, {"layer": 2, "alpha": 0.0, "kl": 0.0}]
    grid = SEL.ScoredGrid.from_sweep(rows, _records(items, cells))
    assert grid.kl == [3.0, 0.1, 0.2] and grid.cells == [(2, 1.0), (4, 1.0), (6, 0.5)]
    pick = lambda **kw: {(s["layer"], s["alpha"]) for s in SEL.cross_validate(grid, "en", k=4, **kw).selections}
    assert pick() == {(2, 1.0)}
    assert pick(max_kl=1.0) == {(6, 0.5)}  # layer 4 loses localization beyond the tolerance
    assert pick(max_kl=1.0, tolerance=0.6) == {(4, 1.0)}
    assert pick(max_kl=1.0, tolerance=0.6, other_outcome="correct") == {(4, 1.0)}  # correct stays 0 on base 0
    no_kl = SEL.ScoredGrid.from_records(_records(items, cells))
    with pytest.raises(ValueError, match="no kl"):
        SEL.cross_validate(no_kl, "en", k=4, max_kl=1.0)


def test_out_of_fold_outcomes_never_use_a_cell_chosen_with_the_item():
    """Item t0 alone makes cell A win; out of fold, t0 is scored under the cell the others chose (B)."""
    items = {"t0": ("f0", "transfer"), "t1": ("f1", "transfer"), "t2": ("f2", "transfer"), "l0": ("c0", "localization")}
    cells = {(2, 1.0): {"t0": 10.0}, (7, 1.0): {"t1": 1.0, "t2": 1.0}}
    grid = SEL.ScoredGrid.from_records(_records(items, cells))
    folds = {"f0": 0, "f1": 1, "f2": 2, "c0": 0}
    pooled = SEL.cross_validate(grid, "en", folds={g: 0 for g in folds} | {"f1": 1})  # t0 in training for fold 1
    assert next(s for s in pooled.selections if s["fold"] == 1)["layer"] == 2  # with t0: cell A
    cv = SEL.cross_validate(grid, "en", folds=folds)
    t0 = next(r for r in cv.out_of_fold if r["item_id"] == "t0")
    assert (t0["layer"], t0["alpha"]) == (7, 1.0) and t0["margin"] == 0.0  # chosen without t0: B, where t0 gains 0
    t1 = next(r for r in cv.out_of_fold if r["item_id"] == "t1")
    assert (t1["layer"], t1["margin"]) == (2, 0.0)  # chosen on t0 + t2: A (10 / 2 > 1 / 2)


def test_an_items_own_outcomes_never_move_its_own_choice():
    """Randomise one item's outcomes in every cell: the cell its fold chose (and so its record) stays put."""
    rng = np.random.default_rng(0)
    items = _items(10, 10)
    cells = {(l, a): {i: float(rng.normal(0.1 * a, 0.5)) for i in items} for l in (1, 2, 3) for a in (0.5, 1.0, 2.0)}
    grid = SEL.ScoredGrid.from_records(_records(items, cells))
    cv = SEL.cross_validate(grid, "loc", k=5, seed=4, tolerance=0.5)
    for item in ("t3", "l6"):
        shaken = {c: dict(m, **{item: float(rng.normal(0, 50))}) for c, m in cells.items()}
        cv2 = SEL.cross_validate(SEL.ScoredGrid.from_records(_records(items, shaken)), "loc", k=5, seed=4,
                                 tolerance=0.5)
        fold = next(r["fold"] for r in cv.out_of_fold if r["item_id"] == item)
        assert cv2.selections[fold] == cv.selections[fold]


def test_per_fold_grids():
    """LOC estimated out of fold: one grid per fold, each fold chooses on its own grid."""
    items = _items(4, 8)
    loc = [i for i in items if i.startswith("l")]
    grids = {f: SEL.ScoredGrid.from_records(_records(items, {(1 + f, 1.0): {i: 0.5 for i in loc}}, vector="loc_ko"))
             for f in range(2)}
    cv = SEL.cross_validate(grids, "loc", k=2, seed=0)
    assert [(s["fold"], s["layer"]) for s in cv.selections] == [(0, 1), (1, 2)]
    assert {r["margin"] for r in cv.out_of_fold if r["axis"] == "localization"} == {0.5}
    with pytest.raises(ValueError, match="no grid for fold"):
        SEL.cross_validate({0: grids[0]}, "loc", k=2)
    other = SEL.ScoredGrid.from_records(_records(_items(4, 6), {(1, 1.0): {}}))
    with pytest.raises(ValueError, match="same items"):
        SEL.cross_validate({0: grids[0], 1: other}, "loc", folds={g: i % 2 for i, g in enumerate(sorted(
            {g for g, _ in _items(4, 8).values()}))})


def test_scored_grid_bad_input():
    items = _items(2, 2)
    recs = _records(items, {(1, 1.0): {}})
    with pytest.raises(ValueError, match="alpha = 0"):
        SEL.ScoredGrid.from_records([r for r in recs if not (r["alpha"] == 0 and r["item_id"] == "t0")])
    with pytest.raises(ValueError, match=r"cell \(layer 1, alpha 1\) has no record"):
        SEL.ScoredGrid.from_records([r for r in recs if not (r["alpha"] == 1.0 and r["item_id"] == "l1")])
    with pytest.raises(ValueError, match="missing field"):
        SEL.ScoredGrid.from_records([{k: v for k, v in recs[0].items() if k != "group"}])
    with pytest.raises(ValueError, match="one vector"):
        SEL.ScoredGrid.from_records(recs + _records(items, {(1, 1.0): {}}, vector="loc_ko"))
    two = _records(items, {(1, 1.0): {}, (2, 1.0): {}})
    two[0] = dict(two[0], margin=5.0)
    with pytest.raises(ValueError, match="different outcomes at alpha 0"):
        SEL.ScoredGrid.from_records(two)
    grid = SEL.ScoredGrid.from_records(recs)
    with pytest.raises(ValueError, match="rule"):
        SEL.cross_validate(grid, "both", k=2)
    with pytest.raises(ValueError, match="outcome"):
        SEL.cross_validate(grid, "en", k=2, outcome="accuracy")
    with pytest.raises(ValueError, match="no fold for group"):
        SEL.cross_validate(grid, "en", folds={"fact0": 0})


def test_fold_mean_differences_use_training_pairs_only():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(3, 10, 8, generator=g), torch.randn(3, 10, 8, generator=g)
    groups = [f"c{i // 2}" for i in range(10)]
    folds = SEL.group_folds(groups, k=5, seed=0)
    diffs = SEL.fold_mean_differences(pos - neg, groups, folds)
    assert sorted(diffs) == list(range(5))
    for f, d in diffs.items():
        train = [i for i, grp in enumerate(groups) if folds[grp] != f]
        torch.testing.assert_close(d, (pos[:, train] - neg[:, train]).mean(1))
    base = SteeringVectors("loc_ko", (pos - neg).mean(1), [4, 8, 12], torch.ones(3),
                           {"method": "mean_difference", "vector": "loc_cultural"}, positions="last")
    per_fold = SEL.fold_vectors(base, pos - neg, groups, folds)
    assert per_fold[2].positions == "last" and per_fold[2].layers == [4, 8, 12]
    assert per_fold[2].source["fold"] == 2 and per_fold[2].source["n_prompts"] == 8
    assert per_fold[2].intervention(8, alpha=1.0).coefficient == 1.0
    torch.testing.assert_close(per_fold[2].vector(8), diffs[2][1])
    with pytest.raises(ValueError, match="have no fold"):
        SEL.fold_mean_differences(pos - neg, groups, {g_: 0 for g_ in groups[:4]})
    with pytest.raises(ValueError, match="one group per pair"):
        SEL.fold_mean_differences(pos - neg, groups[:3], folds)
    with pytest.raises(ValueError, match="differences"):
        SEL.fold_mean_differences(pos[0] - neg[0], groups, folds)
    with pytest.raises(ValueError, match="differences: 3 layers"):
        SEL.fold_vectors(SteeringVectors("v", torch.zeros(2, 8), [4, 8], torch.ones(2), {}), pos - neg, groups, folds)
