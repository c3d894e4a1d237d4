"""Schema and content checks of the bundled locale_probe data set (no model needed)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "evaluate" / "data" / "locale_probe" / "locale_probe.jsonl"
README = DATA.parent / "README.md"

KEYS = ["concept", "language", "country", "topic", "implicit", "explicit", "local", "us",
        "en_implicit", "en_local", "en_us", "source"]
COUNTRIES = {"ko": "South_Korea", "zh": "China", "es": "Spain", "id": "Indonesia", "ar": "Algeria"}
MIN_ROWS = 40

# Surface forms of the country's name/adjective; implicit prompts must contain none, explicit ones one.
COUNTRY_FORMS = {
    "ko": ["한국", "대한민국"],
    "zh": ["中国", "中國", "中华", "中華"],
    "es": ["españa", "español", "española"],
    "id": ["indonesia"],
    "ar": ["الجزائر", "جزائري"],
}
# The "our country" phrase an implicit prompt uses instead.
OUR_COUNTRY = {
    "ko": ["우리나라"],
    "zh": ["我国", "我们国家"],
    "es": ["nuestro país"],
    "id": ["negara kita"],
    "ar": ["بلدنا"],
}
# A motto is a fixed phrase (e.g. "By the people and for the people"): not shortened.
LONG_ANSWERS_OK = {"motto"}
US_FORMS = ["미국", "美国", "estados unidos", "amerika serikat", "الولايات المتحدة", "united states", "america"]


def load() -> list[dict]:
    with open(DATA, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


ROWS = load()


def has_form(text: str, forms: list[str]) -> bool:
    low = text.lower()
    return any(f in low for f in forms)


def test_file_is_utf8_jsonl_with_exact_keys():
    raw = DATA.read_bytes().decode("utf-8")
    assert "\\u" not in raw, "write with ensure_ascii=False"
    for i, row in enumerate(ROWS, 1):
        assert list(row) == KEYS, f"line {i}: keys {list(row)}"
        for k in KEYS:
            assert isinstance(row[k], str) and row[k].strip(), f"line {i}: field {k!r} empty or not a string"
            assert unicodedata.is_normalized("NFC", row[k]), f"line {i}: field {k!r} not NFC"


@pytest.mark.parametrize("language", sorted(COUNTRIES))
def test_at_least_40_rows_and_unique_concepts(language):
    rows = [r for r in ROWS if r["language"] == language]
    assert len(rows) >= MIN_ROWS, f"{language}: {len(rows)} rows, expected >= {MIN_ROWS}"
    dup = [c for c, n in Counter(r["concept"] for r in rows).items() if n > 1]
    assert not dup, f"{language}: duplicated concepts {dup}"
    assert all(r["country"] == COUNTRIES[language] for r in rows)


def test_only_known_languages():
    assert {r["language"] for r in ROWS} <= set(COUNTRIES)


def test_concepts_are_parallel_and_shared():
    by_concept = defaultdict(set)
    for r in ROWS:
        by_concept[r["concept"]].add(r["language"])
    # The set is parallel: most concepts exist in several languages (concept is the join key).
    multi = [c for c, langs in by_concept.items() if len(langs) >= 3]
    assert len(multi) >= 25, f"only {len(multi)} concepts are in >= 3 languages"
    full = [c for c, langs in by_concept.items() if langs == set(COUNTRIES)]
    assert len(full) >= 15, f"only {len(full)} concepts are in all five languages"
    for concept in by_concept:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", concept), f"concept {concept!r} is not snake_case"
    # The same concept keeps one topic across languages
    topics = defaultdict(set)
    for r in ROWS:
        topics[r["concept"]].add(r["topic"])
    assert all(len(t) == 1 for t in topics.values()), {c: t for c, t in topics.items() if len(t) > 1}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['language']}-{r['concept']}")
def test_row_conventions(row):
    lang = row["language"]
    implicit, explicit = row["implicit"], row["explicit"]
    assert not has_form(implicit, COUNTRY_FORMS[lang]), f"implicit names the country: {implicit!r}"
    assert has_form(implicit, OUR_COUNTRY[lang]), f"implicit lacks the 'our country' phrase: {implicit!r}"
    assert has_form(explicit, COUNTRY_FORMS[lang]), f"explicit does not name the country: {explicit!r}"
    assert not has_form(explicit, OUR_COUNTRY[lang]), f"explicit still says 'our country': {explicit!r}"
    assert implicit != explicit
    for text in (implicit, explicit, row["en_implicit"]):
        assert not has_form(text, US_FORMS), f"prompt names the US: {text!r}"
        assert text == text.strip(), f"prompt has leading/trailing whitespace: {text!r}"
    assert "our country" in row["en_implicit"].lower() or "our country's" in row["en_implicit"].lower()
    for a, b in ((row["local"], row["us"]), (row["en_local"], row["en_us"])):
        for ans in (a, b):
            assert ans == ans.strip() and "  " not in ans, f"answer whitespace: {ans!r}"
            if row["concept"] not in LONG_ANSWERS_OK:
                assert 1 <= len(ans.split()) <= 4, f"answer too long: {ans!r}"
        assert a.casefold() != b.casefold(), f"local == us: {a!r}"
        assert not a.casefold().startswith(b.casefold()), f"us {b!r} is a prefix of local {a!r}"
        assert not b.casefold().startswith(a.casefold()), f"local {a!r} is a prefix of us {b!r}"
    assert len(row["source"]) >= 8


def test_explicit_differs_from_implicit_only_in_the_country_phrase():
    """explicit = implicit with the 'our country' phrase replaced by the country name (+ particle)."""
    for r in ROWS:
        lang = r["language"]
        stripped_i = r["implicit"]
        for f in OUR_COUNTRY[lang]:
            stripped_i = re.sub(re.escape(f), "", stripped_i, flags=re.IGNORECASE)
        stripped_e = r["explicit"]
        for f in sorted(COUNTRY_FORMS[lang] + ["대한민국"], key=len, reverse=True):
            stripped_e = re.sub(re.escape(f), "", stripped_e, flags=re.IGNORECASE)
        # compare as word bags, allowing one extra word (Korean particle, Indonesian 'negara')
        wi, we = Counter(stripped_i.split()), Counter(stripped_e.split())
        assert sum((wi - we).values()) <= 1 and sum((we - wi).values()) <= 1, (lang, r["concept"])


def test_readme_documents_sources_licence_and_results():
    text = README.read_text(encoding="utf-8")
    for needle in ("CC BY 4.0", "check_locale_probe.py", "implicit", "explicit", "English control"):
        assert needle in text, f"README.md lacks {needle!r}"


# --- issue 14: instrument errors found in review must stay fixed -------------------------------------
# Terms that name a country-specific institution, title or holiday: an implicit prompt that uses one tells
# the model the country without naming it (and its explicit twin is kept parallel, so neither may).
COUNTRY_VOCABULARY = {
    "ko": ["제헌절", "광역자치단체"],
    "zh": ["国家宪法日", "国球", "省级行政区", "国家主席", "最高国家权力机关", "国宝"],
    "es": ["policía nacional", "dictadura"],
    "id": ["sim a"],
    "ar": ["الحماية المدنية"],
}
# The prompt's own language: a US answer equal to it can be rejected without knowing the country.
OWN_LANGUAGE = {"ko": ["한국어"], "zh": ["汉语", "中文", "普通话"], "es": ["español", "castellano"],
                "id": ["bahasa indonesia"], "ar": ["العربية"]}
BY_ID = {f"{r['language']}/{r['concept']}": r for r in ROWS}


def test_known_wrong_fact_is_fixed():
    assert BY_ID["es/largest_island"]["local"] == "Mallorca"  # not Tenerife (2,034 km² < Mallorca's 3,640 km²)
    assert BY_ID["es/largest_island"]["en_local"] == "Mallorca"


def test_rows_solvable_without_culture_are_gone():
    assert "es/foreign_language" not in BY_ID  # the US answer was "español", the prompt's own language
    assert "ar/writing_direction" not in BY_ID  # "right to left" follows from the script of the prompt
    assert "dictadura" not in BY_ID["es/first_president"]["implicit"]
    assert "国家主席" not in BY_ID["zh/first_president"]["implicit"]
    for r in ROWS:
        if r["concept"] in ("foreign_language",):
            assert r["us"].casefold() not in OWN_LANGUAGE[r["language"]], f"{r['language']}/{r['concept']}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['language']}-{r['concept']}")
def test_prompts_use_no_country_vocabulary(row):
    for field in ("implicit", "explicit"):
        hit = [t for t in COUNTRY_VOCABULARY[row["language"]] if t in row[field].casefold()]
        assert not hit, f"{row['language']}/{row['concept']} {field} uses country vocabulary {hit}: {row[field]!r}"


def test_readme_changelog_names_every_revised_row():
    text = README.read_text(encoding="utf-8")
    assert "## Changelog" in text and "## Length bias" in text
    log = text.split("## Changelog", 1)[1]
    for row_id in ("es/largest_island", "es/foreign_language", "ar/writing_direction", "es/first_president",
                   "zh/first_president", "ko/constitution_day", "zh/constitution_day", "zh/national_sport",
                   "zh/first_level_divisions", "es/police_number", "id/driving_age", "ar/emergency_number"):
        assert f"| {row_id} |" in log, f"changelog lacks {row_id}"


def test_length_bias_report():
    from benchmarks.check_locale_probe import length_bias, length_table

    def words(text, add_special_tokens=True):  # a tokenizer stub: one token per word
        return {"input_ids": text.split()}

    base = {"country": "X", "topic": "t", "explicit": "e", "source": "s"}
    rows = [{**base, "concept": "a", "language": "ko", "implicit": "q a", "local": "one", "us": "two words",
             "en_implicit": "q", "en_local": "x y", "en_us": "z"},
            {**base, "concept": "b", "language": "ko", "implicit": "q b", "local": "long local answer", "us": "us",
             "en_implicit": "q", "en_local": "x", "en_us": "z"},
            {**base, "concept": "c", "language": "ko", "implicit": "q c", "local": "same", "us": "also",
             "en_implicit": "q", "en_local": "x", "en_us": "zz"}]
    bias = length_bias(words, rows)
    assert bias["ko"]["implicit"]["tokens"] == pytest.approx({"local_shorter": 1 / 3, "us_shorter": 1 / 3,
                                                              "equal": 1 / 3})
    assert bias["ko"]["english"]["tokens"]["us_shorter"] == pytest.approx(1 / 3)
    assert bias["ko"]["implicit"]["chars"]["local_shorter"] == pytest.approx(1 / 3)  # "one" < "two words"
    assert "| ko | L implicit | 3 | 0.33 | 0.33 |" in length_table(bias)
