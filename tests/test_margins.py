"""The margin outcome, gap items and the trivial baselines, on constructed items and scores."""

from __future__ import annotations

import pytest

from evaluate.baselines import (baseline_choices, expected_outcome, fewer_tokens_choice, majority_answer,
                                majority_choice)
from evaluate.margins import choice_scores, gap_items, item_margin
from evaluate.outcomes import reference_gaps, variant_outcomes
from evaluate.plane_scores import metric_rows, plane_rows
from evaluate.scoring import _make_score
from evaluate.tasks import Item, Task


def loc_item(i=0, local=0, cands=(" seoul", " washington"), norm="sum", cue="implicit", lang="ko"):
    return Item(f"loc/{lang}/c{i}/{cue}", "loc", lang, "capital:", cands, local=local, us=1 - local,
                group=f"loc/c{i}", cue=cue, meta={"normalization": norm})


def tr_item(lang, i, gold, cands=(" a", " bb", " ccc"), norm="sum"):
    return Item(f"tr/{lang}/q{i}", "tr", lang, "q", cands, gold=gold, group=f"tr/q{i}", meta={"normalization": norm})


def test_localization_margin_is_the_difference_of_the_scorers_logprobs():
    it = loc_item(local=1)
    s = _make_score(it, [-2.5, -4.0], [1, 3], None)  # sum normalisation: local (index 1) loses by 1.5
    assert item_margin(it, s) == pytest.approx(s.logprob[1] - s.logprob[0]) == pytest.approx(-1.5)
    assert s.choice == 0  # the US answer was chosen: margin < 0 exactly when wrong
    mean_it = loc_item(local=1, norm="mean")
    m = _make_score(mean_it, [-2.5, -4.0], [1, 4], None)  # per token: -2.5 vs -1.0: local wins
    assert m.normalization == "mean" and m.choice == 1
    assert item_margin(mean_it, m) == pytest.approx(-4.0 / 4 - (-2.5 / 1))
    assert choice_scores(m) == pytest.approx(m.mean_logprob)


def test_transfer_margin_is_gold_minus_best_distractor():
    it = tr_item("ko", 0, gold=2)
    s = _make_score(it, [-3.0, -1.0, -2.0], [1, 1, 1], None)
    assert item_margin(it, s) == pytest.approx(-2.0 - (-1.0))
    s2 = _make_score(it, [-3.0, -5.0, -2.0], [1, 1, 1], None)
    assert item_margin(it, s2) == pytest.approx(1.0) and s2.choice == 2
    assert item_margin(Item("x/en/1", "x", "en", "p", (" a",), gold=0), _make_score(
        Item("x/en/1", "x", "en", "p", (" a",), gold=0), [-1.0], [1], None)) is None  # no distractor
    with pytest.raises(ValueError, match="scores for"):
        item_margin(it, _make_score(loc_item(), [-1.0, -2.0], [1, 1], None))


@pytest.mark.parametrize("norm", ["sum", "mean"])
def test_margin_sign_agrees_with_the_choice(norm):
    import random

    rng = random.Random(0)
    for k in range(200):
        it = tr_item("ko", k, gold=k % 3, norm=norm)
        s = _make_score(it, [rng.uniform(-9, 0) for _ in range(3)], [rng.randint(1, 4) for _ in range(3)], None)
        assert (item_margin(it, s) > 0) == (s.choice == it.gold)


def test_gap_items():
    en = [tr_item("en", i, gold=0) for i in range(4)]
    ko = [tr_item("ko", i, gold=0) for i in range(4)]
    right, wrong = [-1.0, -5.0, -6.0], [-5.0, -1.0, -6.0]
    scores = {it.id: _make_score(it, right, [1, 1, 1], None) for it in en}
    scores[en[3].id] = _make_score(en[3], wrong, [1, 1, 1], None)  # English wrong: never a gap item
    for i, lp in enumerate([wrong, right, wrong, wrong]):
        scores[ko[i].id] = _make_score(ko[i], lp, [1, 1, 1], None)
    assert gap_items(ko + en, scores) == {"tr/ko/q0", "tr/ko/q2"}
    assert gap_items(ko, scores) == set()  # English twins not among the items: none


def test_baselines_on_a_constructed_cell():
    # golds: "a" twice, "bb" once -> majority "a"; item 3 has no "a" candidate -> uniform guess
    items = [tr_item("ko", 0, 0), tr_item("ko", 1, 0), tr_item("ko", 2, 1), tr_item("ko", 3, 0, cands=(" x", " y"))]
    assert majority_answer(items[:3], "transfer") == "a"
    assert majority_choice(items[2], "a") == (1.0, 0.0, 0.0)
    assert majority_choice(items[3], "a") == (0.5, 0.5)
    assert fewer_tokens_choice([2, 1, 1]) == (0.0, 0.5, 0.5)
    scores = {it.id: _make_score(it, [-1.0] * len(it.candidates), [1, 2, 3][:len(it.candidates)], None)
              for it in items}
    b = baseline_choices({("tr", "ko"): items}, {"tr": "transfer"}, scores)
    got_majority = [expected_outcome("accuracy", it, b[it.id]["majority"]) for it in items]
    assert got_majority == [1.0, 1.0, 0.0, 0.5]
    # fewer tokens: candidate 0 always has 1 token, gold 0 on items 0, 1, 3
    assert [expected_outcome("accuracy", it, b[it.id]["fewer_tokens"]) for it in items] == [1.0, 1.0, 0.0, 1.0]
    assert b[items[0].id]["chance"] == pytest.approx((1 / 3,) * 3)


def test_localization_majority_is_the_more_frequent_local_or_us_string():
    items = [loc_item(i, local=i % 2, cands=(f" local{i}", " 911") if i % 2 == 0 else (" 911", f" local{i}"))
             for i in range(4)]
    # candidates: local answers distinct, the US answer "911" in every item -> always answer the US string
    items = [Item(it.id, it.task, it.language, it.prompt, it.candidates, local=it.candidates.index(
        next(c for c in it.candidates if "local" in c)), us=it.candidates.index(" 911"), group=it.group)
        for it in items]
    assert majority_answer(items, "localization") == "911"
    b = baseline_choices({("loc", "ko"): items}, {"loc": "localization"}, {})
    assert [expected_outcome("localization_score", it, b[it.id]["majority"]) for it in items] == [0.0] * 4
    assert [expected_outcome("us_rate", it, b[it.id]["majority"]) for it in items] == [1.0] * 4
    assert "fewer_tokens" not in b[items[0].id]  # no scores given


class TinyTransfer(Task):
    name, kind, languages = "tr", "transfer", ("en", "ko")

    def _build(self, language, **_):
        return [tr_item(language, i, gold=i % 3) for i in range(6)]


def test_outcomes_rows_and_plane_scores_carry_margins_gaps_and_baselines():
    task = TinyTransfer()
    by_cell = {("tr", lang): task.items(lang, "all") for lang in ("ko", "en")}
    lp = {0: [-1.0, -3.0, -4.0], 1: [-3.0, -1.0, -4.0], 2: [-3.0, -4.0, -1.0]}  # right choice
    base = {}
    for (_, lang), items in by_cell.items():
        for it in items:
            right = lp[it.gold]
            wrong = lp[(it.gold + 1) % 3]
            use = wrong if (lang == "ko" and int(it.id[-1]) < 3) else right  # ko q0-q2 wrong: gap items
            base[it.id] = _make_score(it, use, [1, 2, 3], None)
    steered = {i: _make_score(next(it for c in by_cell.values() for it in c if it.id == i),
                              lp[int(i[-1]) % 3], [1, 2, 3], None) for i in base}  # everything right
    b = baseline_choices(by_cell, {"tr": "transfer"}, base)
    gaps = reference_gaps([task], ["ko"], by_cell, base)
    assert gaps == {("tr", "ko"): {"tr/ko/q0", "tr/ko/q1", "tr/ko/q2"}}
    outcomes = {}
    for name, sc in (("base", base), ("steered", steered)):
        outcomes[name], _ = variant_outcomes([task], ["ko"], by_cell, sc, b, gaps)
    cells = outcomes["base"]
    assert cells[("tr", "ko", "", "margin")]["tr/ko/q0"].value == pytest.approx(-2.0)
    assert set(cells[("tr", "ko", "", "accuracy_on_gap")]) == gaps[("tr", "ko")]
    acc = cells[("tr", "ko", "", "accuracy")]["tr/ko/q3"]
    assert acc.chance == pytest.approx(1 / 3) and acc.fewer_tokens == 1.0 and acc.majority is not None

    class V:
        def __init__(self, name):
            self.name = name

    variants = [V("base"), V("steered")]
    rows = {(r["variant"], r["language"], r["metric"]): r for r in metric_rows(variants, outcomes, "base", 200, 0)}
    r = rows[("base", "ko", "accuracy")]
    assert r["value"] == pytest.approx(0.5) and r["chance"] == pytest.approx(1 / 3)
    assert r["baseline_fewer_tokens"] == pytest.approx(2 / 6)  # candidate 0 is shortest; gold 0 on q0 and q3
    assert rows[("base", "ko", "margin")]["chance"] is None
    assert rows[("steered", "ko", "accuracy_on_gap")]["value"] == 1.0
    assert rows[("steered", "ko", "accuracy_on_gap")]["diff_vs_base"] == 1.0
    plane = {(r["variant"], r["language"], r["score"]): r
             for r in plane_rows(variants, outcomes, {"tr": "transfer"}, ["ko"], "base", 200, 0)}
    m = plane[("steered", "mean", "transfer_margin")]
    assert m["value"] == pytest.approx(2.0) and m["diff_vs_base"] == pytest.approx(2.0 - (-2 - 3 - 3 + 2 * 3) / 6)
    assert m["diff_ci_low"] <= m["diff_vs_base"] <= m["diff_ci_high"] and m["chance"] is None
    t = plane[("base", "ko", "transfer_score")]
    assert t["baseline_fewer_tokens"] == pytest.approx(2 / 6) and t["baseline_majority"] is not None
    assert plane[("base", "ko", "transfer_score_on_gap")]["value"] == 0.0
