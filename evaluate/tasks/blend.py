"""``blend``: localization on BLEnD short-answer annotations (Myung et al. 2024).

For language L and its country C (default map below; override with ``country=...``), each BLEnD
question ID gives two items that share a ``group`` (so they land in the same split):

- ``blend/{L}/{ID}/implicit``: the local-language question with the country mention removed
  (per-language table of surface forms and removal rules below; questions that still contain a
  surface form after removal are dropped, so no bundled implicit item names the country);
- ``blend/{L}/{ID}/explicit``: the original question, which names the country (questions that do not
  name it are dropped; Iran's "in your country" (کشور شما) is rewritten to name Iran).

Prompt = question + newline + the language's "Answer:" cue. Candidates (in L): C's top-voted answer
(``local``) and the US's top-voted answer written in L (``us``): found as the C annotation whose English
gloss (``en_answers``) shares a gloss with the US top answer (compared by :func:`normalize_gloss`).
Skipped: no such annotation, the US answer is C's top answer, or it has as many votes as C's top
answer (no clear local answer).
Candidate order is shuffled per question with the seed. Chosen by length-normalised log-likelihood.
Metrics: ``localization_score`` = P(local answer preferred), ``us_rate`` = P(US answer preferred).
"""

from __future__ import annotations

import random
import re

from ..loaders import BLEND_COUNTRIES, load_blend
from .base import Item, Task, answer_cue, continuation, register_task

# Default language -> country map (recipe-overridable through ``country=``).
DEFAULT_COUNTRY = {"ko": "South_Korea", "zh": "China", "es": "Spain", "id": "Indonesia", "ar": "Algeria",
                   "el": "Greece", "fa": "Iran", "am": "Ethiopia"}

# Surface forms of each country (name, adjective, demonym) in its local language, as regexes.
# An implicit item must match none of them.
SURFACE_FORMS = {
    "South_Korea": [r"대한민국", r"대힌민국", r"한국", r"남한", r"코리아"],
    "China": [r"中国", r"中國", r"中华", r"中華", r"中餐", r"华人"],
    "Spain": [r"España", r"español", r"española", r"españoles", r"españolas"],
    "Mexico": [r"México", r"Mexico", r"mexican[oa]s?"],
    "Indonesia": [r"Indonesia"],
    "Algeria": [r"الجزائر", r"جزائري"],
    "Greece": [r"Ελλάδ", r"Έλλην", r"ελλην", r"Ελλην"],
    "Iran": [r"ایران"],
    "Ethiopia": [r"ኢትዮጵያ"],
    "US": [r"\bUS\b", r"\bU\.S\.", r"United States", r"America"],
    "UK": [r"\bUK\b", r"United Kingdom", r"Britain", r"British", r"England"],
}

# Ordered (pattern, replacement) rules per country that remove the mention and its grammatical
# glue (particles, prepositions); demonyms used as subjects become a neutral "people".
_ES_END = r"(?=[\s?¿,.;:)]|$)"
REMOVAL_RULES = {
    "South_Korea": [(r"(?:대한민국|대힌민국|한국|남한)(?:에서는|에서의|에서|에선|에는|의|식)?(?=\s|$)\s*", "")],
    "China": [(r"在中[国國]的", "在"), (r"在中[国國][，,]?", ""), (r"中[国國]人", "人们"), (r"中[国國]的?", "")],
    "Spain": [(r"\s*,?\s*\b(?:[Ee]n|[Dd]e|[Dd]entro de) España" + _ES_END, ""), (r"\blos españoles\b", "las personas"),
              (r"\s+español(?:a|es|as)?" + _ES_END, "")],
    "Mexico": [(r"\s*,?\s*\b(?:[Ee]n|[Dd]e|[Dd]entro de) México" + _ES_END, ""), (r"\blos mexicanos\b", "las personas"),
               (r"\s+mexican(?:o|a|os|as)" + _ES_END, "")],
    "Indonesia": [(r"\s*\b(?:di|dari|ke|se) Indonesia\b", ""), (r"\s+Indonesia\b", "")],
    "Algeria": [(r"\s*(?:في|من|ب)\s?الجزائر", ""), (r"ال?جزائري(?:ون|ين)", "الناس"),
                (r"\s+ال?جزائري(?:ة)?(?=[\s؟?.,،]|$)", "")],
    "Greece": [(r"\s*\b(?:στην|στη|από την|της|την) Ελλάδα", ""), (r"\bοι Έλληνες\b", "οι άνθρωποι"),
               (r"\bτους Έλληνες\b", "τους ανθρώπους"), (r"\s+ελληνικ\w*", "")],
    "Iran": [(r"\s*در\s?ایران", ""), (r"\s+ایرانی(?:ها|ان)?", "")],
    "Ethiopia": [(r"\s*(?:በ|የ|ለ)?ኢትዮጵያውያን", " ሰዎች"), (r"\s*(?:በ|የ|ለ)ኢትዮጵያ(?:\s+ውስጥ)?(?=\s|$)", "")],
    "US": [(r"\s*\bin (?:the )?(?:US|United States)\b", "")],
    "UK": [(r"\s*\bin (?:the )?(?:UK|United Kingdom)\b", "")],
}

# Mentions whose removal would leave a broken question ("food originating from <country>"): drop those.
UNREMOVABLE = {
    "China": [r"(?:源自|来自|來自)中[国國]"],
    "Spain": [r"originari[ao]s? de España"], "Mexico": [r"originari[ao]s? de México"],
    "Iran": [r"بومی درایران"], "Greece": [r"προέλευσης"],
}

# Explicit twins must name the country: BLEnD's Iran questions often say "in your country" instead.
EXPLICIT_REWRITES = {"Iran": [(r"کشور شما", "ایران")]}


def explicit_question(question: str, country: str) -> str | None:
    """The explicit-cue twin: the original question (naming the country), or None if it names none."""
    q = question.strip()
    for pattern, repl in EXPLICIT_REWRITES.get(country, ()):
        q = re.sub(pattern, repl, q)
    return q if mentions_country(q, country) else None


def mentions_country(text: str, country: str) -> bool:
    return any(re.search(p, text) for p in SURFACE_FORMS[country])


def remove_country(question: str, country: str) -> str | None:
    """The question with the country mention removed, or None if it cannot be removed cleanly."""
    if country not in REMOVAL_RULES:
        raise ValueError(f"country: no removal rules for {country!r}; known {sorted(REMOVAL_RULES)}")
    q = question.strip()
    if any(re.search(p, q) for p in UNREMOVABLE.get(country, ())):
        return None
    for pattern, repl in REMOVAL_RULES[country]:
        q = re.sub(pattern, repl, q)
    q = re.sub(r"\s+", " ", q).strip()
    q = re.sub(r"\s+([?？؟;;,，.。:)])", r"\1", q)   # no space before punctuation
    q = re.sub(r"^[，,、\s]+", "", q)
    q = re.sub(r"¿\s*,\s*", "¿", q)
    q = re.sub(r"^¿\s*([a-záéíóúñ])", lambda m: "¿" + m.group(1).upper(), q)
    if q[:1].islower() and country not in ("South_Korea", "China"):
        q = q[0].upper() + q[1:]
    if not q or mentions_country(q, country) or len(q) < 0.4 * len(question.strip()):
        return None
    return q


def normalize_gloss(gloss: str) -> str:
    """English gloss key: lower case, no article, no punctuation, no plural -s/-es ("Cookies" -> "cooki")."""
    g = re.sub(r"^(?:a|an|the)\s+", "", gloss.strip().lower())
    g = re.sub(r"[^\w\s]", "", g).strip()
    return re.sub(r"(?<=\w)(?:es|s)$", "", g) if len(g) > 3 else g


def _glosses(annotation: dict) -> set[str]:
    return {normalize_gloss(g) for g in annotation.get("en_answers") or [] if g and g.strip()} - {""}


@register_task("blend")
class Blend(Task):
    name = "blend"
    kind = "localization"
    languages = tuple(DEFAULT_COUNTRY)

    def _build(self, language: str, country: str | None = None, source: str | None = None,
               countries: dict | None = None, **_) -> list[Item]:
        cmap = {**DEFAULT_COUNTRY, **(countries or {})}
        country = country or cmap.get(language)
        if country is None:
            raise ValueError(f"language: no default BLEnD country for {language!r}; pass country=... "
                             f"(one of {sorted(BLEND_COUNTRIES)})")
        if country not in BLEND_COUNTRIES:
            raise ValueError(f"country: expected one of {sorted(BLEND_COUNTRIES)}, got {country!r}")
        if country == "US":
            raise ValueError("country: 'US' is the reference culture; pick another country")
        if BLEND_COUNTRIES[country][0] != language:
            raise ValueError(f"country: {country}'s BLEnD language is {BLEND_COUNTRIES[country][0]!r}, "
                             f"not {language!r}")
        local_rows = load_blend(country, source=source)
        us_top = {}
        for row in load_blend("US", source=source):
            anns = sorted(row["annotations"], key=lambda a: -a["count"])
            if anns:
                us_top[row["ID"]] = anns[0]
        cue = answer_cue(language)
        items = []
        for row in local_rows:
            qid = row["ID"]
            anns = sorted(row["annotations"], key=lambda a: -a["count"])  # stable: upstream order on ties
            if not anns or qid not in us_top:
                continue
            top = anns[0]
            us_gloss = _glosses(us_top[qid])
            match = next((a for a in anns if _glosses(a) & us_gloss), None)
            if match is None or match is top or match["count"] >= top["count"]:
                continue
            local_answer, us_answer = top["answers"][0].strip(), match["answers"][0].strip()
            if not local_answer or not us_answer or local_answer == us_answer:
                continue
            implicit = remove_country(row["question"], country)
            explicit = explicit_question(row["question"], country)
            if implicit is None or explicit is None:
                continue
            order = [0, 1]
            random.Random(f"{self.seed}/blend/{country}/{qid}").shuffle(order)
            texts = [local_answer, us_answer]
            cands = tuple(continuation(language, texts[o]) for o in order)
            meta = {"country": country, "question_id": qid, "topic": row.get("topic", ""),
                    "en_question": row["en_question"], "local_answer": local_answer, "us_answer": us_answer,
                    "local_votes": top["count"], "us_votes_local": match["count"],
                    "us_en_answer": us_top[qid]["en_answers"][0] if us_top[qid]["en_answers"] else "",
                    "normalization": "mean"}
            for cue_name, question in (("implicit", implicit), ("explicit", explicit)):
                items.append(Item(
                    id=f"{self.name}/{language}/{qid}/{cue_name}", task=self.name, language=language,
                    prompt=f"{question}\n{cue}", candidates=cands, local=order.index(0), us=order.index(1),
                    group=f"blend/{qid}", cue=cue_name, scoring="cloze", meta=meta,
                ))
        return items
