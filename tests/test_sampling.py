"""Stratified, seeded group samples: never the first n by id, balanced, parallel, gold share capped."""

from __future__ import annotations

from collections import Counter

import pytest

from evaluate.plane import collect_items
from evaluate.sampling import gold_answer, sample_groups, stratified_sample, stratum_of
from evaluate.tasks import Item, get_task

LANGS = ("en", "ko", "zh")


def pool(n_groups: int = 40, relations=("P36", "P37", "P103", "P30"), english_every: int = 2) -> list[Item]:
    """Parallel transfer items: group g in every language, relation g % 4; every 2nd fact's gold is English."""
    items = []
    for g in range(n_groups):
        gold = "English" if g % english_every == 0 else f"answer{g}"
        for lang in LANGS:
            items.append(Item(f"t/{lang}/{g:03d}", "t", lang, f"prompt {g}", (" " + gold, " other"), gold=0,
                              group=f"data/{g:03d}", meta={"relation": relations[g % len(relations)]}))
    return items


def groups_of(items) -> set[str]:
    return {it.group for it in items}


def test_seeded_same_seed_same_sample_other_seed_other_sample():
    items = pool()
    a = stratified_sample(items, 12, seed=3)
    assert a == stratified_sample(items, 12, seed=3)
    assert groups_of(a) == groups_of(stratified_sample(list(reversed(items)), 12, seed=3))  # input order irrelevant
    others = {frozenset(groups_of(stratified_sample(items, 12, seed=s))) for s in range(4, 10)}
    assert len(others | {frozenset(groups_of(a))}) > 1
    assert groups_of(a) != {f"data/{g:03d}" for g in range(12)}  # not the first 12 by id


def test_balanced_across_strata():
    items = pool(n_groups=40)
    for n in (4, 6, 10, 13):
        chosen = sample_groups(items, n, seed=1, max_gold_share=None)
        counts = Counter(g for g in chosen)
        assert len(chosen) == n and len(counts) == n
        rel = Counter(int(g.split("/")[1]) % 4 for g in chosen)
        assert max(rel.values()) - min(rel[r] for r in range(4)) <= 1, rel


def test_small_stratum_gives_all_it_has_and_others_fill():
    # relation P103 has 2 groups only: it gives both, the other strata share the rest evenly
    items = [it for it in pool(n_groups=40) if not (it.meta["relation"] == "P103" and int(it.group[-3:]) > 6)]
    chosen = sample_groups(items, 20, seed=0, max_gold_share=None)
    rel = Counter(it.meta["relation"] for it in items if it.language == "en" and it.group in set(chosen))
    assert rel["P103"] == 2 and sorted(rel[r] for r in ("P36", "P37", "P30")) == [6, 6, 6]


def test_parallel_across_languages_and_twins_together():
    items = pool()
    sample = stratified_sample(items, 10, seed=2)
    by_lang = {lang: sorted(it.group for it in sample if it.language == lang) for lang in LANGS}
    assert by_lang["en"] == by_lang["ko"] == by_lang["zh"] and len(by_lang["en"]) == 10
    twins = [Item(f"l/ko/c{i}/{cue}", "l", "ko", "p", (" a", " b"), local=0, us=1, group=f"l/c{i}", cue=cue,
                  meta={"topic": "food" if i % 2 else "law"}) for i in range(10) for cue in ("implicit", "explicit")]
    got = stratified_sample(twins, 4, seed=0, max_gold_share=None)
    assert Counter(it.group for it in got) == Counter({g: 2 for g in groups_of(got)}) and len(groups_of(got)) == 4


def test_gold_share_cap():
    items = pool(n_groups=40, english_every=2)  # half the facts have the gold "English"
    for n, share in ((20, 0.25), (12, 0.25), (10, 0.1), (8, 0.5)):
        chosen = set(sample_groups(items, n, seed=0, max_gold_share=share))
        golds = Counter(gold_answer(it) for it in items if it.language == "en" and it.group in chosen)
        assert len(chosen) == n
        assert golds["English"] <= max(1, int(share * n)), (n, share, golds)
    uncapped = sample_groups(items, 20, seed=0, max_gold_share=None)
    assert len(uncapped) == 20
    # when the cap leaves too few groups the sample is smaller, never over the cap
    all_english = pool(n_groups=8, english_every=1)
    assert len(sample_groups(all_english, 8, seed=0)) == 2  # floor(0.25 * 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n:"):
        sample_groups(pool(), -1)
    with pytest.raises(ValueError, match="max_gold_share"):
        sample_groups(pool(), 3, max_gold_share=0)
    assert sample_groups(pool(), 0) == [] and sample_groups([], 5) == []
    assert len(sample_groups(pool(n_groups=6), 50, max_gold_share=None)) == 6  # n above the pool: everything


def test_strata_of_the_real_tasks():
    fact = get_task("fact_probe").items("en", "test")[0]
    assert stratum_of(fact) == f"relation={fact.meta['relation']}"
    mmlu = get_task("global_mmlu").items("en", "test")[0]
    assert stratum_of(mmlu) == f"subject={mmlu.meta['subject']}"
    loc = get_task("locale_probe").items("ko", "test")[0]
    assert stratum_of(loc) == f"topic={loc.meta['topic']}"
    blend = get_task("blend").items("ko", "test")[0]
    assert stratum_of(blend) == f"topic={blend.meta['topic']}"


def test_fact_probe_limit_is_stratified_and_english_capped():
    task = get_task("fact_probe")
    cells = collect_items([task], ["ko"], split="test", limit=24, seed=0)
    en, ko = cells[("fact_probe", "en")], cells[("fact_probe", "ko")]
    assert len(en) == len(ko) == 24 and [i.group for i in en] == [i.group for i in ko]
    rel = Counter(i.meta["relation"] for i in en)
    assert set(rel) == {"P36", "P1376", "P37", "P30", "P103"} and max(rel.values()) - min(rel.values()) <= 1
    assert sum(i.meta["answer"] == "English" for i in en) <= 6  # 0.25 * 24
    # first-by-id would have been 16 P103 + 8 P1376 facts
    first = sorted(task.items("en", "test"), key=lambda i: i.id)[:24]
    assert Counter(i.meta["relation"] for i in first) != rel


def test_localization_limit_is_per_language_from_one_shared_ranking():
    task = get_task("locale_probe")
    cells = collect_items([task], ["ko", "zh", "es", "id", "ar"], split="all", limit=20, seed=4)
    for lang in ("ko", "zh", "es", "id", "ar"):
        implicit = [i for i in cells[("locale_probe", lang)] if i.cue == "implicit"]
        assert len(implicit) == 20, lang
        explicit = {i.group for i in cells[("locale_probe", lang)] if i.cue == "explicit"}
        assert explicit == {i.group for i in implicit}  # twins together
        topics = Counter(i.meta["topic"] for i in implicit)
        available = Counter(i.meta["topic"] for i in task.items(lang, "all", cue="implicit"))
        # balanced: a topic below the others' count has given every concept it has
        top = max(topics.values())
        assert all(topics[t] >= top - 1 or topics[t] == available[t] for t in available), (lang, topics)
    # one ranking: languages with the same concepts get the same sample
    twins = [Item(f"l/{lang}/c{i}/implicit", "l", lang, "p", (f" a{i}", " b"), local=0, us=1, group=f"l/c{i}",
                  meta={"topic": f"t{i % 3}"}) for lang in ("ko", "es") for i in range(30)]
    ko = {i.group for i in stratified_sample([t for t in twins if t.language == "ko"], 9, seed=1)}
    es = {i.group for i in stratified_sample([t for t in twins if t.language == "es"], 9, seed=1)}
    assert ko == es and len(ko) == 9
