"""The pure parts of benchmarks/bench_lmeval.py (the item sample, the result comparison); no lm-eval needed."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.bench_lmeval import compare_results, fewshot_requests, sample_items
from evaluate.requests import LoglikelihoodRequest, requests_from_items
from evaluate.sampling import group_of
from evaluate.tasks import get_task, list_tasks


def test_sample_spreads_over_tasks_and_languages():
    items = sample_items(60, seed=0)
    cells = {(name, lang) for name in list_tasks() for lang in get_task(name).languages}
    assert len(items) == 60
    per_cell = Counter((it.task, it.language) for it in items)
    assert set(per_cell) == cells  # 60 items over fewer than 60 cells: every cell is drawn from
    assert max(per_cell.values()) - min(per_cell.values()) <= 1
    assert len({it.id for it in items}) == 60
    assert len({(it.task, it.language, group_of(it)) for it in items}) == 60  # one item per question group
    assert [it.id for it in sample_items(60, seed=0)] == [it.id for it in items]  # seeded
    assert [it.id for it in sample_items(60, seed=1)] != [it.id for it in items]


def test_sample_of_fewer_items_than_cells_and_one_task():
    few = sample_items(5, seed=2)
    assert len(few) == 5 and len({(it.task, it.language) for it in few}) == 5
    one = sample_items(12, seed=0, tasks=["fact_probe"])
    assert {it.task for it in one} == {"fact_probe"} and len(one) == 12
    strata = {it.meta.get("relation") for it in one if it.language == "en"}
    assert len(strata) == 2  # two items of a language come from two relations (stratified)
    with pytest.raises(ValueError, match="limit"):
        sample_items(0)


def test_requests_are_the_items_candidates():
    items = sample_items(8, seed=0)
    requests = requests_from_items(items)
    assert requests == [LoglikelihoodRequest(it.prompt, c) for it in items for c in it.candidates]


def test_compare_results():
    ours = [(-1.0, True), (-2.0, False), (-0.5, False), (-3.0, True), (-1.0, False)]
    theirs = [(-1.00002, True), (-2.0, True), (-0.5, False), (-0.9, True), (-1.0, False)]
    res = compare_results(ours, theirs, sizes=[3, 2])
    assert res["n_requests"] == 5
    assert res["max_abs_logprob_diff"] == pytest.approx(2.1) and res["worst_request"] == 3
    assert res["greedy_agreement"] == pytest.approx(0.8) and res["n_greedy_disagree"] == 1
    assert res["choice_agreement"] == pytest.approx(0.5)  # item 0: both pick request 2; item 1: 4 vs 3
    assert "choice_agreement" not in compare_results(ours, theirs)
    with pytest.raises(ValueError, match="equally long"):
        compare_results(ours, theirs[:-1])
    with pytest.raises(ValueError, match="sizes"):
        compare_results(ours, theirs, sizes=[2, 2])


def test_fewshot_requests_prepend_answered_demos_of_the_same_task_and_language():
    items = sample_items(12, seed=0)
    assert fewshot_requests(items, 0) == requests_from_items(items)
    reqs = fewshot_requests(items, 3, seed=0)
    assert len(reqs) == sum(len(it.candidates) for it in items)
    assert [r.continuation for r in reqs] == [c for it in items for c in it.candidates]
    start = 0
    for it in items:
        contexts = {r.context for r in reqs[start:start + len(it.candidates)]}
        start += len(it.candidates)
        assert len(contexts) == 1  # one context per item, shared by its candidates
        context = contexts.pop()
        assert context.endswith("\n\n" + it.prompt)  # the item's own prompt closes the context
        rest = context[: -len("\n\n" + it.prompt)]
        answered = {d.prompt + d.candidates[d.gold if d.gold is not None else d.local]: d
                    for d in get_task(it.task).items(it.language, split="all")
                    if (d.gold if d.gold is not None else d.local) is not None}
        demos = []
        while rest:  # the prefix is exactly three answered demos joined by blank lines
            shown = next(p for p in sorted(answered, key=len, reverse=True) if rest.startswith(p))
            demos.append(answered[shown])
            rest = rest[len(shown):].removeprefix("\n\n")
        assert len(demos) == 3 and all(group_of(d) != group_of(it) for d in demos)
    assert fewshot_requests(items, 3, seed=0) == reqs and fewshot_requests(items, 3, seed=1) != reqs
    with pytest.raises(ValueError, match="shots"):
        fewshot_requests(items, -1)
