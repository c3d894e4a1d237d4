"""The intervention directory: save/load, validation messages, Hub paths (offline), pyvene layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from interventions import AdditiveIntervention, InterventionConfig, InterventionConfigError, SetIntervention, steer
from interventions.config import CONFIG_NAME, VECTORS_NAME
from tiny_models import tiny_lora, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def make_config(model):
    g = torch.Generator().manual_seed(0)
    return InterventionConfig.for_model(model, [
        AdditiveIntervention("en_transfer", "block_output", 1, torch.randn(32, generator=g), 4.0, "all",
                             {"method": "mean_difference", "data": "flores200/dev", "languages": ["en", "ko"],
                              "n": 64}),
        AdditiveIntervention("loc_ko", "block_output", 3, torch.randn(32, generator=g), 2.0, "prompt",
                             {"method": "mean_difference", "data": "locale_probe/extract", "languages": ["ko"],
                              "n": 20}),
        SetIntervention("experts_ko", "mlp_hidden", 2, torch.tensor([3, 7, 11]), torch.tensor([0.5, -1.0, 2.0])),
    ])


def logits(model, config=None):
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        if config is None:
            return model(input_ids=ids).logits
        with steer(model, config):
            return model(input_ids=ids).logits


@pytest.fixture()
def saved(tmp_path):
    model = tiny_model("gemma3")
    config = make_config(model)
    return model, config, config.save_pretrained(tmp_path / "iv", model=model)


def test_save_writes_sorted_json_safetensors_card_and_pyvene_layout(saved):
    model, config, path = saved
    files = sorted(os.listdir(path))
    assert {CONFIG_NAME, VECTORS_NAME, "README.md", "config.json"} <= set(files)
    assert any(f.startswith("intkey_") and f.endswith(".bin") for f in files)
    text = (path / CONFIG_NAME).read_text()
    raw = json.loads(text)
    assert text == json.dumps(raw, indent=2, sort_keys=True) + "\n"
    assert raw["format_version"] == 1 and raw["library"]["name"] == "surgical-steering"
    assert raw["base_model"]["hidden_size"] == 32 and raw["base_model"]["num_hidden_layers"] == 4
    assert raw["base_model"]["model_type"] == "gemma3_text"
    assert raw["interventions"][0]["source"]["languages"] == ["en", "ko"]
    assert set(load_file(str(path / VECTORS_NAME))) == {"en_transfer.vector", "loc_ko.vector", "experts_ko.units",
                                                        "experts_ko.values"}
    card = (path / "README.md").read_text()
    assert "en_transfer" in card and "block_output" in card and "from_pretrained" in card
    assert card.startswith("---\n") and "library_name: surgical-steering" in card


def test_roundtrip_gives_identical_outputs(saved):
    model, config, path = saved
    loaded = InterventionConfig.from_pretrained(path, model=model)
    assert torch.equal(logits(model, config), logits(model, loaded))
    assert [iv.positions for iv in loaded.interventions] == ["all", "prompt", "all"]


def test_loading_never_unpickles(saved, monkeypatch):
    model, config, path = saved

    def forbidden(*a, **k):
        raise AssertionError("pickle/torch.load used")
    monkeypatch.setattr(torch, "load", forbidden)
    import pickle
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    InterventionConfig.from_pretrained(path, model=model)


def test_config_from_base_applies_to_lora_model_and_back(saved):
    model, config, path = saved
    lora = tiny_lora(tiny_model("gemma3"), "gemma3")
    loaded = InterventionConfig.from_pretrained(path, model=lora)
    assert not torch.allclose(logits(lora, loaded), logits(lora))
    lora_made = make_config(lora)
    out = lora_made.save_pretrained(path.parent / "from_lora", model=lora)
    InterventionConfig.from_pretrained(out, model=model)


def test_pyvene_can_load_the_export(saved):
    import pyvene as pv

    model, config, path = saved
    only_all = InterventionConfig.for_model(model, [config.interventions[0], config.interventions[2]])
    out = only_all.save_pretrained(path.parent / "pv", model=model)
    intervenable = pv.IntervenableModel.load(str(out), model)
    with torch.no_grad():
        _, steered = intervenable(base={"input_ids": torch.tensor([[1, 5, 6, 7, 8]])})
    torch.testing.assert_close(steered.logits, logits(model, only_all), atol=1e-6, rtol=0)


def _edit(path, fn):
    raw = json.loads((path / CONFIG_NAME).read_text())
    fn(raw)
    (path / CONFIG_NAME).write_text(json.dumps(raw))


def _edit_tensors(path, fn):
    tensors = load_file(str(path / VECTORS_NAME))
    fn(tensors)
    save_file(tensors, str(path / VECTORS_NAME))


BAD = {
    "layer_out_of_range": (lambda p: _edit(p, lambda r: r["interventions"][0].update(layer=40)),
                           "interventions[0].layer", "[0, 3]"),
    "negative_layer": (lambda p: _edit(p, lambda r: r["interventions"][1].update(layer=-1)),
                       "interventions[1].layer", "[0, 3]"),
    "layer_not_int": (lambda p: _edit(p, lambda r: r["interventions"][0].update(layer="2")),
                      "interventions[0].layer", "expected an int"),
    "unknown_component": (lambda p: _edit(p, lambda r: r["interventions"][0].update(component="resid_post")),
                          "interventions[0].component", "block_output"),
    "unknown_position": (lambda p: _edit(p, lambda r: r["interventions"][1].update(positions="first")),
                         "interventions[1].positions", "generated"),
    "unknown_kind": (lambda p: _edit(p, lambda r: r["interventions"][0].update(kind="multiply")),
                     "interventions[0].kind", "additive"),
    "missing_vector_key": (lambda p: _edit(p, lambda r: r["interventions"][0].pop("vector")),
                           "interventions[0].vector", "missing"),
    "missing_vector_tensor": (lambda p: _edit_tensors(p, lambda t: t.pop("loc_ko.vector")),
                              "interventions[1].vector", "missing from"),
    "wrong_shape": (lambda p: _edit_tensors(p, lambda t: t.update({"en_transfer.vector": torch.zeros(33)})),
                    "interventions[0].vector", "(32,)"),
    "two_dim": (lambda p: _edit_tensors(p, lambda t: t.update({"en_transfer.vector": torch.zeros(2, 16)})),
                "interventions[0].vector", "1-D"),
    "non_finite": (lambda p: _edit_tensors(p, lambda t: t["en_transfer.vector"].__setitem__(0, float("nan"))),
                   "interventions[0].vector", "non-finite"),
    "wrong_dtype": (lambda p: _edit_tensors(p, lambda t: t.update({"en_transfer.vector": torch.zeros(32,
                                                                   dtype=torch.int64)})),
                    "interventions[0].vector", "floating-point"),
    "units_float": (lambda p: _edit_tensors(p, lambda t: t.update({"experts_ko.units": torch.zeros(3)})),
                    "interventions[2].units", "integer"),
    "units_out_of_range": (lambda p: _edit_tensors(p, lambda t: t.update({"experts_ko.units": torch.tensor(
        [1, 2, 64])})), "interventions[2].units", "out of range"),
    "values_shape": (lambda p: _edit_tensors(p, lambda t: t.update({"experts_ko.values": torch.zeros(2)})),
                     "interventions[2].values", "one value per unit"),
    "format_version": (lambda p: _edit(p, lambda r: r.update(format_version=7)), "format_version", "expected 1"),
    "malformed_json": (lambda p: (p / CONFIG_NAME).write_text('{"format_version": 1,'), "json", "line 1"),
    "hidden_size_mismatch": (lambda p: _edit(p, lambda r: r["base_model"].update(hidden_size=640)),
                             "base_model.hidden_size", "640"),
    "duplicate_name": (lambda p: _edit(p, lambda r: r["interventions"][1].update(name="en_transfer")),
                       "interventions[1].name", "duplicate"),
    "bad_coefficient": (lambda p: _edit(p, lambda r: r["interventions"][0].update(coefficient="strong")),
                        "interventions[0].coefficient", "finite number"),
    "corrupt_safetensors": (lambda p: (p / VECTORS_NAME).write_bytes(b"not a safetensors file"),
                            VECTORS_NAME, "unreadable"),
    "missing_config": (lambda p: (p / CONFIG_NAME).unlink(), CONFIG_NAME, "not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_artifacts_are_refused_naming_the_field(saved, case):
    model, config, path = saved
    corrupt, field, expected = BAD[case]
    corrupt(path)
    with pytest.raises(InterventionConfigError) as err:
        InterventionConfig.from_pretrained(path, model=model)
    assert err.value.field == field, str(err.value)
    assert expected in str(err.value)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0, "validation must not touch the model"


def test_cli_exit_codes(saved):
    model, config, path = saved
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    ok = subprocess.run([sys.executable, "-m", "interventions", "info", str(path)], capture_output=True, text=True,
                        env=env, cwd=ROOT)
    assert ok.returncode == 0 and '"en_transfer.vector"' in ok.stdout
    _edit(path, lambda r: r["interventions"][0].update(layer=40))
    bad = subprocess.run([sys.executable, "-m", "interventions", "validate", str(path)], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2
    assert "interventions[0].layer" in bad.stderr and bad.stderr.count("\n") == 1


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    model = tiny_model("gemma3")
    bad = InterventionConfig([AdditiveIntervention("x", "block_output", 9, torch.zeros(32))])
    with pytest.raises(InterventionConfigError):
        bad.save_pretrained(tmp_path / "out", model=model)
    assert list(tmp_path.iterdir()) == []


def _populate_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in (CONFIG_NAME, VECTORS_NAME, "README.md"):
        (snap / name).write_bytes((folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_from_hub_id_through_snapshot_download_offline(saved, tmp_path, monkeypatch):
    model, config, path = saved
    cache = tmp_path / "hub"
    _populate_hub_cache(cache, "someone/ko-steering", path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = InterventionConfig.from_pretrained("someone/ko-steering", model=model, cache_dir=str(cache))
    assert torch.equal(logits(model, loaded), logits(model, config))
    with pytest.raises(InterventionConfigError, match="repo_id"):
        InterventionConfig.from_pretrained("someone/not-cached", cache_dir=str(cache))
    with pytest.raises(InterventionConfigError, match="repo_id"):
        InterventionConfig.from_pretrained("bad id with spaces", cache_dir=str(cache))


def test_push_to_hub_creates_repo_and_uploads_the_folder(saved, monkeypatch):
    from huggingface_hub import HfApi

    model, config, path = saved
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(self, folder_path, repo_id, **kw):
        calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
        return "https://huggingface.co/someone/ko-steering/commit/abc"
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = config.push_to_hub("someone/ko-steering", model=model, private=True)
    assert calls[0][0] == "create" and calls[0][2]["private"] is True and calls[0][2]["exist_ok"] is True
    assert calls[1][0] == "upload" and {CONFIG_NAME, VECTORS_NAME, "README.md"} <= set(calls[1][2])
    assert url.endswith("abc")
