"""The recipe's analysis stage, saved all-layer vectors, and the "Claims as measured" verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from recipes.claims import (claim_erasure, claim_layers, claim_orthogonality, claim_surgical, measure_claims,
                            render_claims, stouffer)
from recipes.plan import StageWriter, make_plan
from recipes.run import main
from recipes.validate import load_recipe

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "recipes" / "configs" / "claims.yaml"


def _recipe(tmp_path, **analysis) -> Path:
    data = yaml.safe_load(CLAIMS.read_text())
    data["analysis"] = {**data["analysis"], **analysis}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- schema + plan


def test_claims_recipe_dry_run(tmp_path, capsys):
    assert main(["claims.yaml", "--dry-run", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "analysis" in out and "cos(v_EN, v_LOC)" in out
    recipe = load_recipe("claims")
    assert recipe.alignment.method == "none" and recipe.analysis.enabled
    assert recipe.evaluate.variants == ["base", "base+en", "base+loc", "base+surgical"]
    assert not (tmp_path / "run").exists()


def test_analysis_section_defaults_off():
    recipe = load_recipe("surgical")
    assert (recipe.analysis.enabled, recipe.analysis.n, recipe.analysis.layers) == (False, 48, None)
    assert not make_plan(recipe, Path("runs/x")).stages["analysis"].active


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
    def hashes(*overrides):
        return {st.name: st.hash for st in make_plan(load_recipe("claims", list(overrides)), Path("runs/x"))}

    base = hashes()
    for override in ("analysis.n=16", "analysis.layers=[3, 9]"):
        changed = hashes(override)
        assert changed["analysis"] != base["analysis"] and changed["report"] != base["report"], override
        assert all(changed[s] == base[s] for s in ("model", "steering", "evaluate")), override
    assert hashes("evaluate.languages=[ko]")["analysis"] != base["analysis"]
    assert hashes("steering.n_select=4")["analysis"] != base["analysis"]  # upstream steering hash
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

    stage = make_plan(load_recipe("claims"), tmp_path / "run").stages["steering"]
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


def _sweep(vector, layer_gains, base=0.5, n=40):
    gain = "transfer_gain" if vector.startswith("en") else "localization_gain"
    other = "localization_gain" if gain == "transfer_gain" else "transfer_gain"
    base_key = "base_transfer_score" if gain == "transfer_gain" else "base_localization_score"
    n_key = "n_transfer_items" if gain == "transfer_gain" else "n_localization_items"
    return [{"vector": vector, "layer": l, "coefficient": 4.0, gain: g, other: 0.0, base_key: base, n_key: n}
            for l, g in layer_gains.items()]


def test_layer_verdicts():
    selection = {"en_transfer_ko": {"layer": 6, "kind": "en", "language": "ko"},
                 "loc_ko": {"layer": 12, "kind": "loc", "language": "ko"},
                 "en_transfer_es": {"layer": 12}, "loc_es": {"layer": 6},
                 "en_transfer_id": {"layer": 6}, "loc_id": {"layer": 12}}
    sweep = (_sweep("en_transfer_ko", {6: 0.4, 12: 0.1}) + _sweep("loc_ko", {6: 0.0, 12: 0.4})
             + _sweep("en_transfer_es", {6: 0.1, 12: 0.4}) + _sweep("loc_es", {6: 0.4, 12: 0.0})
             + _sweep("en_transfer_id", {6: 0.05, 12: 0.0}) + _sweep("loc_id", {6: 0.0, 12: 0.4}))
    b = claim_layers(selection, sweep, 18)
    by = {r["language"]: r for r in b["languages"]}
    assert (by["ko"]["verdict"], by["es"]["verdict"], by["id"]["verdict"]) == ("true", "false", "inconclusive")
    assert by["ko"]["en_best_layer"] == 6 and by["ko"]["loc_best_layer"] == 12
    assert not by["id"]["en_above_noise"]  # 0.05 on 40 items is within the noise band
    assert b["verdict"] == "inconclusive" and b["counts"] == {"true": 1, "false": 1, "inconclusive": 1}
    assert b["selected_en_below_loc"] == 2
    assert claim_layers(selection, [], 18)["verdict"] == "not measured"


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
    (steering / "steering.json").write_text(json.dumps({"selection": {"en_transfer_ko": {"layer": 6},
                                                                      "loc_ko": {"layer": 12}}}))
    (steering / "sweep.json").write_text(json.dumps(_sweep("en_transfer_ko", {6: 0.4}) + _sweep("loc_ko", {12: 0.4})))
    (analysis / "analysis.json").write_text(json.dumps({"selected_cosines": [], "note": "no vectors"}))
    claims = measure_claims(_results(0.2, 0.001, 0.0, 1.0, langs=("ko",)), steering, analysis, 18)
    assert claims["layers"]["verdict"] == "true" and claims["orthogonality"]["verdict"] == "not measured"
    text = render_claims(claims)
    assert "## Claims as measured" in text and "(b) EN steering best at middle depth, LOC deeper: **true**" in text
    assert "base+surgical raises localization without losing transfer (vs base): **true**" in text
    assert "no vectors" in text


@pytest.mark.gemma
def test_analysis_stage_on_gemma(gemma, tmp_path):
    """Steering (fixed layers) saves all-layer vectors; the analysis stage writes its CSVs and cosines."""
    from recipes.stages import RunContext, run_analysis, run_steering

    recipe = load_recipe("claims", ["evaluate.languages=[ko]", "steering.en.layer=6", "steering.en.coefficient=4",
                                    "steering.loc.layer=12", "steering.loc.coefficient=4", "steering.en.n=4",
                                    "steering.loc.n=4", "analysis.n=4", "analysis.layers=[0, 6, 12]"])
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
