"""Tasks: item construction, splits by group, metrics, and the data traps of each source."""

import json
import re
from types import SimpleNamespace

import pytest

from evaluate.tasks import (Item, continuation, get_task, list_tasks, split_of)
from evaluate.tasks.blend import DEFAULT_COUNTRY, SURFACE_FORMS, mentions_country, remove_country

TASKS = ["blend", "fact_probe", "global_mmlu", "global_mmlu_cloze", "locale_probe"]


def test_registry():
    assert set(TASKS) <= set(list_tasks())
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")


def test_item_validation():
    with pytest.raises(ValueError, match="gold=2"):
        Item(id="t/en/1", task="t", language="en", prompt="p", candidates=(" a", " b"), gold=2)
    with pytest.raises(ValueError, match="scoring"):
        Item(id="t/en/1", task="t", language="en", prompt="p", candidates=(" a",), scoring="mc")


def test_continuation_separator():
    assert continuation("zh", " 北京 ") == "北京"
    assert continuation("ko", "서울") == " 서울"
    assert continuation("en", "Paris") == " Paris"


def test_split_of_deterministic_and_seeded():
    groups = [f"g/{i}" for i in range(2000)]
    a = [split_of(g, 0) for g in groups]
    assert a == [split_of(g, 0) for g in groups]
    assert a != [split_of(g, 1) for g in groups]
    frac = a.count("extract") / len(a)
    assert 0.25 < frac < 0.35


@pytest.mark.parametrize("name,langs", [("global_mmlu", ["en", "ko", "zh"]), ("fact_probe", ["en", "ar", "zh"]),
                                        ("blend", ["ko", "es"])])
def test_splits_disjoint_by_group(name, langs):
    task = get_task(name)
    split_of_group = {}
    for lang in langs:
        ex, te, al = (task.items(lang, s) for s in ("extract", "test", "all"))
        assert {i.id for i in ex}.isdisjoint({i.id for i in te})
        assert sorted(i.id for i in ex + te) == [i.id for i in al]
        assert [i.id for i in al] == sorted(i.id for i in al)
        assert len({i.id for i in al}) == len(al)
        assert ex and te
        for s, items in (("extract", ex), ("test", te)):
            for it in items:
                assert split_of_group.setdefault(it.group, s) == s, f"group {it.group} straddles splits"


def test_global_mmlu_items():
    letter, cloze = get_task("global_mmlu"), get_task("global_mmlu_cloze")
    en, ko = letter.items("en", "all"), letter.items("ko", "all")
    assert len(en) == len(ko) == 195  # 200 CA minus 5 high_school_world_history rows
    assert all(i.meta["cultural_sensitivity_label"] == "CA" for i in ko)
    assert ko[0].candidates == (" A", " B", " C", " D") and ko[0].scoring == "letter"
    assert ko[0].prompt.endswith("답:") and "\nA. " in ko[0].prompt
    assert letter.items("zh", "all")[0].candidates == ("A", "B", "C", "D")
    assert [i.gold for i in en] == [i.gold for i in ko]  # same answer key across languages
    c = cloze.items("ko", "all")
    assert c[0].scoring == "cloze" and c[0].meta["normalization"] == "mean" and len(c[0].candidates) == 4
    # letter and cloze variants of one question share its split
    assert [i.group for i in letter.items("ko", "test")] == [i.group for i in cloze.items("ko", "test")]
    assert len(letter.items("en", "all", subset="all")) == 390


def test_transfer_metrics_and_consistency():
    task = get_task("global_mmlu")
    en, ko = task.items("en", "test"), task.items("ko", "test")
    chosen = {i.id: i.gold for i in en}
    chosen.update({i.id: (i.gold if k % 2 == 0 else (i.gold + 1) % 4) for k, i in enumerate(ko)})
    m = task.metrics(ko, chosen)
    half = sum(1 for k in range(len(ko)) if k % 2 == 0) / len(ko)
    assert m["accuracy"] == pytest.approx(half)
    assert m["consistency_with_en"] == pytest.approx(half)
    assert m["n_consistency_with_en"] == len(ko)
    assert m["chance"]["accuracy"] == pytest.approx(0.25)
    # without English choices there is no consistency
    m2 = task.metrics(ko, {i.id: 0 for i in ko})
    assert m2["consistency_with_en"] is None and m2["n_consistency_with_en"] == 0
    # the scorer's ItemScore-like objects are accepted
    scores = [SimpleNamespace(item_id=i.id, choice=i.gold) for i in ko]
    assert task.metrics(ko, scores)["accuracy"] == 1.0
    assert task.metrics(ko, [i.gold for i in ko])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="not an index"):
        task.metrics(ko, {ko[0].id: 7})


# ------------------------------------------------------------------------------------------- blend
@pytest.mark.parametrize("country,q,expected", [
    ("South_Korea", "대한민국에서 맥주와 함께 즐겨먹는 음식은 무엇인가요?", "맥주와 함께 즐겨먹는 음식은 무엇인가요?"),
    ("China", "在中国，学龄前儿童常见的零食是什么？", "学龄前儿童常见的零食是什么？"),
    ("China", "中国人在春节吃什么？", "人们在春节吃什么？"),
    ("Spain", "¿Cuál es un tentempié común para niños de preescolar en España?",
     "¿Cuál es un tentempié común para niños de preescolar?"),
    ("Spain", "En España, ¿en qué curso los estudiantes hacen su primer examen?",
     "¿En qué curso los estudiantes hacen su primer examen?"),
    ("Indonesia", "Apa saja makanan manis yang paling populer di Indonesia?",
     "Apa saja makanan manis yang paling populer?"),
    ("Algeria", "ما هي وسيلة النقل التي تمتلكها معظم العائلات في الجزائر؟",
     "ما هي وسيلة النقل التي تمتلكها معظم العائلات؟"),
])
def test_remove_country(country, q, expected):
    assert remove_country(q, country) == expected


def test_remove_country_refuses_unclean():
    assert remove_country("대한민국이 올림픽에서 가장 많은 금메달을 획득한 종목은 무엇인가요?", "South_Korea") is None
    assert remove_country("除了源自中国的食物，哪个国家的食物在中国更受欢迎？", "China") is None


@pytest.mark.parametrize("language", sorted(DEFAULT_COUNTRY))
def test_blend_items_no_country_mention(language):
    task = get_task("blend")
    items = task.items(language, "all")
    country = DEFAULT_COUNTRY[language]
    implicit = [i for i in items if i.cue == "implicit"]
    explicit = {i.group: i for i in items if i.cue == "explicit"}
    assert len(implicit) >= 25 and len(implicit) == len(explicit)
    for it in implicit:
        for form in SURFACE_FORMS[country]:
            assert not re.search(form, it.prompt), (it.id, it.prompt)
        twin = explicit[it.group]
        assert twin.candidates == it.candidates and twin.local == it.local
        assert task.split(twin) == task.split(it)
        assert len(it.candidates) == 2 and {it.local, it.us} == {0, 1}
        assert it.candidates[it.local].strip() == it.meta["local_answer"]
        assert it.id == f"blend/{language}/{it.meta['question_id']}/implicit"
    # every explicit twin names the country
    assert all(mentions_country(e.prompt, country) for e in explicit.values())


def test_blend_country_override_and_errors():
    task = get_task("blend")
    mx = task.items("es", "all", country="Mexico")
    assert mx and all(i.meta["country"] == "Mexico" for i in mx)
    assert not any(re.search(f, i.prompt) for i in mx if i.cue == "implicit" for f in SURFACE_FORMS["Mexico"])
    with pytest.raises(ValueError, match="BLEnD language"):
        task.items("ko", "all", country="China")
    with pytest.raises(ValueError, match="no default BLEnD country"):
        task.items("en", "all")


def test_blend_hub_path(monkeypatch):
    import datasets

    from evaluate.loaders import load_blend

    local = {c: load_blend(c).rename_column("ID", "id") for c in ("Spain", "US")}
    code = {"ES": "Spain", "US": "US"}
    calls = []

    def fake(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return local[code[split]]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    hub = get_task("blend").items("es", "all", source="nayeon212/BLEnD")
    monkeypatch.undo()
    assert ("nayeon212/BLEnD", "annotations", "ES") in calls
    assert [i.id for i in hub] == [i.id for i in get_task("blend").items("es", "all")]


def test_localization_metrics():
    task = get_task("blend")
    items = task.items("ko", "test", cue="implicit")
    m = task.metrics(items, {i.id: i.local for i in items})
    assert m["localization_score"] == 1.0 and m["us_rate"] == 0.0
    assert m["chance"] == {"localization_score": 0.5, "us_rate": 0.5}
    outcomes = task.item_outcomes(items, {i.id: i.us for i in items})
    assert set(outcomes["us_rate"].values()) == {1.0}


# -------------------------------------------------------------------------------------- fact_probe
def test_fact_probe_items():
    task = get_task("fact_probe")
    by_lang = {lang: task.items(lang, "all") for lang in ("en", "ar", "es", "id", "ko", "zh")}
    n = {lang: len(v) for lang, v in by_lang.items()}
    assert len(set(n.values())) == 1 and n["en"] > 500
    assert {i.meta["relation"] for i in by_lang["en"]} == {"P36", "P1376", "P37", "P30", "P103"}
    en_gold = {i.group: i.gold for i in by_lang["en"]}
    for lang, items in by_lang.items():
        for it in items:
            assert it.meta["objects"][it.gold] == it.meta["answer"]
            assert en_gold[it.group] == it.gold  # one permutation per fact, shared by all languages
            assert "<mask>" not in it.prompt and not it.prompt.endswith(" ")
    golds = [i.gold for i in by_lang["en"]]
    assert len(set(golds)) > 5  # the gold is no longer always last
    zh_capital = [i for i in by_lang["zh"] if i.meta["relation"] in ("P36", "P1376")]
    assert zh_capital and not any("大写" in i.prompt or "大写" in c for i in zh_capital for c in i.candidates)
    assert all(i.meta["source"] == "bmlama53+xfactr_template" for i in zh_capital)
    ko = next(i for i in by_lang["ko"] if i.meta["relation"] == "P36")
    assert all(c.startswith(" ") and c.endswith("입니다.") for c in ko.candidates)  # suffix after the mask
    en = next(i for i in by_lang["en"] if i.meta["relation"] == "P36")
    assert en.prompt.startswith("The capital of ") and all(c.endswith(".") for c in en.candidates)
    swiss = next(i for i in by_lang["en"] if i.meta["relation"] == "P37" and i.meta["subject"] == "Switzerland")
    others = {"German", "French", "Italian", "Romansh"} - {swiss.meta["answer"]}
    assert not others & set(swiss.meta["objects"])


def test_fact_probe_relations_option():
    task = get_task("fact_probe")
    items = task.items("es", "all", relations=("P30",))
    assert items and {i.meta["relation"] for i in items} == {"P30"}
    with pytest.raises(ValueError, match="relations"):
        task.items("es", "all", relations=("P47",))


# ------------------------------------------------------------------------------------ locale_probe
def _probe_file(tmp_path, n=12):
    rows = []
    for k in range(n):
        for lang, country in (("ko", "South_Korea"), ("zh", "China")):
            rows.append({"concept": f"c{k:02d}", "language": lang, "country": country, "topic": "t",
                         "implicit": f"{lang} implicit {k}", "explicit": f"{lang} explicit {k}",
                         "local": f"L{k}", "us": f"U{k}", "en_implicit": f"In our country {k} is",
                         "en_local": f"Local{k}", "en_us": f"US{k}", "source": "fixture"})
    p = tmp_path / "locale_probe.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_locale_probe_items(tmp_path):
    path = _probe_file(tmp_path)
    task = get_task("locale_probe", path=str(path))
    items = task.items("ko", "all")
    assert len(items) == 36
    ctrl = [i for i in items if i.cue == "control"]
    assert len(ctrl) == 12 and all(i.language == "en" and i.id.startswith("locale_probe/ko/") for i in ctrl)
    assert all(i.candidates[i.local].strip() == i.meta["local_answer"] for i in items)
    imp = {i.group: i for i in items if i.cue == "implicit"}
    for it in items:
        assert task.split(it) == task.split(imp[it.group])
    zh = task.items("zh", "all", cue="implicit")
    assert all(" " not in c for i in zh for c in i.candidates)  # zh: no separator
    for z in zh:
        assert task.split(z) == task.split(imp[z.group])  # same concept, same split in every language
    m = task.metrics(items, {i.id: i.local for i in items})
    assert m["localization_score"] == 1.0 and m["n_localization_score"] == 36


def test_locale_probe_duplicate_concept(tmp_path):
    p = _probe_file(tmp_path, 2)
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(ValueError, match=r"row 4 field 'concept'.*repeats row 0"):
        get_task("locale_probe", path=str(p)).items("ko", "all")


def test_locale_probe_bundled_file():
    from evaluate.loaders import DATA_DIR

    if not (DATA_DIR / "locale_probe" / "locale_probe.jsonl").exists():
        pytest.skip("locale_probe.jsonl not bundled yet")
    task = get_task("locale_probe")
    for lang in ("ko", "zh", "es", "id", "ar"):
        items = task.items(lang, "all")
        assert len([i for i in items if i.cue == "implicit"]) >= 40
        assert {i.cue for i in items} == {"implicit", "explicit", "control"}
        assert task.items(lang, "extract") and task.items(lang, "test")
