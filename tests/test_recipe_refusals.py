"""The bad-input catalogue of recipes: every input a stage would refuse (or silently get wrong) is refused
by ``--dry-run`` and by the run's start, before any model loads: one line naming the file and field, exit 2,
nothing written (the run directory itself: tests/test_recipe_run_dir.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from recipes import stages
from recipes.run import main
from recipes.errors import describe
from recipes.validate import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SURGICAL = ROOT / "recipes" / "configs" / "surgical.yaml"


def patched(**dotted) -> dict:
    """The surgical recipe with dotted keys replaced: patched(**{"steering.loc.layer": 40})."""
    data = yaml.safe_load(SURGICAL.read_text())
    for key, value in dotted.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return data


def plane(**dotted) -> dict:
    """A small no-adapter recipe (base and base+steering variants, layer/alpha auto: the cross-validated
    protocol) with dotted keys replaced."""
    return patched(**{"alignment.method": "none", "evaluate.variants": ["base", "base+en", "base+loc"],
                      **dotted})


def fixed(**dotted) -> dict:
    """``plane`` with every layer and alpha fixed (no cross-validation)."""
    return plane(**{"steering.en.layer": 4, "steering.en.alpha": 1.0, "steering.loc.layer": 9,
                    "steering.loc.alpha": 1.0, **dotted})


# ---------------------------------------------------------------- directories the recipe points at


def intervention_dir(tmp_path: Path, layer: int = 6, hidden: int = 640, layers: int = 18) -> Path:
    from interventions.config import AdditiveIntervention, InterventionConfig

    directory = tmp_path / "intervention"
    iv = AdditiveIntervention("en_transfer_ko", "block_output", layer, torch.ones(hidden), coefficient=2.0)
    InterventionConfig([iv], {"name_or_path": "google/gemma-3-270m", "num_hidden_layers": layers,
                              "hidden_size": hidden}).save_pretrained(directory)
    return directory


def edit_config(directory: Path, edit) -> Path:
    path = directory / "intervention_config.json"
    text = edit(path.read_text(encoding="utf-8"))
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return directory


def nan_vector(tmp_path: Path) -> Path:
    from safetensors.torch import load_file, save_file

    directory = intervention_dir(tmp_path)
    path = directory / "intervention_vectors.safetensors"
    tensors = load_file(str(path))
    tensors["en_transfer_ko.vector"][3] = float("nan")
    save_file(tensors, str(path))
    return directory


def load(directory_fn):
    return lambda tmp: {**plane(), "steering": {"load": str(directory_fn(tmp))}}


def adapter_dir(tmp_path: Path, config: str | None = '{"peft_type": "LORA"}', link: bool = False) -> Path:
    directory = tmp_path / "adapter"
    directory.mkdir()
    if config is not None:
        (directory / "adapter_config.json").write_text(config)
    if link:
        (directory / "README.md").symlink_to("/etc/hostname")
    return directory


def adapter(**kw):
    return lambda tmp: patched(**{"alignment.method": "none", "alignment.adapter": str(adapter_dir(tmp, **kw))})


def blocker_file(tmp_path: Path) -> Path:
    (tmp_path / "blocker").write_text("x")
    return tmp_path / "blocker"


BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
        'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
        'f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n'
        'i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n')

# (id, recipe: dict | YAML text | callable(tmp_path) -> either, extra CLI args (callable(tmp_path) -> list
#  for paths), the text the one-line message must contain (field first))
CATALOGUE = [
    # 1. task x language, from the tasks themselves
    ("fact-probe-in-greek", plane(**{"evaluate.tasks": ["fact_probe"], "evaluate.languages": ["el"]}), [],
     "evaluate.languages[0]: task fact_probe has no items in 'el'"),
    ("global-mmlu-in-amharic", plane(**{"evaluate.languages": ["ko", "am"], "evaluate.tasks": ["global_mmlu",
                                                                                            "blend"]}), [],
     "evaluate.languages[1]: task global_mmlu has no items in 'am'"),
    ("locale-probe-in-persian", plane(**{"evaluate.tasks": ["fact_probe", "locale_probe"],
                                         "evaluate.languages": ["ar", "fa"]}), [],
     "evaluate.languages[1]: task fact_probe has no items in 'fa'"),
    ("localization-task-in-english", plane(**{"evaluate.tasks": ["blend"], "evaluate.languages": ["en", "ko"]}), [],
     "evaluate.languages[0]: task blend has no items in 'en'"),
    ("loc-data-without-the-language", plane(**{"evaluate.tasks": ["blend"], "evaluate.languages": ["el"],
                                               "steering.en.enabled": False, "steering.loc.data": ["locale_probe"],
                                               "evaluate.variants": ["base", "base+loc"]}), [],
     "evaluate.languages[0]: no LOC contrast data in 'el'"),
    ("en-auto-without-transfer-task", plane(**{"evaluate.tasks": ["blend"]}), [],
     'steering.en.layer: "auto" selects on the items of the transfer tasks'),
    ("loc-auto-without-localization-task", plane(**{"evaluate.tasks": ["fact_probe"], "steering.loc.layer": 9}), [],
     'steering.loc.alpha: "auto" selects on the items of the localization tasks'),
    ("set-language-a-task-lacks", plane(), ["--set", "evaluate.languages=[ko, el]"],
     "evaluate.languages[1]: task fact_probe has no items in 'el'"),
    # 2. options the runtime cannot honour are not in the schema
    ("component-mlp-output", plane(**{"steering.component": "mlp_output"}), [],
     "steering.component: expected one of 'block_output', got 'mlp_output' (the steering stage computes"),
    ("component-block-input", plane(**{"steering.component": "block_input"}), [], "steering.component"),
    ("contrast-file-en", plane(**{"steering.en.data": "contrast.jsonl"}), [],
     "steering.en.data: expected one of 'flores', got 'contrast.jsonl' (named contrast data only"),
    ("contrast-file-in-list", plane(**{"steering.loc.data": ["blend", "./pairs.csv"]}), [],
     "steering.loc.data[1]: expected one of 'blend', 'locale_probe'"),
    ("loc-data-twice", plane(**{"steering.loc.data": ["blend", "blend"]}), [], "steering.loc.data: duplicate"),
    # 3. variants / stages, layers against depth, adapters
    ("publish-intervention-without-steering", plane(**{
        "steering.en.enabled": False, "steering.loc.enabled": False, "evaluate.variants": ["base"],
        "publish.enabled": True, "publish.repo_id": "me/x", "publish.push": ["intervention"]}), [],
     "publish.push: 'intervention' needs the steering stage"),
    ("publish-report-without-report", plane(**{"report.enabled": False, "publish.enabled": True,
                                               "publish.repo_id": "me/x", "publish.push": ["report"]}), [],
     "publish.push: 'report' needs the report stage"),
    ("analysis-layer-out-of-range", plane(**{"analysis.enabled": True, "analysis.layers": [2, 18]}), [],
     "analysis.layers[1]: expected an int in [0, 17]"),
    ("grid-layer-out-of-range", plane(**{"steering.layers": [30]}), [], "steering.layers[0]"),
    ("adapter-without-config", adapter(config=None), [], "alignment.adapter: directory"),
    ("adapter-config-malformed", adapter(config="{not json"), [], "alignment.adapter: unreadable adapter_config"),
    ("adapter-config-a-list", adapter(config="[1, 2]"), [], "alignment.adapter: adapter_config.json in"),
    ("adapter-symlink", adapter(link=True), [], "alignment.adapter: "),
    # 4. duplicate keys
    ("duplicate-seed", "seed: 0\nseed: 1\n", [], "seed: duplicate key at line 2 (first at line 1)"),
    ("duplicate-section", "evaluate:\n  tasks: [fact_probe]\nseed: 3\nevaluate:\n  n: 5\n", [],
     "evaluate: duplicate key at line 4 (first at line 1)"),
    ("duplicate-nested", "steering:\n  en:\n    layer: 3\n    layer: 6\n", [], "steering.en.layer: duplicate key"),
    ("duplicate-in-list-item", "evaluate:\n  tasks: [{a: 1, a: 2}]\n", [], "evaluate.tasks[0].a: duplicate key"),
    ("duplicate-in-set-value", plane(), ["--set", "evaluate={n: 1, n: 2}"], "evaluate.n: duplicate key"),
    ("set-section-to-scalar", plane(), ["--set", "evaluate=5"], "evaluate: expected a mapping"),
    ("set-empty-key", plane(), ["--set", "=5"], "--set: expected a dotted key"),
    ("set-merge-still-checked", plane(), ["--set", "steering={en: {layr: 3}}"],
     "steering.en.layr: unknown key; did you mean 'layer'"),
    ("set-merge-out-of-range", plane(), ["--set", "steering={en: {layer: 99}}"], "steering.en.layer"),
    ("set-alias", plane(), ["--set", "evaluate={n: &a 1, batch_size: *a}"], "evaluate: alias *a is not allowed"),
    ("set-name-with-nul", plane(), ["--set", "name=a\x00b"], "name: expected a plain run name"),
    # 5. aliases (a 430-byte billion laughs) and huge values
    ("alias-bomb", BOMB, [], "line 2, column 8: invalid YAML: alias *a is not allowed in a recipe"),
    ("alias-merge-key", "base: &b {n: 5}\nevaluate:\n  <<: *b\n", [], "alias *b is not allowed"),
    ("huge-int", "seed: " + "9" * 5000 + "\n", [], "YAML: unreadable value (Exceeds the limit"),
    ("huge-int-in-set", plane(), ["--set", "seed=" + "7" * 5000], "seed: unreadable value"),
    ("huge-file", "description: '" + "x" * (1 << 20) + "'\n", [], "recipe: 10485"),
    # 6. numbers, devices, names, --out
    ("seed-2-32", plane(seed=2**32), [], "seed: expected an int in [0, 2**32 - 1], got 4294967296"),
    ("alignment-seed-huge", patched(**{"alignment.seed": 2**40}), [], "alignment.seed"),
    ("bootstrap-0", plane(**{"evaluate.bootstrap": 0}), [], "evaluate.bootstrap: expected at least 1"),
    ("device-not-a-device", plane(**{"model.device": "gpu0"}), [], "model.device: expected cpu, cuda"),
    ("device-cuda-without-cuda", plane(**{"model.device": "cuda"}), [], "model.device: 'cuda': torch finds no cuda"),
    ("device-cuda-7", plane(**{"model.device": "cuda:7"}), ["<has-cuda>"], "model.device: 'cuda:7': this machine has"),
    ("device-mps-without-mps", plane(**{"model.device": "mps"}), [], "model.device: 'mps': torch finds no mps"),
    ("name-with-nul", plane(name="run\x00x"), [], "name: expected a plain run name"),
    ("name-with-ansi-escape", plane(name="\x1b[31mred"), [], "name: expected a plain run name"),
    ("name-with-slash", plane(name="a/b"), [], "name: expected a plain run name"),
    ("name-hidden", plane(name=".hidden"), [], "name: expected a plain run name"),
    ("name-dotdot", plane(name=".."), [], "name: expected a plain run name"),
    ("out-under-a-file", plane(), lambda tmp: ["--out", str(blocker_file(tmp) / "run")], "--out: "),
    ("out-is-a-file", plane(), lambda tmp: ["--out", str(blocker_file(tmp))], "--out: expected a directory"),
    ("out-with-nul", plane(), ["--out", "ru\x00n"], "--out: expected a directory path without control"),
    # 7. an uncached Hub id while the Hub is offline (tests run with HF_HUB_OFFLINE=1)
    ("uncached-model-offline", plane(**{"model.name": "someorg/uncached-model", "model.device": None}), [],
     "model.name: someorg/uncached-model is not cached locally and HF_HUB_OFFLINE is set"),
    ("uncached-adapter-offline", patched(**{"alignment.method": "none", "alignment.adapter": "someorg/adapter"}), [],
     "alignment.adapter: someorg/adapter is not cached locally"),
    ("uncached-intervention-offline", {**plane(), "steering": {"load": "someorg/steering"}}, [],
     "steering.load: someorg/steering is not cached locally"),
    # 8. steering.load validated with the interventions loader (no model) and against the model
    ("load-layer-beyond-model", load(lambda t: intervention_dir(t, layer=18, layers=40)), [],
     ("steering.load: ", "en_transfer_ko is at layer 18; gemma-3-270m has layers 0..17")),
    ("load-hidden-mismatch", load(lambda t: intervention_dir(t, hidden=1024)), [],
     ("steering.load: ", "made for hidden size 1024; gemma-3-270m has 640")),
    ("load-nan-vector", load(nan_vector), [], ("steering.load: ", "interventions[0].vector")),
    ("load-malformed-json", load(lambda t: edit_config(intervention_dir(t), lambda s: s[:-20])), [],
     ("steering.load: ", "malformed JSON")),
    ("load-deeply-nested-json", load(lambda t: edit_config(intervention_dir(t), lambda s: "[" * 100000)), [],
     ("steering.load: ", "nested")),
    ("load-bad-utf8", load(lambda t: edit_config(intervention_dir(t), lambda s: b"\xff\xfe" + s.encode())), [],
     ("steering.load: ", "UTF-8")),
    ("load-5000-digit-int", load(lambda t: edit_config(intervention_dir(t),
                                                       lambda s: s.replace('"layer": 6', '"layer": ' + "6" * 5000))),
     [], ("steering.load: ", "interventions[0].layer")),
    ("load-layer-in-file-out-of-range", load(lambda t: edit_config(intervention_dir(t),
                                                                   lambda s: s.replace('"layer": 6', '"layer": 18'))),
     [], ("steering.load: ", "interventions[0].layer: expected an int in [0, 17], got 18")),
    ("load-duplicate-json-key", load(lambda t: edit_config(intervention_dir(t), lambda s: s.replace(
        '"layer": 6', '"layer": 6, "layer": 17'))), [], ("steering.load: ", "interventions[0].layer", "duplicate")),
    ("load-misspelled-coefficient", load(lambda t: edit_config(intervention_dir(t), lambda s: s.replace(
        '"coefficient": 2.0', '"coeficient": 2.0'))), [], ("steering.load: ", "coeficient")),
    ("load-symlink-inside", load(lambda t: _with_link(intervention_dir(t))), [],
     ("steering.load: ", "extra.txt is a symbolic link")),
    ("load-no-vectors-file", load(lambda t: _without(intervention_dir(t), "intervention_vectors.safetensors")), [],
     ("steering.load: ", "intervention_vectors.safetensors")),
    # 9. impossible or conflicting settings
    ("pca-with-one-prompt", plane(**{"steering.method": "pca", "steering.en.n": 1}), [],
     "steering.en.n: steering.method pca needs at least 2"),
    ("english-only-with-en-vector", plane(**{"evaluate.tasks": ["fact_probe"], "evaluate.languages": ["en"],
                                             "steering.loc.enabled": False, "evaluate.variants": ["base", "base+en"]}),
     [], "evaluate.languages: the EN vector needs at least one language other than en"),
    ("load-with-layer-grid", load(intervention_dir), ["--set", "steering.layers=[4, 8]"],
     "steering.layers: ignored when steering.load is set"),
    ("load-with-en-layer", load(intervention_dir), ["--set", "steering.en.layer=6"],
     "steering.en.layer: ignored when steering.load is set"),
    ("load-with-alphas", load(intervention_dir), ["--set", "steering.alphas=[2.0]"],
     "steering.alphas: ignored when steering.load is set"),
    ("load-with-selection", load(intervention_dir), ["--set", "steering.selection.folds=3"],
     "steering.selection.folds: ignored when steering.load is set"),
    ("load-with-old-coefficients", load(intervention_dir), ["--set", "steering.coefficients=[2.0]"],
     "steering.coefficients: unknown key"),
    ("split-extract-with-auto", plane(**{"evaluate.split": "extract"}), [],
     "evaluate.split: 'extract': with auto selection every item of every split goes through the folds"),
    ("split-all-with-auto", plane(**{"evaluate.split": "all"}), [], "evaluate.split: 'all': with auto selection"),
    # 10. the cross-validated protocol (layer/alpha auto): its grid, its folds, and what it can estimate
    ("alpha-zero-in-grid", plane(**{"steering.alphas": [0.0, 1.0]}), [],
     "steering.alphas[0]: expected a positive multiple of the mean difference (alpha 0, the unsteered model, is "
     "always a candidate), got 0.0"),
    ("alpha-negative-in-grid", plane(**{"steering.alphas": [1.0, -2.0]}), [], "steering.alphas[1]: expected a positive"),
    ("alpha-duplicate-in-grid", plane(**{"steering.alphas": [1.0, 2.0, 1.0]}), [], "steering.alphas: duplicate entries"),
    ("alpha-grid-empty", plane(**{"steering.alphas": []}), [], "steering.alphas: expected a non-empty strength grid"),
    ("alpha-grid-not-numbers", plane(**{"steering.alphas": ["big"]}), [], "steering.alphas[0]"),
    ("alpha-fixed-zero", fixed(**{"steering.loc.alpha": 0}), [], "steering.loc.alpha: alpha 0 is the unsteered model"),
    ("alpha-nan", "steering:\n  loc:\n    alpha: .nan\n", [], "steering.loc.alpha"),
    ("layer-grid-empty", plane(**{"steering.layers": []}), [], 'steering.layers: steering.en.layer is "auto": expected'),
    ("one-fold", plane(**{"steering.selection.folds": 1}), [], "steering.selection.folds: expected at least 2 folds, got 1"),
    ("folds-not-an-int", plane(**{"steering.selection.folds": 2.5}), [], "steering.selection.folds"),
    ("neutral-n-below-folds", plane(**{"steering.selection.folds": 5, "steering.selection.neutral_n": 3}), [],
     "steering.selection.neutral_n: expected at least one neutral sentence per fold (5), got 3"),
    ("max-kl-zero", plane(**{"steering.selection.max_kl": 0}), [], "steering.selection.max_kl: expected a positive"),
    ("max-kl-negative", plane(**{"steering.selection.max_kl": -0.5}), [], "steering.selection.max_kl"),
    ("tolerance-negative", plane(**{"steering.selection.tolerance": -0.1}), [],
     "steering.selection.tolerance: expected a non-negative number, got -0.1"),
    ("selection-unknown-key", plane(**{"steering.selection.n_select": 8}), [], "steering.selection.n_select: unknown"),
    ("old-n-select", plane(**{"steering.n_select": 8}), [], "steering.n_select: unknown key"),
    ("old-tolerance", plane(**{"steering.tolerance": 0.01}), [], "steering.tolerance: unknown key"),
    ("auto-with-loc-disabled", plane(**{"steering.loc.enabled": False, "evaluate.variants": ["base", "base+en"]}), [],
     "steering.loc.enabled: cross-validated selection (auto) chooses EN and LOC together"),
    ("auto-with-en-disabled", plane(**{"steering.en.enabled": False, "evaluate.variants": ["base", "base+loc"]}), [],
     "steering.en.enabled: cross-validated selection (auto) chooses EN and LOC together"),
    ("auto-mixed-with-fixed-layer", plane(**{"steering.en.layer": 4}), [],
     "steering.en.layer: auto selection chooses the layer and alpha of both vectors on one grid"),
    ("auto-mixed-with-fixed-alpha", plane(**{"steering.loc.alpha": 2.0}), [],
     "steering.loc.alpha: auto selection chooses the layer and alpha of both vectors on one grid"),
    ("auto-mixed-three-fixed", fixed(**{"steering.loc.alpha": "auto"}), [], "steering.en.layer: auto selection"),
    ("loc-n-with-auto", plane(**{"steering.loc.n": 16}), [],
     "steering.loc.n: with auto selection the LOC contrast of each fold is the explicit twins"),
    ("loc-data-not-the-evaluated-tasks", plane(**{"steering.loc.data": ["blend", "locale_probe"]}), [],
     "steering.loc.data: with auto selection the LOC contrast is the explicit twins of the scored localization "
     "items: expected ['locale_probe']"),
    ("loc-data-other-task", plane(**{"steering.loc.data": "blend"}), [], "steering.loc.data: with auto selection"),
    ("pca-with-auto", plane(**{"steering.method": "pca"}), [],
     "steering.method: auto selection estimates mean-difference vectors per fold"),
    ("compute-on-cla-with-auto", patched(**{"steering.compute_on": "cla"}), [],
     "steering.compute_on: with auto selection every evaluated model (base, cla) gets its own vectors"),
    ("n-localization-zero", plane(**{"evaluate.n_localization": 0}), [], "evaluate.n_localization: expected a positive"),
    ("random-en-without-auto", fixed(**{"evaluate.variants": ["base", "base+random_en"]}), [],
     "evaluate.variants[1]: 'base+random_en' exists only in the out-of-fold plane"),
    ("random-loc-without-auto", fixed(**{"evaluate.variants": ["base", "base+en", "base+random_loc"]}), [],
     "evaluate.variants[2]: 'base+random_loc' exists only in the out-of-fold plane"),
    ("all-positions-without-auto", fixed(**{"evaluate.variants": ["base", "base+surgical_all_positions"]}), [],
     "evaluate.variants[1]: 'base+surgical_all_positions' exists only in the out-of-fold plane"),
    ("cla-random-without-auto", patched(**{"steering.en.layer": 4, "steering.en.alpha": 1.0, "steering.loc.layer": 9,
                                           "steering.loc.alpha": 1.0}), [],
     "evaluate.variants[5]: 'cla+random_en' exists only in the out-of-fold plane"),
    ("random-en-with-loaded-steering", load(intervention_dir), ["--set", "evaluate.variants=[base, base+random_en]"],
     "evaluate.variants[1]: 'base+random_en' exists only in the out-of-fold plane"),
    ("experts-without-load", plane(**{"evaluate.variants": ["base", "base+experts"]}), [],
     "evaluate.variants[1]: 'base+experts' evaluates a loaded experts directory: set steering.load"),
    ("experts-fixed-without-load", fixed(**{"evaluate.variants": ["base", "base+en", "cla+experts"]}), [],
     "evaluate.variants[2]: 'cla+experts' needs an adapter"),
    ("unknown-positions", fixed(**{"steering.en.positions": "first"}), [], "steering.en.positions"),
]


def _with_link(directory: Path) -> Path:
    (directory / "extra.txt").symlink_to("/etc/hostname")
    return directory


def _without(directory: Path, name: str) -> Path:
    (directory / name).unlink()
    return directory


@pytest.fixture
def no_stage_runs(monkeypatch):
    """A recipe that wrongly passes validation must not load a model here: every stage fails loudly."""
    def refuse(ctx, stage, out):
        raise AssertionError(f"stage {stage.name} ran: the recipe was not refused")

    for name in list(stages.STAGE_FUNCTIONS):
        monkeypatch.setitem(stages.STAGE_FUNCTIONS, name, refuse)


def test_catalogue_size_and_ids():
    assert len(CATALOGUE) >= 60
    assert len({c[0] for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_refused_before_anything_runs(case, tmp_path, capsys, monkeypatch, no_stage_runs):
    name, recipe, extra, expected = case
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    extra = extra(tmp_path) if callable(extra) else extra
    if "<has-cuda>" in extra:  # a machine with one CUDA device
        extra = [x for x in extra if x != "<has-cuda>"]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    elif name.startswith("device-"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    recipe = recipe(tmp_path) if callable(recipe) else recipe
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    out = [] if any(x == "--out" for x in extra) else ["--out", str(tmp_path / "out")]
    for dry in (["--dry-run"], []):
        rc = main([str(path), *out, *extra, *dry])
        err = capsys.readouterr().err
        assert rc == 2, f"{name} {dry}: exit {rc}\n{err}"
        assert err.startswith(f"error: {path}: "), err
        assert all(text in err for text in ([expected] if isinstance(expected, str) else expected)), err
        assert len(err.strip().splitlines()) == 1, err
        assert "\x1b" not in err and "\x00" not in err, err
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written, --out not created
        assert not list(work.iterdir())


def test_alias_bomb_is_refused_fast_and_small():
    import time

    start = time.perf_counter()
    with pytest.raises(Exception, match="alias"):
        from recipes.yaml_io import parse_yaml

        parse_yaml(BOMB, "bomb.yaml")
    assert len(BOMB.encode()) < 500 and time.perf_counter() - start < 5


def test_describe_is_bounded():
    big = ["x" * 10**6] * 10**5
    assert len(describe(big)) <= 60 and len(describe({i: i for i in range(10**5)})) <= 60
    assert describe(int("9" * 4000) ** 2) == "<int>"  # more than 4300 digits: no repr at all


# ---------------------------------------------------------------- what must still be accepted


def test_empty_recipe_validates_with_the_defaults(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    assert main([str(tmp_path / "empty.yaml"), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    recipe = load_recipe(tmp_path / "empty.yaml")
    assert recipe.name == "empty" and recipe.evaluate.variants[0] == "base"


def test_set_on_a_section_merges(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(plane(**{"evaluate.n": 7, "evaluate.tasks": ["fact_probe", "blend"],
                                           "steering.loc.data": ["blend"]})))
    before = load_recipe(path)
    r = load_recipe(path, ["evaluate={n: 5}", "steering={selection: {folds: 3}}"])
    assert r.evaluate.n == 5 and r.evaluate.tasks == ["fact_probe", "blend"]  # tasks kept from the file
    assert r.steering.selection.folds == 3 and r.steering.selection.neutral_n == before.steering.selection.neutral_n
    assert r.steering.en == before.steering.en and r.steering.loc == before.steering.loc
    assert r.steering.layers == before.steering.layers and r.steering.alphas == before.steering.alphas
    r = load_recipe(path, ["steering={en: {layer: 4, alpha: 1}, loc: {layer: 9, alpha: 2}}"])  # the fixed path
    assert (r.steering.en.layer, r.steering.loc.alpha) == (4, 2.0) and r.steering.en.n == before.steering.en.n
    assert load_recipe(path, ["evaluate.tasks=[blend, fact_probe]"]).evaluate.tasks == ["blend", "fact_probe"]


def test_valid_intervention_directory_loads_without_a_model(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**plane(), "steering": {"load": str(intervention_dir(tmp_path))}}))
    assert main([str(path), "--dry-run", "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err


def test_cached_or_online_hub_ids_are_deferred(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(plane(**{"model.name": "someorg/uncached-model", "model.device": None})))
    assert main([str(path), "--dry-run", "--out", str(tmp_path / "run")]) == 0


def test_auto_and_fixed_recipes_are_accepted(tmp_path):
    """The protocol's own defaults validate: the LOC contrast follows the evaluated localization tasks, positions
    default to each vector's own, and every refusal above has a valid neighbour."""
    from recipes.crossfit_stage import uses_crossfit
    from recipes.schema import recipe_from_dict
    from recipes.validate import validate_recipe

    empty = validate_recipe(recipe_from_dict({}))
    assert uses_crossfit(empty) and empty.steering.loc.data == ["blend"] and empty.steering.loc.n is None
    assert (empty.steering.en.positions, empty.steering.loc.positions) == (None, None)
    assert empty.steering.selection.folds >= 2 and 0.0 not in empty.steering.alphas
    auto = validate_recipe(recipe_from_dict(plane(**{"steering.selection.max_kl": 0.5})))
    assert uses_crossfit(auto) and auto.steering.loc.data in ("locale_probe", ["locale_probe"])
    both = validate_recipe(recipe_from_dict(plane(**{"evaluate.tasks": ["fact_probe", "locale_probe", "blend"],
                                                     "steering.loc.data": ["blend", "locale_probe"]})))
    assert uses_crossfit(both)
    fixed_recipe = validate_recipe(recipe_from_dict(fixed(**{"steering.loc.n": 16, "steering.method": "pca",
                                                             "evaluate.split": "all", "steering.alphas": [1.0]})))
    assert not uses_crossfit(fixed_recipe) and fixed_recipe.steering.loc.n == 16
    negative = validate_recipe(recipe_from_dict(fixed(**{"steering.en.alpha": -1.0})))  # away from English: allowed
    assert negative.steering.en.alpha == -1.0
