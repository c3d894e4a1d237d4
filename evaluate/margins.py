"""The primary per-item outcome: the log-probability margin, and the transfer "gap" items.

The margin is continuous and keeps what a 0/1 choice throws away (how far the model is from changing
its answer):

- localization: ``margin = s(local) - s(US)``;
- transfer: ``margin = s(gold) - max over distractors s(j)``;

where ``s`` is the score the scorer *chose by* (``evaluate.scoring.ItemScore``): the summed log-prob
for ``normalization="sum"`` (and letter items), the per-token mean for ``"mean"``. So ``margin > 0``
exactly when the choice is right (local answer / gold; a tie counts as 0), and accuracy is the secondary
reading of the same numbers.

Gap items (transfer tasks): items in language L whose English parallel item the reference variant gets
right while it gets the L item wrong. Transfer from English can only show up there; the plane reports
accuracy and margin on them as separate metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def choice_scores(score) -> tuple[float, ...]:
    """The per-candidate numbers ``score.choice`` is the argmax of (summed or per-token mean log-prob)."""
    return tuple(score.mean_logprob) if score.normalization == "mean" else tuple(score.logprob)


def item_margin(item, score, kind: str | None = None) -> float | None:
    """Margin of one item from its :class:`~evaluate.scoring.ItemScore`; None when it has none to compute.

    ``kind`` ('transfer' | 'localization') picks the definition; by default an item with ``local`` and ``us``
    gets the localization margin and one with ``gold`` (and >= 2 candidates) the transfer margin.
    """
    values = choice_scores(score)
    if len(values) != len(item.candidates):
        raise ValueError(f"item {item.id!r}: {len(values)} scores for {len(item.candidates)} candidates "
                         f"(score of {getattr(score, 'item_id', '?')!r})")
    localization = kind == "localization" or (kind is None and item.local is not None and item.us is not None)
    if localization:
        if item.local is None or item.us is None:
            return None
        return float(values[item.local] - values[item.us])
    if item.gold is None or len(values) < 2:
        return None
    return float(values[item.gold] - max(v for j, v in enumerate(values) if j != item.gold))


def english_twin(item) -> str:
    """Id of the English parallel item: ids are '{task}/{language}/...'."""
    head, _, rest = item.id.split("/", 2)
    return f"{head}/en/{rest}"


def gap_items(items: Sequence, scores: Mapping) -> set[str]:
    """Ids of the non-English transfer items the reference gets wrong while it gets their English twin right.

    ``items`` holds the L items *and* their English twins; ``scores``: {item_id: ItemScore} of the reference
    variant. Items without a gold, a score, or a scored English twin with a gold are never gap items.
    """
    by_id = {it.id: it for it in items}
    out = set()
    for it in items:
        if it.language == "en" or it.gold is None or it.id not in scores:
            continue
        en_id = english_twin(it)
        en = by_id.get(en_id)
        if en is None or en.gold is None or en_id not in scores:
            continue
        if scores[en_id].choice == en.gold and scores[it.id].choice != it.gold:
            out.add(it.id)
    return out
