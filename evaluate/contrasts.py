"""The experiment's two contrasts: which texts the EN-transfer and LOC-cultural vectors are estimated from.

* EN-transfer vector for language L: ``mean h_l(English FLORES dev) - mean h_l(L FLORES dev)`` on the
  same (parallel) sentences, mean-pooled; applied to the prompt (``positions="prompt"``) by default.
* LOC-cultural vector for language L: ``mean h_l(L prompt with the explicit country cue) -
  mean h_l(the same L prompt without it)`` on the ``extract`` split of the localization tasks, at the
  last prompt token; applied at the last prompt token (``positions="last"``), where it was estimated.

* Language experts for L: units whose response tells FLORES dev sentences in L from those in the other
  contrast languages (:func:`flores_experts`).

The estimates themselves (mean difference or PCA with ``alpha_scale``; the experts' average precision) are
:func:`interventions.vectors.contrast_vectors` and :func:`interventions.experts.find_experts`, which take
texts; this module loads them.
"""

from __future__ import annotations

from typing import Sequence

from evaluate.loaders import load_flores
from evaluate.tasks import get_task
from interventions.experts import ExpertRanking, find_experts
from interventions.vectors import SteeringVectors, contrast_vectors

EXPERTS_CONTRAST = ("en", "ar", "es", "id", "ko", "zh")


def en_transfer_vectors(model, tokenizer, language: str, n: int = 256, split: str = "dev", reduce: str = "mean",
                        method: str = "mean_difference", batch_size: int = 16, progress: bool = True,
                        positions: str = "prompt") -> SteeringVectors:
    """v_EN[l] = mean h_l(English) - mean h_l(``language``) over the first ``n`` parallel FLORES sentences.

    Its interventions apply to the prompt by default (``positions="prompt"``), never to the scored answer.
    """
    if language == "en":
        raise ValueError("language: the EN-transfer vector needs a non-English language")
    english, other = load_flores("en", split)[:n], load_flores(language, split)[:n]
    source = {"vector": "en_transfer", "positive": "en", "negative": language, "data": f"flores200/{split}",
              "languages": ["en", language], "reduce": reduce,
              "definition": "mean h_l(en) - mean h_l(L), parallel FLORES sentences"}
    return contrast_vectors(model, tokenizer, f"en_transfer_{language}", english, other, source, reduce=reduce,
                            method=method, batch_size=batch_size, progress=progress, positions=positions)


def pair_key(item) -> str:
    """What an explicit-cue item and its cue-less twin share: the id without the cue suffix, else ``group``."""
    suffix = f"/{item.cue}"
    return item.id[: -len(suffix)] if item.id.endswith(suffix) else (item.group or item.id)


def cue_pairs(items_explicit, items_implicit) -> tuple[list[str], list[str], list[str]]:
    """Match explicit-cue items to their cue-less twins (:func:`pair_key`): (explicit prompts, implicit prompts,
    keys), in the order of ``items_explicit``."""
    implicit = {pair_key(it): it for it in items_implicit}
    pos, neg, keys = [], [], []
    for it in items_explicit:
        twin = implicit.get(pair_key(it))
        if twin is not None:
            pos.append(it.prompt)
            neg.append(twin.prompt)
            keys.append(pair_key(it))
    return pos, neg, keys


def loc_vectors(model, tokenizer, language: str, tasks: Sequence[str] = ("blend", "locale_probe"),
                split: str = "extract", n: int | None = None, reduce: str = "last",
                method: str = "mean_difference", batch_size: int = 16, progress: bool = True,
                positions: str = "last") -> SteeringVectors:
    """v_LOC[l] = mean h_l(L prompt with explicit country cue) - mean h_l(same prompt, no cue).

    Estimated at the last prompt token (``reduce="last"``) and applied there by default (``positions="last"``).
    """
    pos, neg, per_task = [], [], {}
    for task in tasks:
        t = get_task(task)
        p, q, _ = cue_pairs(t.items(language, split=split, cue="explicit"), t.items(language, split=split,
                                                                                     cue="implicit"))
        pos += p
        neg += q
        per_task[task] = len(p)
    if n is not None:
        pos, neg = pos[:n], neg[:n]
    if not pos:
        raise ValueError(f"tasks {list(tasks)}: no explicit/implicit cue pairs for language {language!r} "
                         f"in split {split!r}")
    source = {"vector": "loc_cultural", "positive": f"{language}+explicit_cue", "negative": f"{language}+no_cue",
              "data": [f"{t}/{split}" for t in tasks], "pairs_per_task": per_task, "languages": [language],
              "reduce": reduce,
              "definition": "mean h_l(L prompt with explicit country cue) - mean h_l(same L prompt without cue)"}
    return contrast_vectors(model, tokenizer, f"loc_{language}", pos, neg, source, reduce=reduce, method=method,
                            batch_size=batch_size, progress=progress, positions=positions)


def flores_experts(model, tokenizer, languages: Sequence[str] = EXPERTS_CONTRAST, *,
                   targets: Sequence[str] | None = None, n: int = 200, split: str = "dev", k_max: int = 1000,
                   components: Sequence[str] = ("mlp_hidden",), bins: int = 512, batch_size: int = 16,
                   progress: bool = True) -> dict[str, ExpertRanking]:
    """:func:`~interventions.experts.find_experts` on the first ``n`` FLORES ``split`` sentences of each of
    ``languages``: a ranking per target (default: every language but English) against the others."""
    texts = {lang: load_flores(lang, split)[:n] for lang in dict.fromkeys(languages)}
    return find_experts(model, tokenizer, texts, targets=targets, k_max=k_max, components=components, bins=bins,
                        batch_size=batch_size, progress=progress,
                        source={"data": f"flores200/{split}", "n_per_language": n})
