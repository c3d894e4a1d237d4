"""The recipe runtime never gives wrong numbers with exit 0, writes complete outputs, and closes the experts loop.

On a tiny random llama over a byte-level BPE trained on FLORES (``tests/tiny_models.py``), with the bundled tasks:

- a forward pass that overflows (NaN / inf log-probs) is an error naming the variant, never a result;
- per-language work units still write what one ``evaluate_plane`` call writes, predictions.jsonl holds one
  finite line per scored item x variant x unit, the pooled cross-language rows are there and equal what the
  plane computes, and the reports say which items each number rests on (``item_ids.json``);
- a symlink inside ``steering.load`` / ``alignment.adapter`` is refused by the stages themselves;
- an experts directory from the experts stage is evaluable as the ``base+experts`` variant;
- the ``evaluate`` CLI refuses bad flag values with one line and exit 2, before loading a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from evaluate.plane import Variant, evaluate_plane
from evaluate.scoring import NonFiniteScores
from interventions.config import AdditiveIntervention, InterventionConfig
from recipes.evaluation import (ITEM_IDS, intervention_role, read_predictions, variant_interventions,
                                write_outputs)
from recipes.plan import make_plan
from recipes.run_dir import StageWriter
from recipes.pooling import pooled_rows
from recipes.run import main
from recipes.schema import RecipeError, recipe_from_dict
from recipes.stages import STAGE_FUNCTIONS, RunContext, compute_interventions, run_alignment, run_steering
from recipes.validate import load_recipe
from tiny_models import HIDDEN, flores_bpe_tokenizer, save_tiny_model, tiny_lora, tiny_model_for

TASKS = ["global_mmlu_cloze", "locale_probe"]  # one transfer, one localization task, both serving ko and es
OUTPUTS = ("results.json", "results.csv", "predictions.jsonl", "plane.png", "tasks.png", "report.md", ITEM_IDS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, model, tokenizer): a tiny llama saved where a recipe's model.name can point."""
    tokenizer = flores_bpe_tokenizer(vocab_size=512, sentences=60)
    directory = save_tiny_model("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama"), seed=3)
    return directory, tiny_model_for("llama", tokenizer, seed=3), tokenizer


ROLE_OF = {"en": "en_transfer", "loc": "loc_cultural"}


def _typed(name: str) -> dict:
    """role/language of a test intervention named like the steering stage names them (en_transfer_ko, loc_es)."""
    head, _, tail = name.rpartition("_")
    role = ROLE_OF.get(name.split("_")[0], "other")
    return {"role": role, "language": tail if head and len(tail) == 2 else None}


def _vector_dir(model, path: Path, names: list[str], scale: float = 4.0) -> Path:
    torch.manual_seed(0)
    ivs = [AdditiveIntervention(name, "block_output", 1, torch.randn(HIDDEN) * scale, coefficient=1.0,
                                **_typed(name))
           for name in names]
    InterventionConfig.for_model(model, ivs).save_pretrained(path, model=model)
    return path


def _recipe_file(tmp_path: Path, model_dir: Path, **sections) -> Path:
    data = {"name": "tiny", "model": {"name": str(model_dir)}, "alignment": {"method": "none"},
            "evaluate": {"tasks": TASKS, "languages": ["ko", "es"], "variants": ["base", "base+en"], "n": 3,
                         "bootstrap": 20, "batch_size": 8}, **sections}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _context(recipe, out: Path, model, tokenizer) -> RunContext:
    ctx = RunContext(recipe, make_plan(recipe, out))
    ctx._model, ctx._tokenizer = model, tokenizer
    return ctx


def _run_stages(ctx, *names) -> dict:
    results = {}
    for name in names:
        stage = ctx.plan.stages[name]
        with StageWriter(stage) as out:
            results[name] = STAGE_FUNCTIONS[name](ctx, stage, out)
    return results


def _finite_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise AssertionError(f"{path}: bare {name}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- NaN is an error, not a result


def test_overflowing_variant_is_an_error_and_commits_nothing(tiny, tmp_path):
    model_dir, model, tok = tiny
    recipe = load_recipe(_recipe_file(tmp_path, model_dir, steering={"en": {"enabled": False},
                                                                      "loc": {"enabled": False}},
                                      evaluate={"tasks": TASKS, "languages": ["ko"], "variants": ["base"], "n": 2,
                                                "bootstrap": 20}))
    ctx = _context(recipe, tmp_path / "run", model, tok)

    def poison(module, args, output):  # the residual overflowed: every logit NaN
        return (output[0] * float("nan"), *output[1:]) if isinstance(output, tuple) else output * float("nan")

    handle = model.model.layers[2].register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteScores, match=r"non-finite log-probabilities under variant 'base'.*overflows"):
            _run_stages(ctx, "evaluate")
    finally:
        handle.remove()
    assert not ctx.plan.stages["evaluate"].directory.exists()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp dir left


def test_single_unit_writes_the_same_outputs(tiny, tmp_path):
    """Language-agnostic variants: one unit, the same files, predictions with ``unit`` null."""
    model_dir, model, tok = tiny
    recipe = load_recipe(_recipe_file(tmp_path, model_dir, steering={"en": {"enabled": False},
                                                                      "loc": {"enabled": False}},
                                      evaluate={"tasks": TASKS, "languages": ["ko", "es"], "variants": ["base"],
                                                "n": 2, "bootstrap": 20}))
    ctx = _context(recipe, tmp_path / "run", model, tok)
    _run_stages(ctx, "evaluate")
    evaluated = ctx.plan.stages["evaluate"].directory
    for name in OUTPUTS:
        assert (evaluated / name).stat().st_size > 0, name
    results = json.loads((evaluated / "results.json").read_text())
    preds = _finite_lines(evaluated / "predictions.jsonl")
    ids = json.loads((evaluated / ITEM_IDS).read_text())
    assert {p["unit"] for p in preds} == {None} and len(preds) == sum(map(len, ids.values()))
    assert {key: len(values) for key, values in ids.items()} == results["n_items"]
    assert {r["language"] for r in results["plane"]} == {"ko", "es", "mean"}
    assert "## Items behind each number" in (evaluated / "report.md").read_text()


def test_predictions_are_written_without_nan(tmp_path):
    good = {"variant": "base", "task": "t", "language": "ko", "item_id": "t/ko/1", "logprob": [-1.0, -2.0]}
    with pytest.raises(ValueError, match="JSON compliant"):
        write_outputs(tmp_path, {}, [good, dict(good, logprob=[float("nan"), -2.0])])
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_read_predictions_refuses_bare_nan(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"item_id": "a", "logprob": [NaN, -1.0]}\n')
    with pytest.raises(ValueError, match="NaN"):
        read_predictions(path, "ko")


# ----------------------------------------------------------------------------- complete outputs


def test_per_language_units_write_complete_outputs(tiny, tmp_path):
    model_dir, model, tok = tiny
    vectors = _vector_dir(model, tmp_path / "vectors", ["en_transfer_ko", "en_transfer_es"])
    recipe_path = _recipe_file(tmp_path, model_dir, steering={"load": str(vectors)})
    out = tmp_path / "run"
    assert main([str(recipe_path), "--out", str(out)]) == 0
    plan = make_plan(load_recipe(recipe_path), out)
    evaluated, reported = plan.stages["evaluate"].directory, plan.stages["report"].directory
    for name in OUTPUTS:
        assert (evaluated / name).stat().st_size > 0, name

    results = json.loads((evaluated / "results.json").read_text())
    assert results["config"]["evaluated_per_language"] and results["item_ids"] == ITEM_IDS
    ids = json.loads((evaluated / ITEM_IDS).read_text())
    preds = _finite_lines(evaluated / "predictions.jsonl")
    assert "NaN" not in (evaluated / "predictions.jsonl").read_text()
    # one line per scored item x variant x unit: each unit scores its language and the English control
    keys = [(p["unit"], p["variant"], p["item_id"]) for p in preds]
    assert len(keys) == len(set(keys))
    for unit in ("ko", "es"):
        for variant in ("base", "base+en"):
            scored = {p["item_id"] for p in preds if p["unit"] == unit and p["variant"] == variant}
            expected = {i for key, values in ids.items() for i in values if key.split("/")[1] in (unit, "en")}
            assert scored == expected, (unit, variant)
    assert {key: len(values) for key, values in ids.items()} == results["n_items"]
    for p in preds:
        assert {"variant", "task", "language", "item_id", "choice", "gold", "local", "us", "logprob"} <= set(p)
        assert len(p["logprob"]) == len(p["n_tokens"]) and all(math.isfinite(x) for x in p["logprob"])

    # the pooled cross-language rows exist, pool both languages' items, and equal the plane's own computation
    plane = {(r["variant"], r["language"], r["score"]): r for r in results["plane"]}
    for variant in ("base", "base+en"):
        mean = plane[(variant, "mean", "transfer_score")]
        assert mean["n"] == plane[(variant, "ko", "transfer_score")]["n"] + plane[(variant, "es", "transfer_score")]["n"]
        assert mean["n"] == len(ids["global_mmlu_cloze/ko"]) + len(ids["global_mmlu_cloze/es"])
    assert "diff_vs_base" in plane[("base+en", "mean", "localization_score")]
    recomputed = {(r["variant"], r["language"], r["score"]): r for r in pooled_rows(results, preds)}
    for key, row in plane.items():  # per-language rows: the units' own; mean rows: the pooled ones
        assert json.dumps(recomputed[key], sort_keys=True, default=str) == json.dumps(row, sort_keys=True,
                                                                                      default=str), key
    csv_rows = (evaluated / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(results["metrics"]) + len(results["plane"])
    assert any(",mean,plane," in line for line in csv_rows)

    report = (reported / "report.md").read_text()
    assert "## Items behind each number" in report and ITEM_IDS in report and "| global_mmlu_cloze/ko | 3 |" in report
    assert json.loads((reported / ITEM_IDS).read_text()) == ids
    claims = json.loads((reported / "claims.json").read_text())
    assert claims["surgical"] == []  # no surgical variant in this recipe; the report still renders


def test_pooled_rows_equal_one_plane_call(tiny, tmp_path):
    """Tagging one call's predictions by language and pooling them gives back exactly that call's plane rows."""
    _, model, tok = tiny
    iv = AdditiveIntervention("push", "block_output", 1, torch.randn(HIDDEN) * 4.0, coefficient=1.0)
    variants = [Variant("base", model), Variant("base+en", model, InterventionConfig.for_model(model, [iv]))]
    results = evaluate_plane(variants, tok, TASKS, ["ko", "es"], out_dir=tmp_path, n_boot=20, limit=3, batch_size=8,
                             progress=False)
    scored = read_predictions(tmp_path / "predictions.jsonl", None)  # as two units would: ko (+ en), es (+ en)
    preds = [dict(p, unit=unit) for unit in ("ko", "es") for p in scored
             if p["item_id"].split("/")[1] in (unit, "en")]  # ids are task/language/...: the cell's language
    pooled = pooled_rows(results, preds)
    assert json.dumps(pooled, sort_keys=True, default=str) == json.dumps(results["plane"], sort_keys=True, default=str)
    assert {r["language"] for r in pooled} == {"ko", "es", "mean"}


# ----------------------------------------------------------------------------- symlinks are not followed


def test_symlinks_in_loaded_directories_are_refused(tiny, tmp_path):
    model_dir, model, tok = tiny
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    vectors = _vector_dir(model, tmp_path / "vectors", ["en_transfer_ko"])
    (vectors / "passwd.txt").symlink_to(secret)
    adapter = tmp_path / "adapter"
    tiny_lora(tiny_model_for("llama", tok), "llama").save_pretrained(adapter)
    (adapter / "notes.txt").symlink_to(secret)
    # the stages refuse on their own (validation refuses the same recipe before any stage runs)
    recipe = recipe_from_dict({"model": {"name": str(model_dir)}, "steering": {"load": str(vectors)},
                               "alignment": {"method": "none", "adapter": str(adapter)},
                               "evaluate": {"tasks": TASKS, "languages": ["ko"], "variants": ["base", "cla+en"]}})
    ctx = _context(recipe, tmp_path / "run", model, tok)
    for stage_fn, field, link in ((run_steering, "steering.load", "passwd.txt"),
                                  (run_alignment, "alignment.adapter", "notes.txt")):
        stage = ctx.plan.stages["steering" if stage_fn is run_steering else "alignment"]
        with pytest.raises(RecipeError) as err:
            with StageWriter(stage) as out:
                stage_fn(ctx, stage, out)
        assert err.value.field == field and link in str(err.value) and "symbolic link" in str(err.value)
        assert not stage.directory.exists()
    assert main([str(_recipe_file(tmp_path, model_dir, steering={"load": str(vectors)})), "--out",
                 str(tmp_path / "run2")]) == 2  # and the recipe itself is refused up front


def test_a_symlink_free_directory_is_copied_as_is(tiny, tmp_path):
    model_dir, model, tok = tiny
    vectors = _vector_dir(model, tmp_path / "vectors", ["en_transfer_ko"])
    (vectors / "notes.txt").write_text("notes")
    recipe = recipe_from_dict({"model": {"name": str(model_dir)}, "steering": {"load": str(vectors)},
                               "alignment": {"method": "none"},
                               "evaluate": {"tasks": TASKS, "languages": ["ko"], "variants": ["base", "base+en"]}})
    ctx = _context(recipe, tmp_path / "run", model, tok)
    _run_stages(ctx, "steering")
    copied = ctx.plan.stages["steering"].directory / "intervention"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in vectors.iterdir())
    assert not [p for p in copied.rglob("*") if p.is_symlink()]


# ----------------------------------------------------------------------------- empty steering stage


def test_english_only_languages_never_commit_an_empty_steering_stage(tiny, tmp_path):
    model_dir, model, tok = tiny
    recipe = recipe_from_dict({"model": {"name": str(model_dir)}, "alignment": {"method": "none"},
                               "steering": {"en": {"layer": 1, "alpha": 2.0}, "loc": {"enabled": False}},
                               "evaluate": {"tasks": ["global_mmlu_cloze"], "languages": ["en"], "variants": ["base+en"]}})
    ctx = _context(recipe, tmp_path / "run", model, tok)
    with pytest.raises(RecipeError) as err:
        compute_interventions(ctx, model, tmp_path)
    assert err.value.field == "evaluate.languages"
    with pytest.raises(RecipeError):
        _run_stages(ctx, "steering")
    assert not ctx.plan.stages["steering"].directory.exists()


# ----------------------------------------------------------------------------- experts close the loop


def test_experts_directory_is_evaluable_as_a_variant(tiny, tmp_path):
    model_dir, model, tok = tiny
    experts = recipe_from_dict({"model": {"name": str(model_dir)}, "alignment": {"method": "none"},
                                "steering": {"en": {"enabled": False}, "loc": {"enabled": False}},
                                "experts": {"enabled": True, "languages": ["ko"], "contrast": ["en", "es", "ko"],
                                            "k": 6, "n": 12, "bins": 16, "retrieval_n": 0},
                                "evaluate": {"tasks": TASKS, "languages": ["ko"], "variants": ["base"]}})
    ctx = _context(experts, tmp_path / "experts-run", model, tok)
    found = _run_stages(ctx, "experts")["experts"]
    directory = ctx.plan.stages["experts"].directory / found["interventions"]["ko"]
    config = InterventionConfig.from_pretrained(directory)
    assert {intervention_role(iv) for iv in config.interventions} == {("experts", "ko")}

    recipe = load_recipe(_recipe_file(tmp_path, model_dir, steering={"load": str(directory)},
                                      evaluate={"tasks": TASKS, "languages": ["ko"], "variants": ["base", "base+experts"],
                                                "n": 3, "bootstrap": 20}))  # validation accepts it with steering.load
    ctx = _context(recipe, tmp_path / "run", model, tok)
    _run_stages(ctx, "model", "steering", "evaluate")
    evaluated = ctx.plan.stages["evaluate"].directory
    results = json.loads((evaluated / "results.json").read_text())
    assert [v["name"] for v in results["variants"]] == ["base", "base+experts"]
    assert results["config"]["languages"] == ["ko"]  # one per-language unit: the experts of ko steer ko prompts
    assert {r["variant"] for r in results["plane"]} == {"base", "base+experts"}
    preds = _finite_lines(evaluated / "predictions.jsonl")
    by = {(p["variant"], p["item_id"]): p["logprob"] for p in preds}
    changed = [i for (v, i), lp in by.items() if v == "base" and lp != by[("base+experts", i)]]
    assert changed  # forcing the experts moved the log-probs

    # experts of ko cannot steer es prompts: refused before anything is scored, naming the variant
    with pytest.raises(RecipeError) as err:
        variant_interventions(["base", "base+experts"], config, "es")
    assert err.value.field == "evaluate.variants[1]" and "experts (ko)" in str(err.value)


def test_variant_names_parse_once():
    from recipes.variants import VARIANTS, Variant

    assert Variant.parse("cla+surgical").adapter and set(Variant.parse("cla+surgical").roles) == {"en", "loc"}
    assert not Variant.parse("base").adapter and not Variant.parse("base").roles
    assert Variant.parse("base+experts").roles == ("experts",)
    assert {"base+experts", "cla+experts"} <= set(VARIANTS) and len(VARIANTS) == len(set(VARIANTS))
    for bad in ("base+", "cla+foo", "steer+en", "base+en+loc"):
        with pytest.raises(ValueError):
            Variant.parse(bad)
    with pytest.raises(RecipeError) as err:
        variant_interventions(["base", "cla+foo"], None, None)
    assert err.value.field == "evaluate.variants[1]"
    controls = [v for v in VARIANTS if Variant.parse(v).control or Variant.parse(v).crossfit_only]
    for name in controls:  # never evaluated as the plain vectors under a control's name
        with pytest.raises(RecipeError, match="cross-fitted"):
            variant_interventions(["base", name], None, None)


def test_variant_roles_from_a_mixed_directory():
    ivs = [AdditiveIntervention("en_transfer_ko", "block_output", 1, torch.ones(HIDDEN), role="en_transfer",
                                language="ko"),
           AdditiveIntervention("loc_ko", "block_output", 2, torch.ones(HIDDEN), role="loc_cultural", language="ko"),
           AdditiveIntervention("units", "block_output", 2, torch.ones(HIDDEN),
                                source={"method": "finding_experts", "language": "ko"})]
    config = InterventionConfig(ivs, {})
    chosen = variant_interventions(["base", "base+en", "cla+surgical", "base+experts"], config, "ko")
    assert chosen["base"] is None
    assert [iv.name for iv in chosen["base+en"].interventions] == ["en_transfer_ko"]
    assert [iv.name for iv in chosen["cla+surgical"].interventions] == ["en_transfer_ko", "loc_ko"]
    assert [iv.name for iv in chosen["base+experts"].interventions] == ["units"]
    with pytest.raises(RecipeError, match=r"evaluate.variants\[0\].*drop en"):
        variant_interventions(["base+en"], config, "en")


# ----------------------------------------------------------------------------- the evaluate CLI


@pytest.mark.parametrize("flags, expected", [
    (["--tasks", "no_such_task"], "--tasks: unknown"),
    (["--languages", "xx"], "--languages: unknown"),
    (["--tasks", "locale_probe", "--languages", "el"], "--languages: task locale_probe has no items in ['el']"),
    (["--limit", "0"], "--limit: expected an integer >= 1"),
    (["--n-boot", "0"], "--n-boot"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--tasks", "blend", "blend"], "--tasks: duplicate"),
    (["--adapter", "./no-such-adapter"], "--adapter: no such directory"),
    (["--interventions", "/"], "--interventions: / has no intervention_config.json"),
    (["--dtype", "float8"], "--dtype"),
    (["--seed", "-1"], "--seed"),
])
def test_evaluate_cli_bad_values_exit_2_before_loading(flags, expected, tmp_path, capsys, monkeypatch):
    from evaluate.__main__ import main as evaluate_main
    from interventions import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "out"
    assert evaluate_main(["--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
