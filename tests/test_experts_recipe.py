"""The recipe's optional ``experts`` section and stage (find experts, save set-kind interventions, retrieval)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from recipes.plan import make_plan
from recipes.run_dir import StageWriter
from recipes.run import main
from recipes.schema import STAGES, RecipeError, recipe_from_dict
from recipes.validate import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "recipes" / "configs" / "experts.yaml"


def test_section_defaults_off_and_accepts_values():
    recipe = recipe_from_dict({})
    assert recipe.experts.enabled is False and "experts" in STAGES
    plan = make_plan(recipe, Path("/tmp/unused"))
    assert not plan.stages["experts"].active
    recipe = recipe_from_dict({"experts": {"enabled": True, "languages": ["ko"], "k": 7, "ks": [20, 5],
                                           "components": ["mlp_hidden", "attention_heads"],
                                           "apply_to": ["source", "both"], "retrieval_n": 0}})
    stage = make_plan(recipe, Path("/tmp/unused")).stages["experts"]
    assert stage.active and stage.upstream == ["model"]
    assert stage.config["contrast"] == ["en", "ko"] and stage.config["ks"] == [5, 20]
    assert stage.config["apply_to"] == ["source", "both"]


def test_stage_hash_follows_its_settings():
    a = make_plan(recipe_from_dict({"experts": {"enabled": True}}), Path("/tmp/unused")).stages["experts"]
    b = make_plan(recipe_from_dict({"experts": {"enabled": True, "k": 11}}), Path("/tmp/unused")).stages["experts"]
    c = make_plan(recipe_from_dict({"experts": {"enabled": True}, "evaluate": {"languages": ["ko"]}}),
                  Path("/tmp/unused")).stages["experts"]
    assert len({a.hash, b.hash, c.hash}) == 3  # languages default to the evaluation languages
    again = make_plan(recipe_from_dict({"experts": {"enabled": True}}), Path("/tmp/unused")).stages["experts"]
    assert again.hash == a.hash


@pytest.mark.parametrize("section,field", [
    ({"k": 0}, "experts.k"), ({"n": 1}, "experts.n"), ({"retrieval_n": 501}, "experts.retrieval_n"),
    ({"ks": [5, -1]}, "experts.ks[1]"), ({"ks": []}, "experts.ks"), ({"components": ["neurons"]},
                                                                      "experts.components[0]"),
    ({"components": ["mlp_hidden", "mlp_hidden"]}, "experts.components"), ({"languages": ["en", "ko"]},
                                                                             "experts.languages"),
    ({"apply_to": "target"}, "experts.apply_to"), ({"enable": True}, "experts.enable"), ({"k": "ten"}, "experts.k"),
    ({"controls": ["shuffled"]}, "experts.controls[0]"), ({"controls": ["random", "random"]}, "experts.controls"),
    ({"separate_components": "yes"}, "experts.separate_components")])
def test_section_refuses_bad_values_naming_the_field(section, field, tmp_path, capsys, monkeypatch):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({"experts": section})
    assert err.value.field == field
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"experts": {"enabled": True, **section}}))
    rc = main([str(path), "--out", str(tmp_path / "out")])
    text = capsys.readouterr().err
    assert rc == 2 and text.startswith(f"error: {path}: {field}:"), text
    assert len(text.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_shipped_experts_recipe_dry_run(tmp_path, capsys):
    assert main(["experts.yaml", "--dry-run", "--out", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "  experts " in text and "find mlp_hidden+attention_heads experts of ar, es, id, ko, zh" in text
    recipe = load_recipe(SHIPPED)
    plan = make_plan(recipe, tmp_path)
    assert plan.stages["experts"].active and not plan.stages["steering"].active
    # the sweep of issue 16: five languages, k in {5, 10, 20, 50}, both modes, both components ranked separately,
    # both controls, n = 200 finding and 200 retrieval sentences, side effects
    x = plan.stages["experts"].config
    assert x["languages"] == ["ar", "es", "id", "ko", "zh"] and x["ks"] == [5, 10, 20, 50]
    assert x["apply_to"] == ["source", "both"] and x["components"] == ["mlp_hidden", "attention_heads"]
    assert x["separate_components"] and x["controls"] == ["random", "variance"]
    assert x["n"] == 200 and x["retrieval_n"] == 200 and x["side_effects"] == [10]
    assert not plan.stages["alignment"].active and not (tmp_path / "run").exists()


def test_stage_on_a_tiny_model_writes_loadable_set_interventions(tmp_path, monkeypatch):
    from interventions.config import InterventionConfig
    from interventions.steer import steer

    from recipes.stages import STAGE_FUNCTIONS, RunContext
    from tiny_models import char_tokenizer, tiny_model

    corpus = {"en": [f"the cat number {i} sat" for i in range(16)],
              "ko": [f"zzqq xx {i} qqzz" for i in range(16)],
              "es": [f"el gato numero {i}" for i in range(16)]}
    monkeypatch.setattr("evaluate.loaders.load_flores", lambda lang, split="dev": corpus[lang])
    recipe = recipe_from_dict({"experts": {"enabled": True, "languages": ["ko"], "contrast": ["es"], "k": 3,
                                           "ks": [2, 3], "n": 12, "bins": 64, "retrieval_n": 8,
                                           "apply_to": ["source", "both"]}})
    plan = make_plan(recipe, tmp_path / "run")
    ctx = RunContext(recipe, plan)
    model, ctx._tokenizer = tiny_model("gemma3"), char_tokenizer()
    ctx._model = model
    stage = plan.stages["experts"]
    assert stage.config["contrast"] == ["en", "es", "ko"]
    with StageWriter(stage) as out:
        result = STAGE_FUNCTIONS["experts"](ctx, stage, out)
    d = stage.directory
    assert result["interventions"] == {"ko": "ko/experts_k3"}
    assert json.loads((d / "stage.json").read_text())["hash"] == stage.hash
    config = InterventionConfig.from_pretrained(d / "ko" / "experts_k3", model=model)
    assert {iv.kind for iv in config.interventions} == {"set"}
    assert sum(iv.units.numel() for iv in config.interventions) == 3
    assert all(iv.source["language"] == "ko" and iv.source["k"] == 3 for iv in config.interventions)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        base = model(ids).logits
        with steer(model, config):
            steered = model(ids).logits
    assert not torch.allclose(base, steered)
    with open(d / "ratios.csv", newline="") as fh:
        ratios = list(csv.DictReader(fh))
    # 2 modes x 2 ks x 2 directions x (mean, middle)
    assert len(ratios) == 16 and {r["layer"] for r in ratios} == {"mean", "middle"}
    assert {r["apply_to"] for r in ratios} == {"source", "both"} and {r["k"] for r in ratios} == {"2", "3"}
    rows = json.loads((d / "retrieval.json").read_text())
    baseline = [r for r in rows if r["k"] == 0]
    assert baseline and all(r["ratio"] == pytest.approx(1.0) for r in baseline if r["top1_before"] > 0)
    assert (d / "retrieval_ko.png").stat().st_size > 0 and (d / "REPORT.md").is_file()
    assert (d / "ko" / "ranking" / "expert_ranking.safetensors").is_file()


def test_stage_with_controls_and_separate_components(tmp_path, monkeypatch):
    from interventions.config import InterventionConfig

    from recipes.stages import STAGE_FUNCTIONS, RunContext
    from tiny_models import char_tokenizer, tiny_model

    corpus = {"en": [f"the cat number {i} sat" for i in range(16)],
              "ko": [f"zzqq xx {i} qqzz" for i in range(16)]}
    monkeypatch.setattr("evaluate.loaders.load_flores", lambda lang, split="dev": corpus[lang])
    recipe = recipe_from_dict({"experts": {"enabled": True, "languages": ["ko"], "k": 2, "ks": [2], "n": 12,
                                           "bins": 32, "retrieval_n": 6, "apply_to": ["source", "both"],
                                           "components": ["mlp_hidden", "attention_heads"],
                                           "separate_components": True, "controls": ["random", "variance"]}})
    plan = make_plan(recipe, tmp_path / "run")
    ctx = RunContext(recipe, plan)
    model, ctx._tokenizer = tiny_model("gemma3"), char_tokenizer()
    ctx._model = model
    stage = plan.stages["experts"]
    with StageWriter(stage) as out:
        result = STAGE_FUNCTIONS["experts"](ctx, stage, out)
    d = stage.directory
    assert result["interventions"] == {"ko": "ko/mlp_hidden/experts_k2"}
    assert {r["path"] for r in result["saved"]} == {f"ko/{pool}/{name}_k2" for pool in ("mlp_hidden", "attention_heads")
                                                    for name in ("experts", "random", "variance")}
    for pool in ("mlp_hidden", "attention_heads"):
        experts = InterventionConfig.from_pretrained(d / "ko" / pool / "experts_k2", model=model)
        for name in ("random", "variance"):
            control = InterventionConfig.from_pretrained(d / "ko" / pool / f"{name}_k2", model=model)
            assert {iv.role for iv in control.interventions} == {"control"}
            assert {iv.component for iv in control.interventions} == {pool}
            assert sorted((iv.layer, iv.units.numel()) for iv in control.interventions) == sorted(
                (iv.layer, iv.units.numel()) for iv in experts.interventions)  # matched per layer
    # 2 pools x 2 modes x 1 k x 2 directions x 2 summaries per family
    assert len(result["tests"]) == 2 * 16 and {t["control"] for t in result["tests"]} == {"random", "variance"}
    assert "Experts vs a matched random control (primary family, Holm over 16 tests)" in (d / "REPORT.md").read_text()
    assert (d / "retrieval_ko_attention_heads.png").is_file() and (d / "hits.safetensors").is_file()


def test_experts_variant_needs_a_loaded_experts_directory():
    """``+experts`` evaluates an experts stage's directory given as steering.load; the stage's own output in the
    same run is not wired into the evaluation, so the variant is refused without steering.load."""
    from recipes.validate import validate_recipe

    for variants in (["base", "base+experts"], ["base", "cla+experts"]):
        data = {"alignment": {"method": "none", "adapter": None}, "experts": {"enabled": True},
                "steering": {"en": {"layer": 3, "alpha": 1.0}, "loc": {"layer": 9, "alpha": 1.0}},
                "evaluate": {"variants": variants}}
        with pytest.raises(RecipeError) as err:
            validate_recipe(recipe_from_dict(data))
        assert err.value.field == "evaluate.variants[1]"
    with pytest.raises(RecipeError, match="steering.load"):
        validate_recipe(recipe_from_dict({"evaluate": {"variants": ["base", "base+experts"]}}))  # auto: refused too


def test_stage_refuses_unmatchable_controls_before_finding(tmp_path, monkeypatch):
    from recipes.stages import STAGE_FUNCTIONS, RunContext
    from tiny_models import char_tokenizer, tiny_model

    monkeypatch.setattr("evaluate.contrasts.find_experts", lambda *a, **k: pytest.fail("finding ran"))
    recipe = recipe_from_dict({"experts": {"enabled": True, "languages": ["ko"], "k": 2, "ks": [40],
                                           "controls": ["random"]}})
    plan = make_plan(recipe, tmp_path / "run")
    ctx = RunContext(recipe, plan)
    ctx._model, ctx._tokenizer = tiny_model("gemma3"), char_tokenizer()
    with pytest.raises(RecipeError) as err:
        STAGE_FUNCTIONS["experts"](ctx, plan.stages["experts"], tmp_path / "out")
    assert err.value.field == "experts.ks" and "needs >= 80 per block" in err.value.message


def test_side_effects_at_listed_ks_only():
    from evaluate.experts_eval import side_effect_ks

    with pytest.raises(RecipeError, match=r"experts\.side_effects.*\[5, 10\].*\[20\]"):
        recipe_from_dict({"experts": {"enabled": True, "ks": [5, 10], "side_effects": [20]}})
    with pytest.raises(RecipeError, match=r"experts\.side_effects"):
        recipe_from_dict({"experts": {"enabled": True, "k": 10, "side_effects": []}})
    recipe_from_dict({"experts": {"enabled": True, "k": 10, "side_effects": [10]}})  # ks default to [k]
    assert side_effect_ks([10, 5, 10], [5, 10, 20]) == [5, 10]
    assert side_effect_ks(True, [5, 10]) == [5, 10] and side_effect_ks(False, [5, 10]) == []
    assert side_effect_ks(None, [10, 5]) == [5, 10] and side_effect_ks([], [5, 10]) == []  # the CLI's flag


def test_shipped_recipe_plans_the_readme_command(tmp_path):
    """`python -m recipes.run experts` and the README's `python -m evaluate.experts report ...` line plan the same
    forward passes (languages, pools, controls, ks, modes, n, side-effect ks)."""
    from evaluate.experts import _parser
    from evaluate.experts_eval import planned_passes
    from evaluate.experts_eval import side_effect_ks

    x = make_plan(load_recipe(SHIPPED), tmp_path).stages["experts"].config
    contrast = x["contrast"]
    recipe = planned_passes(len(x["languages"]), len(x["components"]) if x["separate_components"] else 1,
                            x["controls"], x["ks"], x["apply_to"], x["retrieval_n"], x["n"], len(contrast),
                            side_effect_ks(x["side_effects"], x["ks"]))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(l for l in readme.splitlines() if l.startswith("python -m evaluate.experts report --languages ar es id ko zh"))
    args = _parser().parse_args(line.split()[3:])
    cli = planned_passes(len(args.languages), len(args.components) if args.per_component else 1, args.controls,
                         sorted(set(args.ks)), args.apply_to, args.retrieval_n, args.n,
                         len(dict.fromkeys(args.contrast + args.languages)),
                         side_effect_ks(args.side_effect_ks, args.ks))
    assert recipe == cli and recipe["retrieval_steered"] == 48_000
