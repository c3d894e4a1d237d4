"""Statistics for evaluation numbers: bootstrap CIs, paired tests between variants, tests against chance.

Everything is vectorised numpy and deterministic for a given ``seed``.

- :func:`bootstrap_ci` - percentile bootstrap 95% CI of a mean.
- :func:`paired_bootstrap` - two variants scored on the *same* items: CI of the mean difference and a
  two-sided p-value (bootstrap of the null-centred differences).
- :func:`mcnemar` - exact McNemar test for paired 0/1 outcomes (binomial test on the discordant pairs).
- :func:`vs_chance` - is a mean above what random choices give? Exact one-sided Poisson-binomial test for
  0/1 outcomes with per-item chance rates (items may have different numbers of candidates); a one-sided
  bootstrap test otherwise.
- :func:`summarize` / :func:`compare` bundle these into the dicts that results.json and results.csv carry.
- :func:`stratified_paired_bootstrap` - paired mean difference pooled over strata (languages), resampling
  items within each stratum; :func:`sign_flip_test` - permutation test of a paired mean (exact when small);
  :func:`holm` - Holm's step-down adjustment of a family of p-values.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LEVEL = 0.05
"""The significance level of every test and verdict, and the miscoverage of every CI (95%): one place.
Named ``level``, never ``alpha``, which is the steering strength."""


def format_p(p) -> str:
    """A p-value as reports print it: ``<0.001``, three decimals, or ``n/a`` (None or NaN)."""
    if p is None or p != p:
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _vector(values, name: str = "values") -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected finite numbers, found NaN or inf")
    return a


def _is_binary(a: np.ndarray) -> bool:
    return bool(np.all((a == 0) | (a == 1)))


def _boot_means(a: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    if n_boot < 1:
        raise ValueError(f"n_boot: expected a positive integer, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    return a[idx].mean(axis=1)


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high): percentile bootstrap ``1 - level`` interval of the mean. NaNs when empty."""
    a = _vector(values)
    if a.size == 0:
        return (math.nan, math.nan, math.nan)
    means = _boot_means(a, n_boot, seed)
    low, high = np.quantile(means, [level / 2, 1 - level / 2])
    return float(a.mean()), float(low), float(high)


def paired_bootstrap(a, b, n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """Paired bootstrap of ``mean(b) - mean(a)`` over the same items (``a[i]`` and ``b[i]`` are one item).

    Returns ``diff``, ``ci_low``, ``ci_high`` and a two-sided ``p_value``: the share of bootstrap means of the
    null-centred differences at least as far from 0 as the observed one, with the (k + 1) / (n_boot + 1)
    correction so a p-value is never exactly 0.
    """
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap: a and b must score the same items; got lengths {x.size} and {y.size}")
    if x.size == 0:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    d = y - x
    obs = float(d.mean())
    means = _boot_means(d, n_boot, seed)
    low, high = np.quantile(means, [level / 2, 1 - level / 2])
    if np.all(d == d[0]):  # no variation: either no difference at all or a constant shift
        p = 1.0 if obs == 0 else 1.0 / (n_boot + 1)
    else:
        extreme = np.abs(means - obs) >= abs(obs) - 1e-12
        p = float((extreme.sum() + 1) / (n_boot + 1))
    return {"diff": obs, "ci_low": float(low), "ci_high": float(high), "p_value": min(p, 1.0)}


def _binom_tail_le(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact (integer arithmetic)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar(a_correct, b_correct) -> dict[str, float]:
    """Exact McNemar test on paired 0/1 outcomes.

    ``n01`` = items a got wrong and b right, ``n10`` = a right and b wrong; under the null each discordant
    pair is a fair coin, so ``p_value = min(1, 2 * P(Binom(n01 + n10, 1/2) <= min(n01, n10)))``.
    """
    x, y = _vector(a_correct, "a_correct"), _vector(b_correct, "b_correct")
    if x.shape != y.shape:
        raise ValueError(f"mcnemar: a_correct and b_correct must be paired; got lengths {x.size} and {y.size}")
    if not (_is_binary(x) and _is_binary(y)):
        raise ValueError("mcnemar: expected 0/1 (correct/incorrect) outcomes")
    n01 = int(np.sum((x == 0) & (y == 1)))
    n10 = int(np.sum((x == 1) & (y == 0)))
    n = n01 + n10
    p = 1.0 if n == 0 else min(1.0, 2.0 * _binom_tail_le(min(n01, n10), n))
    return {"n01": n01, "n10": n10, "p_value": p}


def poisson_binomial_sf(k: int, probs) -> float:
    """P(X >= k) where X is a sum of independent Bernoulli(probs[i]) (exact dynamic programme)."""
    p = _vector(probs, "probs")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs: expected probabilities in [0, 1]")
    pmf = np.zeros(p.size + 1)
    pmf[0] = 1.0
    for i, pi in enumerate(p):  # pmf over 0..i+1 successes after item i
        pmf[1:i + 2] = pmf[1:i + 2] * (1 - pi) + pmf[0:i + 1] * pi
        pmf[0] *= 1 - pi
    return float(min(1.0, max(0.0, pmf[max(k, 0):].sum())))


def vs_chance(values, chance, n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> dict[str, float | bool]:
    """One-sided test that the mean of ``values`` is above ``chance`` (a number or one rate per item).

    0/1 outcomes: exact Poisson-binomial tail ``P(X >= observed successes)`` under the per-item chance rates.
    Other values: bootstrap share of resampled means at or below the mean chance rate.
    """
    a = _vector(values)
    rates = np.broadcast_to(np.asarray(chance, dtype=np.float64), a.shape) if np.ndim(chance) == 0 \
        else _vector(chance, "chance")
    if rates.shape != a.shape:
        raise ValueError(f"chance: expected a number or one rate per value ({a.size}), got {rates.size}")
    if a.size == 0:
        return {"chance": math.nan, "p_vs_chance": math.nan, "above_chance": False}
    if _is_binary(a):
        p = poisson_binomial_sf(int(a.sum()), rates)
    else:
        means = _boot_means(a, n_boot, seed)
        p = float(((means <= rates.mean()).sum() + 1) / (n_boot + 1))
    return {"chance": float(rates.mean()), "p_vs_chance": p, "above_chance": bool(p < level and a.mean() > rates.mean())}


def summarize(values, chance=None, n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> dict:
    """``value, ci_low, ci_high, n`` (+ ``chance, p_vs_chance, above_chance`` when ``chance`` is given)."""
    a = _vector(values)
    value, low, high = bootstrap_ci(a, n_boot=n_boot, seed=seed, level=level)
    out = {"value": value, "ci_low": low, "ci_high": high, "n": int(a.size)}
    if chance is not None:
        out.update(vs_chance(a, chance, n_boot=n_boot, seed=seed, level=level))
    return out


def compare(base, other, n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> dict:
    """Paired comparison of ``other`` against ``base`` on the same items: paired bootstrap (+ McNemar for 0/1)."""
    pb = paired_bootstrap(base, other, n_boot=n_boot, seed=seed, level=level)
    out = {"diff": pb["diff"], "diff_ci_low": pb["ci_low"], "diff_ci_high": pb["ci_high"],
           "p_paired_bootstrap": pb["p_value"], "n": int(np.asarray(base).size)}
    x, y = _vector(base, "base"), _vector(other, "other")
    if x.size and _is_binary(x) and _is_binary(y):
        out["p_mcnemar"] = mcnemar(x, y)["p_value"]
    p = out.get("p_mcnemar", out["p_paired_bootstrap"])
    out["significant"] = bool(p < level) if not math.isnan(p) else False
    return out


def mean_of_means(groups: Sequence[Sequence[float]], n_boot: int = 1000, seed: int = 0,
                  level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) of the average of several metrics' means, resampling items within each metric
    (stratified bootstrap); used for transfer_score / localization_score, which average tasks."""
    arrays = [_vector(g) for g in groups if len(g)]
    if not arrays:
        return (math.nan, math.nan, math.nan)
    boots = np.stack([_boot_means(a, n_boot, seed + i) for i, a in enumerate(arrays)]).mean(axis=0)
    low, high = np.quantile(boots, [level / 2, 1 - level / 2])
    return float(np.mean([a.mean() for a in arrays])), float(low), float(high)


def stratified_paired_bootstrap(base, other, strata, n_boot: int = 1000, seed: int = 0, level: float = LEVEL,
                                weighting: str = "items") -> dict:
    """Mean of ``other - base`` pooled over strata (e.g. languages), items resampled *within* each stratum.

    ``strata[i]`` labels item ``i``. ``weighting="items"``: the pooled mean over all items (each stratum keeps
    its size in every resample); ``"strata"``: the mean of the per-stratum means (each stratum counts once).
    Returns ``diff``, percentile ``ci_low``/``ci_high``, a two-sided ``p_value`` (share of null-centred
    resampled estimates at least as far from 0 as the observed one, (k + 1) / (n_boot + 1)), ``n`` and
    ``n_strata``.
    """
    x, y = _vector(base, "base"), _vector(other, "other")
    labels = np.asarray(list(strata), dtype=object)
    if x.shape != y.shape or labels.shape != x.shape:
        raise ValueError(f"stratified_paired_bootstrap: base, other and strata must be paired; got lengths "
                         f"{x.size}, {y.size} and {labels.size}")
    if weighting not in ("items", "strata"):
        raise ValueError(f"weighting: expected 'items' or 'strata', got {weighting!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot: expected a positive integer, got {n_boot!r}")
    if x.size == 0:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n": 0, "n_strata": 0}
    d = y - x
    rng = np.random.default_rng(seed)
    names = sorted(set(labels.tolist()), key=str)
    sizes, obs_means, boot_means = [], [], []
    for name in names:
        ds = d[labels == name]
        sizes.append(ds.size)
        obs_means.append(ds.mean())
        boot_means.append(ds[rng.integers(0, ds.size, size=(n_boot, ds.size))].mean(axis=1))
    w = np.asarray(sizes, dtype=np.float64) if weighting == "items" else np.ones(len(names))
    w = w / w.sum()
    obs = float(np.dot(w, obs_means))
    boots = np.stack(boot_means, axis=1) @ w
    low, high = np.quantile(boots, [level / 2, 1 - level / 2])
    if all(np.all(d[labels == name] == d[labels == name][0]) for name in names):  # no within-stratum variation
        p = 1.0 if obs == 0 else 1.0 / (n_boot + 1)
    else:
        p = float(((np.abs(boots - obs) >= abs(obs) - 1e-12).sum() + 1) / (n_boot + 1))
    return {"diff": obs, "ci_low": float(low), "ci_high": float(high), "p_value": min(p, 1.0),
            "n": int(d.size), "n_strata": len(names)}


def sign_flip_test(diffs, n_perm: int = 10000, seed: int = 0) -> dict:
    """Two-sided sign-flip permutation test that the mean of paired differences is 0.

    Under the null each difference is symmetric about 0, so flipping signs leaves its distribution unchanged;
    ``p_value`` = share of sign patterns whose |mean| is at least the observed |mean|. All ``2**n`` patterns
    are enumerated when that is at most ``n_perm`` (``exact=True``); otherwise ``n_perm`` random patterns
    with the (k + 1) / (n_perm + 1) correction.
    """
    d = _vector(diffs, "diffs")
    if n_perm < 1:
        raise ValueError(f"n_perm: expected a positive integer, got {n_perm!r}")
    if d.size == 0:
        return {"mean": math.nan, "p_value": math.nan, "n": 0, "exact": True}
    obs = abs(float(d.mean()))
    exact = 2 ** d.size <= n_perm
    if exact:
        codes = np.arange(2 ** d.size)[:, None]
        signs = 1 - 2 * ((codes >> np.arange(d.size)[None, :]) & 1)
        means = np.abs(signs @ d) / d.size
        p = float((means >= obs - 1e-12).mean())
    else:
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_perm, d.size))
        means = np.abs(signs @ d) / d.size
        p = float(((means >= obs - 1e-12).sum() + 1) / (n_perm + 1))
    return {"mean": float(d.mean()), "p_value": min(p, 1.0), "n": int(d.size), "exact": bool(exact)}


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaNs stay NaN and are not counted).

    With the m p-values sorted ascending, ``adj_(k) = max_{j <= k} min(1, (m - j + 1) * p_(j))``; rejecting
    where ``adj < level`` controls the family-wise error rate at ``level``.
    """
    p = np.asarray(list(pvalues), dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues: expected a 1-D sequence of numbers, got shape {p.shape}")
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError("pvalues: expected p-values in [0, 1] (or NaN)")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return [float(v) for v in out]
