"""Cross-fitted Surgical Steering for one model and language: one scored grid, k folds, out-of-fold variants.

This is the protocol the decisive experiment uses (issue 14); :mod:`evaluate.crossfit_stats` pools its
output over languages and runs the pre-registered tests. For one language:

1. **Items** (loaded by the caller): the localization items (implicit cue, every split: the folds replace
   the extract/test split), their explicit-cue twins (the LOC contrast), and a stratified seeded sample of
   transfer items. Items are dealt into ``k`` folds by *group* (a fact, a concept), stratified by axis.
2. **Vectors.** EN-transfer: ``mean h_l(English) - mean h_l(L)`` over parallel FLORES dev sentences (no
   evaluation item enters it). LOC-cultural: per fold, the mean explicit-minus-implicit difference of the
   OTHER folds' twins, from last-token states collected once (:func:`evaluate.selection.fold_vectors`).
3. **One scored grid per vector** (:func:`evaluate.sweep.cached_sweep`, ``per_item=True``): every item's
   log-prob margin at every (layer, alpha), alpha = 0 being the unsteered model, plus each cell's KL on
   neutral FLORES devtest text. An item is scored under the LOC vector of its own fold (estimated without
   it), so the LOC grid costs one sweep, not ``k``.
4. **Selection per fold** on the other folds' items (:func:`evaluate.selection.cross_validate`): maximise the
   mean margin gain on the vector's own axis, the other axis within ``tolerance``, the KL within ``max_kl``;
   alpha = 0 wins unless a cell gained strictly; ties to the smaller alpha.
5. **Out-of-fold variants**: each fold's items scored under the fold's choices: ``base``, ``+en``, ``+loc``
   (read from the grids), ``+surgical`` (both at once), the norm-matched random-direction controls
   ``+random_en`` / ``+random_loc`` (same layer, same alpha, same norm), and ``+surgical_all_positions``
   (the sensitivity row: both vectors at every position, the old default).

Caveat, stated in the report: the cells chosen for fold f are selected on items scored under LOC vectors
that were estimated with fold f's *prompts* (never fold f's outcomes); the vector applied to fold f's
items never saw them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interventions.config import InterventionConfig
from interventions.controls import control_intervention
from interventions.steer import steer
from evaluate.sweep import cached_sweep
from interventions.vectors import SteeringVectors, sentence_representations

from .margins import item_margin
from .scoring import score_items
from .selection import ScoredGrid, cross_validate, fold_vectors, group_folds
from .variants import STEERING_ROLES, crossfit_additions

VARIANTS = ("base", *STEERING_ROLES, *crossfit_additions())
"""Out-of-fold variants, named after what is added to the model (``base``: nothing): the estimated vectors,
then every addition of :data:`evaluate.variants.ADDITIONS` built from them."""


@dataclass
class CrossfitSettings:
    layers: list[int]
    alphas: list[float]
    """Multiples of the estimated mean difference; 0 (unsteered) is always added."""
    k: int = 5
    tolerance: float = 0.0
    """Largest mean margin loss (nats) on the other axis a chosen cell may cost on its selection data."""
    max_kl: float | None = None
    seed: int = 0
    batch_size: int = 8
    control_seed: int = 0
    progress: bool = True

    def grid_alphas(self) -> list[float]:
        return sorted({0.0, *map(float, self.alphas)})


@dataclass
class LanguageData:
    """What the protocol needs for one language (loaded by the caller: data loading outside the estimator)."""

    language: str
    transfer_items: list
    localization_items: list
    """Implicit-cue items (the ones scored)."""
    loc_pairs: list[tuple[str, str, str]]
    """(explicit prompt, implicit prompt, group) twins of the localization items (the LOC contrast)."""
    en_pairs: tuple[list[str], list[str]]
    """(English sentences, parallel L sentences): the EN contrast."""
    neutral_texts: list[str]
    """Held-out neutral text in L (FLORES devtest) for the KL of each cell."""


@dataclass
class LanguageResult:
    language: str
    folds: dict[str, int]
    outcomes: list[dict]
    """Per item and variant: language, item_id, group, axis, fold, variant, margin, correct."""
    selections: dict[str, list[dict]]
    """``en`` / ``loc``: per fold, the chosen layer, alpha, steered, selection gains, KL."""
    stability: dict[str, Any]
    grid_rows: list[dict]
    """Per vector and cell: mean margins/scores and gains over all items, KL (descriptive)."""
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)
    """``en`` / ``loc``: per-pair state differences [n_layers, n_pairs, hidden] (for the cosine test)."""
    vectors: dict[str, SteeringVectors] = field(default_factory=dict)
    """Full-data ``en`` / ``loc`` vectors (the artifact's) at every layer."""


def _states(model, tokenizer, texts: Sequence[str], pooling: str, batch_size: int, progress: bool) -> torch.Tensor:
    return sentence_representations(model, tokenizer, list(texts), pooling=pooling, batch_size=batch_size,
                                    progress=progress)


def _vectors(name: str, diffs: torch.Tensor, positions: str, source: dict) -> SteeringVectors:
    """Mean-difference vectors at every layer from per-pair differences ``[n_layers, n, hidden]``."""
    layers = list(range(diffs.shape[0]))
    source = {"method": "mean_difference", "n_prompts": int(diffs.shape[1]), "positions": positions, **source}
    return SteeringVectors(name, diffs.double().mean(1).float(), layers, diffs.norm(dim=-1).mean(1).float(), source,
                           torch.ones(len(layers)), positions)


def estimate_vectors(model, tokenizer, data: LanguageData, settings: CrossfitSettings):
    """The EN vector, the full-data LOC vector and their per-pair differences (states collected once)."""
    english, other = data.en_pairs
    en_diff = (_states(model, tokenizer, english, "mean", settings.batch_size, settings.progress)
               - _states(model, tokenizer, other, "mean", settings.batch_size, settings.progress))
    explicit = [p for p, _, _ in data.loc_pairs]
    implicit = [q for _, q, _ in data.loc_pairs]
    loc_diff = (_states(model, tokenizer, explicit, "last", settings.batch_size, settings.progress)
                - _states(model, tokenizer, implicit, "last", settings.batch_size, settings.progress))
    lang = data.language
    en = _vectors(f"en_transfer_{lang}", en_diff, "prompt",
                  {"role": "en_transfer", "language": lang, "vector": "en_transfer", "positive": "en",
                   "negative": lang, "data": "flores200/dev", "reduce": "mean",
                   "definition": "mean h_l(en) - mean h_l(L), parallel FLORES sentences"})
    loc = _vectors(f"loc_{lang}", loc_diff, "last",
                   {"role": "loc_cultural", "language": lang, "vector": "loc_cultural",
                    "positive": f"{lang}+explicit_cue", "negative": f"{lang}+no_cue", "reduce": "last",
                    "definition": "mean h_l(L prompt with explicit country cue) - mean h_l(same prompt, no cue)"})
    return en, loc, en_diff, loc_diff


def _items_and_folds(data: LanguageData, settings: CrossfitSettings):
    """(items, axis of each, {group: fold}): the items every variant of one language is scored on."""
    items = [*data.transfer_items, *data.localization_items]
    axes = ["transfer"] * len(data.transfer_items) + ["localization"] * len(data.localization_items)
    return items, axes, group_folds([it.group or it.id for it in items], settings.k, settings.seed, strata=axes)


def _outcome(language: str, item, axis: str, fold: int, variant: str, margin: float, correct: float) -> dict:
    return {"language": language, "item_id": item.id, "group": item.group or item.id, "axis": axis, "fold": fold,
            "variant": variant, "margin": float(margin), "correct": float(correct)}


def _scored(item, score, axis: str) -> tuple[float, bool]:
    """(margin, correct) of one scored item on its axis."""
    return item_margin(item, score, axis), score.choice == (item.gold if axis == "transfer" else item.local)


def _fold_items(items: Sequence, folds: dict[str, int], f: int) -> list:
    return [it for it in items if folds[it.group or it.id] == f]


def _score(model, tokenizer, items, config: InterventionConfig | None, settings: CrossfitSettings, context: str
           ) -> dict[str, Any]:
    if not items:
        return {}
    if config is None or not config.interventions:
        scores = score_items(model, tokenizer, items, batch_size=settings.batch_size, progress=False, context=context)
    else:
        with steer(model, config):
            scores = score_items(model, tokenizer, items, batch_size=settings.batch_size, progress=False,
                                 context=context)
    return {s.item_id: s for s in scores}


def _interventions(model, choices: Sequence[tuple[SteeringVectors, dict]], positions: str | None = None,
                   control: bool = False, seed: int = 0) -> InterventionConfig | None:
    out = []
    for vec, sel in choices:
        if not sel["steered"]:
            continue
        inter = vec.intervention(sel["layer"], alpha=sel["alpha"], positions=positions)
        out.append(control_intervention(inter, seed=seed) if control else inter)
    return InterventionConfig.for_model(model, out) if out else None


def crossfit_language(model, tokenizer, data: LanguageData, settings: CrossfitSettings) -> LanguageResult:
    """The whole protocol for one language (see the module docstring)."""
    s = settings
    lang = data.language
    if not data.localization_items or not data.transfer_items:
        raise ValueError(f"{lang}: expected both transfer and localization items, got {len(data.transfer_items)} "
                         f"and {len(data.localization_items)}")
    if len(data.neutral_texts) < s.k:
        raise ValueError(f"{lang}: expected at least k={s.k} neutral texts for the KL, got {len(data.neutral_texts)}")
    items, axes, folds = _items_and_folds(data, s)
    missing = sorted({g for _, _, g in data.loc_pairs if g not in folds})
    if missing:
        raise ValueError(f"{lang}: LOC twin group(s) {missing[:3]} have no localization item to fold with")
    en, loc, en_diff, loc_diff = estimate_vectors(model, tokenizer, data, s)
    alphas = s.grid_alphas()

    # EN: one vector, one grid over every item
    en_rows, en_records = cached_sweep(model, tokenizer, en, s.layers, data.transfer_items, data.localization_items,
                                       alphas=alphas, neutral_texts=data.neutral_texts, batch_size=s.batch_size,
                                       progress=s.progress, per_item=True)
    en_grid = ScoredGrid.from_sweep(en_rows, en_records)
    # LOC: each fold's items scored under the vector estimated without that fold
    loc_folds = fold_vectors(loc, loc_diff, [g for _, _, g in data.loc_pairs], folds)
    loc_rows, loc_records, kl = [], [], {}
    for f in tqdm(sorted(loc_folds), desc=f"LOC folds {lang}", disable=not s.progress, unit="fold"):
        t_f, l_f = _fold_items(data.transfer_items, folds, f), _fold_items(data.localization_items, folds, f)
        rows, records = cached_sweep(model, tokenizer, loc_folds[f], s.layers, t_f, l_f, alphas=alphas,
                                     neutral_texts=data.neutral_texts[f::s.k], batch_size=s.batch_size,
                                     progress=False, per_item=True)
        loc_records += records
        for r in rows:
            r = dict(r, fold=f, n_transfer_items=len(t_f), n_localization_items=len(l_f))
            loc_rows.append(r)
            if r["alpha"]:
                kl.setdefault((int(r["layer"]), float(r["alpha"])), []).append(r["kl"])
    loc_grid = ScoredGrid.from_records(loc_records, {c: float(np.mean(v)) for c, v in kl.items()})
    cv = {"en": cross_validate(en_grid, "en", folds=folds, tolerance=s.tolerance, max_kl=s.max_kl, seed=s.seed),
          "loc": cross_validate(loc_grid, "loc", folds=folds, tolerance=s.tolerance, max_kl=s.max_kl, seed=s.seed)}

    outcomes: list[dict] = []
    by_id = {it.id: (it, axis) for it, axis in zip(items, axes)}

    def add(variant: str, item_id: str, margin: float, correct: float):
        item, axis = by_id[item_id]
        outcomes.append(_outcome(lang, item, axis, folds[item.group or item.id], variant, margin, correct))

    for which in ("en", "loc"):
        for r in cv[which].out_of_fold:
            if which == "en":
                add("base", r["item_id"], r["base_margin"], r["base_correct"])
            add(which, r["item_id"], r["margin"], r["correct"])
    by_fold = {which: {sel["fold"]: sel for sel in cv[which].selections} for which in cv}
    for f in tqdm(sorted(by_fold["en"]), desc=f"out-of-fold variants {lang}", disable=not s.progress, unit="fold"):
        fold_items = _fold_items(items, folds, f)
        both = [(en, by_fold["en"][f]), (loc_folds[f], by_fold["loc"][f])]
        chosen = dict(zip(STEERING_ROLES, both))
        configs = {name: _interventions(model, [chosen[r] for r in a.roles], positions=a.positions, control=a.control,
                                        seed=s.control_seed) for name, a in crossfit_additions().items()}
        base = None
        for variant, config in configs.items():
            if config is None:  # nothing steered in this fold: the variant is the unsteered model
                base = base or _score(model, tokenizer, fold_items, None, s, f"{lang} base fold {f}")
                scores = base
            else:
                scores = _score(model, tokenizer, fold_items, config, s, f"{lang} {variant} fold {f}")
            for it in fold_items:
                add(variant, it.id, *_scored(it, scores[it.id], by_id[it.id][1]))

    grid_rows = [dict(r, language=lang, vector="en") for r in en_rows]
    grid_rows += [dict(r, language=lang, vector="loc") for r in loc_rows]
    selections = {which: [dict(sel, language=lang) for sel in cv[which].selections] for which in cv}
    stability = {which: cv[which].stability() for which in cv}
    return LanguageResult(lang, {str(g): int(f) for g, f in folds.items()}, outcomes, selections, stability,
                          grid_rows, {"en": en_diff, "loc": loc_diff}, {"en": en, "loc": loc})


def unsteered_outcomes(model, tokenizer, data: LanguageData, settings: CrossfitSettings) -> list[dict]:
    """The ``base`` rows of :func:`crossfit_language` alone (same items and folds), for a model evaluated
    without steering (e.g. ``base`` next to ``cla+...`` variants): one scoring pass, no grid."""
    items, axes, folds = _items_and_folds(data, settings)
    scores = _score(model, tokenizer, items, None, settings, f"{data.language} unsteered")
    return [_outcome(data.language, it, axis, folds[it.group or it.id], "base", *_scored(it, scores[it.id], axis))
            for it, axis in zip(items, axes)]


def modal_choice(selections: Sequence[dict]) -> dict:
    """The cell chosen in most folds (ties: the smaller alpha, then the unsteered choice first); the artifact's."""
    counts: dict[tuple, int] = {}
    for sel in selections:
        key = (sel["layer"], sel["alpha"]) if sel["steered"] else (None, 0.0)
        counts[key] = counts.get(key, 0) + 1
    (layer, alpha), n = max(counts.items(), key=lambda kv: (kv[1], -abs(kv[0][1]), kv[0][0] is None))
    return {"layer": layer, "alpha": alpha, "steered": layer is not None, "folds": n, "n_folds": len(selections)}


__all__ = ["CrossfitSettings", "LanguageData", "LanguageResult", "VARIANTS", "crossfit_language",
           "estimate_vectors", "modal_choice", "unsteered_outcomes"]
