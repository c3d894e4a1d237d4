"""``locale_probe``: the project's parallel localization probe for small models.

Data: ``evaluate/data/locale_probe/locale_probe.jsonl`` (one JSON object per concept x language, see
:func:`evaluate.loaders.load_locale_probe`). For each row, three items share ``group =
"locale_probe/{concept}"`` (so one concept is in the same split in every language):

- ``locale_probe/{L}/{concept}/implicit``: the prompt in L without naming the country ("our country"),
- ``locale_probe/{L}/{concept}/explicit``: the twin that names the country,
- ``locale_probe/{L}/{concept}/control``: the English prompt (``language="en"``), en_local vs en_us.

Candidates are the local and the US answer written in the prompt's language, in a seeded per-row order
(``local``/``us`` give the indices). Chosen by summed log-likelihood over the candidate's tokens
(``meta["normalization"]="sum"``; pass ``normalization="mean"`` to the task to change it).
Metrics: ``localization_score`` (local answer preferred) and ``us_rate``.
"""

from __future__ import annotations

import random

from ..loaders import load_locale_probe
from .base import Item, Task, continuation, register_task


@register_task("locale_probe")
class LocaleProbe(Task):
    name = "locale_probe"
    kind = "localization"
    languages = ("ko", "zh", "es", "id", "ar")

    def _build(self, language: str, path=None, normalization: str = "sum", **_) -> list[Item]:
        if normalization not in ("sum", "mean"):
            raise ValueError(f"normalization: expected 'sum' or 'mean', got {normalization!r}")
        ds = load_locale_probe(path)
        where = str(path or "evaluate/data/locale_probe/locale_probe.jsonl")
        seen: dict[str, int] = {}
        items = []
        for i, row in enumerate(ds):
            if row["language"] != language:
                continue
            concept = row["concept"].strip()
            if concept in seen:
                raise ValueError(f"{where}: row {i} field 'concept': {concept!r} repeats row {seen[concept]} "
                                 f"for language {language!r}")
            seen[concept] = i
            order = [0, 1]
            random.Random(f"{self.seed}/locale_probe/{language}/{concept}").shuffle(order)
            local, us = order.index(0), order.index(1)
            meta = {"country": row["country"], "concept": concept, "topic": row.get("topic") or "",
                    "source": row.get("source") or "", "normalization": normalization}
            group = f"locale_probe/{concept}"
            for cue, lang, prompt, answers in (
                ("implicit", language, row["implicit"], (row["local"], row["us"])),
                ("explicit", language, row["explicit"], (row["local"], row["us"])),
                ("control", "en", row["en_implicit"], (row["en_local"], row["en_us"])),
            ):
                cands = tuple(continuation(lang, answers[o]) for o in order)
                items.append(Item(
                    id=f"{self.name}/{language}/{concept}/{cue}", task=self.name, language=lang,
                    prompt=prompt.strip(), candidates=cands, local=local, us=us, group=group, cue=cue,
                    scoring="cloze", meta={**meta, "local_answer": answers[0], "us_answer": answers[1]},
                ))
        return items
