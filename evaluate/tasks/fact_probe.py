"""``fact_probe``: factual cloze transfer probe for small models, from BMLAMA-53 (mLAMA-derived).

Facts of single-answer relations only: P36 capital, P1376 capital-of, P37 official language,
P30 continent, P103 native language (relation inferred from the English template; row i is the same
fact in every language). Each item: prompt = the sentence up to ``<mask>``; candidates = every
candidate object, each followed by the text after the mask (so in ko/zh, where text follows the mask,
the whole rest of the sentence is scored with one shared prefix). Candidates are shuffled with one
seeded permutation per fact, the same in every language (upstream, the gold is always last), so
candidate i is the same object in every language and consistency with English is index equality.

Fixes to the upstream data:
- zh P36 (``[X]的大写字母为[Y]。``, "capital letter") and zh P1376 (``[X]是[Y]的大写。``) are machine
  mistranslations: those zh rows are re-rendered with the human X-FACTR templates
  ``[X]的行政中心是[Y]。`` / ``[X]是[Y]的首府。`` and BMLAMA's own zh Subject and Ans.
- A distractor that is the gold of another row with the same subject and relation (Switzerland:
  German, French, ...) is removed from the candidates (same index in every language).
- Facts left with < 2 candidates, or with repeated candidate labels in any bundled language, are dropped.

Chosen by length-normalised log-likelihood (``meta["normalization"]="mean"``), like upstream's
mean token NLL. Licence of the data: CC BY-NC 4.0 (see evaluate/data/bmlama/SOURCE.md).
"""

from __future__ import annotations

import random
from functools import lru_cache

from ..loaders import BMLAMA_LANGUAGES, load_bmlama, load_xfactr_templates
from .base import Item, Task, continuation, register_task

RELATION_TEMPLATES_EN = {
    "The capital of [X] is [Y].": "P36",
    "[X] is the capital of [Y].": "P1376",
    "The official language of [X] is [Y].": "P37",
    "The native language of [X] is [Y].": "P103",
}
LOCATED_IN_EN = "[X] is located in [Y]."
CONTINENTS_EN = frozenset({"Africa", "Asia", "Europe", "Oceania", "Antarctica", "North America",
                           "South America", "Australia", "Americas"})
RELATIONS = ("P36", "P1376", "P37", "P30", "P103")
# (relation, language) rows whose BMLAMA template is re-rendered with the X-FACTR template.
XFACTR_FIXES = (("P36", "zh"), ("P1376", "zh"))


def template_of(prompt: str, subject: str) -> str:
    return prompt.replace(subject, "[X]", 1).replace("<mask>", "[Y]")


def split_candidates(cands: str, gold: str, where: str) -> list[str]:
    """Upstream candidates are ", "-joined with the gold last; a label may itself contain ", "."""
    if not cands.endswith(gold):
        raise ValueError(f"{where}: field 'Candidate Ans' does not end with the gold 'Ans' {gold!r}")
    rest = cands[: len(cands) - len(gold)]
    others = [c for c in rest[:-2].split(", ")] if rest else []
    if rest and not rest.endswith(", "):
        raise ValueError(f"{where}: field 'Candidate Ans' is not ', '-joined before the gold {gold!r}")
    return [c for c in others if c] + [gold]


def relation_of(prompt: str, subject: str, cands: list[str]) -> str | None:
    t = template_of(prompt, subject)
    if t in RELATION_TEMPLATES_EN:
        return RELATION_TEMPLATES_EN[t]
    if t == LOCATED_IN_EN and all(c in CONTINENTS_EN for c in cands):
        return "P30"
    return None


@lru_cache(maxsize=4)
def _facts() -> tuple[dict, dict]:
    """(relation per kept row, {language: rows}) over the bundled languages."""
    rows = {lang: list(load_bmlama(lang)) for lang in BMLAMA_LANGUAGES}
    n = len(rows["en"])
    for lang, rs in rows.items():
        if len(rs) != n:
            raise ValueError(f"evaluate/data/bmlama/{lang}.tsv: {len(rs)} rows, expected {n} (row-aligned with en)")
    rel_of: dict[int, tuple[str, list[str]]] = {}
    golds: dict[tuple[str, str], set[str]] = {}
    for i, en in enumerate(rows["en"]):
        cands_en = split_candidates(en["Candidate Ans"], en["Ans"], f"bmlama/en.tsv row {i}")
        rel = relation_of(en["Prompt"], en["Subject"], cands_en)
        if rel is not None:
            rel_of[i] = (rel, cands_en)
            golds.setdefault((rel, en["Subject"]), set()).add(en["Ans"])
    kept: dict[int, tuple[str, tuple[int, ...]]] = {}
    for i, (rel, cands_en) in rel_of.items():
        # Another row of the same subject and relation makes a distractor true (e.g. Switzerland's
        # official languages): drop such candidates, by index, in every language.
        other_golds = golds[(rel, rows["en"][i]["Subject"])] - {rows["en"][i]["Ans"]}
        keep = tuple(j for j, c in enumerate(cands_en) if c not in other_golds)
        ok = len(keep) >= 2
        for lang, rs in rows.items():
            c = split_candidates(rs[i]["Candidate Ans"], rs[i]["Ans"], f"bmlama/{lang}.tsv row {i}")
            kc = [c[j] for j in keep] if len(c) == len(cands_en) else []
            if len(c) != len(cands_en) or len(set(kc)) != len(kc):
                ok = False
        if ok:
            kept[i] = (rel, keep)
    return kept, rows


@register_task("fact_probe")
class FactProbe(Task):
    name = "fact_probe"
    kind = "transfer"
    languages = BMLAMA_LANGUAGES

    def _build(self, language: str, relations=RELATIONS, **_) -> list[Item]:
        if language not in BMLAMA_LANGUAGES:
            raise ValueError(f"language: fact_probe has {list(BMLAMA_LANGUAGES)}, got {language!r}")
        bad = [r for r in relations if r not in RELATIONS]
        if bad:
            raise ValueError(f"relations: unknown {bad}; fact_probe supports {list(RELATIONS)}")
        kept, rows = _facts()
        xfactr = load_xfactr_templates()
        items = []
        for i, (rel, keep) in sorted(kept.items()):
            if rel not in relations:
                continue
            r = rows[language][i]
            prompt, source = r["Prompt"], "bmlama53"
            if (rel, language) in XFACTR_FIXES:
                prompt = xfactr[(rel, language)].replace("[X]", r["Subject"]).replace("[Y]", "<mask>")
                source = "bmlama53+xfactr_template"
            prefix, suffix = prompt.split("<mask>")
            prefix = prefix.rstrip()
            if not prefix:
                continue
            cands = split_candidates(r["Candidate Ans"], r["Ans"], f"bmlama/{language}.tsv row {i}")
            cands = [cands[j] for j in keep]  # the gold (last) is always kept
            perm = list(range(len(cands)))
            random.Random(f"{self.seed}/bmlama53/{i}").shuffle(perm)
            shuffled = [cands[p] for p in perm]
            suffix = suffix.rstrip() if language not in ("zh", "ja") else suffix.strip()
            items.append(Item(
                id=f"{self.name}/{language}/{rel}/{i:04d}", task=self.name, language=language,
                prompt=prefix, candidates=tuple(continuation(language, c) + suffix for c in shuffled),
                gold=perm.index(len(cands) - 1), group=f"bmlama53/{i:04d}", cue="implicit", scoring="cloze",
                meta={"relation": rel, "row": i, "subject": r["Subject"], "answer": r["Ans"],
                      "objects": tuple(shuffled), "source": source, "normalization": "mean"},
            ))
        return items
