"""The run directory: one run at a time (lock), leftovers of a killed run removed, stage hashes that follow
the library version and the bundled data, outputs with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from recipes import plan as plan_module
from recipes import stages
from recipes.plan import make_plan
from recipes.run_dir import HASH_VERSION, RunLock, tree_digest
from recipes.run import main
from recipes.validate import load_recipe


# ---------------------------------------------------------------- the run directory


def _mini(tmp_path: Path) -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({"name": "mini", "steering": {"en": {"layer": 3, "alpha": 2.0},
                                                                 "loc": {"layer": 9, "alpha": 2.0}},
                                    "evaluate": {"variants": ["base", "base+surgical"], "n": 2}}))
    return path


@pytest.fixture
def fake_stages(monkeypatch):
    calls = []

    def fake(name):
        def run(ctx, stage, out):
            calls.append(name)
            (out / "sub").mkdir(mode=0o700)
            (out / "sub" / "x.txt").write_text(name)
            os.chmod(out / "sub" / "x.txt", 0o600)
            return {}
        return run

    for name in list(stages.STAGE_FUNCTIONS):
        monkeypatch.setitem(stages.STAGE_FUNCTIONS, name, fake(name))
    return calls


def test_second_run_into_the_same_directory_is_refused(tmp_path, fake_stages, capsys):
    recipe, out = _mini(tmp_path), tmp_path / "run"
    with RunLock(out):
        assert (out / ".lock").read_text().strip() == str(os.getpid())
        assert main([str(recipe), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out: another run holds {out / '.lock'} (pid {os.getpid()})" in err
        assert len(err.strip().splitlines()) == 1 and fake_stages == []
    assert not (out / ".lock").exists()  # released and removed
    assert main([str(recipe), "--out", str(out)]) == 0 and fake_stages
    assert not (out / ".lock").exists()


def test_stale_temporary_directories_are_removed(tmp_path, fake_stages, capsys):
    recipe, out = _mini(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / ".model-0123456789ab.tmp-xyz").mkdir()
    (out / ".model-0123456789ab.tmp-xyz" / "half.bin").write_bytes(b"x")
    (out / ".evaluate-0123456789ab.old-q").mkdir()
    (out / ".recipe.yaml.abc").write_text("half")
    (out / ".keep-me").write_text("not ours")
    assert main([str(recipe), "--out", str(out)]) == 0
    assert "removed 3 leftover(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".keep-me"]


def test_outputs_are_world_readable_under_the_umask(tmp_path, fake_stages):
    recipe, out = _mini(tmp_path), tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main([str(recipe), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    stage_dirs = [p for p in out.iterdir() if p.is_dir()]
    assert stage_dirs
    for d in stage_dirs:
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
        assert stat.S_IMODE((d / "sub").stat().st_mode) == 0o755
        assert stat.S_IMODE((d / "sub" / "x.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((d / "stage.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "recipe.yaml").stat().st_mode) == 0o644


def test_stage_hash_covers_library_version_and_bundled_data(tmp_path, monkeypatch):
    recipe = load_recipe(_mini(tmp_path))
    base = {st.name: st.hash for st in make_plan(recipe, tmp_path / "run")}
    monkeypatch.setattr(plan_module, "library_version", lambda: "9.9.9")
    upgraded = {st.name: st.hash for st in make_plan(recipe, tmp_path / "run")}
    assert all(upgraded[k] != base[k] for k in base)
    monkeypatch.undo()
    monkeypatch.setattr(plan_module, "bundled_data_digest", lambda: "0" * 64)
    assert all(st.hash != base[st.name] for st in make_plan(recipe, tmp_path / "run"))
    data = tmp_path / "data"
    (data / "flores").mkdir(parents=True)
    (data / "flores" / "a.txt").write_text("one")
    first = tree_digest(data)
    (data / "flores" / "a.txt").write_text("two")
    assert tree_digest(data) != first and len(first) == 64
    assert HASH_VERSION >= 2
