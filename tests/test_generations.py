"""The generations section of the reports (evaluate.generations; recipes: evaluation, crossfit_generations).

Tiny random models (tests/tiny_models.py), no download: the prompt sample is seeded and stratified, marks
read constructed continuations right, greedy continuations are deterministic, a strong vector changes them,
the markdown escapes what would break a table, and both report paths carry the same rows in report.md and
results.json.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from evaluate.crossfit_report import render_crossfit_report
from evaluate.generations import (Skipped, escape_cell, generate_side_by_side, mark, prompt_tasks,
                                  render_generations, sample_prompts)
from evaluate.plane import Variant
from evaluate.sampling import stratified_sample
from evaluate.tasks import get_task
from interventions.config import AdditiveIntervention, InterventionConfig
from recipes.crossfit_generations import crossfit_generations, generation_variants
from recipes.evaluation import RecipeVariant
from recipes.plan import make_plan
from recipes.run import main
from recipes.validate import load_recipe
from tiny_models import HIDDEN, char_tokenizer, flores_bpe_tokenizer, save_tiny_model, tiny_lora, tiny_model

PROMPTS = [{"id": f"toy/xx/{i}", "task": "toy", "kind": "localization", "language": "xx", "prompt": text,
            "answers": {"local": "tea", "us": "coffee"}}
           for i, text in enumerate(["In the morning we drink", "The best drink is", "At breakfast: "])]


def _push(model, scale: float = 60.0, seed: int = 0, **fields) -> InterventionConfig:
    torch.manual_seed(seed)
    iv = AdditiveIntervention("push", "block_output", 1, torch.randn(HIDDEN) * scale, coefficient=1.0, **fields)
    return InterventionConfig.for_model(model, [iv])


# ------------------------------------------------------------------------------------------ the prompt sample

def test_sample_is_seeded_and_stratified():
    tasks = prompt_tasks(["global_mmlu_cloze", "locale_probe"])
    assert tasks == ["locale_probe", "fact_probe"]
    a = sample_prompts(tasks, ["ko", "es"], seed=3)
    assert a == sample_prompts(tasks, ["ko", "es"], seed=3)
    assert [p["id"] for p in a] != [p["id"] for p in sample_prompts(tasks, ["ko", "es"], seed=4)]
    for lang in ("ko", "es"):
        local = [p for p in a if p["language"] == lang and p["kind"] == "localization"]
        transfer = [p for p in a if p["language"] == lang and p["kind"] == "transfer"]
        assert len(local) == 4 and len(transfer) == 2
        # exactly what the stratified sampler draws from the implicit items (one per stratum: distinct topics)
        items = [it for it in get_task("locale_probe", seed=3).items(lang) if it.cue == "implicit"]
        drawn = stratified_sample(items, 4, seed=3)
        assert {p["id"] for p in local} == {it.id for it in drawn}
        assert len({it.meta["topic"] for it in drawn}) == 4
        facts = {it.id: it for it in get_task("fact_probe", seed=3).items(lang)}
        assert len({facts[p["id"]].meta["relation"] for p in transfer}) == 2
        assert all(set(p["answers"]) == {"local", "us"} and all(p["answers"].values()) for p in local)
        assert all(set(p["answers"]) == {"gold"} for p in transfer)
        assert all(p["id"].endswith("/implicit") for p in local)
    assert sample_prompts(tasks, ["en"], seed=3) and all(p["kind"] == "transfer"
                                                         for p in sample_prompts(tasks, ["en"], seed=3))
    with pytest.raises(ValueError, match="n_local"):
        sample_prompts(tasks, ["ko"], n_local=-1)


# ------------------------------------------------------------------------------------------------------ marks

@pytest.mark.parametrize("text, expected", [
    (" Tea, always.", "local"), ("black COFFEE", "us"), ("tea or coffee", "both"), ("water", "neither"),
    ("", "neither")])
def test_marks_on_constructed_continuations(text, expected):
    assert mark(text, {"local": "tea", "us": "coffee"}) == expected


@pytest.mark.parametrize("text, expected", [("14 July", "neither"), ("on 4 July.", "us"), ("5 July or 4 July", "both")])
def test_a_number_is_not_found_inside_a_longer_number(text, expected):
    assert mark(text, {"local": "5 July", "us": "4 July"}) == expected
    assert mark("call 9110", {"local": "112", "us": "911"}) == "neither"
    assert mark("서울은 크다", {"local": "서울", "us": "워싱턴"}) == "local"  # no spaces needed in Korean


def test_a_shorter_answer_inside_the_longer_counts_only_outside_it():
    answers = {"local": "football", "us": "American football"}
    assert mark("they love American football", answers) == "us"
    assert mark("football, not American football", answers) == "both"
    assert mark("football!", answers) == "local"
    assert mark("the capital is Edmonton.", {"gold": "edmonton"}) == "gold"
    assert mark("the capital is Calgary.", {"gold": "Edmonton"}) == "neither"


# ------------------------------------------------------------------------------------------------ generation

@pytest.fixture(scope="module")
def toy():
    return tiny_model("llama", seed=1), char_tokenizer()


def test_generation_is_deterministic_and_json_safe(toy):
    model, tok = toy
    variants = [Variant("base", model), Variant("base+push", model, _push(model))]
    rows = generate_side_by_side(variants, tok, PROMPTS, max_new_tokens=6)
    assert rows == generate_side_by_side(variants, tok, PROMPTS, max_new_tokens=6)
    assert json.loads(json.dumps(rows)) == rows
    assert [(r["prompt_id"], r["variant"]) for r in rows] == [(p["id"], v) for p in PROMPTS
                                                              for v in ("base", "base+push")]
    assert all(r["mark"] == mark(r["continuation"], r["answers"]) for r in rows)
    assert tok.padding_side == "left" and tok.pad_token == "[PAD]"  # the tokenizer is left as it was
    # batched (left padding) equals one prompt at a time
    alone = [r for p in PROMPTS for r in generate_side_by_side(variants[:1], tok, [p], max_new_tokens=6)]
    assert [r["continuation"] for r in alone] == [r["continuation"] for r in rows if r["variant"] == "base"]


def test_a_strong_vector_changes_the_continuation(toy):
    model, tok = toy
    rows = generate_side_by_side([Variant("base", model), Variant("steered", model, _push(model))], tok, PROMPTS,
                                 max_new_tokens=8)
    by = {(r["prompt_id"], r["variant"]): r["continuation"] for r in rows}
    assert any(by[p["id"], "base"] != by[p["id"], "steered"] for p in PROMPTS)
    # steering is undone after the block: the base continuation is what the unsteered model gives
    assert [r["continuation"] for r in generate_side_by_side([Variant("base", model)], tok, PROMPTS, 8)] == \
        [by[p["id"], "base"] for p in PROMPTS]


def test_adapter_off_context_gives_the_base_model():
    tok = char_tokenizer()
    plain = tiny_model("llama", seed=2)
    reference = generate_side_by_side([Variant("base", plain)], tok, PROMPTS, 6)
    peft = tiny_lora(tiny_model("llama", seed=2), "llama")
    rows = generate_side_by_side([RecipeVariant("base", peft.get_base_model(), adapter_off=peft),
                                  RecipeVariant("cla", peft)], tok, PROMPTS, 6)
    assert [r["continuation"] for r in rows if r["variant"] == "base"] == [r["continuation"] for r in reference]
    assert [r["continuation"] for r in rows if r["variant"] == "cla"] != [r["continuation"] for r in reference]


def test_skipped_variants_and_bad_arguments(toy):
    model, tok = toy
    rows = generate_side_by_side([Variant("base", model), Skipped("base+en", "no EN vector")], tok, PROMPTS[:1], 4)
    assert rows[1]["continuation"] is None and rows[1]["mark"] == "skipped" and rows[1]["note"] == "no EN vector"
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_side_by_side([Variant("base", model)], tok, PROMPTS, 0)
    with pytest.raises(ValueError, match="once"):
        generate_side_by_side([Variant("base", model), Variant("base", model)], tok, PROMPTS, 4)


# ------------------------------------------------------------------------------------------------- markdown

def test_markdown_escapes_pipes_and_newlines():
    assert escape_cell("a|b\nc\r\nd") == "a\\|b<br>c<br>d"
    assert escape_cell("<b> & \\") == "&lt;b&gt; &amp; \\\\"
    assert escape_cell("a\x04b\tc") == "a\\\\x04b\\\\x09c"
    rows = [{"language": "xx", "task": "toy", "kind": "localization", "prompt_id": "toy/xx/0", "prompt": "p | q",
             "answers": {"local": "tea", "us": "coffee"}, "variant": v, "continuation": c, "mark": mark(c, {
                 "local": "tea", "us": "coffee"})} for v, c in (("base", " tea |\nmore"), ("base+en", " coffee"))]
    rows.append({**rows[0], "variant": "base+loc", "continuation": None, "mark": "skipped", "note": "no LOC vector"})
    text = render_generations(rows, {"seed": 7, "max_new_tokens": 16})
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert text.startswith("## Generations") and "### xx" in text and "seed 7" in text
    assert table[0] == "| prompt | answers | base | base+en | base+loc |"
    assert len(table) == 3 and table[2].count(" | ") == 4  # escaped pipes do not split the row
    assert "tea \\|<br>more **[local]**" in table[2] and "coffee **[us]**" in table[2]
    assert "*skipped*" in table[2] and "Skipped in xx: base+loc (no LOC vector)." in text
    assert render_generations([]) == ""


# ------------------------------------------------------------------------------------ the cross-fitted path

def _fake_ctx(model, tok, languages):
    recipe = SimpleNamespace(seed=0, evaluate=SimpleNamespace(tasks=["locale_probe"], languages=languages))
    return SimpleNamespace(model=model, tokenizer=tok, recipe=recipe, adapter_source=lambda: None,
                           aligned_model=lambda: None)


def test_crossfit_generations_skip_absent_vectors_and_render(toy, tmp_path):
    model, tok = toy
    torch.manual_seed(0)
    ivs = [AdditiveIntervention("en_transfer_es", "block_output", 1, torch.randn(HIDDEN) * 20, role="en_transfer",
                                language="es"),
           AdditiveIntervention("loc_es", "block_output", 2, torch.randn(HIDDEN) * 20, role="loc_cultural",
                                language="es", positions="last"),
           AdditiveIntervention("en_transfer_ko", "block_output", 1, torch.randn(HIDDEN) * 20, role="en_transfer",
                                language="ko")]
    InterventionConfig.for_model(model, ivs).save_pretrained(tmp_path / "intervention", model=model)
    ctx = _fake_ctx(model, tok, ["en", "ko", "es"])
    config = InterventionConfig.from_pretrained(tmp_path / "intervention")
    names = ["base", "base+en", "base+loc", "base+surgical", "base+random"]
    ko = generation_variants(ctx, "ko", config, "base")
    assert [v.name for v in ko] == names
    assert [type(v) for v in ko] == [RecipeVariant, RecipeVariant, Skipped, Skipped, Skipped]
    es = generation_variants(ctx, "es", config, "base")
    assert all(isinstance(v, RecipeVariant) for v in es)
    assert [iv.name for iv in es[3].interventions.interventions] == ["en_transfer_es", "loc_es"]
    controls = es[4].interventions.interventions
    assert [iv.role for iv in controls] == ["control", "control"]
    assert torch.allclose(controls[0].vector.norm(), ivs[0].vector.norm())

    rows, how = crossfit_generations(ctx, tmp_path, "base")
    assert rows == crossfit_generations(ctx, tmp_path, "base")[0]
    assert {r["language"] for r in rows} == {"ko", "es"} and how["max_new_tokens"] == 16
    assert Counter((r["language"], r["variant"]) for r in rows)[("ko", "base")] == 6  # 4 locale + 2 transfer
    assert all(r["mark"] == "skipped" for r in rows if r["language"] == "ko" and r["variant"] == "base+loc")
    results = {"settings": {"k": 2, "layers": [1, 2], "alphas": [1.0], "tolerance": 0.0, "max_kl": 1.0},
               "tests": [], "plane": [], "selections": {}, "n_items": {}, "languages": [], "cosine_layer": 1,
               "generations": rows, "generations_settings": how}
    text = render_crossfit_report(results, "tiny", None)
    assert "## Generations" in text and text.count("\n### ") == 2
    assert "Skipped in ko: base+loc (no LOC vector for ko" in text


# ----------------------------------------------------------------------------------- both recipes, end to end

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = flores_bpe_tokenizer(vocab_size=512, sentences=60)
    return save_tiny_model("llama", tok, tmp_path_factory.mktemp("tiny-llama-generations"), seed=3)


def _run(tmp_path: Path, data: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main([str(path), "--out", str(tmp_path / "run")]) == 0
    return make_plan(load_recipe(path), tmp_path / "run")


def _same_rows_in_report_and_results(directory: Path) -> list[dict]:
    results = json.loads((directory / "results.json").read_text())
    rows = results["generations"]
    report = (directory / "report.md").read_text()
    assert "## Generations" in report and results["generations_settings"]["max_new_tokens"] == 16
    for r in rows:  # every row of results.json is in report.md
        assert f"### {r['language']}" in report and escape_cell(r["prompt"]) in report
        if r["mark"] == "skipped":
            assert f"{r['variant']} ({r['note']})" in report
        else:
            assert f"{escape_cell(r['continuation'].strip()) or '*(empty)*'} **[{r['mark']}]**" in report
    return rows


def test_plain_recipe_report_and_results_hold_the_same_rows(model_dir, tmp_path):
    plan = _run(tmp_path, {"name": "tiny-generations", "model": {"name": str(model_dir)},
                           "alignment": {"method": "none"},
                           "evaluate": {"tasks": ["locale_probe"], "languages": ["es"], "variants": ["base"], "n": 2,
                                        "bootstrap": 10, "batch_size": 8},
                           "report": {"formats": ["md", "json"], "plots": False}})
    evaluated = _same_rows_in_report_and_results(plan.stages["evaluate"].directory)
    assert len(evaluated) == 6 and {r["variant"] for r in evaluated} == {"base"}
    assert _same_rows_in_report_and_results(plan.stages["report"].directory) == evaluated


def test_crossfit_recipe_report_and_results_hold_the_same_rows(model_dir, tmp_path):
    plan = _run(tmp_path, {"name": "tiny-crossfit-generations", "seed": 0, "model": {"name": str(model_dir)},
                           "alignment": {"method": "none"},
                           "steering": {"en": {"layer": "auto", "alpha": "auto", "n": 4},
                                        "loc": {"layer": "auto", "alpha": "auto", "data": ["locale_probe"]},
                                        "layers": [1], "alphas": [2.0],
                                        "selection": {"folds": 2, "tolerance": 0.0, "neutral_n": 2}},
                           "evaluate": {"tasks": ["global_mmlu_cloze", "locale_probe"], "languages": ["es"],
                                        "variants": ["base", "base+surgical"], "n": 2, "n_localization": 3,
                                        "bootstrap": 10, "batch_size": 8},
                           "report": {"formats": ["md", "json"], "plots": False}})
    evaluated = json.loads((plan.stages["evaluate"].directory / "results.json").read_text())["generations"]
    assert [r["variant"] for r in evaluated[:5]] == ["base", "base+en", "base+loc", "base+surgical", "base+random"]
    assert len(evaluated) == 6 * 5
    assert _same_rows_in_report_and_results(plan.stages["report"].directory) == evaluated
