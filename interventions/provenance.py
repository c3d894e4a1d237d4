"""Provenance, the one implementation: the library's own version and what a result was computed with.

* :func:`library_version` - the installed version of surgical-steering (``"unknown"`` in a source tree that
  is not installed); written into intervention directories and covered by a recipe's stage hashes.
* :func:`versions` - Python, the platform, this library, the libraries in :data:`PACKAGES` (read from their
  installed metadata, so nothing is imported) and the git commit when run from a checkout; written into
  results.json, stage markers and adapter metadata.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "surgical-steering"
PACKAGES = ("torch", "transformers", "peft", "trl", "pyvene", "accelerate", "huggingface_hub", "datasets",
            "safetensors", "numpy", "seaborn")
"""The libraries a result depends on, in the order :func:`versions` lists them."""
NOT_INSTALLED = "not installed"


def library_version() -> str:
    """The installed version of this library, ``"unknown"`` when it is run from a source tree only."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def git_commit() -> str | None:
    """The commit of the checkout this library runs from, or None (not a git checkout, or no git)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():  # installed into site-packages: a surrounding repository is not ours
        return None
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """``{"python", "platform", "surgical-steering", <package>..., "git_commit"}``; a package that is not
    installed is listed as ``"not installed"``."""
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform(),
                                  DISTRIBUTION: library_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = NOT_INSTALLED
    out["git_commit"] = git_commit()
    return out
