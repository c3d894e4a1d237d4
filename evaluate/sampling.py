"""Seeded samples of question groups, stratified and with a cap on repeated gold answers.

Never "the first n by id": ids sort by relation/subject, so a first-n sample is whatever the sort puts
first (in fact_probe's test split: 16 "native language of X" facts + 8 capitals, a third of them with the
gold "English"). :func:`stratified_sample` instead draws ``n`` *groups* (one fact / question / concept,
which is the same item in every language and the implicit/explicit/control twins of one question) with a
seed, round-robin over strata (fact_probe: relation; global_mmlu: subject; locale_probe: the concept's
topic; blend: the question's topic), and at most ``max(1, floor(max_gold_share * n))`` groups whose
gold answer is the same string. It returns every item of the chosen groups, so the sample is parallel
across languages and twins stay together.

The seeded order is a hash of ``(seed, group)`` (and ``(seed, stratum)`` for the order of strata), one
ranking shared by every call: sampling the languages of a partly parallel task (BLEnD, locale_probe: not
every concept exists in every language) one by one picks the same groups wherever they exist.

The plane runner (``evaluate.plane.collect_items(limit=n)``) and the recipe runtime's selection items use
this one function.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

logger = logging.getLogger(__name__)

MAX_GOLD_SHARE = 0.25
STRATUM_KEYS = ("relation", "subject", "topic")  # fact_probe, global_mmlu, locale_probe / blend


def stratum_of(item) -> str:
    """The item's stratum: ``meta["relation"]``, else ``meta["subject"]``, else ``meta["topic"]``, else its group."""
    meta = item.meta or {}
    for key in STRATUM_KEYS:
        value = meta.get(key)
        if value:
            return f"{key}={value}"
    return f"group={group_of(item)}"


def group_of(item) -> str:
    """The item's group (parallel items and twins share it); its id when it has none."""
    return item.group or item.id


def gold_answer(item) -> str | None:
    """The string a "majority" heuristic would repeat: the gold candidate (transfer) or the local answer."""
    index = item.gold if item.gold is not None else item.local
    return None if index is None else item.candidates[index].strip()


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()


def _representative(items: Sequence) -> object:
    """The item that speaks for its group: the English implicit one if any, else the first by id."""
    return min(items, key=lambda it: (it.language != "en", it.cue != "implicit", it.id))


def sample_groups(items: Iterable, n: int, seed: int = 0, strata: Callable = stratum_of,
                  group: Callable = group_of, gold: Callable | None = gold_answer,
                  max_gold_share: float | None = MAX_GOLD_SHARE) -> list[str]:
    """Ids of ``n`` groups drawn with ``seed``, balanced across strata, gold-answer share capped.

    Strata are visited in a seeded order, round-robin, each giving its next group in a seeded order (hashes of
    ``(seed, name)``, so the same groups rank the same in every call), and the strata's counts differ by at
    most one unless a stratum runs out. A group whose gold answer
    (``gold(representative item)``) already has ``max(1, floor(max_gold_share * size))`` groups is skipped
    (``size = min(n, number of groups)``; ``max_gold_share=None`` or ``gold=None``: no cap). When the cap
    leaves fewer than ``size`` groups the sample is smaller (logged). Independent of the input order.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative integer number of groups, got {n!r}")
    if max_gold_share is not None and not 0.0 < max_gold_share <= 1.0:
        raise ValueError(f"max_gold_share: expected a number in (0, 1] or None, got {max_gold_share!r}")
    members: dict[str, list] = defaultdict(list)
    for it in items:
        members[str(group(it))].append(it)
    reps = {g: _representative(its) for g, its in members.items()}
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g in sorted(reps):
        by_stratum[str(strata(reps[g]))].append(g)
    order = sorted(by_stratum, key=lambda s: _rank(seed, "stratum\x1f" + s))
    queues = {s: sorted(by_stratum[s], key=lambda g: _rank(seed, g)) for s in order}
    size = min(n, len(reps))
    capped = gold is not None and max_gold_share is not None
    cap = max(1, math.floor(max_gold_share * size)) if capped else size
    counts: Counter = Counter()
    chosen: list[str] = []
    while len(chosen) < size:
        progressed = False
        for s in order:
            if len(chosen) == size:
                break
            queue = queues[s]
            while queue:
                g = queue.pop(0)
                key = gold(reps[g]) if capped else None
                if key is None or counts[key] < cap:
                    counts[key] += 1
                    chosen.append(g)
                    progressed = True
                    break
        if not progressed:
            break
    if len(chosen) < size:
        logger.warning("sample_groups: %d of %d groups (the gold-answer cap of %d per answer leaves no more)",
                       len(chosen), size, cap)
    return chosen


def stratified_sample(items: Sequence, n: int, seed: int = 0, strata: Callable = stratum_of,
                      group: Callable = group_of, gold: Callable | None = gold_answer,
                      max_gold_share: float | None = MAX_GOLD_SHARE) -> list:
    """Every item (all languages, all cues) of the ``n`` groups :func:`sample_groups` draws, in input order."""
    items = list(items)
    keep = set(sample_groups(items, n, seed=seed, strata=strata, group=group, gold=gold,
                             max_gold_share=max_gold_share))
    return [it for it in items if str(group(it)) in keep]
