"""Controls for steering claims: norm-matched random directions, and the null for cos(v_EN, v_LOC).

* :func:`random_control` -- a Gaussian random direction with exactly the L2 norm of the vector it controls
  (per layer), seeded by ``(seed, layer)``, so the control of layer ``l`` is the same whichever other layers
  are drawn. :func:`control_intervention` makes the control of an intervention: same component, layer,
  coefficient and positions, ``source["role"] == "control"``. "EN steering erases culture" can then be told
  from "a push of that size damages the model": the control adds a vector of the same size in no chosen
  direction.
* :func:`cosine_test` -- cos(v_EN, v_LOC) at one layer from per-item difference vectors (``d_i = h(positive_i)
  - h(negative_i)``; the vectors are their means), with a sign-flip permutation null (each item's difference
  multiplied by a random +-1, both sets independently: the cosine two mean vectors reach when no direction is
  consistent across items, under the residual stream's own anisotropy, not an isotropic one) and the
  split-half reliability of each vector (how well its direction is estimated from n items).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from interventions.config import AdditiveIntervention
from interventions.vectors import SteeringVectors

CONTROL_DEFINITION = ("random control: a Gaussian direction (seeded by seed and layer) scaled to the L2 norm of the "
                      "controlled vector, at the same layer, coefficient and positions")


def _generator(seed: int, layer: int | None) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    key = [seed] if layer is None else [seed, int(layer)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))


def _matched(vector: torch.Tensor, seed: int, layer: int | None) -> torch.Tensor:
    """A random direction with ``vector``'s L2 norm, in its dtype (computed in float64)."""
    g = torch.randn(vector.shape, generator=_generator(seed, layer), dtype=torch.float64)
    return (g * (vector.double().norm() / g.norm())).to(vector.dtype)


def random_control(vector: torch.Tensor | SteeringVectors, seed: int = 0, layer: int | None = None):
    """A norm-matched random direction for ``vector``.

    * ``Tensor[hidden]``: one random vector with the same L2 norm (``layer`` only enters the seed);
    * ``Tensor[n_layers, hidden]``: row ``i`` drawn with seed ``(seed, i)`` and the norm of row ``i``;
    * :class:`SteeringVectors`: one per layer (seed ``(seed, layer)``), same norms, same ``alpha_scale`` and
      ``positions`` (so ``alpha`` gives the same coefficient and the same added norm), name
      ``<name>_random<seed>`` and ``source["role"] == "control"``.
    """
    if isinstance(vector, SteeringVectors):
        rows = torch.stack([_matched(vector.vector(l), seed, l) for l in vector.layers])
        source = dict(vector.source, role="control", controls=vector.name, control_seed=seed,
                      control_definition=CONTROL_DEFINITION)
        return SteeringVectors(f"{vector.name}_random{seed}", rows, list(vector.layers), vector.residual_norms.clone(),
                               source, None if vector.alpha_scale is None else vector.alpha_scale.clone(),
                               vector.positions)
    if not isinstance(vector, torch.Tensor) or not vector.is_floating_point() or vector.dim() not in (1, 2):
        raise ValueError("vector: expected a floating-point Tensor[hidden] or Tensor[n_layers, hidden], or "
                         "SteeringVectors")
    if vector.dim() == 1:
        return _matched(vector, seed, layer)
    return torch.stack([_matched(row, seed, i) for i, row in enumerate(vector)])


def control_intervention(intervention: AdditiveIntervention, seed: int = 0, name: str | None = None
                         ) -> AdditiveIntervention:
    """The random control of ``intervention``: a norm-matched random vector (seed ``(seed, layer)``), same
    component, layer, coefficient and positions; ``source`` = the controlled one's plus ``role="control"``."""
    if not isinstance(intervention, AdditiveIntervention):
        raise ValueError(f"intervention: expected an AdditiveIntervention, got {type(intervention).__name__}")
    vector = _matched(intervention.vector, seed, intervention.layer)
    source = dict(intervention.source, role="control", controls=intervention.name, control_seed=seed,
                  control_definition=CONTROL_DEFINITION)
    return AdditiveIntervention(name=name or f"{intervention.name}_control", component=intervention.component,
                                layer=intervention.layer, vector=vector, coefficient=intervention.coefficient,
                                positions=intervention.positions, source=source)


# --------------------------------------------------------------------------- cos(v_EN, v_LOC)

def _diffs(d, name: str) -> torch.Tensor:
    d = torch.as_tensor(d)
    if d.dim() != 2 or d.shape[0] < 2 or not d.is_floating_point():
        raise ValueError(f"{name}: expected per-item differences as a float Tensor[n_items >= 2, hidden], got "
                         f"shape {tuple(d.shape)}")
    return d.double()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``[..., hidden]`` tensors (0 where a norm is 0)."""
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / torch.where(den > 0, den, 1.0), 0.0)


def _signs(gen: torch.Generator, n_perm: int, n: int) -> torch.Tensor:
    return torch.randint(0, 2, (n_perm, n), generator=gen, dtype=torch.float64) * 2 - 1


def split_half_reliability(diffs, n_splits: int = 200, seed: int = 0) -> dict[str, float]:
    """How well the direction of ``mean(diffs)`` is estimated: over ``n_splits`` random halvings of the items,
    the mean cosine between the two halves' means (``split_half``), and its Spearman-Brown step-up to the full
    sample ``2 r / (1 + r)`` (``reliability``; for r <= 0 the step-up is not defined and r is reported)."""
    d = _diffs(diffs, "diffs")
    n = d.shape[0]
    gen = torch.Generator().manual_seed(seed)
    half = n // 2
    rs = []
    for _ in range(n_splits):
        perm = torch.randperm(n, generator=gen)
        rs.append(float(_cos(d[perm[:half]].mean(0), d[perm[half:2 * half]].mean(0))))
    r = float(np.mean(rs))
    return {"split_half": r, "reliability": 2 * r / (1 + r) if r > 0 else r, "n_items": n, "n_splits": n_splits}


def cosine_test(en_diffs, loc_diffs, n_permutations: int = 2000, n_splits: int = 200, seed: int = 0
                ) -> dict[str, Any]:
    """cos(v_EN, v_LOC) at one layer with its sign-flip permutation null and split-half reliabilities.

    ``en_diffs`` ``[n_en, hidden]``: per-item ``h(English sentence) - h(its L translation)``; ``loc_diffs``
    ``[n_loc, hidden]``: per-pair ``h(explicit cue) - h(no cue)``. Returns ``cosine`` (of the means),
    ``p_value`` (two-sided: ``(1 + #{|cos*| >= |cos|}) / (1 + n_permutations)`` over random sign flips of every
    item's difference, both sets independently), ``null_abs_q95`` (95th percentile of ``|cos*|``),
    ``reliability_en`` / ``reliability_loc`` (:func:`split_half_reliability`) and ``ceiling`` =
    sqrt(reliability_en * reliability_loc): the largest |cosine| two vectors this noisy could show.
    """
    en, loc = _diffs(en_diffs, "en_diffs"), _diffs(loc_diffs, "loc_diffs")
    if en.shape[1] != loc.shape[1]:
        raise ValueError(f"loc_diffs: hidden size {loc.shape[1]} differs from en_diffs' {en.shape[1]}")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"n_permutations: expected a positive int, got {n_permutations!r}")
    observed = float(_cos(en.mean(0), loc.mean(0)))
    gen = torch.Generator().manual_seed(seed)
    null = []
    for s in range(0, n_permutations, 500):  # chunks keep memory at 500 x hidden
        k = min(500, n_permutations - s)
        null.append(_cos(_signs(gen, k, en.shape[0]) @ en, _signs(gen, k, loc.shape[0]) @ loc).abs())
    null = torch.cat(null)
    exceed = int((null >= abs(observed) - 1e-12).sum())
    rel_en = split_half_reliability(en, n_splits, seed)
    rel_loc = split_half_reliability(loc, n_splits, seed + 1)
    both = rel_en["reliability"] * rel_loc["reliability"]
    return {"cosine": observed, "p_value": (1 + exceed) / (1 + n_permutations), "n_permutations": n_permutations,
            "null_abs_q95": float(torch.quantile(null, 0.95)), "reliability_en": rel_en["reliability"],
            "reliability_loc": rel_loc["reliability"], "ceiling": math.sqrt(both) if both > 0 else 0.0,
            "n_en": int(en.shape[0]), "n_loc": int(loc.shape[0])}
