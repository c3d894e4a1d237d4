"""Layer x alpha sweeps of a steering vector on both axes, their KL cost, and the selection rule.

For every (layer, alpha) the model is steered with ``vectors.intervention(layer, alpha=alpha)`` (alpha in
the vector's own units: alpha = 1 adds the estimated mean difference, alpha = 0 is the unsteered model bit
for bit; see :mod:`interventions.vectors`) and the items of both axes are scored with
:func:`evaluate.scoring.score_items`. Each row (cell) holds

* ``transfer_score`` (gold chosen) and ``transfer_margin`` (log-prob of the gold minus the best other
  candidate), means over the transfer items;
* ``localization_score`` (local answer chosen) and ``localization_margin`` (log-prob of the local answer
  minus the US one), means over the localization items;
* each as a gain over the unsteered model (``transfer_gain``, ``transfer_margin_gain``, ...);
* ``kl``: the mean KL divergence KL(P_steered || P_unsteered) of the next-token distribution after each
  neutral text (e.g. FLORES devtest sentences in the target language; None without neutral texts), the
  cost of that strength. alpha = 0 has kl 0 exactly.

Margins use the item's own normalisation (summed, or per-token mean), so ``margin > 0`` iff the scorer
chooses that answer over the other (ties aside). With ``per_item=True`` the sweep also returns one record per
(cell, item) -- the scored grid that :mod:`evaluate.selection` cross-validates without further model calls.

Selection (:func:`choose` / :func:`select`): EN maximises its transfer gain subject to the localization
loss <= ``tolerance`` (LOC the reverse) and ``kl <= max_kl``; alpha = 0 (unsteered) is always a candidate and
is chosen unless a cell has a strictly positive gain; ties go to the smaller |alpha|, then the smaller KL,
then a seeded random draw (never by depth).

:func:`sweep` runs every cell with a full forward (the reference); :func:`cached_sweep` gives the same
rows from ONE unsteered pass (:class:`interventions.prefix_cache.PrefixCache`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from evaluate.outputs import write_csv
from evaluate.margins import item_margin
from evaluate.scoring import score_items
from interventions.config import InterventionConfig
from interventions.prefix_cache import PrefixCache
from interventions.steer import steer
from interventions.vectors import SteeringVectors

ALPHAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
AXES = ("transfer", "localization")
RULES = {"en": ("transfer", "localization"), "loc": ("localization", "transfer")}
MEASURES = {"margin": "_margin_gain", "score": "_gain"}


# --------------------------------------------------------------------------- per-item outcomes

def _outcome(item, score, axis: str) -> tuple[float, float] | None:
    """``(margin, correct)`` of one scored item on ``axis`` (:func:`evaluate.margins.item_margin`), or None when
    the item has no answer key for that axis."""
    margin = item_margin(item, score, axis)
    if margin is None:
        return None
    return margin, float(score.choice == (item.gold if axis == "transfer" else item.local))


def _axis_means(items, scores, axis: str) -> tuple[float | None, float | None]:
    outs = [m for m in (_outcome(it, s, axis) for it, s in zip(items, scores)) if m is not None]
    if not outs:
        return None, None
    return sum(c for _, c in outs) / len(outs), sum(m for m, _ in outs) / len(outs)


def _summary(transfer_items, t_scores, localization_items, l_scores) -> dict[str, float | None]:
    t_score, t_margin = _axis_means(transfer_items, t_scores, "transfer")
    l_score, l_margin = _axis_means(localization_items, l_scores, "localization")
    return {"transfer_score": t_score, "localization_score": l_score, "transfer_margin": t_margin,
            "localization_margin": l_margin}


# --------------------------------------------------------------------------- KL on neutral text

@torch.no_grad()
def next_token_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities of the next token after each text under the model as it is now (steered or not).

    ``Tensor[n_texts, vocab]`` (float32, CPU). Texts are left-padded with explicit ``position_ids`` (a padded
    row equals the unpadded one) and the LM head runs at the last position only. Memory: n_texts x vocab.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("neutral_texts: expected a sequence of non-empty strings")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for s in range(0, len(texts), batch_size):
        ids = [list(tokenizer(t)["input_ids"]) for t in texts[s:s + batch_size]]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=1).logits[:, -1]
        out.append(logits.float().log_softmax(-1).cpu())
    return torch.cat(out)


def kl_divergence(steered: torch.Tensor, base: torch.Tensor) -> float:
    """Mean over rows of KL(P_steered || P_base) from two ``[n, vocab]`` log-probability tensors (nats)."""
    if steered.shape != base.shape:
        raise ValueError(f"kl_divergence: shapes {tuple(steered.shape)} and {tuple(base.shape)} differ")
    kl = torch.nn.functional.kl_div(base.double(), steered.double(), log_target=True, reduction="none").sum(-1)
    return float(kl.mean())


# --------------------------------------------------------------------------- one cell

def _measure(model, tokenizer, transfer_items, localization_items, neutral_texts, batch_size):
    """Per-item scores of both axes and the neutral texts' next-token log-probs (None without texts)."""
    t = score_items(model, tokenizer, transfer_items, batch_size=batch_size, progress=False)
    l = score_items(model, tokenizer, localization_items, batch_size=batch_size, progress=False)
    neutral = next_token_logprobs(model, tokenizer, neutral_texts, batch_size) if neutral_texts else None
    return t, l, neutral


def evaluate_axes(model, tokenizer, transfer_items: Sequence, localization_items: Sequence, batch_size: int = 16
                  ) -> dict[str, float | None]:
    """Scores and margins of both axes of ``model`` now (``transfer_score``, ``transfer_margin``, ...)."""
    t, l, _ = _measure(model, tokenizer, transfer_items, localization_items, (), batch_size)
    return _summary(transfer_items, t, localization_items, l)


def _gain(value, base):
    return None if value is None or base is None else value - base


def _row(vectors: SteeringVectors, inter, scores: dict, base: dict, kl: float | None) -> dict:
    """One sweep cell: alpha, coefficient, scores and margins with their gains, and the KL cost."""
    row = {"vector": vectors.name, "layer": int(inter.layer), "alpha": inter.source.get("alpha"),
           "coefficient": float(inter.coefficient), "positions": inter.positions, **scores, "kl": kl}
    for axis in AXES:
        row[f"{axis}_gain"] = _gain(scores[f"{axis}_score"], base[f"{axis}_score"])
        row[f"{axis}_margin_gain"] = _gain(scores[f"{axis}_margin"], base[f"{axis}_margin"])
        row[f"base_{axis}_score"] = base[f"{axis}_score"]
        row[f"base_{axis}_margin"] = base[f"{axis}_margin"]
    return row


def _records(vectors, inter, transfer_items, t, localization_items, l) -> list[dict]:
    """One record per scored item of this cell: the scored grid for :mod:`evaluate.selection`."""
    out = []
    for axis, items, scores in (("transfer", transfer_items, t), ("localization", localization_items, l)):
        for it, s in zip(items, scores):
            m = _outcome(it, s, axis)
            if m is not None:
                out.append({"vector": vectors.name, "layer": int(inter.layer), "alpha": inter.source.get("alpha"),
                            "item_id": it.id, "group": it.group or it.id, "axis": axis, "margin": m[0],
                            "correct": m[1]})
    return out


def _check(layers, alphas, transfer_items, localization_items, neutral_texts):
    if not layers or not alphas:
        raise ValueError("sweep: expected at least one layer and one alpha")
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise ValueError(f"alphas: expected finite numbers (multiples of the mean difference), got {a!r}")
    if not transfer_items and not localization_items:
        raise ValueError("sweep: expected transfer_items or localization_items")
    if isinstance(neutral_texts, str):
        raise ValueError("neutral_texts: expected a sequence of strings, got one string")


def _run(model, tokenizer, vectors, layers, transfer_items, localization_items, alphas, neutral_texts, positions,
         batch_size, progress, per_item, cached):
    _check(layers, alphas, transfer_items, localization_items, neutral_texts)
    neutral_texts = list(neutral_texts)
    measure = (model, tokenizer, transfer_items, localization_items, neutral_texts, batch_size)
    prefix = PrefixCache(model, layers) if cached else None
    if cached:
        with prefix.record():  # the unsteered pass: the baseline and the prefix cache of every grid layer at once
            base = _measure(*measure)
    else:
        base = _measure(*measure)
    base_summary = _summary(transfer_items, base[0], localization_items, base[1])
    rows, records, done = [], [], {}
    grid = [(l, a) for l in layers for a in alphas]
    desc = f"{'cached ' if cached else ''}sweep {vectors.name}"
    for layer, alpha in tqdm(grid, desc=desc, disable=not progress, unit="cell"):
        inter = vectors.intervention(layer, alpha=alpha, positions=positions)
        key = (int(layer), float(inter.coefficient))
        if cached and inter.coefficient == 0.0 and bool(inter.vector.isfinite().all()):
            done[key] = base  # adding 0 * v leaves every activation bit for bit as it is: the baseline's pass
        if key not in done or not cached:  # cached: a repeated cell is the same computation, scored once
            with steer(model, InterventionConfig.for_model(model, [inter])):
                if cached:
                    with prefix.replay(int(layer)):
                        done[key] = _measure(*measure)
                else:
                    done[key] = _measure(*measure)
        t, l, neutral = done[key]
        kl = kl_divergence(neutral, base[2]) if neutral is not None else None
        rows.append(_row(vectors, inter, _summary(transfer_items, t, localization_items, l), base_summary, kl))
        if per_item:
            records += _records(vectors, inter, transfer_items, t, localization_items, l)
    return (rows, records) if per_item else rows


def sweep(model, tokenizer, vectors: SteeringVectors, layers: Sequence[int], transfer_items: Sequence,
          localization_items: Sequence, alphas: Sequence[float] = ALPHAS, neutral_texts: Sequence[str] = (),
          positions: str | None = None, batch_size: int = 16, progress: bool = True, per_item: bool = False):
    """One row per (layer, alpha), every cell with a full forward (the reference for :func:`cached_sweep`).

    ``alphas`` are multiples of the estimated mean difference (alpha = 0 is the unsteered model);
    ``positions`` defaults to the vectors' own. ``neutral_texts`` (loaded by the caller, e.g. FLORES devtest in
    the target language) give each row's ``kl``. Returns the rows, or ``(rows, records)`` with ``per_item=True``
    (records: ``vector, layer, alpha, item_id, group, axis, margin, correct`` per cell and item).
    """
    return _run(model, tokenizer, vectors, layers, transfer_items, localization_items, alphas, neutral_texts,
                positions, batch_size, progress, per_item, cached=False)


def cached_sweep(model, tokenizer, vectors: SteeringVectors, layers: Sequence[int], transfer_items: Sequence,
                 localization_items: Sequence, alphas: Sequence[float] = ALPHAS, neutral_texts: Sequence[str] = (),
                 positions: str | None = None, batch_size: int = 16, progress: bool = True, per_item: bool = False):
    """:func:`sweep`'s rows (and records), with ONE unsteered pass for the whole grid (also the baseline).

    That pass records every grid layer's output and the KV-cache updates of layers <= max(layers)
    (:class:`~interventions.prefix_cache.PrefixCache`; memory grows with the item and neutral-text count);
    each (layer, alpha) cell then runs only the layers above its layer. alpha = 0 is the baseline itself
    (``h + 0 * v == h`` bit for bit) and a repeated cell is scored once.
    """
    return _run(model, tokenizer, vectors, layers, transfer_items, localization_items, alphas, neutral_texts,
                positions, batch_size, progress, per_item, cached=True)


# --------------------------------------------------------------------------- selection

def choose(cells: Sequence[dict], gain: str, other: str, tolerance: float = 0.0, max_kl: float | None = None,
           seed: int = 0) -> dict:
    """The cell maximising ``cell[gain]`` with ``cell[other] >= -tolerance`` and ``cell["kl"] <= max_kl``.

    The unsteered model (alpha = 0, gain 0) is always a candidate and wins unless some qualifying cell has a
    strictly positive gain: a vector is never applied where it lost. Ties: the smaller |alpha|, then the
    smaller ``kl``, then a draw seeded by ``seed`` (never by layer). Cells with alpha = 0 are the unsteered
    model whatever their layer. A missing ``other`` does not constrain. Returns a copy of the chosen cell with
    ``steered=True``, or ``{"layer": None, "alpha": 0.0, "coefficient": 0.0, gain: 0.0, other: 0.0, "kl": 0.0,
    "steered": False}``.
    """
    import numpy as np

    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance: expected a number >= 0, got {tolerance!r}")
    if max_kl is not None and (isinstance(max_kl, bool) or not isinstance(max_kl, (int, float)) or not max_kl >= 0):
        raise ValueError(f"max_kl: expected a number >= 0 or None, got {max_kl!r}")
    ok = []
    for c in cells:
        if c["alpha"] == 0 or c.get(gain) is None or (c.get(other) is not None and c[other] < -tolerance):
            continue
        if max_kl is not None:
            if c.get("kl") is None:
                raise ValueError(f"max_kl: cell (layer {c['layer']}, alpha {c['alpha']}) has no kl; sweep with "
                                 "neutral_texts to bound selection by KL")
            if c["kl"] > max_kl:
                continue
        ok.append(c)
    best = max((c[gain] for c in ok), default=0.0)
    if best <= 0:
        return {"layer": None, "alpha": 0.0, "coefficient": 0.0, gain: 0.0, other: 0.0, "kl": 0.0, "steered": False}
    tied = [c for c in ok if c[gain] == best]
    smallest = min(abs(c["alpha"]) for c in tied)
    tied = [c for c in tied if abs(c["alpha"]) == smallest]
    if all(c.get("kl") is not None for c in tied):
        least = min(c["kl"] for c in tied)
        tied = [c for c in tied if c["kl"] == least]
    tied.sort(key=lambda c: (c["layer"], c["alpha"]))
    pick = tied[int(np.random.default_rng(seed).integers(len(tied)))] if len(tied) > 1 else tied[0]
    return dict(pick, steered=True)


def select(rows: Sequence[dict], rule: str, tolerance: float = 0.0, max_kl: float | None = None, seed: int = 0,
           measure: str = "margin") -> dict:
    """:func:`choose` on sweep rows: ``rule="en"`` maximises the transfer gain subject to the localization
    loss <= ``tolerance``, ``rule="loc"`` the reverse; ``measure="margin"`` (mean log-prob margins, nats) or
    ``"score"`` (accuracies). Selection on the data it is scored on: for held-out choices use
    :func:`evaluate.selection.cross_validate`.
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, got {rule!r}")
    if measure not in MEASURES:
        raise ValueError(f"measure: expected one of {sorted(MEASURES)}, got {measure!r}")
    own, other = (f"{axis}{MEASURES[measure]}" for axis in RULES[rule])
    chosen = choose(rows, own, other, tolerance, max_kl, seed)
    if not chosen["steered"] and rows:
        chosen["vector"] = rows[0].get("vector")
    return chosen


def save_sweep(rows: Sequence[dict], path: str | Path) -> Path:
    """The sweep table as JSON (a list of rows, sorted keys) at ``path`` and a CSV of the same rows beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    write_csv(list(rows), path.with_suffix(".csv"))
    return path
