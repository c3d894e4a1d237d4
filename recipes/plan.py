"""The run plan: which stages run, their content hashes, and atomic stage directories.

Each stage's output lives in ``<run_dir>/<stage>-<hash12>/`` where the hash is the sha256 of
the canonical JSON of the stage's own config plus the hashes of the upstream stages it reads.
A stage is written into a hidden temporary sibling and renamed into place only after its
``stage.json`` marker is written, so an interrupted stage leaves nothing a later run trusts; the
hidden leftovers of a killed run are removed by the next run (:func:`clean_stale`). The hash also
covers the library version and one digest of the bundled data (``evaluate/data``), so an upgrade
never reuses a stage computed by other code or data. A run holds ``<run_dir>/.lock``
(:class:`RunLock`) for its whole length: a second run into the same directory is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .crossfit_stage import uses_crossfit
from .schema import STAGES, Recipe, RecipeError

HASH_VERSION = 2
MARKER = "stage.json"
LOCK = ".lock"
STALE = re.compile(rf"^\.(?:{'|'.join(STAGES)})-[0-9a-f]{{12}}\.(?:tmp|old)-|^\.recipe\.yaml\.")
"""Hidden leftovers of a killed run: stage temp/trash directories and recipe.yaml temp files."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


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


@dataclass
class Plan:
    recipe: Recipe
    run_dir: Path
    stages: dict[str, StagePlan] = field(default_factory=dict)
    forced: set[str] = field(default_factory=set)
    """Stages to redo even if complete (``--force``)."""

    def __iter__(self):
        return iter(self.stages.values())

    def describe(self) -> str:
        lines = [f"recipe {self.recipe.name} (seed {self.recipe.seed}) -> {self.run_dir}"]
        for st in self:
            where = st.directory.name if (st.active and st.directory) else "-"
            lines.append(f"  {st.name:<10} {st.hash[:12]:<12} {st.status:<16} {where:<24} {st.action}")
        return "\n".join(lines)


def _uses_cla(recipe: Recipe) -> bool:
    a = recipe.alignment
    return a.method != "none" or a.adapter is not None


def _steering_active(recipe: Recipe) -> bool:
    s = recipe.steering
    return s.load is not None or s.en.enabled or s.loc.enabled


def _describe_actions(recipe: Recipe) -> dict[str, str]:
    m, a, s, e, r, p = (recipe.model, recipe.alignment, recipe.steering, recipe.evaluate,
                        recipe.report, recipe.publish)
    an = recipe.analysis
    if a.adapter:
        align = f"load adapter {a.adapter}"
    elif a.method != "none":
        langs = ",".join(a.languages or [x for x in e.languages if x != "en"])
        def knob(v):
            return "method default" if v is None else v

        align = (f"train {a.method} LoRA r={knob(a.lora_r)} ({knob(a.max_steps)} steps, lr {knob(a.learning_rate)}, "
                 f"{langs})")
    else:
        align = "no adapter"
    if s.load:
        steer = f"load intervention directory {s.load}"
    else:
        parts = []
        for which in ("en", "loc"):
            v = getattr(s, which)
            if v.enabled:
                data = v.data if isinstance(v.data, str) else "+".join(v.data)
                parts.append(f"{which.upper()} {s.method} on {data} (n={v.n}) layer {v.layer} alpha {v.alpha}")
        if uses_crossfit(recipe):
            steer = ("; ".join(parts) + f" at {s.component}: {s.selection.folds}-fold cross-validated selection "
                     f"on every item (layers {s.layers or 'all'}, alphas {s.alphas}), out-of-fold plane with "
                     "random-direction controls, for each evaluated model")
        else:
            steer = "; ".join(parts) + f" at {s.component} on the {s.compute_on} model"
    return {
        "model": f"load {m.name} ({m.dtype}{', ' + m.device if m.device else ''})",
        "alignment": align,
        "steering": steer,
        "evaluate": (f"{len(e.variants)} variants x {len(e.languages)} languages x {len(e.tasks)} tasks "
                     f"({', '.join(e.variants)} | {', '.join(e.languages)} | {', '.join(e.tasks)}), "
                     + (f"out of fold over every split ({e.n or 'all'} transfer / {e.n_localization or 'all'} "
                        "localization groups per task and language), pre-registered tests"
                        if uses_crossfit(recipe) else f"split {e.split}, n<={e.n}")),
        "analysis": (f"FLORES devtest representations by layer (n={an.n}; {', '.join(['en', *e.languages])}): "
                     "PCA grid, language separation, retrieval; cos(v_EN, v_LOC) per layer" if an.enabled
                     else "disabled"),
        "experts": _describe_experts(recipe),
        "report": f"write {', '.join(r.formats)}{' + plots' if r.plots else ''}"
                  + (" + pre-registered tests" if uses_crossfit(recipe) else " + claims as measured"),
        "publish": (f"push {', '.join(p.push)} to {p.repo_id} ({'private' if p.private else 'public'})"
                    if p.enabled else "disabled"),
    }


def experts_settings(recipe: Recipe) -> dict:
    """The experts section with its defaults resolved (targets, contrast pool, ks, apply_to as a list)."""
    x = dataclasses.asdict(recipe.experts)
    targets = x["languages"] or [lang for lang in recipe.evaluate.languages if lang != "en"]
    contrast = list(dict.fromkeys(["en"] + list(x["contrast"] or targets) + targets))
    apply_to = [x["apply_to"]] if isinstance(x["apply_to"], str) else list(dict.fromkeys(x["apply_to"]))
    return {**x, "languages": targets, "contrast": contrast, "ks": sorted(set(x["ks"] or [x["k"]])),
            "apply_to": apply_to, "seed": recipe.seed}


def _describe_experts(recipe: Recipe) -> str:
    if not recipe.experts.enabled:
        return "disabled"
    x = experts_settings(recipe)
    retrieval = (f"; FLORES devtest retrieval n={x['retrieval_n']} at k={x['ks']} ({'+'.join(x['apply_to'])})"
                 if x["retrieval_n"] else "")
    return (f"find {'+'.join(x['components'])} experts of {', '.join(x['languages'])} vs {', '.join(x['contrast'])} "
            f"(n={x['n']} FLORES dev); save top-{x['k']} as set interventions{retrieval}")


def stage_configs(recipe: Recipe) -> dict[str, tuple[dict, list[str], bool]]:
    """Per stage: (its own config, the upstream stages whose hashes it includes, active)."""
    d = dataclasses.asdict(recipe)
    e = recipe.evaluate
    cla_eval = any(v.startswith("cla") for v in e.variants)
    steer_eval = any("+" in v for v in e.variants)
    align_cfg = dict(d["alignment"])
    if align_cfg["seed"] is None:
        align_cfg["seed"] = recipe.seed
    if align_cfg["languages"] is None and align_cfg["method"] != "none":
        align_cfg["languages"] = [x for x in e.languages if x != "en"]
    steer_cfg = {**d["steering"], "languages": list(e.languages), "seed": recipe.seed}
    crossfit = uses_crossfit(recipe)
    if crossfit:  # the cross-fitted stage scores the evaluation items of every evaluated model
        steer_cfg["evaluate"] = {k: d["evaluate"][k] for k in ("tasks", "variants", "n", "n_localization",
                                                                 "batch_size")}
    publish_up = ["steering"] + (["alignment"] if "adapter" in recipe.publish.push else []) + (
        ["report"] if "report" in recipe.publish.push else [])
    return {
        "model": (d["model"], [], True),
        "alignment": (align_cfg, ["model"], _uses_cla(recipe)),
        "steering": (steer_cfg, ["model"] + (["alignment"] if recipe.steering.compute_on == "cla"
                                             or (crossfit and cla_eval) else []),
                     _steering_active(recipe) and (steer_eval or recipe.publish.enabled or recipe.analysis.enabled)),
        "analysis": ({**d["analysis"], "languages": list(e.languages), "seed": recipe.seed}, ["model", "steering"],
                     recipe.analysis.enabled),
        "experts": (experts_settings(recipe), ["model"], recipe.experts.enabled),
        "evaluate": ({**d["evaluate"], "seed": recipe.seed},
                     ["model"] + (["alignment"] if cla_eval else []) + (["steering"] if steer_eval else []), True),
        "report": (d["report"], ["evaluate", "analysis"], recipe.report.enabled),
        "publish": ({k: v for k, v in d["publish"].items() if k != "token_env"}, publish_up,
                    recipe.publish.enabled),
    }


def library_version() -> str:
    try:
        return metadata.version("surgical-steering")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


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


def is_complete(directory: Path, expected_hash: str) -> bool:
    try:
        meta = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("hash") == expected_hash


def make_plan(recipe: Recipe, run_dir: Path) -> Plan:
    """Hash every stage (own config + upstream hashes) and check which are already complete."""
    plan = Plan(recipe, Path(run_dir))
    actions = _describe_actions(recipe)
    code = {"hash_version": HASH_VERSION, "library": library_version(), "data": bundled_data_digest()}
    for name, (cfg, upstream, active) in stage_configs(recipe).items():
        upstream = [u for u in upstream if plan.stages[u].active]
        digest = content_hash({**code, "stage": name, "config": cfg,
                               "upstream": {u: plan.stages[u].hash for u in upstream}})
        st = StagePlan(name, cfg, upstream, digest, active, actions[name])
        st.directory = plan.run_dir / f"{name}-{digest[:12]}"
        st.complete = active and is_complete(st.directory, digest)
        plan.stages[name] = st
    assert tuple(plan.stages) == STAGES
    return plan


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_permissions(root: Path) -> None:
    """Give a tree made by mkdtemp/mkstemp (0700/0600) the modes of ordinary files: 0777/0666 less the umask."""
    mask = _umask()
    dirs, files = 0o777 & ~mask, 0o666 & ~mask
    if root.is_file() and not root.is_symlink():
        os.chmod(root, files)
        return
    os.chmod(root, dirs)
    for folder, subdirs, names in os.walk(root):
        for name in subdirs + names:
            entry = os.path.join(folder, name)
            if not os.path.islink(entry):
                os.chmod(entry, dirs if name in subdirs else files)


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        publish_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class StageWriter:
    """``with StageWriter(stage) as out:`` write into ``out``; committed only if the block succeeds."""

    def __init__(self, stage: StagePlan, meta: dict | None = None, commit: bool = True):
        self.stage = stage
        self.meta = meta or {}
        self.commit = commit
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        final = self.stage.directory
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None and self.commit:
                marker = {"stage": self.stage.name, "hash": self.stage.hash, "config": self.stage.config,
                          "upstream": self.stage.upstream, **self.meta}
                (self.tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
                publish_permissions(self.tmp)
                final = self.stage.directory
                if final.exists():  # --force, or a stale incomplete directory: move aside, then delete
                    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                    os.replace(final, trash / "old")
                    shutil.rmtree(trash, ignore_errors=True)
                os.replace(self.tmp, final)
                self.stage.complete = True
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False
