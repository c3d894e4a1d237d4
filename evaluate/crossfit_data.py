"""Items and texts of the cross-fitted protocol for one language (:class:`evaluate.crossfit.LanguageData`).

* localization: every implicit-cue item of the localization tasks in ``language`` (all splits: the folds
  replace the extract/test split), and their explicit-cue twins as the LOC contrast;
* transfer: ``n_transfer`` question groups per transfer task drawn with :func:`evaluate.sampling.stratified_sample`
  (seeded, round-robin over relations/subjects, same-gold share capped), every split;
* EN contrast: the first ``n_en`` parallel FLORES-200 dev sentences (English, L);
* neutral text for the KL of each sweep cell: the first ``n_neutral`` FLORES-200 devtest sentences in L.
"""

from __future__ import annotations

from typing import Sequence

from .contrasts import pair_key
from .crossfit import LanguageData
from .loaders import load_flores
from .sampling import stratified_sample
from .tasks import get_task


def localization_data(tasks: Sequence[str], language: str, seed: int = 0, n: int | None = None):
    """(implicit items, [(explicit prompt, implicit prompt, group)]) of the localization ``tasks``.

    Only implicit items with an explicit twin are kept (each scored item has its LOC contrast pair). ``n``
    groups (stratified, seeded) per task when given, else all.
    """
    items, pairs = [], []
    for name in tasks:
        task = get_task(name, seed=seed)
        if language not in task.languages:
            continue
        every = task.items(language, split="all")
        if n is not None:
            every = stratified_sample(every, n, seed=seed, gold=None)
        explicit = {pair_key(it): it for it in every if it.cue == "explicit"}
        for it in every:
            if it.cue != "implicit" or pair_key(it) not in explicit:
                continue
            items.append(it)
            pairs.append((explicit[pair_key(it)].prompt, it.prompt, it.group or it.id))
    return items, pairs


def transfer_data(tasks: Sequence[str], language: str, n: int | None, seed: int = 0) -> list:
    """``n`` stratified, seeded question groups of each transfer task in ``language`` (every split; None: all)."""
    out = []
    for name in tasks:
        task = get_task(name, seed=seed)
        if language in task.languages:
            items = task.items(language, split="all")
            out += items if n is None else stratified_sample(items, n, seed=seed)
    return out


def language_data(language: str, transfer_tasks: Sequence[str], localization_tasks: Sequence[str],
                  n_transfer: int | None = 30, n_localization: int | None = None, n_en: int = 64, n_neutral: int = 20,
                  seed: int = 0) -> LanguageData:
    if language == "en":
        raise ValueError("language: the protocol steers a non-English language toward English; got 'en'")
    loc_items, pairs = localization_data(localization_tasks, language, seed, n_localization)
    transfer = transfer_data(transfer_tasks, language, n_transfer, seed)
    return LanguageData(language, transfer, loc_items, pairs,
                        (load_flores("en", "dev")[:n_en], load_flores(language, "dev")[:n_en]),
                        load_flores(language, "devtest")[:n_neutral])


__all__ = ["language_data", "localization_data", "transfer_data"]
