"""The recipe's analysis stage, saved all-layer vectors, and the "Claims as measured" verdicts of a run with
fixed layers and alphas (a recipe with ``auto`` reports the cross-fitted protocol's tests instead:
tests/test_crossfit_recipe.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from recipes.artifacts import SteeringResult, VectorSelection
from recipes.claims import (claim_erasure, claim_layers, claim_orthogonality, claim_surgical, measure_claims,
                            render_claims, stouffer)
from recipes.plan import make_plan
from recipes.run_dir import StageWriter
from recipes.run import main
from recipes.validate import load_recipe

ANALYSIS = {"name": "analysis", "model": {"name": "gemma-3-270m", "dtype": "float32", "device": "cpu"},
            "alignment": {"method": "none"},
            "steering": {"en": {"layer": 6, "alpha": 1.0, "n": 32}, "loc": {"layer": 12, "alpha": 1.0, "n": 32,
                                                                           "data": "locale_probe"}},
            "evaluate": {"tasks": ["fact_probe", "locale_probe"], "languages": ["ar", "es", "id", "ko", "zh"],
                         "variants": ["base", "base+en", "base+loc", "base+surgical"], "n": 24},
            "analysis": {"enabled": True, "n": 48, "layers": None}}
"""gemma-3-270m without alignment, fixed layers and alphas, the analysis stage on."""


def _recipe(tmp_path, **analysis) -> Path:
    data = {**ANALYSIS, "analysis": {**ANALYSIS["analysis"], **analysis}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- schema + plan


def test_analysis_recipe_dry_run(tmp_path, capsys):
    assert main([str(_recipe(tmp_path)), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "analysis" in out and "cos(v_EN, v_LOC)" in out and "alpha 1.0" in out
    recipe = load_recipe(_recipe(tmp_path))
    assert recipe.alignment.method == "none" and recipe.analysis.enabled
    assert not (tmp_path / "run").exists()


def test_analysis_stage_runs_only_when_enabled():
    """Off unless the recipe turns it on: no analysis stage in the plan and the report does not wait for one."""
    off = make_plan(load_recipe("surgical"), Path("runs/x"))
    assert not off.stages["analysis"].active and "analysis" not in off.stages["report"].upstream
    on = make_plan(load_recipe("surgical", ["analysis.enabled=true"]), Path("runs/x"))
    assert on.stages["analysis"].active and "analysis" in on.stages["report"].upstream


@pytest.mark.parametrize("analysis, field", [
    ({"n": "many"}, "analysis.n: expected an int"),
    ({"n": 1}, "analysis.n: expected at least 2"),
    ({"layers": [3, 18]}, "analysis.layers[1]: expected an int in [0, 17]"),
    ({"layers": []}, "analysis.layers: expected a non-empty list"),
    ({"layers": [3, 3]}, "analysis.layers: duplicate entries"),
    ({"enabled": "yes"}, "analysis.enabled: expected true or false"),
    ({"layrs": [3]}, "analysis.layrs: unknown key; did you mean 'layers'"),
])
def test_bad_analysis_section_exit_2(tmp_path, capsys, analysis, field):
    path = _recipe(tmp_path, **analysis)
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and field in err, err
    assert not out.exists()


def test_analysis_accepts_layers(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, layers=[0, 9, 17], n=8))
    assert recipe.analysis.layers == [0, 9, 17] and recipe.analysis.n == 8


def test_plan_hashes_follow_analysis_settings(tmp_path):
    path = _recipe(tmp_path)

    def hashes(*overrides):
        return {st.name: st.hash for st in make_plan(load_recipe(path, list(overrides)), Path("runs/x"))}

    base = hashes()
    for override in ("analysis.n=16", "analysis.layers=[3, 9]"):
        changed = hashes(override)
        assert changed["analysis"] != base["analysis"] and changed["report"] != base["report"], override
        assert all(changed[s] == base[s] for s in ("model", "steering", "evaluate")), override
    assert hashes("evaluate.languages=[ko]")["analysis"] != base["analysis"]
    assert hashes("steering.en.n=4")["analysis"] != base["analysis"]  # upstream steering hash
    assert hashes("steering.loc.alpha=2")["analysis"] != base["analysis"]
    off = hashes("analysis.enabled=false")
    assert off["report"] != base["report"] and off["evaluate"] == base["evaluate"]
    # with the stage off its settings do not reach any active stage
    assert hashes("analysis.enabled=false", "analysis.n=16")["report"] == off["report"]
    surgical = make_plan(load_recipe("surgical"), Path("runs/x"))
    assert surgical.stages["report"].upstream == ["evaluate"]


# ----------------------------------------------------------------------------- vectors on disk


def _vectors(name, layers=(0, 1, 2), hidden=16, seed=0):
    from interventions.vectors import SteeringVectors

    g = torch.Generator().manual_seed(seed)
    return SteeringVectors(name, torch.randn(len(layers), hidden, generator=g), list(layers),
                           torch.rand(len(layers), generator=g) + 1, {"vector": name, "n_prompts": 4})


def test_vectors_round_trip_through_the_stage_directory(tmp_path):
    from interventions.vector_io import load_vectors, save_vectors

    stage = make_plan(load_recipe(_recipe(tmp_path)), tmp_path / "run").stages["steering"]
    saved = [_vectors("en_transfer_ko", seed=1), _vectors("loc_ko", seed=2)]
    with StageWriter(stage) as out:
        for v in saved:
            save_vectors(v, out / "vectors")
    loaded = load_vectors(stage.directory / "vectors")
    assert sorted(loaded) == ["en_transfer_ko", "loc_ko"]
    for v in saved:
        w = loaded[v.name]
        assert torch.equal(w.vectors, v.vectors) and torch.equal(w.residual_norms, v.residual_norms)
        assert w.layers == v.layers and w.source == v.source
        assert torch.equal(w.intervention(1, coefficient=2.0).vector, v.vector(1))
    with pytest.raises(ValueError, match="vectors.name"):
        save_vectors(_vectors("../x"), tmp_path)


def test_vector_cosine_rows_at_selected_layers():
    from recipes.analysis_stage import vector_cosine_rows

    en = _vectors("en_transfer_ko", layers=(4, 8), seed=1)
    loc = _vectors("loc_ko", layers=(4, 8), seed=2)
    loc.vectors[1] = en.vectors[1] * 3  # parallel at layer 8
    per_layer, selected = vector_cosine_rows({"en_transfer_ko": en, "loc_ko": loc, "loc_es": loc},
                                             {"en_transfer_ko": {"layer": 4}, "loc_ko": {"layer": 8}})
    assert [r["layer"] for r in per_layer] == [4, 8] and {r["language"] for r in per_layer} == {"ko"}
    assert per_layer[1]["cosine"] == pytest.approx(1.0) and per_layer[1]["above_random"]
    by = {r["at"]: r for r in selected}
    assert by["loc_layer"]["cosine"] == pytest.approx(1.0)
    assert (by["applied_pair"]["en_layer"], by["applied_pair"]["loc_layer"]) == (4, 8)
    want = torch.nn.functional.cosine_similarity(en.vector(4), loc.vector(8), dim=0)
    assert by["applied_pair"]["cosine"] == pytest.approx(float(want), abs=1e-6)


# ----------------------------------------------------------------------------- verdicts


def _plane(variant, lang, score, value, diff=None, p=None, n=100, above=True):
    row = {"variant": variant, "language": lang, "score": score, "value": value, "ci_low": value - 0.05,
           "ci_high": value + 0.05, "n": n, "chance": 0.5, "above_chance": above}
    if diff is not None:
        row.update(diff_vs_base=diff, p_vs_base=p)
    return row


def _results(loc_diff, loc_p, tr_diff, tr_p, langs=("ko", "es"), variants=("base", "base+surgical")):
    plane = []
    for lang in langs:
        plane += [_plane("base", lang, "localization_score", 0.5), _plane("base", lang, "transfer_score", 0.6),
                  _plane(variants[1], lang, "localization_score", 0.5 + loc_diff, loc_diff, loc_p),
                  _plane(variants[1], lang, "transfer_score", 0.6 + tr_diff, tr_diff, tr_p)]
    return {"variants": [{"name": v} for v in variants], "config": {"languages": list(langs)}, "plane": plane,
            "metrics": []}


@pytest.mark.parametrize("loc, tr, verdict", [
    ((0.2, 0.001), (-0.01, 0.8), "true"),        # localization up significantly, transfer flat
    ((0.2, 0.001), (-0.15, 0.001), "false"),     # transfer falls significantly
    ((-0.2, 0.001), (0.0, 1.0), "false"),        # localization falls significantly
    ((0.05, 0.4), (0.0, 1.0), "inconclusive"),   # localization up, not significant
])
def test_surgical_verdicts(loc, tr, verdict):
    (d,) = claim_surgical(_results(*loc, *tr))
    assert d["verdict"] == verdict and d["reference"] == "base" and d["paired"]
    assert d["overall"]["language"] == "pooled"  # no "mean" row: languages combined
    assert d["overall"]["localization"]["diff"] == pytest.approx(loc[0])
    assert [r["verdict"] for r in d["languages"]] == [verdict, verdict]


def test_surgical_uses_the_mean_row_and_refuses_unpaired_references():
    res = _results(0.2, 0.001, 0.0, 1.0)
    res["plane"] += [_plane("base", "mean", "localization_score", 0.5),
                     _plane("base+surgical", "mean", "localization_score", 0.52, 0.02, 0.5)]
    (d,) = claim_surgical(res)
    assert d["overall"]["language"] == "mean" and d["verdict"] == "inconclusive"
    res = _results(0.2, 0.001, 0.0, 1.0, variants=("base", "cla+surgical"))
    res["variants"].insert(1, {"name": "cla"})
    res["plane"] += [_plane("cla", lang, s, 0.5, 0.0, 1.0) for lang in ("ko", "es")
                     for s in ("localization_score", "transfer_score")]
    (d,) = claim_surgical(res)
    assert d["reference"] == "cla" and not d["paired"] and d["verdict"] == "inconclusive"
    assert "paired tests vs base only" in d["why"]


def test_stouffer_pools_signed_p_values():
    diff, p, n = stouffer([(0.1, 0.05, 100), (0.1, 0.05, 100)])
    assert diff == pytest.approx(0.1) and n == 200 and p < 0.05
    diff, p, _ = stouffer([(0.1, 0.01, 100), (-0.1, 0.01, 100)])
    assert diff == pytest.approx(0.0) and p == pytest.approx(1.0)


def test_layers_claim_is_not_measured_with_fixed_layers():
    selection = {"en_transfer_ko": {"layer": 6, "alpha": 1.0, "kind": "en", "language": "ko", "selected": "fixed"},
                 "loc_ko": {"layer": 12, "alpha": 2.0, "kind": "loc", "language": "ko"},
                 "en_transfer_es": {"layer": 12, "alpha": 1.0}, "loc_es": {"layer": 6, "alpha": 1.0}}
    b = claim_layers(selection, 18)
    assert b["verdict"] == "not measured" and "depth_order" in b["why"] and b["num_layers"] == 18
    by = {r["language"]: r for r in b["languages"]}
    assert (by["ko"]["en_layer"], by["ko"]["loc_layer"], by["ko"]["loc_alpha"]) == (6, 12, 2.0)
    assert by["ko"]["en_below_loc"] and not by["es"]["en_below_loc"]
    empty = claim_layers({}, 18)
    assert empty["verdict"] == "not measured" and empty["languages"] == [] and "loaded" in empty["why"]
    text = render_claims({"level": 0.05, "layers": b, "orthogonality": claim_orthogonality(None), "surgical": [],
                          "erasure": []})
    assert "| ko | 6 (1.00) | 12 (2.00) |" in text and "**not measured**" in text


def test_orthogonality_verdicts():
    assert claim_orthogonality(None)["verdict"] == "not measured"
    row = {"random_abs_cos_q95": 0.08}
    analysis = {"selected_cosines": [
        {"language": "ko", "at": "applied_pair", "cosine": 0.02, "abs_cosine": 0.02, "above_random": False, **row},
        {"language": "es", "at": "applied_pair", "cosine": -0.3, "abs_cosine": 0.3, "above_random": True, **row},
        {"language": "id", "at": "applied_pair", "cosine": 0.4, "abs_cosine": 0.4, "above_random": True, **row}],
        "vector_cosines": [{"cosine": 0.3, "above_random": True}, {"cosine": -0.01, "above_random": False}]}
    c = claim_orthogonality(analysis)
    assert [r["verdict"] for r in c["languages"]] == ["false", "false", "true"]  # es, id, ko
    assert c["verdict"] == "false" and c["layers_above_random"] == 1 and c["random_q95"] == 0.08


def test_erasure_verdict_from_us_rate():
    def metric(variant, lang, value, diff=None, p=None):
        r = {"variant": variant, "task": "locale_probe", "language": lang, "cue": "implicit", "metric": "us_rate",
             "value": value, "n": 50, "chance": 0.5, "above_chance": value > 0.6}
        if diff is not None:
            r.update(diff_vs_base=diff, p_vs_base=p, comparison={"diff_ci_low": diff - 0.1, "diff_ci_high": diff + 0.1})
        return r

    res = {"variants": [{"name": "base"}, {"name": "base+en"}], "config": {"languages": ["ko", "es"]}, "plane": [],
           "metrics": [metric("base", "ko", 0.3), metric("base+en", "ko", 0.5, 0.2, 0.001),
                       metric("base", "es", 0.4), metric("base+en", "es", 0.55, 0.15, 0.01)]}
    (e,) = claim_erasure(res)
    assert e["verdict"] == "true" and e["overall"]["diff"] == pytest.approx(0.175)
    assert e["cells"][0]["diff_ci_low"] == pytest.approx(0.05)
    for r in res["metrics"]:
        if "diff_vs_base" in r:
            r["p_vs_base"] = 0.9
    assert claim_erasure(res)[0]["verdict"] == "inconclusive"


def test_measure_and_render_from_stage_files(tmp_path):
    steering, analysis = tmp_path / "steering", tmp_path / "analysis"
    steering.mkdir()
    analysis.mkdir()
    SteeringResult(computed=True, source=None, protocol="fixed", primary_run="base", intervention=True,
                   grid_rows=None, selection={
                       name: VectorSelection(layer=layer, alpha=1.0, positions="last", steered=True, kind=kind,
                                             language="ko", selected="fixed in the recipe")
                       for name, layer, kind in (("en_transfer_ko", 6, "en"), ("loc_ko", 12, "loc"))}).save(steering)
    (analysis / "analysis.json").write_text(json.dumps({"selected_cosines": [], "note": "no vectors"}))
    claims = measure_claims(_results(0.2, 0.001, 0.0, 1.0, langs=("ko",)), steering, analysis, 18)
    assert claims["level"] == 0.05 and "alpha" not in claims  # alpha is the steering strength, not the level
    assert claims["layers"]["verdict"] == "not measured" and claims["orthogonality"]["verdict"] == "not measured"
    text = render_claims(claims)
    assert "## Claims as measured" in text and "(b) EN steering best at middle depth, LOC deeper: **not measured**" in text
    assert "base+surgical raises localization without losing transfer (vs base): **true**" in text
    assert "no vectors" in text and "significance level 0.05" in text
    loaded = tmp_path / "loaded"
    loaded.mkdir()
    SteeringResult.loaded("./dir").save(loaded)
    assert measure_claims(_results(0.2, 0.001, 0.0, 1.0), loaded, None)["layers"]["languages"] == []


def test_vector_cosine_rows_skip_unsteered_selections():
    """A cross-validated selection may keep a vector unsteered (layer null): no applied direction, no pair."""
    from recipes.analysis_stage import vector_cosine_rows

    en = _vectors("en_transfer_ko", layers=(4, 8), seed=1)
    loc = _vectors("loc_ko", layers=(4, 8), seed=2)
    selection = {"en_transfer_ko": {"layer": None, "alpha": 0.0, "steered": False},
                 "loc_ko": {"layer": 8, "alpha": 1.0, "steered": True}}
    per_layer, selected = vector_cosine_rows({"en_transfer_ko": en, "loc_ko": loc}, selection)
    assert len(per_layer) == 2 and [r["at"] for r in selected] == ["loc_layer"]
    assert vector_cosine_rows({"en_transfer_ko": en, "loc_ko": loc}, {})[1] == []


def test_fixed_recipe_with_analysis_end_to_end_on_a_tiny_model(tmp_path, capsys):
    """Fixed layers and alphas on a tiny llama: vectors computed at the recipe's layer and alpha, the analysis
    stage's cosines at those layers, and the report's claims (layers: not measured)."""
    from interventions.config import InterventionConfig
    from tiny_models import flores_bpe_tokenizer, save_tiny_model

    model_dir = save_tiny_model("llama", flores_bpe_tokenizer(vocab_size=512, sentences=60), tmp_path / "tiny")
    data = {**ANALYSIS, "model": {"name": str(model_dir)},
            "steering": {"en": {"layer": 1, "alpha": 2.0, "n": 4}, "loc": {"layer": 2, "alpha": 1.5, "n": 4,
                                                                          "data": "locale_probe"}},
            "evaluate": {**ANALYSIS["evaluate"], "languages": ["ko", "es"], "n": 2, "bootstrap": 20},
            "analysis": {"enabled": True, "n": 4, "layers": [1, 3]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    assert main([str(path), "--out", str(out)]) == 0, capsys.readouterr().err[-3000:]
    plan = make_plan(load_recipe(path), out)
    steering, analysis, report = (plan.stages[s].directory for s in ("steering", "analysis", "report"))
    selection = json.loads((steering / "steering.json").read_text())["selection"]
    assert {k: (v["layer"], v["alpha"], v["steered"]) for k, v in selection.items()} == {
        "en_transfer_ko": (1, 2.0, True), "en_transfer_es": (1, 2.0, True), "loc_ko": (2, 1.5, True),
        "loc_es": (2, 1.5, True)}
    config = InterventionConfig.from_pretrained(steering / "intervention")
    assert {(iv.name, iv.layer, iv.coefficient) for iv in config.interventions} == {
        ("en_transfer_ko", 1, 2.0), ("en_transfer_es", 1, 2.0), ("loc_ko", 2, 1.5), ("loc_es", 2, 1.5)}
    assert {iv.source["role"] for iv in config.interventions} == {"en_transfer", "loc_cultural"}
    summary = json.loads((analysis / "analysis.json").read_text())
    assert summary["vectors_model"] == "base" and len(summary["vector_cosines"]) == 2 * 4
    assert {(r["language"], r["at"]) for r in summary["selected_cosines"]} == {
        (lang, at) for lang in ("ko", "es") for at in ("en_layer", "loc_layer", "applied_pair")}
    claims = json.loads((report / "claims.json").read_text())
    assert claims["layers"]["verdict"] == "not measured"
    # the report judges orthogonality on the analysis stage's own cosines
    assert claims["orthogonality"] == json.loads(json.dumps(claim_orthogonality(summary)))
    assert claims["orthogonality"]["verdict"] != "not measured"
    assert [d["variant"] for d in claims["surgical"]] == ["base+surgical"]
    text = (report / "report.md").read_text()
    assert "## Claims as measured" in text and "| ko | 1 (2.00) | 2 (1.50) |" in text


@pytest.mark.gemma
def test_analysis_stage_on_gemma(gemma, tmp_path):
    """Steering (fixed layers and alphas) saves all-layer vectors; the analysis stage writes its CSVs and cosines."""
    from recipes.stages import RunContext, run_analysis, run_steering

    recipe = load_recipe(_recipe(tmp_path), ["evaluate.languages=[ko]", "steering.en.alpha=4", "steering.loc.alpha=4",
                                             "steering.en.n=4", "steering.loc.n=4", "analysis.n=4",
                                             "analysis.layers=[0, 6, 12]"])
    plan = make_plan(recipe, tmp_path / "run")
    ctx = RunContext(recipe, plan)
    ctx._model, ctx._tokenizer = gemma
    for name, fn in (("steering", run_steering), ("analysis", run_analysis)):
        with StageWriter(plan.stages[name]) as out:
            fn(ctx, plan.stages[name], out)
    steering, analysis = plan.stages["steering"].directory, plan.stages["analysis"].directory
    assert sorted(p.name for p in (steering / "vectors").iterdir()) == [
        "en_transfer_ko.json", "en_transfer_ko.safetensors", "loc_ko.json", "loc_ko.safetensors"]
    for name in ("language_separation.csv", "retrieval.csv", "pca_grid.png", "vector_cosines.csv",
                 "vector_cosines.png", "selected_cosines.csv", "analysis.json"):
        assert (analysis / name).is_file(), name
    summary = json.loads((analysis / "analysis.json").read_text())
    assert len(summary["vector_cosines"]) == 18 and summary["note"] is None
    assert {r["at"] for r in summary["selected_cosines"]} == {"en_layer", "loc_layer", "applied_pair"}
    assert len(summary["separation"]) == 18 and {r["language"] for r in summary["retrieval"]} == {"ko"}
