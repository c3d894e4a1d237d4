"""The cross-fitted protocol (evaluate.crossfit) on a tiny model with constructed items, and its statistics
(evaluate.crossfit_stats) on constructed outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluate import crossfit as CF
from evaluate.crossfit_stats import (NONINFERIORITY_MARGIN, exact_one_sided_sign_flip, fisher_combination,
                                     preregistered_tests)
from evaluate.selection import fold_vectors, group_folds
from interventions.vectors import SteeringVectors
from tiny_models import char_tokenizer, tiny_model

LAYERS = [0, 1, 2, 3]


def _data(language: str = "ko") -> CF.LanguageData:
    """8 transfer items in 4 groups (2 items each) and 8 localization items in 4 groups, each with its explicit
    twin; equal-length candidates so steering can move the choice."""
    from evaluate.tasks import Item

    transfer = [Item(f"t/{language}/{i}", "global_mmlu_cloze", language, f"Question {i} is", ("ab", "cd", "ef"),
                     gold=i % 3, group=f"fact{i // 2}") for i in range(8)]
    local = [Item(f"l/{language}/{i}/implicit", "locale_probe", language, f"Food {i} here:", ("kim", "piz"),
                  local=i % 2, us=1 - i % 2, group=f"concept{i // 2}") for i in range(8)]
    pairs = [(f"In Korea, food {i} here:", it.prompt, it.group) for i, it in enumerate(local)]
    english = ["The cat sat.", "A river runs.", "Birds fly south.", "Seven is a number.", "Hello there!"]
    other = ["Neko ga suwatta.", "Kawa ga nagareru.", "Tori wa minami e.", "Nana wa kazu.", "Konnichiwa!"]
    neutral = ["The sea is calm.", "Ok then", "Rain falls today.", "It is late."]
    return CF.LanguageData(language, transfer, local, pairs, (english, other), neutral)


def _settings(**kw) -> CF.CrossfitSettings:
    base = dict(layers=LAYERS, alphas=[1.0, 4.0], k=2, tolerance=100.0, seed=0, batch_size=8, progress=False)
    return CF.CrossfitSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def model_tok():
    return tiny_model("llama"), char_tokenizer()


@pytest.fixture(scope="module")
def run(model_tok):
    """One protocol run with spies on the sweeps and the controls (what was applied to which items)."""
    model, tok = model_tok
    sweeps, controls = [], []
    real_sweep, real_control = CF.cached_sweep, CF.control_intervention

    def sweep_spy(model_, tok_, vectors, layers, transfer, localization, **kw):
        sweeps.append((vectors, [it.id for it in transfer], [it.id for it in localization]))
        return real_sweep(model_, tok_, vectors, layers, transfer, localization, **kw)

    def control_spy(inter, seed=0, name=None):
        out = real_control(inter, seed=seed, name=name)
        controls.append((inter, out))
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(CF, "cached_sweep", sweep_spy)
    mp.setattr(CF, "control_intervention", control_spy)
    try:
        data = _data()
        res = CF.crossfit_language(model, tok, data, _settings())
    finally:
        mp.undo()
    return data, res, sweeps, controls


def _by_variant(outcomes):
    out: dict[str, list[str]] = {}
    for o in outcomes:
        out.setdefault(o["variant"], []).append(o["item_id"])
    return out


def test_every_item_exactly_once_per_out_of_fold_variant(run):
    data, res, _, _ = run
    ids = sorted(it.id for it in [*data.transfer_items, *data.localization_items])
    by = _by_variant(res.outcomes)
    assert sorted(by) == sorted(CF.VARIANTS)
    for variant, items in by.items():
        assert sorted(items) == ids, variant  # each item once: no duplicate, none missing
    assert all(math.isfinite(o["margin"]) and o["correct"] in (0.0, 1.0) for o in res.outcomes)


def test_folds_are_disjoint_by_group_and_every_outcome_carries_its_fold(run):
    data, res, _, _ = run
    items = [*data.transfer_items, *data.localization_items]
    assert set(res.folds) == {it.group for it in items} and set(res.folds.values()) == {0, 1}
    for o in res.outcomes:
        assert o["fold"] == res.folds[o["group"]]
    # a group's items (two per group here) never straddle folds, and each fold holds both axes
    for group in res.folds:
        assert len({o["fold"] for o in res.outcomes if o["group"] == group}) == 1
    for f in (0, 1):
        assert {o["axis"] for o in res.outcomes if o["fold"] == f} == {"transfer", "localization"}
    axes = ["transfer"] * len(data.transfer_items) + ["localization"] * len(data.localization_items)
    assert res.folds == group_folds([it.group for it in items], 2, 0, strata=axes)  # seeded, stratified by axis


def test_steered_selections_gained_on_their_selection_data(run):
    """"Never applied where it lost": a steered per-fold choice gained strictly on the other folds' items."""
    _, res, _, _ = run
    selections = [s for w in ("en", "loc") for s in res.selections[w]]
    assert len(selections) == 4 and all(s["n_train_items"] and s["n_test_items"] for s in selections)
    steered = [s for s in selections if s["steered"]]
    assert steered, "the grid should steer somewhere on this model (else this test cannot fail)"
    for s in steered:
        assert s["gain"] > 0 and s["alpha"] > 0 and s["layer"] in LAYERS, s
        assert s["other_gain"] >= -100.0
    for s in selections:
        if not s["steered"]:
            assert s["alpha"] == 0 and s["layer"] is None
    # the out-of-fold +en / +loc rows use exactly the fold's choice: unsteered folds equal base item by item
    base = {o["item_id"]: o["margin"] for o in res.outcomes if o["variant"] == "base"}
    for w in ("en", "loc"):
        by_fold = {s["fold"]: s for s in res.selections[w]}
        for o in res.outcomes:
            if o["variant"] == w and not by_fold[o["fold"]]["steered"]:
                assert o["margin"] == base[o["item_id"]]


def test_random_control_matches_the_controlled_vector(run):
    """Each control: same layer, coefficient and positions as the fold's chosen intervention, same norm."""
    _, res, _, controls = run
    assert controls, "a steered fold has controls"
    chosen = {(s["layer"], s["alpha"]) for w in ("en", "loc") for s in res.selections[w] if s["steered"]}
    for inter, ctl in controls:
        assert (ctl.layer, ctl.coefficient, ctl.positions, ctl.component) == (
            inter.layer, inter.coefficient, inter.positions, inter.component)
        torch.testing.assert_close(ctl.vector.norm(), inter.vector.norm(), rtol=1e-5, atol=0)
        assert abs(float(torch.nn.functional.cosine_similarity(ctl.vector, inter.vector, dim=0))) < 0.9
        assert ctl.source["role"] == "control" and (inter.layer, inter.coefficient) in chosen
    # the fold's vector at that layer: the control has ITS norm times alpha (mean difference: scale 1)
    en = res.vectors["en"]
    for inter, ctl in controls:
        if inter.name.startswith("en_transfer"):
            want = float(en.vector(inter.layer).norm()) * inter.coefficient
            assert float(ctl.vector.norm()) * ctl.coefficient == pytest.approx(want, rel=1e-5)


def test_loc_vector_of_a_fold_never_saw_that_folds_pairs(run):
    data, res, sweeps, _ = run
    loc_sweeps = [(v, t, l) for v, t, l in sweeps if v.name.startswith("loc_")]
    assert len(loc_sweeps) == 2  # one sweep per fold
    diff = res.diffs["loc"].double()  # [layers, pairs, hidden]
    pair_fold = torch.tensor([res.folds[g] for _, _, g in data.loc_pairs])
    item_fold = {it.id: res.folds[it.group] for it in [*data.transfer_items, *data.localization_items]}
    for vectors, transfer, local in loc_sweeps:
        folds = {item_fold[i] for i in transfer + local}
        assert len(folds) == 1  # a LOC sweep scores one fold's items ...
        (f,) = folds
        want = diff[:, pair_fold != f].mean(1).float()  # ... under the mean difference of the OTHER folds' pairs
        torch.testing.assert_close(vectors.vectors, want, rtol=1e-5, atol=1e-6)
        assert vectors.source["fold"] == f and vectors.source["n_prompts"] == int((pair_fold != f).sum())
    full = res.vectors["loc"].vectors
    torch.testing.assert_close(full, diff.mean(1).float(), rtol=1e-5, atol=1e-6)  # the artifact: every pair


def test_fold_vectors_on_constructed_states():
    """Pair i's difference is 10**i on coordinate i: fold f's vector is nonzero only where other folds' pairs are."""
    n, hidden = 6, 8
    groups = ["a", "a", "b", "c", "c", "d"]
    folds = {"a": 0, "b": 1, "c": 1, "d": 0}
    negative = torch.randn(2, n, hidden)
    positive = negative.clone()
    for i in range(n):
        positive[:, i, i] += 10.0 ** (i % 3)
    base = SteeringVectors("loc_ko", torch.zeros(2, hidden), [1, 2], torch.ones(2), {"role": "loc_cultural"},
                           positions="last")
    out = fold_vectors(base, positive - negative, groups, folds)
    assert sorted(out) == [0, 1]
    for f, vec in out.items():
        train = [i for i in range(n) if folds[groups[i]] != f]
        for i in range(n):
            value = vec.vectors[:, i]
            if i in train:
                torch.testing.assert_close(value, torch.full((2,), 10.0 ** (i % 3) / len(train)), rtol=1e-4,
                                           atol=1e-4)
            else:
                torch.testing.assert_close(value, torch.zeros(2), rtol=0, atol=1e-4)  # never the fold's own pairs
        assert vec.source["fold"] == f and vec.source["n_prompts"] == len(train) and vec.positions == "last"


def test_all_unsteered_selections_make_every_variant_equal_base(model_tok):
    """A KL budget no steered cell meets: alpha 0 in every fold, and every variant is the model alone."""
    model, tok = model_tok
    res = CF.crossfit_language(model, tok, _data("es"), _settings(max_kl=1e-12))
    assert all(not s["steered"] for w in ("en", "loc") for s in res.selections[w])
    base = {o["item_id"]: (o["margin"], o["correct"]) for o in res.outcomes if o["variant"] == "base"}
    for o in res.outcomes:
        margin, correct = base[o["item_id"]]
        assert o["margin"] == pytest.approx(margin, abs=1e-5) and o["correct"] == correct, o["variant"]
    assert CF.modal_choice(res.selections["en"]) == {"layer": None, "alpha": 0.0, "steered": False, "folds": 2,
                                                     "n_folds": 2}


def test_modal_choice_ties_prefer_the_smaller_alpha():
    sel = [{"layer": 2, "alpha": 4.0, "steered": True}, {"layer": 1, "alpha": 1.0, "steered": True},
           {"layer": 1, "alpha": 1.0, "steered": True}, {"layer": None, "alpha": 0.0, "steered": False}]
    assert CF.modal_choice(sel) == {"layer": 1, "alpha": 1.0, "steered": True, "folds": 2, "n_folds": 4}
    tie = [{"layer": 2, "alpha": 4.0, "steered": True}, {"layer": None, "alpha": 0.0, "steered": False}]
    assert CF.modal_choice(tie)["steered"] is False


# ----------------------------------------------------------------------------- pre-registered tests


def _outcomes(effects: dict[tuple[str, str], float], languages=("ko", "es"), n=40, noise=0.3, seed=0):
    """Per language, axis and item: base margin ~ N(0, 1); each variant = base + its effect on that axis + noise.
    ``effects[(variant, axis)]`` (default 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for lang in languages:
        for axis in ("transfer", "localization"):
            base = rng.normal(size=n)
            for variant in CF.VARIANTS:
                shift = 0.0 if variant == "base" else effects.get((variant, axis), 0.0)
                margins = base + shift + (0.0 if variant == "base" else rng.normal(scale=noise, size=n))
                for i, m in enumerate(margins):
                    out.append({"language": lang, "item_id": f"{axis}/{lang}/{i}", "group": f"g{i}", "axis": axis,
                                "fold": i % 2, "variant": variant, "margin": float(m), "correct": float(m > 0)})
    return out


SELECTIONS = {lang: {"en": {"layer": 1, "alpha": 1.0, "steered": True}, "loc": {"layer": 3, "alpha": 1.0,
                                                                                "steered": True}}
              for lang in ("ko", "es")}
COSINES = {lang: {"cosine": 0.02, "p_value": 0.6} for lang in ("ko", "es")}


def _tests(effects, **kw):
    tests = preregistered_tests({"base": _outcomes(effects, **kw)}, SELECTIONS, COSINES, ["ko", "es"], n_boot=500)
    return {t["test"]: t for t in tests}


def test_clear_effects_are_supported_and_holm_never_lowers_p():
    t = _tests({("en", "transfer"): 1.0, ("loc", "localization"): 1.0, ("surgical", "localization"): 1.0,
                ("en", "localization"): -1.0})
    assert t["en_beats_control"]["verdict"] == "supported"
    assert t["loc_beats_control"]["verdict"] == "supported"
    assert t["surgical_localization"]["verdict"] == "supported"
    assert t["surgical_transfer"]["verdict"] == "supported"  # flat transfer is within the non-inferiority margin
    assert t["erasure"]["verdict"] == "supported"  # predicted direction: EN lowers localization vs its control
    assert t["en_beats_control"]["estimate"] == pytest.approx(1.0, abs=0.15)
    for test in t.values():
        if np.isfinite(test["p"]):
            assert test["p_holm"] >= test["p"] - 1e-12 and 0 <= test["p_holm"] <= 1, test["test"]
        assert {"verdict", "p_holm", "claim", "run"} <= set(test)
    assert t["not_orthogonal"]["verdict"].startswith("not contradicted")
    assert "cla_transfer" not in t  # no adapter run


def test_clear_opposite_effects_are_contradicted():
    t = _tests({("en", "transfer"): -1.0, ("loc", "localization"): -1.0, ("surgical", "localization"): -1.0,
                ("surgical", "transfer"): -1.0, ("en", "localization"): 1.0})
    for name in ("en_beats_control", "loc_beats_control", "surgical_localization", "surgical_transfer", "erasure"):
        assert t[name]["verdict"] == "contradicted", (name, t[name])
        assert t[name]["p_opposite_holm"] < 0.05 <= t[name]["p_holm"]


def test_noise_is_not_reproduced():
    t = _tests({}, noise=0.3, seed=3)
    for name in ("en_beats_control", "loc_beats_control", "surgical_localization", "erasure"):
        assert t[name]["verdict"] == "not reproduced at this scale", (name, t[name])
    # no change in transfer is within the non-inferiority margin (the test's null is a loss of the margin)
    assert t["surgical_transfer"]["estimate"] > -NONINFERIORITY_MARGIN
    # depth: 2 languages both deeper, exact p = 1/4: never significant with 2 languages
    assert t["depth_order"]["p"] == pytest.approx(0.25) and t["depth_order"]["verdict"] == "not reproduced at this scale"


def test_cla_run_adds_the_alignment_test():
    base = _outcomes({})
    cla = [dict(o, margin=o["margin"] + (1.0 if o["axis"] == "transfer" else 0.0)) for o in base]
    tests = {t["test"]: t for t in preregistered_tests({"base": base, "cla": cla}, SELECTIONS, COSINES, ["ko", "es"],
                                                        n_boot=500)}
    assert tests["cla_transfer"]["verdict"] == "supported" and tests["en_beats_control"]["run"] == "cla"
    assert tests["cla_transfer"]["estimate"] == pytest.approx(1.0)


def test_fisher_combination_by_hand():
    # -2 (ln 0.1 + ln 0.2) = 7.8240; chi2 with 4 dof: P(X >= x) = exp(-x/2) (1 + x/2) = 0.02 * (1 + 3.91202)
    assert fisher_combination([0.1, 0.2]) == pytest.approx(0.02 * (1 + math.log(50)), rel=1e-12)
    assert fisher_combination([0.3]) == pytest.approx(0.3)  # one p-value is itself
    assert fisher_combination([float("nan"), 0.3]) == pytest.approx(0.3) and math.isnan(fisher_combination([]))
    assert fisher_combination([1.0, 1.0, 1.0]) == pytest.approx(1.0)


def test_exact_one_sided_sign_flip_by_enumeration():
    r = exact_one_sided_sign_flip([1.0, 2.0, 3.0])  # sums of +-1 +-2 +-3: 6 4 2 0 0 -2 -4 -6
    assert (r["n"], r["estimate"], r["p"], r["p_opposite"]) == (3, 2.0, 1 / 8, 1.0)
    r = exact_one_sided_sign_flip([1.0, -1.0])  # sums 0 2 -2 0: observed 0
    assert (r["p"], r["p_opposite"]) == (0.75, 0.75)
    assert math.isnan(exact_one_sided_sign_flip([])["p"])
    with pytest.raises(ValueError, match="16"):
        exact_one_sided_sign_flip([1.0] * 17)


def test_a_new_addition_is_one_table_entry(model_tok, monkeypatch):
    """Adding a variant is one entry in evaluate.variants.ADDITIONS: the protocol scores it out of fold with
    per-fold interventions built from its typed fields (here both vectors' norm-matched random controls), and
    the recipe's Variant type parses it, with no other change."""
    from evaluate import variants
    from recipes.variants import Variant

    model, tok = model_tok
    monkeypatch.setitem(variants.ADDITIONS, "random_surgical", variants.Addition(
        ("en", "loc"), control=True, crossfit_only=True, description="random directions of both vectors"))
    assert "random_surgical" in variants.crossfit_additions()
    v = Variant.parse("cla+random_surgical")
    assert v.adapter and v.roles == ("en", "loc") and v.control and v.crossfit_only
    applied = []
    real_control = CF.control_intervention
    monkeypatch.setattr(CF, "control_intervention",
                        lambda inter, seed=0, **kw: applied.append(inter.layer) or real_control(inter, seed=seed, **kw))
    data = _data()
    res = CF.crossfit_language(model, tok, data, _settings())
    by = _by_variant(res.outcomes)
    ids = sorted(it.id for it in [*data.transfer_items, *data.localization_items])
    assert sorted(by["random_surgical"]) == ids  # every item once, out of fold
    assert set(by) == {*CF.VARIANTS, "random_surgical"}
    # per fold: random_en and random_loc control one steered vector each, random_surgical both of them
    n_steered = sum(bool(sel["steered"]) for which in ("en", "loc") for sel in res.selections[which])
    assert n_steered > 0 and len(applied) == 2 * n_steered
