"""Markdown tables for the reports: one builder and one n/a formatter (every report table uses them)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: the header, its separator line (one ``---`` per column) and one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def number(x, fmt: str = ".3f") -> str:
    """``x`` formatted, or ``n/a`` for None and NaN."""
    return "n/a" if x is None or x != x else format(x, fmt)


__all__ = ["markdown_table", "number"]
