"""``global_mmlu`` (letter scorer) and ``global_mmlu_cloze`` (option-text scorer): transfer.

Global-MMLU-Lite, culturally-agnostic (CA) subset by default (``subset="CS"`` or ``"all"`` to change),
one item per question per language, ``group`` = the MMLU ``sample_id`` (parallel across languages).

- ``global_mmlu``: prompt = question + lettered options + the language's "Answer:" cue; candidates are
  the letters A-D (``scoring="letter"``: one forward pass, next-token logits at the last position).
- ``global_mmlu_cloze``: prompt = question + "Answer:" cue; candidates are the option texts
  (``scoring="cloze"``), chosen by length-normalised log-likelihood (``meta["normalization"]="mean"``).

Rows of ``EXCLUDED_SUBJECTS`` are dropped (misaligned across languages in the bundled data).
Metrics: ``accuracy`` and ``consistency_with_en`` (same option chosen as for the English item).
"""

from __future__ import annotations

from ..loaders import GLOBAL_MMLU_LANGUAGES, load_global_mmlu
from .base import Item, Task, answer_cue, continuation, register_task

LETTERS = ("A", "B", "C", "D")
# In the bundled ko and zh files the high_school_world_history rows (10 per language) hold questions of
# other sample_ids (shuffled passages; 5 ko / 7 zh answer keys differ from English), so they are not
# parallel: dropped in every language to keep the item sets parallel.
EXCLUDED_SUBJECTS = ("high_school_world_history",)
SUBSETS = ("CA", "CS", "all")


class GlobalMMLU(Task):
    name = "global_mmlu"
    kind = "transfer"
    languages = GLOBAL_MMLU_LANGUAGES
    scorer = "letter"

    def _build(self, language: str, subset: str = "CA", source: str | None = None, path=None, **_) -> list[Item]:
        if subset not in SUBSETS:
            raise ValueError(f"subset: expected one of {SUBSETS}, got {subset!r}")
        ds = load_global_mmlu(language, source=source, path=path)
        cue = answer_cue(language)
        items = []
        for row in ds:
            if str(row["sample_id"]).split("/")[0] in EXCLUDED_SUBJECTS:
                continue
            label = str(row["cultural_sensitivity_label"]).strip()
            if subset != "all" and label != subset:
                continue
            options = [str(row[f"option_{k}"]).strip() for k in "abcd"]
            question = str(row["question"]).strip()
            gold = LETTERS.index(str(row["answer"]).strip())
            meta = {"subject": row.get("subject", ""), "cultural_sensitivity_label": label,
                    "sample_id": row["sample_id"]}
            if self.scorer == "letter":
                body = "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, options))
                prompt = f"{question}\n{body}\n{cue}"
                cands = tuple(continuation(language, l) for l in LETTERS)
                meta["normalization"] = "sum"
            else:
                prompt = f"{question}\n{cue}"
                cands = tuple(continuation(language, o) for o in options)
                meta["normalization"] = "mean"
            items.append(Item(
                id=f"{self.name}/{language}/{row['sample_id']}", task=self.name, language=language,
                prompt=prompt, candidates=cands, gold=gold, group=f"global_mmlu/{row['sample_id']}",
                cue="implicit", scoring=self.scorer, meta=meta,
            ))
        return items


@register_task("global_mmlu")
class GlobalMMLULetter(GlobalMMLU):
    name = "global_mmlu"
    scorer = "letter"


@register_task("global_mmlu_cloze")
class GlobalMMLUCloze(GlobalMMLU):
    name = "global_mmlu_cloze"
    scorer = "cloze"
