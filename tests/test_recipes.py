"""Recipe schema, validation catalogue, CLI, plan hashing, atomic stages, publish, distributed merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipes.plan import make_plan
from recipes.run_dir import StageWriter, content_hash, is_complete
from recipes.run import main
from recipes.schema import RecipeError
from recipes.checks import check_layers
from recipes.validate import find_recipe, load_recipe, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]
SURGICAL = ROOT / "recipes" / "configs" / "surgical.yaml"


def base_recipe() -> dict:
    return yaml.safe_load(SURGICAL.read_text())


FIXED = ["steering.en.layer=6", "steering.en.alpha=1", "steering.loc.layer=12", "steering.loc.alpha=1",
         "evaluate.variants=[base, cla, cla+en, cla+loc, cla+surgical]"]
"""Overrides that turn the shipped surgical recipe (cross-validated ``auto``) into the fixed-layer/alpha path."""


def write(tmp_path: Path, data, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def patched(**sections) -> dict:
    """The surgical recipe with dotted keys replaced: patched(**{"steering.loc.layer": 40})."""
    data = base_recipe()
    for dotted, value in sections.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return data


_DELETE = object()

# (id, recipe (dict or YAML text), extra CLI args, the field the message must name)
CATALOGUE = [
    ("unknown-top-key", patched(modle={"name": "gemma-3-270m"}), [], "modle: unknown key; did you mean 'model'"),
    ("unknown-nested-key", patched(**{"steering.loc.layr": 4}), [], "steering.loc.layr: unknown key; did you mean 'layer'"),
    ("wrong-type-n", patched(**{"evaluate.n": "many"}), [], "evaluate.n"),
    ("float-seed", patched(seed=1.5), [], "seed"),
    ("bool-as-int", patched(**{"alignment.max_steps": True}), [], "alignment.max_steps"),
    ("layer-out-of-range", patched(**{"steering.loc.layer": 40}), [],
     'steering.loc.layer: expected an int in [0, 17] or "auto", got 40'),
    ("negative-layer", patched(**{"steering.en.layer": -1}), [], "steering.en.layer"),
    ("grid-out-of-range", patched(**{"steering.layers": [4, 18]}), [], "steering.layers[1]"),
    ("gpu-layer-out-of-range", patched(**{"model.name": "Qwen/Qwen2.5-7B-Instruct", "model.device": _DELETE,
                                          "steering.en.layer": 28}), [], "steering.en.layer: expected an int in [0, 27]"),
    ("unknown-task", patched(**{"evaluate.tasks": ["mmlu"]}), [], "evaluate.tasks[0]"),
    ("unknown-method", patched(**{"alignment.method": "lora"}), [], "alignment.method"),
    ("unknown-language", patched(**{"evaluate.languages": ["ar", "xx"]}), [], "evaluate.languages[1]"),
    ("unknown-variant", patched(**{"evaluate.variants": ["base", "cla+foo"]}), [], "evaluate.variants[1]"),
    ("bad-hub-id", patched(**{"model.name": "org/na me"}), [], "model.name"),
    ("missing-model-dir", patched(**{"model.name": "./no-such-model"}), [], "model.name: no such file"),
    ("missing-adapter", patched(**{"alignment.method": "none", "alignment.adapter": "./no-adapter"}), [],
     "alignment.adapter: no such file"),
    ("adapter-and-method", patched(**{"alignment.adapter": "org/adapter"}), [], "alignment.adapter"),
    ("missing-intervention-dir", patched(**{"steering.load": "./no-intervention"}), [], "steering.load"),
    ("bad-intervention-hub-id", patched(**{"steering.load": "a--b/c"}), [], "steering.load"),
    ("missing-contrast-file", patched(**{"steering.loc.data": "./contrast.jsonl"}), [],
     "steering.loc.data: expected one of 'blend', 'locale_probe', got './contrast.jsonl' (named contrast data only"),
    ("unknown-contrast-name", patched(**{"steering.en.data": "wikipedia"}), [], "steering.en.data"),
    ("loc-data-without-cue-twins", patched(**{"steering.loc.data": ["blend", "fact_probe"]}), [],
     "steering.loc.data[1]: expected one of 'blend', 'locale_probe'"),
    ("unknown-reduce", patched(**{"steering.loc.reduce": "max"}), [], "steering.loc.reduce"),
    ("token-in-file", patched(**{"publish.token": "hf_secret"}), [], "publish.token"),
    ("publish-without-repo", patched(**{"publish.enabled": True}), [], "publish.repo_id"),
    ("bad-publish-repo", patched(**{"publish.repo_id": "a/b/c"}), [], "publish.repo_id"),
    ("yaml-syntax", "model:\n  name: [gemma\nseed: 0\n", [], "line "),
    ("top-level-list", "- model\n- steering\n", [], "recipe: expected a mapping"),
    ("section-scalar", patched(steering=5), [], "steering: expected a mapping"),
    ("cla-without-adapter", patched(**{"alignment.method": "none"}), [], "evaluate.variants[1]"),
    ("surgical-without-loc", patched(**{"steering.loc.enabled": False}), [], "evaluate.variants[3]"),
    ("negative-lr", patched(**{"alignment.learning_rate": -1e-4}), [], "alignment.learning_rate"),
    ("midalign-batch-1", patched(**{"alignment.method": "midalign", "alignment.batch_size": 1}), [],
     "alignment.batch_size"),
    ("nan-alpha", "steering:\n  en:\n    alpha: .nan\n", [], "steering.en.alpha"),
    ("zero-alpha", patched(**{"steering.en.alpha": 0}), [], "steering.en.alpha: alpha 0 is the unsteered model"),
    ("old-coefficient-key", patched(**{"steering.en.coefficient": 4}), [],
     "steering.en.coefficient: unknown key; valid keys: enabled, layer, alpha"),
    ("old-coefficients-grid", patched(**{"steering.coefficients": [1.0, 2.0]}), [], "steering.coefficients: unknown key"),
    ("unknown-dtype", patched(**{"model.dtype": "float8"}), [], "model.dtype"),
    ("yaml-bool-key", "steering:\n  on: base\n", [], "steering.True: keys must be strings"),
    ("empty-tasks", patched(**{"evaluate.tasks": []}), [], "evaluate.tasks"),
    ("duplicate-language", patched(**{"evaluate.languages": ["ar", "ar"]}), [], "evaluate.languages"),
    ("english-alignment", patched(**{"alignment.languages": ["en", "ko"]}), [], "alignment.languages"),
    ("zero-n", patched(**{"evaluate.n": 0}), [], "evaluate.n"),
    ("empty-model-name", patched(**{"model.name": ""}), [], "model.name"),
    ("device-and-map", patched(**{"model.device_map": "auto"}), [], "model.device_map"),
    ("set-unknown-key", base_recipe(), ["--set", "steering.loc.layerr=4"], "steering.loc.layerr"),
    ("set-without-equals", base_recipe(), ["--set", "steering.loc.layer"], "--set"),
    ("set-out-of-range", base_recipe(), ["--set", "steering.en.layer=99"], "steering.en.layer"),
    ("set-into-scalar", base_recipe(), ["--set", "seed.x=1"], "seed.x"),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_exit_2_names_field_writes_nothing(case, tmp_path, capsys, monkeypatch):
    _, recipe, extra, expected = case
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, recipe)
    out = tmp_path / "out"
    rc = main([str(path), "--out", str(out), *extra])  # not a dry run: a valid recipe would start running
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and str(path) in err, err
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_missing_recipe_file_and_out_is_a_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml"), "--dry-run"]) == 2
    assert "recipe: no such recipe file" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["surgical", "--out", str(blocker)]) == 2
    assert "--out: expected a directory" in capsys.readouterr().err
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("recipe", shipped_recipes(), ids=lambda p: p.stem)
def test_shipped_recipes_dry_run(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # offline, an uncached GPU model is refused (tested
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)  # in test_recipe_refusals); online it is deferred
    out = tmp_path / "run"
    assert main([recipe.stem, "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for stage in ("model", "alignment", "steering", "evaluate", "report", "publish"):
        assert f"  {stage} " in text
    assert not out.exists()


def test_shipped_recipes_cover_the_gpu_models():
    names = {load_recipe(p).model.name for p in shipped_recipes()}
    assert {"gemma-3-270m", "google/gemma-3-12b-it", "Qwen/Qwen2.5-7B-Instruct",
            "meta-llama/Llama-3.1-8B-Instruct"} <= names


def test_dry_run_imports_no_torch():
    code = ("import sys; from recipes.run import main; rc = main(['surgical', '--dry-run']); "
            "assert rc == 0; bad = [m for m in ('torch', 'transformers', 'peft', 'alignment') if m in sys.modules]; "
            "bad += [m for m in sys.modules if m.startswith('interventions.') "
            "and m not in ('interventions.fsutil', 'interventions.provenance')]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_overrides_coerce_types():
    r = load_recipe("surgical", ["steering.layers=[6, 14]", "steering.alphas=[1, 2]", "evaluate.n=null",
                                 "publish.private=false", "alignment.learning_rate=1e-4", "model.revision=main",
                                 "evaluate.languages=[ko]", "steering.selection.tolerance=0",
                                 "steering.selection.max_kl=0.5", "evaluate.n_localization=7"])
    assert r.steering.layers == [6, 14] and all(isinstance(x, int) for x in r.steering.layers)
    assert r.steering.alphas == [1.0, 2.0] and all(isinstance(c, float) for c in r.steering.alphas)
    assert r.steering.selection.tolerance == 0.0 and isinstance(r.steering.selection.tolerance, float)
    assert r.steering.selection.max_kl == 0.5 and r.evaluate.n_localization == 7
    assert r.evaluate.n is None and r.publish.private is False
    assert r.alignment.learning_rate == pytest.approx(1e-4) and r.model.revision == "main"
    assert r.evaluate.languages == ["ko"]
    r = load_recipe("surgical", [*FIXED, "steering.loc.layer=14", "steering.en.alpha=2"])
    assert r.steering.loc.layer == 14 and isinstance(r.steering.loc.layer, int)
    assert r.steering.en.alpha == 2.0 and isinstance(r.steering.en.alpha, float)


def test_override_creates_missing_section(tmp_path):
    path = write(tmp_path, {"name": "mini", "evaluate": {"variants": ["base"]}})
    r = load_recipe(path, ["steering.en.layer=3", "steering.en.alpha=1", "steering.loc.enabled=false",
                           "steering.selection.folds=3"])
    assert r.steering.en.layer == 3 and r.name == "mini" and r.steering.selection.folds == 3


def test_bare_name_lookup(tmp_path, monkeypatch):
    assert find_recipe("surgical") == SURGICAL
    assert find_recipe("surgical.yaml") == SURGICAL
    assert find_recipe(str(SURGICAL)) == SURGICAL
    monkeypatch.chdir(tmp_path)
    local = write(tmp_path, {"name": "local", "evaluate": {"variants": ["base"]}}, "surgical.yaml")
    assert find_recipe("surgical.yaml").resolve() == local.resolve()  # an existing path wins
    with pytest.raises(RecipeError, match="shipped: .*surgical"):
        find_recipe("no-such-recipe")


def test_name_defaults_to_file_stem(tmp_path):
    path = write(tmp_path, {"evaluate": {"variants": ["base"]}}, "my-run.yaml")
    assert load_recipe(path).name == "my-run"


def _hashes(recipe) -> dict[str, str]:
    return {st.name: st.hash for st in make_plan(recipe, Path("runs/x"))}


def test_hash_stability(tmp_path):
    base = _hashes(load_recipe("surgical"))
    assert base == _hashes(load_recipe("surgical"))
    shuffled = dict(reversed(list(base_recipe().items())))
    assert _hashes(load_recipe(write(tmp_path, shuffled, "surgical.yaml"))) == base  # key order irrelevant
    code = ("import json; from pathlib import Path; from recipes import load_recipe, make_plan; "
            "print(json.dumps({s.name: s.hash for s in make_plan(load_recipe('surgical'), Path('runs/x'))}))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert json.loads(proc.stdout) == base, proc.stderr
    # auto (cross-validated): the steering stage scores the evaluation items, so evaluate.n reaches it
    changed = _hashes(load_recipe("surgical", ["evaluate.n=12"]))
    assert {k for k in base if base[k] != changed[k]} >= {"steering", "evaluate", "report"}
    assert changed["model"] == base["model"] and changed["alignment"] == base["alignment"]
    for override in ("steering.layers=[6, 12]", "steering.alphas=[1.0]", "steering.selection.folds=3",
                     "steering.selection.tolerance=0.1", "evaluate.n_localization=5"):
        changed = _hashes(load_recipe("surgical", [override]))
        assert {k for k in base if base[k] != changed[k]} >= {"steering", "evaluate", "report"}, override
        assert changed["model"] == base["model"] and changed["alignment"] == base["alignment"], override
    # fixed layer/alpha: evaluate.n only reaches the evaluation
    fixed = _hashes(load_recipe("surgical", FIXED))
    changed = _hashes(load_recipe("surgical", [*FIXED, "evaluate.n=12"]))
    assert {k for k in fixed if fixed[k] != changed[k]} - {"publish"} == {"evaluate", "report"}
    changed = _hashes(load_recipe("surgical", [*FIXED, "steering.loc.layer=14"]))
    assert {k for k in fixed if fixed[k] != changed[k]} >= {"steering", "evaluate", "report"}
    assert changed["model"] == fixed["model"] and changed["alignment"] == fixed["alignment"]
    assert _hashes(load_recipe("surgical", ["seed=1"]))["model"] == base["model"]
    assert _hashes(load_recipe("surgical", ["seed=1"]))["evaluate"] != base["evaluate"]
    assert content_hash({"a": 1, "b": [1.0, "x"]}) == content_hash({"b": [1.0, "x"], "a": 1})


def test_layer_check_deferred_for_unknown_models():
    r = load_recipe("surgical", ["model.name=someorg/uncached-model", "model.device=null", *FIXED,
                                 "steering.loc.layer=40"])  # unknown depth offline: accepted now ...
    with pytest.raises(RecipeError) as err:  # ... and refused at load time with the same message
        check_layers(r, 18)
    assert str(err.value) == 'steering.loc.layer: expected an int in [0, 17] or "auto", got 40'


def test_local_model_dir_config_is_read(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"num_hidden_layers": 4, "hidden_size": 32}))
    with pytest.raises(RecipeError, match=r"steering.en.layer: expected an int in \[0, 3\]"):
        load_recipe("surgical", [f"model.name={model_dir}", "steering.en.layer=4"])


# ----------------------------------------------------------------- execution with fake stages


def _mini(tmp_path) -> Path:
    return write(tmp_path, {"name": "mini", "alignment": {"method": "none"},
                            "steering": {"en": {"layer": 3, "alpha": 2.0}, "loc": {"layer": 9, "alpha": 2.0}},
                            "evaluate": {"variants": ["base", "base+surgical"], "n": 2}})


@pytest.fixture
def fake_stages(monkeypatch):
    from recipes import stages

    calls = []

    def fake(name):
        def run(ctx, stage, out):
            calls.append(name)
            (out / f"{name}.txt").write_text(stage.hash)
            if name == os.environ.get("FAIL_STAGE"):
                raise KeyboardInterrupt("interrupted")
            return {"ok": name}
        return run

    for name in list(stages.STAGE_FUNCTIONS):
        monkeypatch.setitem(stages.STAGE_FUNCTIONS, name, fake(name))
    return calls


def test_rerun_skips_force_redoes_and_interruption_leaves_nothing(tmp_path, fake_stages, monkeypatch):
    recipe, out = _mini(tmp_path), tmp_path / "run"
    monkeypatch.setenv("FAIL_STAGE", "evaluate")
    with pytest.raises(KeyboardInterrupt):
        main([str(recipe), "--out", str(out)])
    assert fake_stages == ["model", "steering", "evaluate"]
    names = sorted(p.name for p in out.iterdir())
    assert [n.split("-")[0] for n in names] == ["model", "steering"], names  # no evaluate dir, no temp dir
    monkeypatch.delenv("FAIL_STAGE")
    fake_stages.clear()
    assert main([str(recipe), "--out", str(out)]) == 0
    assert fake_stages == ["evaluate", "report"]
    plan = make_plan(load_recipe(recipe), out)
    assert all(st.complete for st in plan if st.active)
    marker = json.loads((plan.stages["evaluate"].directory / "stage.json").read_text())
    assert marker["hash"] == plan.stages["evaluate"].hash and marker["result"] == {"ok": "evaluate"}
    assert "torch" in marker["versions"] and (out / "recipe.yaml").is_file()
    fake_stages.clear()
    assert main([str(recipe), "--out", str(out)]) == 0
    assert fake_stages == []
    assert main([str(recipe), "--out", str(out), "--force", "steering"]) == 0
    assert fake_stages == ["steering"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_dry_run_shows_skip_after_run(tmp_path, fake_stages, capsys):
    recipe, out = _mini(tmp_path), tmp_path / "run"
    assert main([str(recipe), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([str(recipe), "--out", str(out), "--dry-run", "--set", "evaluate.n=3"]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines()[1:] if line.startswith("  ")}
    assert "skip (complete)" in lines["model"] and "skip (complete)" in lines["steering"]
    assert " run " in lines["evaluate"] and "off" in lines["publish"]


def test_stage_writer_is_atomic(tmp_path):
    plan = make_plan(load_recipe(_mini(tmp_path)), tmp_path / "run")
    st = plan.stages["model"]
    with pytest.raises(RuntimeError):
        with StageWriter(st) as out:
            (out / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not st.directory.exists() and not list((tmp_path / "run").iterdir())
    with StageWriter(st) as out:
        (out / "model.json").write_text("{}")
    assert is_complete(st.directory, st.hash) and not is_complete(st.directory, "other")


# ----------------------------------------------------------------- publish (offline, up to the upload call)


def test_publish_pushes_intervention_adapter_and_card(tmp_path, fake_stages, monkeypatch):
    import huggingface_hub

    from recipes import stages
    from recipes.artifacts import AdapterInfo

    calls = []

    class FakeApi:
        def __init__(self, token=None, **_):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False, **_):
            calls.append(("create_repo", repo_id, private))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, path_in_repo=None, **_):
            calls.append(("upload_folder", sorted(p.name for p in Path(folder_path).iterdir()), path_in_repo))
            return "commit-1"

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **_):
            calls.append(("upload_file", Path(path_or_fileobj).read_text(), path_in_repo))
            return "commit-2"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")

    def steering(ctx, stage, out):
        (out / "intervention").mkdir()
        (out / "intervention" / "intervention_config.json").write_text("{}")
        (out / "intervention" / "intervention_vectors.safetensors").write_bytes(b"")
        return {}

    def alignment(ctx, stage, out):
        (out / "adapter").mkdir()
        (out / "adapter" / "adapter_config.json").write_text("{}")
        AdapterInfo(source="x", local=True, trained=False, method=None).save(out)
        return {}

    def report(ctx, stage, out):
        (out / "report.md").write_text("# card")
        return {}

    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "steering", steering)
    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "alignment", alignment)
    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "report", report)
    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "publish", stages.run_publish)
    recipe = write(tmp_path, patched(**{"publish.enabled": True, "publish.repo_id": "me/surgical-test",
                                        "publish.push": ["intervention", "adapter", "report"]}))
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out)]) == 0
    assert calls == [("token", "hf_from_env"), ("create_repo", "me/surgical-test", True),
                     ("upload_folder", ["intervention_config.json", "intervention_vectors.safetensors"], None),
                     ("upload_folder", ["adapter_config.json"], "adapter"),
                     ("upload_file", "# card", "README.md")]
    plan = make_plan(load_recipe(recipe), out)
    record = json.loads((plan.stages["publish"].directory / "publish.json").read_text())
    assert record["repo_id"] == "me/surgical-test" and record["commits"] == ["commit-1", "commit-1", "commit-2"]
    assert "hf_from_env" not in (out / "recipe.yaml").read_text()
    calls.clear()
    assert main([str(recipe), "--out", str(out)]) == 0 and calls == []  # published: skipped on re-run


# ----------------------------------------------------------------- real stages on small models


def test_model_and_adapter_stages_on_a_tiny_local_model(tmp_path, fake_stages, monkeypatch):
    from peft import PeftModel
    from tiny_models import tiny_lora, tiny_model

    from recipes import stages

    model_dir, adapter_dir = tmp_path / "tiny", tmp_path / "adapter"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_lora(tiny_model("llama"), "llama").save_pretrained(adapter_dir)
    seen = {}

    def evaluate(ctx, stage, out):
        seen["aligned"] = ctx.aligned_model()
        (out / "plane.json").write_text("{}")
        return {}

    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "model", stages.run_model)
    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "alignment", stages.run_alignment)
    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "evaluate", evaluate)
    recipe = write(tmp_path, {"name": "tiny", "model": {"name": str(model_dir)},
                              "alignment": {"adapter": str(adapter_dir)},
                              "steering": {"en": {"enabled": False}, "loc": {"enabled": False}},
                              "evaluate": {"variants": ["base", "cla"]}, "report": {"enabled": False}})
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out), "--dry-run", "--set", "steering.en.layer=4"]) == 0  # off: no check
    with pytest.raises(RecipeError, match=r"steering.en.layer: expected an int in \[0, 3\]"):
        load_recipe(recipe, ["steering.en.enabled=true", "steering.en.layer=4"])
    assert main([str(recipe), "--out", str(out)]) == 0
    plan = make_plan(load_recipe(recipe), out)
    info = json.loads((plan.stages["model"].directory / "model.json").read_text())
    assert (info["num_hidden_layers"], info["hidden_size"], info["model_type"]) == (4, 32, "llama")
    assert (plan.stages["alignment"].directory / "adapter" / "adapter_config.json").is_file()
    assert isinstance(seen["aligned"], PeftModel)
    assert [s.name for s in plan if s.active] == ["model", "alignment", "evaluate"]


def test_deferred_layer_check_at_load_time(tmp_path, monkeypatch, capsys):
    """A model whose depth is unknown offline passes validation; the model stage refuses the layer."""
    from tiny_models import tiny_model

    from recipes import validate

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    monkeypatch.setattr(validate, "model_shape", lambda name, revision=None: None)  # as if uncached
    recipe = write(tmp_path, {"model": {"name": str(model_dir)}, "alignment": {"method": "none"},
                              "steering": {"en": {"layer": 9, "alpha": 1.0}, "loc": {"enabled": False}},
                              "evaluate": {"variants": ["base+en"]}})
    out = tmp_path / "run"
    assert main([str(recipe), "--out", str(out), "--dry-run"]) == 0
    capsys.readouterr()
    assert main([str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert 'steering.en.layer: expected an int in [0, 3] or "auto", got 9' in err
    assert out.is_dir() and list(out.iterdir()) == []  # the lock taken and released, the model stage discarded


@pytest.mark.gemma
def test_model_stage_on_gemma(gemma, tmp_path):
    from recipes.stages import RunContext, run_model

    recipe = load_recipe("surgical", [*FIXED, "steering.loc.layer=14"])
    plan = make_plan(recipe, tmp_path)
    ctx = RunContext(recipe, plan)
    ctx._model, ctx._tokenizer = gemma
    out = tmp_path / "model"
    out.mkdir()
    result = run_model(ctx, plan.stages["model"], out)
    from recipes.validate import KNOWN_MODELS

    measured = (result["model"]["num_hidden_layers"], result["model"]["hidden_size"])
    assert measured == (18, 640)
    known = KNOWN_MODELS["gemma-3-270m"]  # the offline shape validation checks layers against is the loaded one
    assert (known.num_layers, known.hidden_size) == measured


# ----------------------------------------------------------------- accelerate: split + merge


def test_distributed_map_single_process_is_plain_map():
    from recipes.distributed import distributed_map

    assert distributed_map(lambda x: x * x, range(7)) == [x * x for x in range(7)]


@pytest.mark.slow
def test_accelerate_two_processes_match_single_process(tmp_path):
    import _distributed_eval

    expected = _distributed_eval.run(state=None)
    out = tmp_path / "scores.json"
    import socket

    with socket.socket() as sock:  # a free rendezvous port: never collide with a lingering launcher
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port),
           str(ROOT / "tests" / "_distributed_eval.py"), str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2
    assert result["scores"] == expected  # exactly the single-process numbers


def test_schema_names_match_the_libraries():
    from evaluate.loaders import FLORES_CODES
    from evaluate.tasks import list_tasks

    from recipes.schema import LANGUAGES, TASKS

    assert sorted(TASKS) == sorted(list_tasks())
    assert set(LANGUAGES) <= set(FLORES_CODES)


@pytest.mark.gemma
def test_steering_stage_fixed_layers_on_gemma(gemma, tmp_path):
    """Fixed layer + alpha: EN and LOC vectors computed and saved as an intervention directory (mean difference:
    the coefficient is alpha, multiples of the estimated difference)."""
    from interventions.config import InterventionConfig

    from recipes.stages import RunContext, run_steering

    recipe = load_recipe("surgical", [*FIXED, "evaluate.languages=[ko]", "steering.en.alpha=4",
                                      "steering.loc.alpha=6", "steering.en.n=4", "steering.loc.n=4"])
    plan = make_plan(recipe, tmp_path / "run")
    ctx = RunContext(recipe, plan)
    ctx._model, ctx._tokenizer = gemma
    stage = plan.stages["steering"]
    with StageWriter(stage) as out:
        result = run_steering(ctx, stage, out)
    assert set(result["selection"]) == {"en_transfer_ko", "loc_ko"}
    assert {k: (v["layer"], v["alpha"], v["steered"]) for k, v in result["selection"].items()} == {
        "en_transfer_ko": (6, 4.0, True), "loc_ko": (12, 6.0, True)}
    config = InterventionConfig.from_pretrained(stage.directory / "intervention", model=gemma[0])
    layers = {iv.name: (iv.layer, iv.coefficient) for iv in config.interventions}
    assert layers == {"en_transfer_ko": (6, 4.0), "loc_ko": (12, 6.0)}


def test_half_written_stage_directories_are_not_trusted(tmp_path, fake_stages):
    recipe, out = _mini(tmp_path), tmp_path / "run"
    plan = make_plan(load_recipe(recipe), out)
    model_dir = plan.stages["model"].directory
    model_dir.mkdir(parents=True)
    (model_dir / "model.txt").write_text("stale")  # killed before stage.json was written
    (out / f".{model_dir.name}.tmp-abc").mkdir()  # a killed run's temp dir
    steering_dir = plan.stages["steering"].directory
    steering_dir.mkdir()
    (steering_dir / "stage.json").write_text("{not json")
    assert main([str(recipe), "--out", str(out)]) == 0
    assert fake_stages == ["model", "steering", "evaluate", "report"]
    assert (model_dir / "model.txt").read_text() == plan.stages["model"].hash


def test_evaluation_helpers():
    import torch

    from interventions.config import AdditiveIntervention
    from recipes.evaluation import intervention_role, merge_results

    def iv(name, role=None, language=None, source=None):
        return AdditiveIntervention(name=name, component="block_output", layer=1, vector=torch.ones(4),
                                    coefficient=1.0, positions="all", source=source or {}, role=role,
                                    language=language)

    assert intervention_role(iv("x", "en_transfer", "ko")) == ("en", "ko")
    assert intervention_role(iv("x", "loc_cultural", "zh")) == ("loc", "zh")
    # a control is no EN vector, whatever its name says (names are never parsed)
    assert intervention_role(iv("en_transfer_ko_control", "control", "ko")) == (None, "ko")
    assert intervention_role(iv("v", source={"role": "loc_cultural", "language": "es"})) == ("loc", "es")

    def part(lang, value):
        return {"config": {"languages": [lang], "tasks": ["blend"]}, "timings_s": {"total": 1.5},
                "metrics": [{"language": lang, "value": value}, {"language": "en", "value": 0.5}],
                "plane": [{"language": lang, "value": value}, {"language": "mean", "value": value}],
                "n_items": {f"blend/{lang}": 2}, "task_metrics": []}

    merged = merge_results([part("ko", 0.1), part("es", 0.2)])
    assert merged["config"]["languages"] == ["ko", "es"]
    assert [r["language"] for r in merged["metrics"]] == ["ko", "en", "es"]  # English control once
    assert [r["language"] for r in merged["plane"]] == ["ko", "es"]  # single-language means dropped
    assert merged["timings_s"]["total"] == 3.0 and merged["n_items"] == {"blend/ko": 2, "blend/es": 2}
    single = part("ko", 0.3)
    assert merge_results([single]) is single


def test_alignment_stage_builds_the_method_config(tmp_path, monkeypatch):
    import alignment

    from recipes.stages import RunContext, run_alignment

    seen = {}

    def fake_train(config, output_dir, **kwargs):
        seen["config"], seen["kwargs"] = config, kwargs
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "adapter_config.json").write_text("{}")

    monkeypatch.setattr(alignment, "train", fake_train)
    recipe = load_recipe("surgical", ["alignment.method=clo", "alignment.max_steps=null", "alignment.lora_r=4",
                                      "alignment.batch_size=null", "alignment.learning_rate=null",
                                      "alignment.lora_alpha=null", "alignment.n=null", "seed=3"])
    plan = make_plan(recipe, tmp_path / "run")
    ctx = RunContext(recipe, plan)
    ctx._tokenizer = "tok"
    stage = plan.stages["alignment"]
    with StageWriter(stage) as out:
        run_alignment(ctx, stage, out)
    # the fields set reach the config; every field left null takes the method's own default
    assert seen["config"] == alignment.config_for("clo", model="gemma-3-270m", languages=["ar", "es", "id", "ko", "zh"],
                                                  lora_r=4, seed=3)
    assert seen["kwargs"] == {"tokenizer": "tok"}
    assert json.loads((stage.directory / "adapter.json").read_text())["trained"] is True
    assert ctx.adapter_source() == str(stage.directory / "adapter")
