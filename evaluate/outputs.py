"""What the writers of a plane run share (plane, plots, report, sweep_plots, the recipe stages): names and
the CSV files.

* :func:`csv_text` / :func:`write_csv` - the one CSV writer (rows of dicts; the columns are the given
  ``fields`` or every key in first-seen order); files are written atomically
  (:func:`interventions.fsutil.atomic_write`).
* :func:`results_csv` - ``results.csv`` of a plane run: the metric rows, then the plane rows.

Kept apart from :mod:`evaluate.plane` so that the figure and report modules, which the plane calls, do not
import the plane back.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from interventions.fsutil import atomic_write

HEADLINE = {"transfer": "accuracy", "localization": "localization_score"}
"""The metric each task kind is read by on the plane and in the per-task figure."""
MEAN = "mean"
"""The pseudo-language of rows pooled over all languages."""
CSV_FIELDS = ("variant", "language", "task", "cue", "metric", "value", "ci_low", "ci_high", "n", "chance",
              "baseline_majority", "baseline_fewer_tokens", "p_vs_chance", "above_chance", "diff_vs_base",
              "p_vs_base")
"""The columns of ``results.csv``."""


def csv_text(rows: Iterable[Mapping], fields: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text: columns ``fields`` (keys outside them are dropped) or, by default, every key of
    every row in first-seen order."""
    rows = list(rows)
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(rows: Iterable[Mapping], path: str | os.PathLike, fields: Sequence[str] | None = None) -> Path:
    """Write :func:`csv_text` of ``rows`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    atomic_write(path, csv_text(rows, fields))
    return path


def results_csv(results: Mapping) -> str:
    """results.csv: the metric rows, then the plane rows (task ``plane``, metric = the score's name)."""
    plane = ({**row, "task": "plane", "cue": "", "metric": row["score"]} for row in results["plane"])
    return csv_text([*results.get("metrics", []), *plane], CSV_FIELDS)
