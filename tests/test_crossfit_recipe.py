"""An ``auto`` recipe end to end (the cross-fitted protocol, recipes.crossfit_stage) on a tiny saved model.

A tiny random llama over a byte-level BPE trained on FLORES (``tests/tiny_models.py``), the bundled
global_mmlu_cloze and locale_probe tasks in ko and es, 2 folds, a 2 x 2 grid: the run exits 0 and writes the
out-of-fold plane, the pre-registered tests, the report and an intervention directory that holds only the
vectors whose modal choice was steered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from recipes.plan import make_plan
from recipes.run import main
from recipes.validate import load_recipe
from tiny_models import flores_bpe_tokenizer, save_tiny_model

LANGUAGES = ["ko", "es"]
VARIANTS = ["base", "base+en", "base+loc", "base+surgical", "base+random_en", "base+random_loc",
            "base+surgical_all_positions"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tokenizer = flores_bpe_tokenizer(vocab_size=512, sentences=60)
    return save_tiny_model("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama-cf"), seed=5)


def auto_recipe(model_dir: Path) -> dict:
    return {"name": "tiny-crossfit", "seed": 0, "model": {"name": str(model_dir)}, "alignment": {"method": "none"},
            "steering": {"en": {"layer": "auto", "alpha": "auto", "n": 4},
                         "loc": {"layer": "auto", "alpha": "auto", "data": ["locale_probe"]},
                         "layers": [1, 2], "alphas": [1.0, 2.0],
                         "selection": {"folds": 2, "tolerance": 0.0, "neutral_n": 2}},
            "evaluate": {"tasks": ["global_mmlu_cloze", "locale_probe"], "languages": LANGUAGES,
                         "variants": VARIANTS, "n": 2, "n_localization": 3, "bootstrap": 20, "batch_size": 8},
            "report": {"formats": ["md", "json", "csv"], "plots": True}}


def _refuse_constant(name):
    raise AssertionError(f"bare {name} in a JSON file")


def test_auto_recipe_end_to_end(model_dir, tmp_path, capsys):
    data = auto_recipe(model_dir)
    data["analysis"] = {"enabled": True, "n": 4, "layers": [1, 2]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    rc = main([str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    plan = make_plan(load_recipe(path), out)
    steering, evaluated, reported = (plan.stages[s].directory for s in ("steering", "evaluate", "report"))
    assert all(plan.stages[s].complete for s in ("model", "steering", "evaluate", "report"))
    for name in ("outcomes.jsonl", "crossfit.json", "grid.json", "grid.csv", "cosines.json", "steering.json"):
        assert (steering / name).stat().st_size > 0, name
    assert not (steering / "sweep.json").exists()

    # outcomes: finite margins, every item once per run x out-of-fold variant
    outcomes = [json.loads(line, parse_constant=_refuse_constant)
                for line in (steering / "outcomes.jsonl").read_text().splitlines()]
    assert outcomes and all(math.isfinite(o["margin"]) for o in outcomes)
    assert {o["language"] for o in outcomes} == set(LANGUAGES) and {o["run"] for o in outcomes} == {"base"}
    keys = [(o["run"], o["variant"], o["item_id"]) for o in outcomes]
    assert len(keys) == len(set(keys))
    ids = {o["item_id"] for o in outcomes}
    for variant in {o["variant"] for o in outcomes}:
        assert {o["item_id"] for o in outcomes if o["variant"] == variant} == ids, variant

    # the plane and the pre-registered tests
    results = json.loads((evaluated / "results.json").read_text(), parse_constant=_refuse_constant)
    assert results["protocol"] == "crossfit" and results["languages"] == LANGUAGES
    plane = results["plane"]
    assert plane and {r["language"] for r in plane} == {*LANGUAGES, "pooled"}
    assert {r["variant"] for r in plane} == set(VARIANTS)
    assert {r["axis"] for r in plane} == {"transfer", "localization"}
    for r in plane:
        if r["variant"] != "base":
            assert "margin_diff" in r and "p_margin_diff" in r, r
    tests = {t["test"]: t for t in results["tests"]}
    assert {"en_beats_control", "loc_beats_control", "surgical_localization", "surgical_transfer", "erasure",
            "depth_order", "not_orthogonal"} <= set(tests)
    for t in tests.values():
        assert t["verdict"] and "p_holm" in t, t
        if t["p"] is not None and t["p_holm"] is not None:
            assert t["p_holm"] >= t["p"] - 1e-12

    # the report
    for name in ("report.md", "plane.png", "results.json", "results.csv", "tests.csv"):
        assert (reported / name).stat().st_size > 0, name
    text = (reported / "report.md").read_text()
    assert "Pre-registered tests" in text and "out of fold" in text
    assert not (reported / "claims.json").exists()  # the fixed path's claims are not computed here

    # the artifact: only vectors whose modal choice was steered, each with its role and language
    info = json.loads((steering / "crossfit.json").read_text())
    assert info["settings"]["k"] == 2 and info["primary_run"] == "base"
    selection = json.loads((steering / "steering.json").read_text())["selection"]
    assert set(selection) == {f"{p}_{lang}" for p in ("en_transfer", "loc") for lang in LANGUAGES}
    steered = set()
    for lang in LANGUAGES:
        for which, name in (("en", f"en_transfer_{lang}"), ("loc", f"loc_{lang}")):
            modal = info["runs"]["base"][lang]["modal"][which]
            assert {k: selection[name][k] for k in ("layer", "alpha", "steered")} == {
                k: modal[k] for k in ("layer", "alpha", "steered")}
            if modal["steered"]:
                steered.add(name)
    from interventions.config import InterventionConfig

    config = InterventionConfig.from_pretrained(steering / "intervention")  # always written (empty: nothing gained)
    assert {iv.name for iv in config.interventions} == steered
    for iv in config.interventions:
        lang = iv.name.rsplit("_", 1)[-1]
        which = "en" if iv.name.startswith("en_transfer") else "loc"
        assert iv.source["role"] == ("en_transfer" if which == "en" else "loc_cultural")
        assert iv.source["language"] == lang
        modal = info["runs"]["base"][lang]["modal"][which]
        assert iv.layer == modal["layer"] and iv.coefficient == pytest.approx(modal["alpha"])

    # the analysis stage reads the protocol's vectors and skips the unsteered selections
    summary = json.loads((plan.stages["analysis"].directory / "analysis.json").read_text())
    assert summary["vectors_model"] == "base" and {r["language"] for r in summary["vector_cosines"]} == set(LANGUAGES)
    applied = {(r["language"], r["at"]) for r in summary["selected_cosines"]}
    for lang in LANGUAGES:
        for which, at in (("en", "en_layer"), ("loc", "loc_layer")):
            assert ((lang, at) in applied) == info["runs"]["base"][lang]["modal"][which]["steered"]


def test_auto_recipe_with_an_adapter_steers_the_aligned_model(model_dir, tmp_path, capsys):
    """cla+... variants next to the plain base: the base model is scored unsteered once, the aligned model goes
    through the protocol, and the family gains the CLA-vs-base transfer test."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiny_models import tiny_lora

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tiny_lora(base, "llama").save_pretrained(adapter)
    data = auto_recipe(model_dir)
    data["alignment"] = {"method": "none", "adapter": str(adapter)}
    data["evaluate"]["variants"] = ["base", "cla", "cla+en", "cla+loc", "cla+surgical", "cla+random_en",
                                    "cla+random_loc"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    rc = main([str(path), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err[-3000:]
    plan = make_plan(load_recipe(path), out)
    steering, evaluated = plan.stages["steering"].directory, plan.stages["evaluate"].directory
    outcomes = [json.loads(line, parse_constant=_refuse_constant)
                for line in (steering / "outcomes.jsonl").read_text().splitlines()]
    assert {o["variant"] for o in outcomes if o["run"] == "base"} == {"base"}  # the base model: unsteered only
    assert {"en", "loc", "surgical", "random_en", "random_loc"} <= {o["variant"] for o in outcomes if o["run"] == "cla"}
    base_ids = {o["item_id"] for o in outcomes if o["run"] == "base"}
    assert base_ids == {o["item_id"] for o in outcomes if o["run"] == "cla" and o["variant"] == "base"}
    info = json.loads((steering / "crossfit.json").read_text())
    assert info["primary_run"] == "cla" and set(info["runs"]) == {"cla"}
    results = json.loads((evaluated / "results.json").read_text(), parse_constant=_refuse_constant)
    tests = {t["test"]: t for t in results["tests"]}
    assert tests["cla_transfer"]["run"] == "cla" and "p_holm" in tests["cla_transfer"]
    assert all(t["run"] == "cla" for name, t in tests.items())
    assert {r["variant"] for r in results["plane"]} == set(data["evaluate"]["variants"])
    from interventions.config import InterventionConfig

    config = InterventionConfig.from_pretrained(steering / "intervention")
    steered = {name for name, s in json.loads((steering / "steering.json").read_text())["selection"].items()
               if s["steered"]}
    assert {iv.name for iv in config.interventions} == steered


def test_auto_recipe_with_only_unsteered_variants_evaluates_the_plain_models(model_dir, tmp_path):
    data = auto_recipe(model_dir)
    data["evaluate"]["variants"] = ["base"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    assert main([str(path), "--out", str(out)]) == 0
    plan = make_plan(load_recipe(path), out)
    assert not plan.stages["steering"].active
    results = json.loads((plan.stages["evaluate"].directory / "results.json").read_text())
    assert {r["variant"] for r in results["plane"]} == {"base"}
