"""Trivial baselines reported beside chance, so a reader sees what a number beats.

Each baseline is a choice *distribution* over an item's candidates, computed without the model's
preferences; the expected value of a metric under it is computed like the metric itself
(accuracy: ``p[gold]``; localization_score: ``p[local]``; us_rate: ``p[us]``; consistency_with_en:
``sum_j p_L[j] * p_en[j]``):

- ``chance``: uniform over the candidates.
- ``majority``: always give the cell's most frequent answer string - for transfer the most frequent gold
  answer of the cell (e.g. "English" in fact_probe, a letter in global_mmlu), for localization the most
  frequent local *or* US answer string, whichever occurs more often - wherever it is a candidate, and
  guess uniformly where it is not. A cell is (task, language, cue); ties go to the alphabetically first
  string.
- ``fewer_tokens``: pick the candidate with the fewest tokens (``ItemScore.n_tokens``; the same for every
  variant, since they share the tokenizer), uniform among ties. With summed log-probs a model that has
  learnt nothing but "shorter is likelier" scores this.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

BASELINES = ("majority", "fewer_tokens")


def _uniform(k: int) -> tuple[float, ...]:
    return tuple(1.0 / k for _ in range(k))


def majority_answer(items: Sequence, kind: str) -> str | None:
    """The cell's most frequent keyed answer string (gold for transfer; local or US for localization)."""
    counts: Counter = Counter()
    for it in items:
        indices = (it.gold,) if kind == "transfer" else (it.local, it.us)
        counts.update(it.candidates[i].strip() for i in indices if i is not None)
    if not counts:
        return None
    return min(counts, key=lambda s: (-counts[s], s))


def majority_choice(item, answer: str | None) -> tuple[float, ...]:
    """One-hot on the candidate equal to ``answer`` (the first such), uniform when it is not a candidate."""
    stripped = [c.strip() for c in item.candidates]
    if answer is None or answer not in stripped:
        return _uniform(len(stripped))
    j = stripped.index(answer)
    return tuple(float(i == j) for i in range(len(stripped)))


def fewer_tokens_choice(n_tokens: Sequence[int]) -> tuple[float, ...]:
    """Uniform over the candidates with the fewest tokens."""
    least = min(n_tokens)
    ties = [n == least for n in n_tokens]
    return tuple(float(t) / sum(ties) for t in ties)


def baseline_choices(cells: Mapping[tuple, Sequence], kinds: Mapping[str, str],
                     scores: Mapping) -> dict[str, dict[str, tuple[float, ...]]]:
    """{item_id: {"chance" | "majority" | "fewer_tokens": probabilities over candidates}}.

    ``cells``: {(task, language): items} as ``collect_items`` returns them; ``kinds``: {task: kind};
    ``scores``: {item_id: ItemScore} of any variant (only token counts are read). Items missing from
    ``scores`` get no fewer_tokens entry.
    """
    out: dict[str, dict[str, tuple[float, ...]]] = {}
    for (task, _language), items in cells.items():
        by_cue: dict[str, list] = {}
        for it in items:
            by_cue.setdefault(it.cue, []).append(it)
        for cue_items in by_cue.values():
            answer = majority_answer(cue_items, kinds[task])
            for it in cue_items:
                entry = {"chance": _uniform(len(it.candidates)), "majority": majority_choice(it, answer)}
                s = scores.get(it.id)
                if s is not None:
                    entry["fewer_tokens"] = fewer_tokens_choice(s.n_tokens)
                out[it.id] = entry
    return out


def expected_outcome(metric: str, item, probs: Sequence[float], en_probs: Sequence[float] | None = None) -> float | None:
    """Expected value of ``metric`` on ``item`` when choosing with ``probs``; None where it is undefined."""
    if metric == "accuracy":
        return None if item.gold is None else float(probs[item.gold])
    if metric == "localization_score":
        return None if item.local is None else float(probs[item.local])
    if metric == "us_rate":
        return None if item.us is None else float(probs[item.us])
    if metric == "consistency_with_en":
        if en_probs is None or len(en_probs) != len(probs):
            return None
        return float(sum(p * q for p, q in zip(probs, en_probs)))
    return None
