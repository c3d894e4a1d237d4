"""The plane runner writes every output, with CIs, chance tests and paired tests vs the base."""

from __future__ import annotations

import csv
import json

import pytest

from evaluate.outputs import CSV_FIELDS
from evaluate.plane import Variant, collect_items, evaluate_plane
from evaluate.tasks import Item, Task
from tiny_models import tiny_lora, tiny_model, word_bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    return word_bpe_tokenizer()


WORDS = ["paris", "madrid", "seoul", "beijing", "cat", "mat"]


class TinyTransfer(Task):
    name, kind, languages = "tiny_transfer", "transfer", ("en", "ko")

    def _build(self, language, **options):
        return [Item(f"tiny_transfer/{language}/q{i}", self.name, language, "the capital of spain is",
                     tuple(" " + w for w in WORDS[:4]), gold=i % 4, group=f"tiny/q{i}") for i in range(12)]


class TinyLocal(Task):
    name, kind, languages = "tiny_local", "localization", ("ko",)

    def _build(self, language, **options):
        out = []
        for i in range(8):
            for cue, prompt in (("implicit", "the capital is"), ("explicit", "korea the capital is")):
                out.append(Item(f"tiny_local/{language}/c{i}/{cue}", self.name, language, prompt,
                                (" seoul", " paris the cat"), local=i % 2, us=1 - i % 2, group=f"loc/c{i}", cue=cue))
        return out


def test_plane_end_to_end(tok, tmp_path):  # noqa: F811
    base = tiny_model("llama", seed=5)
    lora = tiny_lora(tiny_model("llama", seed=5), "llama")
    variants = [Variant("base", base), Variant("cla", lora)]
    res = evaluate_plane(variants, tok, [TinyTransfer(), TinyLocal()], ["ko"], split="all", out_dir=tmp_path,
                         n_boot=200, batch_size=5, progress=False)
    for name in ("results.json", "results.csv", "predictions.jsonl", "plane.png", "tasks.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"]["seed"] == 0 and "torch" in data["versions"] and data["n_items"]["tiny_transfer/en"] == 12
    metrics = {(r["variant"], r["task"], r["language"], r["cue"], r["metric"]): r for r in data["metrics"]}
    acc = metrics[("base", "tiny_transfer", "ko", "", "accuracy")]
    assert acc["n"] == 12 and acc["ci_low"] <= acc["value"] <= acc["ci_high"] and acc["chance"] == 0.25
    assert {"p_vs_chance", "above_chance"} <= set(acc)
    assert ("base", "tiny_transfer", "en", "", "accuracy") in metrics  # English control
    cons = metrics[("base", "tiny_transfer", "ko", "", "consistency_with_en")]
    assert cons["value"] == 1.0  # identical prompts in ko and en: same choice everywhere
    assert ("cla", "tiny_local", "ko", "explicit", "localization_score") in metrics
    assert "p_vs_base" in metrics[("cla", "tiny_transfer", "ko", "", "accuracy")]
    assert "p_vs_base" not in acc

    # the metrics equal the predictions they come from
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    ko = [p for p in preds if p["variant"] == "cla" and p["task"] == "tiny_transfer" and p["language"] == "ko"]
    assert metrics[("cla", "tiny_transfer", "ko", "", "accuracy")]["value"] == pytest.approx(
        sum(p["choice"] == p["gold"] for p in ko) / len(ko))

    plane = {(r["variant"], r["language"], r["score"]): r for r in data["plane"]}
    assert {("base", "ko", "transfer_score"), ("base", "mean", "localization_score"),
            ("cla", "mean", "transfer_score")} <= set(plane)
    loc = plane[("base", "ko", "localization_score")]
    imp = metrics[("base", "tiny_local", "ko", "implicit", "localization_score")]
    assert loc["value"] == pytest.approx(imp["value"]) and loc["n"] == 8  # implicit cue only
    assert "diff_vs_base" in plane[("cla", "mean", "transfer_score")]

    # trivial baselines beside chance; margins (primary outcome) agree with the predictions they come from
    ko_base = [p for p in preds if p["variant"] == "base" and p["task"] == "tiny_transfer" and p["language"] == "ko"]
    fewest = [sum(n == min(p["n_tokens"]) for n in p["n_tokens"]) for p in ko_base]
    assert acc["baseline_fewer_tokens"] == pytest.approx(sum(
        (p["n_tokens"][p["gold"]] == min(p["n_tokens"])) / k for p, k in zip(ko_base, fewest)) / len(ko_base))
    assert acc["baseline_majority"] == pytest.approx(0.25)  # four golds, three times each: one of them, 3/12
    margin = metrics[("base", "tiny_transfer", "ko", "", "margin")]
    assert margin["value"] == pytest.approx(sum(p["margin"] for p in ko_base) / 12) and margin["chance"] is None
    assert all((p["margin"] > 0) == (p["choice"] == p["gold"]) for p in ko_base)
    assert data["n_gap_items"]["tiny_transfer/ko"] == 0  # same prompt in ko and en: never right in one only
    assert all(p["gap"] is False for p in ko_base)
    lm = plane[("cla", "mean", "localization_margin")]
    assert lm["ci_low"] <= lm["value"] <= lm["ci_high"] and {"diff_vs_base", "diff_ci_low", "p_vs_base"} <= set(lm)
    assert plane[("base", "ko", "localization_score")]["baseline_fewer_tokens"] is not None
    assert "Primary outcome" in (tmp_path / "report.md").read_text() and "majority" in (tmp_path / "report.md").read_text()

    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == len(data["metrics"]) + len(data["plane"])
    report = (tmp_path / "report.md").read_text()
    assert "![transfer-localization plane](plane.png)" in report and "![per-task bars](tasks.png)" in report
    assert "transfer_score" in report and len(res["metrics"]) == len(data["metrics"])


def test_limit_keeps_parallel_items(tok):  # noqa: F811
    cells = collect_items([TinyTransfer(), TinyLocal()], ["ko"], split="all", limit=3, max_gold_share=None)
    assert [it.id.split("/", 2)[2] for it in cells[("tiny_transfer", "ko")]] == \
           [it.id.split("/", 2)[2] for it in cells[("tiny_transfer", "en")]]
    assert len(cells[("tiny_transfer", "ko")]) == 3
    assert len(cells[("tiny_local", "ko")]) == 6  # 3 groups, both cues of each
    assert {it.group for it in cells[("tiny_local", "ko")] if it.cue == "implicit"} == \
           {it.group for it in cells[("tiny_local", "ko")] if it.cue == "explicit"}
    # seeded, not the first n by id
    firsts = {f"tiny/q{i}" for i in range(3)}
    draws = [{it.group for it in collect_items([TinyTransfer()], ["ko"], split="all", limit=3, seed=s,
                                               max_gold_share=None)[("tiny_transfer", "ko")]} for s in range(6)]
    assert len({frozenset(d) for d in draws}) > 1 and any(d != firsts for d in draws)
    assert draws[0] == {it.group for it in collect_items([TinyTransfer()], ["ko"], split="all", limit=3, seed=0,
                                                         max_gold_share=None)[("tiny_transfer", "ko")]}
    # TinyLocal has two local answers only: a 0.25 cap on 3 groups allows one group per answer
    capped = collect_items([TinyLocal()], ["ko"], split="all", limit=3)[("tiny_local", "ko")]
    assert len({it.group for it in capped}) == 2


def test_bad_input(tok, tmp_path):  # noqa: F811
    m = tiny_model("llama")
    with pytest.raises(ValueError, match="variants"):
        evaluate_plane([], tok, [TinyTransfer()], ["ko"])
    with pytest.raises(ValueError, match="unique"):
        evaluate_plane([Variant("a", m), Variant("a", m)], tok, [TinyTransfer()], ["ko"])
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_plane([Variant("a", m)], tok, ["no_such_task"], ["ko"])
    with pytest.raises(ValueError, match="no items"):
        evaluate_plane([Variant("a", m)], tok, [TinyLocal()], ["es"])


def test_cli_refuses_unknown_task(tmp_path, capsys):
    from evaluate.__main__ import build_parser, main

    args = build_parser().parse_args(["--out", str(tmp_path)])
    assert args.tasks == ["global_mmlu", "blend", "locale_probe", "fact_probe"]
    assert args.languages == ["ar", "es", "id", "ko", "zh"]
    assert main(["--out", str(tmp_path), "--tasks", "no_such_task"]) == 2  # one line on stderr, exit 2
    assert "--tasks: unknown ['no_such_task']" in capsys.readouterr().err
