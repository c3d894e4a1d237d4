"""The run directory: stage hashes, stage directories committed atomically, the run's lock, leftovers.

Each stage's output lives in ``<run_dir>/<stage>-<hash12>/`` where the hash is the sha256 of the canonical
JSON of the stage's own config plus the hashes of the upstream stages it reads (:func:`content_hash`; the
plan, :mod:`recipes.plan`, assembles what goes in). A stage is written into a hidden temporary sibling
(:class:`StageWriter`) and renamed into place only after its ``stage.json`` marker is written, so an
interrupted stage leaves nothing a later run trusts; the hidden leftovers of a killed run are removed by the
next run (:func:`clean_stale`). A run holds ``<run_dir>/.lock`` (:class:`RunLock`) for its whole length: a
second run into the same directory is refused.

The atomic writes (:mod:`interventions.fsutil`) are torch-free, like :mod:`interventions.provenance` that
the plan's hashes read the library version from: ``--dry-run`` (which hashes every stage) imports no torch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interventions.fsutil import fresh_sibling_dir, ordinary_permissions, replace_dir

from .schema import STAGES, RecipeError

HASH_VERSION = 3
"""Part of every stage hash: bumped when what a stage writes changes shape (3: the typed artifacts of
:mod:`recipes.artifacts`, with a ``format_version``), so an older stage directory is recomputed, never misread."""
MARKER = "stage.json"
LOCK = ".lock"
STALE = re.compile(rf"^\.(?:{'|'.join(STAGES)})-[0-9a-f]{{12}}\.(?:tmp|old)-|^\.recipe\.yaml\.")
"""Hidden leftovers of a killed run: stage temp/trash directories and recipe.yaml temp files."""


# ---------------------------------------------------------------------------------------------- hashes
def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over a directory tree: every file's relative path and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def bundled_data_digest() -> str:
    """:func:`tree_digest` of the bundled data (``evaluate/data``), computed once per process."""
    spec = importlib.util.find_spec("evaluate")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return tree_digest(Path(locations[0]) / "data") if locations else "none"


# ---------------------------------------------------------------------------------------------- stages
@dataclass
class StagePlan:
    name: str
    config: dict
    upstream: list[str]
    hash: str = ""
    active: bool = True
    """False when the recipe asks nothing of this stage (e.g. no adapter, publish disabled)."""
    action: str = ""
    directory: Path | None = None
    complete: bool = False

    @property
    def status(self) -> str:
        if not self.active:
            return "off"
        return "skip (complete)" if self.complete else "run"


def is_complete(directory: Path, expected_hash: str) -> bool:
    try:
        meta = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("hash") == expected_hash


class StageWriter:
    """``with StageWriter(stage) as out:`` write into ``out``; committed only if the block succeeds (and
    ``commit``): the ``stage.json`` marker is written last, then the directory replaces ``stage.directory``
    with ordinary permissions (:func:`interventions.fsutil.fresh_sibling_dir` / ``replace_dir``)."""

    def __init__(self, stage: StagePlan, meta: dict | None = None, commit: bool = True):
        self.stage = stage
        self.meta = meta or {}
        self.commit = commit
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.tmp = fresh_sibling_dir(self.stage.directory)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None and self.commit:
                marker = {"stage": self.stage.name, "hash": self.stage.hash, "config": self.stage.config,
                          "upstream": self.stage.upstream, **self.meta}
                (self.tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
                ordinary_permissions(self.tmp)
                # --force, or a stale incomplete directory: the old one is moved aside, then deleted
                replace_dir(self.tmp, self.stage.directory)
                self.stage.complete = True
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def clean_stale(run_dir: Path) -> list[str]:
    """Remove the hidden leftovers of a killed run (call with the run's lock held); their names."""
    removed = []
    for entry in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if STALE.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


# ---------------------------------------------------------------------------------------------- the lock
class RunLock:
    """``with RunLock(run_dir):`` an exclusive, non-blocking ``flock`` on ``<run_dir>/.lock`` (pid inside).

    A second holder is refused with a :class:`RecipeError` naming the lock and the pid holding it. The lock
    file is removed on release; a run that opened it just before is told by the inode check and retries.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="ascii", errors="replace") as fh:
                pid = fh.read(32).strip()
        except OSError:
            pid = ""
        return pid if pid.isdigit() else "unknown"

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: runs are not serialized
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RecipeError("--out", f"another run holds {self.path} (pid {self._holder()}); wait for it "
                                           "or use another --out") from None
            except OSError as err:  # a file system without flock (some network mounts): run unserialized
                os.close(fd)
                print(f"warning: cannot lock {self.path} ({err.strerror}); runs into this directory are not "
                      "serialized", file=sys.stderr, flush=True)
                return self
            try:
                current = os.stat(self.path)
                same = (current.st_ino, current.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file we opened: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd
        return self

    def __exit__(self, *exc) -> bool:
        if self.fd is not None:
            import fcntl

            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False
