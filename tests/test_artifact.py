"""The intervention directory: save/load, validation messages, Hub paths (offline), pyvene layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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
    assert raw["format_version"] == 2 and raw["library"]["name"] == "surgical-steering"
    assert raw["base_model"]["hidden_size"] == 32 and raw["base_model"]["num_hidden_layers"] == 4
    assert raw["base_model"]["model_type"] == "gemma3_text"
    assert raw["interventions"][0]["source"]["languages"] == ["en", "ko"]
    assert set(load_file(str(path / VECTORS_NAME))) == {"en_transfer.vector", "loc_ko.vector", "experts_ko.units",
                                                        "experts_ko.values"}
    card = (path / "README.md").read_text()
    assert "en_transfer" in card and "block_output" in card and "from_pretrained" in card
    assert "directories you trust" in card
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
    from interventions.pyvene_compat import pyvene

    pv = pyvene()
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


# The catalogue of corrupted directories (each refused by the loader and the CLI) is in
# tests/test_artifact_refusals.py.


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


def _tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _metadata_keys(path: Path) -> list:
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return list(json.loads(data[8:8 + n]).get("__metadata__", {}))


def test_saving_twice_gives_byte_identical_files(saved, tmp_path):
    model, config, path = saved
    second = config.save_pretrained(tmp_path / "again" / "iv", model=model)
    first, again = _tree_bytes(path), _tree_bytes(second)
    assert sorted(first) == sorted(again) and any(f.startswith("intkey_") for f in first)
    for name in first:  # card, JSON, safetensors and pyvene's config.json + intkey_*.bin
        assert first[name] == again[name], name
    assert len(_metadata_keys(path / VECTORS_NAME)) == 1  # safetensors orders 2+ keys at random per process


def test_save_vectors_is_byte_identical_with_one_metadata_key(tmp_path):
    from interventions.vector_io import load_vectors, save_vectors
    from interventions.vectors import SteeringVectors

    g = torch.Generator().manual_seed(0)
    vectors = SteeringVectors("en", torch.randn(4, 32, generator=g), [0, 1, 2, 3], torch.rand(4, generator=g),
                              {"method": "mean_difference"})
    save_vectors(vectors, tmp_path / "a")
    save_vectors(vectors, tmp_path / "b")
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert _metadata_keys(tmp_path / "a" / "en.safetensors") == ["format"]
    assert torch.equal(load_vectors(tmp_path / "a")["en"].vectors, vectors.vectors)


def test_saved_directory_has_ordinary_permissions(saved):
    model, config, path = saved
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp dir left


def test_save_replaces_an_existing_directory_and_a_symlink(saved, tmp_path):
    model, config, path = saved
    config.save_pretrained(path, model=model)  # over itself
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("untouched")
    link = tmp_path / "link"
    os.symlink(elsewhere, link)
    config.save_pretrained(link)  # the link is replaced, the directory it pointed to is not written into
    assert not link.is_symlink() and (link / CONFIG_NAME).is_file()
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]


def test_import_and_save_print_nothing_on_stdout(tmp_path):
    code = ("import torch, sys; sys.path.insert(0, 'tests'); from tiny_models import tiny_model\n"
            "from interventions import AdditiveIntervention, InterventionConfig, steer\n"
            "m = tiny_model('gemma3')\n"
            "c = InterventionConfig.for_model(m, [AdditiveIntervention('x', 'block_output', 1, torch.ones(32))])\n"
            f"c.save_pretrained({str(tmp_path / 'a')!r}, model=m); c.save_pretrained({str(tmp_path / 'a')!r}, model=m)\n"
            "with steer(m, c): m(input_ids=torch.tensor([[1, 2]]))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == ""


def test_copy_tree_no_symlinks(tmp_path):
    from interventions.fsutil import UnsafePathError, copy_tree_no_symlinks

    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "sub" / "weights.safetensors").write_bytes(b"x" * 10)
    out = copy_tree_no_symlinks(src, tmp_path / "copy")
    assert _tree_bytes(out) == _tree_bytes(src)
    os.symlink("/etc/passwd", src / "sub" / "README.md")
    with pytest.raises(UnsafePathError, match=r"README\.md: is a symbolic link \(to /etc/passwd\)"):
        copy_tree_no_symlinks(src, tmp_path / "copy2")
    assert not (tmp_path / "copy2").exists()  # refused before anything is written
    (src / "sub" / "README.md").unlink()
    os.mkfifo(src / "pipe")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        copy_tree_no_symlinks(src, tmp_path / "copy3")
    assert not (tmp_path / "copy3").exists()
