"""What the writers of a plane run share (plane, plots, report, sweep_plots): names and atomic writes.

Kept apart from :mod:`evaluate.plane` so that the figure and report modules, which the plane calls, do not
import the plane back.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

HEADLINE = {"transfer": "accuracy", "localization": "localization_score"}
"""The metric each task kind is read by on the plane and in the per-task figure."""
MEAN = "mean"
"""The pseudo-language of rows pooled over all languages."""


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
