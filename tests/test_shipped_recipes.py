"""Every shipped recipe runs end to end on CPU, on a tiny random model of its model's architecture.

Each file in ``recipes/configs/`` (found with ``recipes.validate.shipped_recipes()``, so a new shipped recipe is
covered without editing this file) is run through ``recipes.run.main`` with ``model.name`` swapped for a tiny
random model of the same architecture (gemma3 / qwen2 / llama, built in code and saved with ``save_pretrained``)
over a tokenizer of the same family: the real gemma-3 tokenizer (from the converted cache when present, else
read from the bundled GGUF's metadata; no weights are loaded), the real Qwen2.5 tokenizer (``tests/data/qwen2.5-tokenizer``), and for Llama a byte-level BPE trained
here on FLORES sentences (Llama-3's tokenizer is not bundled). Everything else in the recipe stays as shipped
(dtype, device / device_map, tasks, languages, variants, methods) except sizes: layer grids are remapped to the
tiny depth, the strength grid cut to two values, and n / steps / folds made tiny. Every stage the recipe enables
runs, and ``publish`` (switched on for every recipe whose publish section lists what it would push) runs up to the
upload calls, which are recorded instead of sent (the uploaded folders must hold no symlink).

The three GPU recipes keep ``dtype: bfloat16`` and ``device_map: auto``, so bf16 + accelerate's device map are
exercised here on CPU; ``test_bf16_device_map_auto_load_steer_score`` checks the same path piece by piece.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from recipes import schema
from recipes.crossfit_stage import uses_crossfit
from recipes.run import main, prepare
from recipes.validate import shipped_recipes
from tiny_models import flores_bpe_tokenizer, gemma_tokenizer, qwen_tokenizer, save_tiny_model, tiny_model_for

LAYERS = 4  # tiny_models.LAYERS: valid layers 0..3

SHIPPED = shipped_recipes()

FAMILIES = {  # substring of the recipe's model.name (lower case) -> (tiny architecture, tokenizer family)
    "gemma": ("gemma3", "gemma"),
    "qwen": ("qwen2", "qwen"),
    "llama": ("llama", "llama"),
}


def read_recipe_data(path: Path) -> dict:
    """The recipe file as written (before defaults and overrides)."""
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def family(model_name: str) -> tuple[str, str]:
    for key, value in FAMILIES.items():
        if key in model_name.lower():
            return value
    raise AssertionError(f"no tiny stand-in for {model_name!r}: add its family to FAMILIES in {__file__}")


@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory):
    """Lazily saved tiny model folders, one per family, shared by the recipes of that family."""
    made: dict[str, Path] = {}
    tokenizers = {"gemma": gemma_tokenizer, "qwen": qwen_tokenizer, "llama": flores_bpe_tokenizer}

    def get(model_name: str) -> Path:
        arch, tok_family = family(model_name)
        if arch not in made:
            directory = tmp_path_factory.mktemp(f"tiny-{arch}")
            save_tiny_model(arch, tokenizers[tok_family](), directory)
            made[arch] = directory
        return made[arch]

    return get


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def tiny_overrides(path: Path, model_dir: Path) -> list[str]:
    """``--set`` values that swap the model and shrink every size of the recipe at ``path``.

    Keys are set only where the schema has them (read from ``recipes.schema``), and a vector's ``n`` only where
    the recipe sets it, so the overrides follow the schema instead of adding fields the recipe left out.
    """
    data = read_recipe_data(path)
    sets = [f"model.name={model_dir}", "evaluate.n=2", "evaluate.bootstrap=20"]
    if "n_localization" in _fields(schema.EvaluateConfig):
        sets.append("evaluate.n_localization=2")
    alignment = data.get("alignment") or {}
    if alignment.get("method", "none") != "none":
        sets += ["alignment.max_steps=2", "alignment.n=8", "alignment.batch_size=2", "alignment.lora_r=4",
                 "alignment.lora_alpha=8"]
    steering = data.get("steering") or {}
    steering_fields = _fields(schema.SteeringConfig)
    computes = not steering.get("load") and any((steering.get(w) or {}).get("enabled", True) for w in ("en", "loc"))
    if computes:
        sets.append("steering.layers=[1, 2]")
        for grid in ("alphas", "coefficients"):  # the strength grid, two values of the recipe's (or default's)
            if grid in steering_fields:
                values = steering.get(grid) or getattr(schema.SteeringConfig(), grid)
                sets.append(f"steering.{grid}={list(values[:2])}")
        if "n_select" in steering_fields:
            sets.append("steering.n_select=2")
        if "selection" in steering_fields:
            sets += ["steering.selection.folds=2", "steering.selection.neutral_n=2"]
        for which, fixed in (("en", 1), ("loc", 2)):
            vec = steering.get(which) or {}
            if vec.get("enabled", True):
                if "n" in vec:
                    sets.append(f"steering.{which}.n=4")
                if isinstance(vec.get("layer"), int):
                    sets.append(f"steering.{which}.layer={fixed}")
    analysis = data.get("analysis") or {}
    if analysis.get("enabled"):
        sets.append("analysis.n=4")
        if analysis.get("layers"):
            sets.append("analysis.layers=[1, 3]")
    experts = data.get("experts") or {}
    if experts.get("enabled"):
        # k=50 cannot be matched by layer-matched controls in the tiny model's 32-unit layers
        sets += ["experts.n=8", "experts.bins=16", "experts.k=2", "experts.ks=[2, 3]", "experts.side_effects=false"]
        if experts.get("retrieval_n"):
            sets.append("experts.retrieval_n=8")
    publish = data.get("publish") or {}
    if "push" in publish:  # the recipe says what it would publish: run publish up to the upload calls
        sets += ["publish.enabled=true", f"publish.repo_id=tiny-test/{path.stem}"]
    return sets


@pytest.fixture
def hub_calls(monkeypatch):
    """Record HfApi.create_repo / upload_folder / upload_file instead of sending anything."""
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    def record(name):
        def call(self, *args, **kwargs):
            if name == "upload_folder":  # check the folder now, as the Hub client would read it
                folder = Path(kwargs["folder_path"])
                links = [p for p in folder.rglob("*") if p.is_symlink()]
                files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                kwargs = {**kwargs, "symlinks": links, "files": files}
            calls.append((name, kwargs))
            return f"https://huggingface.co/{kwargs.get('repo_id', args[0] if args else '')}/commit/0"
        return call

    for name in ("create_repo", "upload_folder", "upload_file"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, record(name))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    return calls


EXPECTED_FILES = {  # files each stage must leave in its committed directory (beside stage.json)
    "model": ["model.json"],
    "alignment": ["adapter.json", "adapter/adapter_config.json"],
    "steering": ["steering.json"],
    "analysis": ["analysis.json", "language_separation.csv", "retrieval.csv"],
    "experts": [],
    "evaluate": ["results.json"],
    "report": [],
    "publish": ["publish.json"],
}
PROTOCOL_FILES = {  # per-item records: the plane's predictions, or the cross-fitted protocol's out-of-fold outcomes
    False: {"steering": ["intervention/intervention_config.json"], "evaluate": ["predictions.jsonl"]},
    True: {"steering": ["outcomes.jsonl", "crossfit.json"]},
}
REPORT_FILES = {"md": "report.md", "json": "results.json", "csv": "results.csv"}


def _jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text, f"{path}: non-finite numbers"
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])  # 10-40 s each on 2 shared cores
def test_shipped_recipe_runs_end_to_end_on_a_tiny_model(path, tiny_model_dirs, hub_calls, tmp_path, capsys):
    model_name = read_recipe_data(path)["model"]["name"]
    sets = tiny_overrides(path, tiny_model_dirs(model_name))
    argv = [str(path), "--out", str(tmp_path / "run"), *[arg for s in sets for arg in ("--set", s)]]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, f"{path.name}: exit {rc}\n{err[-3000:]}"

    _, plan = prepare(argv)  # the same plan, read back from the disk: every active stage committed
    recipe = plan.recipe
    crossfit = uses_crossfit(recipe)
    active = [st for st in plan if st.active]
    assert {"model", "evaluate"} <= {st.name for st in active}
    for stage in active:
        assert stage.complete, f"{path.name}: stage {stage.name} not committed in {stage.directory}"
        expected = EXPECTED_FILES[stage.name] + PROTOCOL_FILES[crossfit].get(stage.name, [])
        if stage.name == "steering" and recipe.steering.load is not None:
            expected = ["steering.json", "intervention/intervention_config.json"]
        for name in expected:
            assert (stage.directory / name).is_file(), f"{path.name}: {stage.name} wrote no {name}"
    info = json.loads((plan.stages["model"].directory / "model.json").read_text())
    assert info["num_hidden_layers"] == LAYERS and info["model_type"].startswith(family(model_name)[0])
    assert (plan.run_dir / "recipe.yaml").is_file()

    # every evaluated language and variant has rows (nothing silently dropped), and per-item records back them
    results = json.loads((plan.stages["evaluate"].directory / "results.json").read_text())
    assert results["plane"], f"{path.name}: no plane rows"
    rows = results["plane"] if crossfit else results["metrics"]
    for language in recipe.evaluate.languages:
        assert any(r.get("language") == language for r in rows), f"{path.name}: no rows for {language}"
    for variant in recipe.evaluate.variants:
        assert any(r.get("variant") == variant for r in rows), f"{path.name}: no rows for {variant}"
    if crossfit:
        outcomes = _jsonl(plan.stages["steering"].directory / "outcomes.jsonl")
        assert {o["language"] for o in outcomes} == {x for x in recipe.evaluate.languages if x != "en"}
    else:
        assert _jsonl(plan.stages["evaluate"].directory / "predictions.jsonl")

    if recipe.report.enabled:
        report_dir = plan.stages["report"].directory
        for fmt in recipe.report.formats:
            assert (report_dir / REPORT_FILES[fmt]).is_file(), f"{path.name}: report wrote no {REPORT_FILES[fmt]}"
    if plan.stages["steering"].active and recipe.steering.load is None:
        selection = json.loads((plan.stages["steering"].directory / "steering.json").read_text())["selection"]
        languages = [x for x in recipe.evaluate.languages if x != "en"]
        kinds = [w for w in ("en", "loc") if getattr(recipe.steering, w).enabled]
        assert len(selection) == len(languages) * len(kinds)
        for name, s in selection.items():  # a vector that gains nothing is kept unsteered: layer None
            assert (s["layer"] is None and not s.get("steered", True)) or 0 <= s["layer"] < LAYERS, (name, s)
    if recipe.experts.enabled:
        experts_dir = plan.stages["experts"].directory
        for language in plan.stages["experts"].config["languages"]:
            pool = recipe.experts.components[0] if recipe.experts.separate_components else ""
            directory = experts_dir / language / pool / f"experts_k{recipe.experts.k}"
            assert (directory / "intervention_config.json").is_file(), f"{path.name}: no experts for {language}"

    if recipe.publish.enabled:
        names = [name for name, _ in hub_calls]
        assert names[0] == "create_repo" and names.count("upload_folder") == len(
            [x for x in recipe.publish.push if x != "report"])
        assert ("upload_file" in names) == ("report" in recipe.publish.push)
        for name, kwargs in hub_calls:
            if name == "upload_folder":
                assert kwargs["symlinks"] == [], f"{path.name}: symlinks in the uploaded folder {kwargs['symlinks']}"
                assert kwargs["files"], f"{path.name}: empty folder uploaded"
                assert kwargs["repo_id"] == recipe.publish.repo_id
        assert (plan.stages["publish"].directory / "publish.json").is_file()
    else:
        assert hub_calls == []


def test_gpu_recipes_keep_bf16_and_device_map_auto():
    """The GPU recipes exercise bf16 + device_map="auto" in the end-to-end test above (dtype is not swapped)."""
    gpu = [p for p in SHIPPED if read_recipe_data(p)["model"].get("device_map") == "auto"]
    assert {p.stem for p in gpu} >= {"gemma-3-12b-it", "qwen2.5-7b-instruct", "llama-3.1-8b-instruct"}
    for p in gpu:
        assert read_recipe_data(p)["model"]["dtype"] == "bfloat16"


def test_gpu_recipes_only_list_languages_their_tasks_serve():
    """Every evaluate.tasks x evaluate.languages cell of a shipped recipe has items (no dropped rows)."""
    from evaluate.tasks import get_task

    for path in SHIPPED:
        evaluate = read_recipe_data(path).get("evaluate") or {}
        for task in evaluate.get("tasks", []):
            served = set(get_task(task).languages)
            missing = [x for x in evaluate.get("languages", []) if x not in served]
            assert not missing, f"{path.name}: {task} has no items for {missing}"


def test_bf16_device_map_auto_load_steer_score(tmp_path, monkeypatch):
    """load_model(dtype=bfloat16, device_map="auto") of a saved tiny model, steered and scored: finite scores."""
    from evaluate.scoring import score_items
    from evaluate.tasks import get_task
    from interventions.config import InterventionConfig
    from interventions.models import load_model, load_tokenizer
    from interventions.steer import steer
    from evaluate.contrasts import en_transfer_vectors
    from interventions.vectors import steering_vector

    import transformers

    save_tiny_model("llama", flores_bpe_tokenizer(), tmp_path / "tiny")
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    model = load_model(str(tmp_path / "tiny"), dtype="bfloat16", device_map="auto")
    tokenizer = load_tokenizer(str(tmp_path / "tiny"))
    assert seen and seen[0].get("device_map") == "auto", "device_map='auto' did not reach transformers"
    # on a machine without an accelerator, accelerate's "auto" map puts every weight on the CPU
    assert model.dtype == torch.bfloat16 and {p.device.type for p in model.parameters()} == {"cpu"}

    found = en_transfer_vectors(model, tokenizer, "ko", n=4, progress=False)
    config = InterventionConfig.for_model(model, [steering_vector(found, 2, coefficient=4.0)])
    items = get_task("fact_probe").items("ko", split="test")[:3]
    base = score_items(model, tokenizer, items, batch_size=2, progress=False)
    with steer(model, config):
        steered = score_items(model, tokenizer, items, batch_size=2, progress=False)
    for scores in (base, steered):
        assert all(math.isfinite(v) for s in scores for v in s.logprob), scores
    assert [s.logprob for s in base] != [s.logprob for s in steered]  # the vector did something
    tiny_float = tiny_model_for("llama", tokenizer)  # same weights in float32: bf16 scores close to them
    tiny_float.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    exact = score_items(tiny_float, tokenizer, items, batch_size=2, progress=False)
    for a, b in zip(base, exact):
        assert max(abs(x - y) for x, y in zip(a.logprob, b.logprob)) < 0.5
