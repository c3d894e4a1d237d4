"""Checks of what a recipe points at and of the machine it runs on, made before any stage runs.

- directories named by the recipe: an adapter (readable ``adapter_config.json``), an intervention directory
  (loaded with the interventions loader, without a model, and checked against the model's depth and width),
  and no symlink or special file in either (the stages copy these directories into the run);
- the machine (:func:`check_environment`, called by ``python -m recipes.run`` for runs and dry runs):
  ``model.device`` available to torch (torch is imported only for a device other than cpu), Hub ids cached
  when ``HF_HUB_OFFLINE`` is set, and an ``--out`` that can be a directory.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from pathlib import Path

from interventions.fsutil import printable

from .errors import RecipeError, describe
from .schema import Recipe

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
EMBEDDED = ("gemma-3-270m", "google/gemma-3-270m")
"""Models that load without the Hub (interventions.models.EMBEDDED_MODELS)."""


def no_links_out(directory: Path, field: str) -> None:
    """Refuse a symlink or special file inside a directory the stages copy into the run (the rule of
    ``interventions.fsutil.copy_tree_no_symlinks``, checked here without importing torch)."""
    for count, (folder, dirs, files) in enumerate(os.walk(directory, followlinks=False)):
        if count > 10000:
            raise RecipeError(field, f"{directory} holds more than 10000 folders; expected an adapter or "
                                     "intervention directory")
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            mode = os.lstat(entry).st_mode
            if stat.S_ISLNK(mode):
                raise RecipeError(field, f"{entry} is a symbolic link (to {os.readlink(entry)}); symlinks are not "
                                         "copied into a run: replace it with the file itself")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise RecipeError(field, f"{entry} is not a regular file or directory")


def check_adapter_dir(value: str) -> None:
    directory = Path(os.path.expanduser(value))
    try:
        cfg = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise RecipeError("alignment.adapter", f"unreadable adapter_config.json in {value}: "
                                               f"{printable(str(err))[:200]}") from None
    if not isinstance(cfg, dict):
        raise RecipeError("alignment.adapter", f"adapter_config.json in {value}: expected a JSON object")
    no_links_out(directory, "alignment.adapter")


def check_intervention_dir(value: str, shape, model: str) -> None:
    """Load the directory with the interventions loader (no model) and check it against ``shape`` if known."""
    from interventions.config import InterventionConfig

    directory = Path(os.path.expanduser(value))
    no_links_out(directory, "steering.load")
    try:
        config = InterventionConfig.from_pretrained(directory)
    except (ValueError, OSError, RecursionError) as err:
        raise RecipeError("steering.load", printable(str(err))[:300]) from None
    if not config.interventions:
        raise RecipeError("steering.load", f"{value} holds no interventions")
    if shape is None:
        return
    hidden = (config.base_model or {}).get("hidden_size")
    if isinstance(hidden, int) and hidden != shape.hidden_size:
        raise RecipeError("steering.load", f"{value} was made for hidden size {hidden}; {model} has "
                                           f"{shape.hidden_size}")
    for iv in config.interventions:
        if not 0 <= iv.layer < shape.num_layers:
            raise RecipeError("steering.load", f"{value}: {iv.name} is at layer {iv.layer}; {model} has layers "
                                               f"0..{shape.num_layers - 1}")


# ---------------------------------------------------------------- the machine


def check_device(device: str | None) -> None:
    """``model.device`` must be one torch can use here (torch is imported only for a non-cpu device)."""
    if device is None or device == "cpu":
        return
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        available, count = torch.cuda.is_available(), torch.cuda.device_count()
    elif kind == "mps":
        available = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        count = 1
    else:
        xpu = getattr(torch, "xpu", None)
        available = bool(xpu is not None and xpu.is_available())
        count = xpu.device_count() if available else 0
    if not available:
        raise RecipeError("model.device", f"{device!r}: torch finds no {kind} device on this machine "
                                          f"(torch.{'backends.' if kind == 'mps' else ''}{kind}.is_available() is "
                                          "false); use cpu or model.device_map: auto")
    if index and int(index) >= count:
        raise RecipeError("model.device", f"{device!r}: this machine has {count} {kind} device(s)")


def offline_variable() -> str | None:
    """The environment variable that puts the Hub offline, if one is set (as huggingface_hub reads it)."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def looks_like_path(value: str) -> bool:
    """A local path (as opposed to a Hub id): explicit prefix, existing, or more than one slash."""
    return (value.startswith(("/", "./", "../", "~", "\\")) or value in (".", "..")
            or value.count("/") > 1 or os.path.exists(os.path.expanduser(value)))


def check_cached(repo_id: str, filename: str, field: str, variable: str, revision: str | None = None) -> None:
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # noqa: BLE001 - an unusable cache is the same as no cache
        cached = None
    if not isinstance(cached, str):
        raise RecipeError(field, f"{repo_id} is not cached locally and {variable} is set (no {filename} in the "
                                 "Hugging Face cache): download it once online, or name a local directory")


def check_offline(recipe: Recipe) -> None:
    """With the Hub offline, every Hub id the run needs must be in the local cache (no minute of retries)."""
    variable = offline_variable()
    if variable is None:
        return
    m, a, s = recipe.model, recipe.alignment, recipe.steering
    if m.name not in EMBEDDED and not looks_like_path(m.name):
        check_cached(m.name, "config.json", "model.name", variable, m.revision)
    if a.adapter is not None and not looks_like_path(a.adapter):
        check_cached(a.adapter, "adapter_config.json", "alignment.adapter", variable)
    if s.load is not None and not looks_like_path(s.load):
        check_cached(s.load, "intervention_config.json", "steering.load", variable)


def check_out_dir(run_dir: Path) -> None:
    """``--out`` must be, or be creatable as, a writable directory (no file on its path)."""
    text = str(run_dir)
    if any(unicodedata.category(c)[0] == "C" for c in text):
        raise RecipeError("--out", f"expected a directory path without control characters, got {describe(text)}")
    if run_dir.exists():
        if not run_dir.is_dir():
            raise RecipeError("--out", f"expected a directory, got an existing file: {run_dir}")
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise RecipeError("--out", f"directory {run_dir} is not writable")
        return
    for parent in run_dir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RecipeError("--out", f"{parent} is a file, so {run_dir} cannot be a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RecipeError("--out", f"cannot create {run_dir}: {parent} is not writable")
            return
        if parent.is_symlink():  # a dangling link on the path
            raise RecipeError("--out", f"{parent} is a broken symlink")


def check_environment(recipe: Recipe, run_dir: Path) -> None:
    check_out_dir(run_dir)
    check_device(recipe.model.device)
    check_offline(recipe)
