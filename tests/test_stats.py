"""Bootstrap CIs, paired tests and chance tests give the textbook numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluate.stats import (bootstrap_ci, compare, mcnemar, mean_of_means, paired_bootstrap, poisson_binomial_sf,
                            summarize, vs_chance)


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    x = rng.binomial(1, 0.7, size=400).astype(float)
    m, lo, hi = bootstrap_ci(x, seed=3)
    assert lo < m < hi and m == pytest.approx(x.mean())
    assert bootstrap_ci(x, seed=3) == (m, lo, hi)
    se = math.sqrt(m * (1 - m) / x.size)  # normal approximation: half-width ~ 1.96 se
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.2)
    _, lo4, hi4 = bootstrap_ci(np.tile(x, 4), seed=3)
    assert (hi4 - lo4) < (hi - lo) * 0.7  # 4x the data, half the width


def test_bootstrap_ci_empty_and_bad_input():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 0.0], n_boot=0)


def test_mcnemar_exact_values():
    # 6 discordant pairs all favouring b: p = 2 * (1/2)^6
    a = [0] * 6 + [1] * 10
    b = [1] * 6 + [1] * 10
    r = mcnemar(a, b)
    assert (r["n01"], r["n10"]) == (6, 0)
    assert r["p_value"] == pytest.approx(2 / 64)
    assert mcnemar([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    # 10 vs 2 discordant: 2 * P(Binom(12, .5) <= 2) = 2 * (1 + 12 + 66) / 4096
    a = [1] * 10 + [0] * 2
    b = [0] * 10 + [1] * 2
    assert mcnemar(a, b)["p_value"] == pytest.approx(2 * 79 / 4096)
    import scipy.stats as scipy_stats  # a test dependency (pyproject [test])
    assert mcnemar(a, b)["p_value"] == pytest.approx(scipy_stats.binomtest(2, 12, 0.5).pvalue)
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([0.5], [1])
    with pytest.raises(ValueError, match="paired"):
        mcnemar([1, 0], [1])


def test_paired_bootstrap_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.binomial(1, 0.5, 300).astype(float)
    b = a.copy()
    flip = rng.choice(300, 60, replace=False)
    b[flip] = 1.0  # b is a plus some extra correct answers
    r = paired_bootstrap(a, b, seed=1)
    assert r["diff"] == pytest.approx(b.mean() - a.mean()) and r["diff"] > 0
    assert r["p_value"] < 0.01 and r["ci_low"] > 0
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    noise = paired_bootstrap(rng.normal(size=200), rng.normal(size=200), seed=2)
    assert noise["p_value"] > 0.01
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 2], [1, 2, 3])


def test_poisson_binomial_matches_binomial():
    n, p = 30, 0.25
    for k in (0, 5, 8, 12, 30):
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert poisson_binomial_sf(k, [p] * n) == pytest.approx(exact, rel=1e-9, abs=1e-15)
    # mixed rates: brute force over all outcomes
    probs = [0.1, 0.5, 0.25, 0.9]
    brute = 0.0
    for mask in range(16):
        bits = [(mask >> i) & 1 for i in range(4)]
        if sum(bits) >= 2:
            brute += np.prod([q if b else 1 - q for q, b in zip(probs, bits)])
    assert poisson_binomial_sf(2, probs) == pytest.approx(brute)


def test_vs_chance():
    above = vs_chance([1] * 40 + [0] * 60, 0.25)  # 40% correct on 4-option items
    assert above["above_chance"] and above["p_vs_chance"] < 0.01 and above["chance"] == 0.25
    at = vs_chance([1] * 25 + [0] * 75, 0.25)
    assert not at["above_chance"] and at["p_vs_chance"] > 0.4
    below = vs_chance([1] * 10 + [0] * 90, [0.5] * 100)
    assert not below["above_chance"] and below["p_vs_chance"] > 0.99
    cont = vs_chance(np.linspace(0.6, 0.9, 50), 0.5)  # non-binary values: bootstrap
    assert cont["above_chance"]
    with pytest.raises(ValueError, match="chance"):
        vs_chance([1, 0, 1], [0.5, 0.5])


def test_summarize_and_compare():
    s = summarize([1, 1, 0, 1], chance=0.5)
    assert set(s) >= {"value", "ci_low", "ci_high", "n", "chance", "p_vs_chance", "above_chance"}
    assert s["n"] == 4 and s["value"] == 0.75
    c = compare([0] * 20 + [1] * 20, [1] * 20 + [1] * 20)
    assert c["diff"] == 0.5 and c["p_mcnemar"] < 1e-4 and c["significant"]
    c2 = compare([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert "p_mcnemar" not in c2 and not c2["significant"]


def test_mean_of_means():
    m, lo, hi = mean_of_means([[1, 1, 1, 0], [0, 0]])
    assert m == pytest.approx((0.75 + 0.0) / 2) and lo <= m <= hi
    assert all(math.isnan(v) for v in mean_of_means([[], []]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=1, max_size=60), st.lists(st.integers(0, 1), min_size=1, max_size=60))
def test_properties(xs, ys):
    n = min(len(xs), len(ys))
    a, b = np.array(xs[:n], float), np.array(ys[:n], float)
    m, lo, hi = bootstrap_ci(a)
    assert lo - 1e-12 <= m <= hi + 1e-12 and 0 <= lo and hi <= 1
    p = mcnemar(a, b)["p_value"]
    assert 0 < p <= 1 and p == pytest.approx(mcnemar(b, a)["p_value"])
    assert 0 < paired_bootstrap(a, b)["p_value"] <= 1


# --- issue 14: pooled paired bootstrap over languages, Holm, sign-flip permutation test ---------------------
from evaluate.stats import holm, sign_flip_test, stratified_paired_bootstrap  # noqa: E402


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adj = holm([0.02, float("nan"), 0.01])  # NaN stays NaN and is not counted: m = 2
    assert math.isnan(adj[1]) and adj[0] == pytest.approx(0.02) and adj[2] == pytest.approx(0.02)
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_is_at_least_the_raw_p_and_at_most_bonferroni(ps):
    adj = holm(ps)
    for p, a in zip(ps, adj):
        assert p - 1e-12 <= a <= min(1.0, len(ps) * p) + 1e-12
    order = np.argsort(ps, kind="stable")
    assert all(adj[order[i]] <= adj[order[i + 1]] + 1e-12 for i in range(len(ps) - 1))  # monotone in p


def test_sign_flip_exact_by_enumeration():
    # d = (1, 2, 3): the 8 sign patterns give |sum| = 6, 4, 2, 0, 0, 2, 4, 6; observed 6 -> p = 2/8
    res = sign_flip_test([1.0, 2.0, 3.0])
    assert res["exact"] and res["p_value"] == pytest.approx(0.25) and res["mean"] == pytest.approx(2.0)
    assert sign_flip_test([1.0, -1.0])["p_value"] == 1.0
    assert sign_flip_test([0.0, 0.0, 0.0])["p_value"] == 1.0


def test_sign_flip_monte_carlo_close_to_exact_and_seeded():
    d = np.random.default_rng(0).normal(0.4, 1.0, size=12)
    exact = sign_flip_test(d, n_perm=5000)  # 2**12 = 4096 <= 5000: enumerated
    mc = sign_flip_test(d, n_perm=4000, seed=1)
    assert exact["exact"] and not mc["exact"]
    assert mc["p_value"] == pytest.approx(exact["p_value"], abs=0.03)
    assert sign_flip_test(d, n_perm=4000, seed=1) == mc
    big = np.random.default_rng(1).normal(1.0, 1.0, size=60)
    assert sign_flip_test(big, n_perm=2000)["p_value"] < 0.01


def test_sign_flip_null_rejects_at_about_alpha():
    rng = np.random.default_rng(2)
    rejections = sum(sign_flip_test(rng.normal(0, 1, size=10), n_perm=2000)["p_value"] < 0.05 for _ in range(200))
    assert rejections / 200 < 0.1


def test_stratified_paired_bootstrap_resamples_within_strata():
    # ko: every item +1, es: every item -1 (3x as many): no within-language variation, so every resample
    # keeps the pooled estimate; an unstratified bootstrap would vary with the language mix.
    base = [0.0] * 40
    other = [1.0] * 10 + [-1.0] * 30
    strata = ["ko"] * 10 + ["es"] * 30
    res = stratified_paired_bootstrap(base, other, strata, n_boot=500, seed=0)
    assert res["diff"] == pytest.approx(-0.5) and res["ci_low"] == pytest.approx(-0.5) == res["ci_high"]
    assert res["n"] == 40 and res["n_strata"] == 2
    by_lang = stratified_paired_bootstrap(base, other, strata, n_boot=500, seed=0, weighting="strata")
    assert by_lang["diff"] == pytest.approx(0.0)  # mean of the two language means
    loose = paired_bootstrap(base, other, n_boot=500, seed=0)
    assert loose["ci_high"] - loose["ci_low"] > 0.3


def test_stratified_paired_bootstrap_ci_coverage():
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(150):
        strata = ["ko"] * 30 + ["zh"] * 20
        base = rng.normal(0, 1, 50)
        other = base + np.r_[rng.normal(0.5, 1, 30), rng.normal(-0.25, 1, 20)]  # pooled true diff 0.2
        r = stratified_paired_bootstrap(base, other, strata, n_boot=400, seed=int(rng.integers(1 << 30)))
        covered += r["ci_low"] <= 0.2 <= r["ci_high"]
    assert 0.88 <= covered / 150 <= 0.99


def test_stratified_paired_bootstrap_bad_input():
    with pytest.raises(ValueError, match="paired"):
        stratified_paired_bootstrap([1, 2], [1, 2], ["ko"])
    with pytest.raises(ValueError, match="weighting"):
        stratified_paired_bootstrap([1], [2], ["ko"], weighting="mean")
    assert math.isnan(stratified_paired_bootstrap([], [], [])["diff"])
    same = stratified_paired_bootstrap([0.1, 0.2], [0.1, 0.2], ["a", "b"])
    assert same["diff"] == 0 and same["p_value"] == 1.0
