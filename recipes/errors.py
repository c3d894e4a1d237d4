"""The one error a recipe raises (:class:`RecipeError`, naming the field; its text made printable by
:func:`interventions.fsutil.printable`) and how a refused value is shown in it (:func:`describe`).

Kept apart from :mod:`recipes.schema` (which re-exports both) so that modules the schema needs can raise it
without importing the schema back.
"""

from __future__ import annotations

import reprlib
from typing import Any

from interventions.fsutil import printable


class RecipeError(ValueError):
    """A recipe problem: ``field`` is the dotted path (``steering.loc.layer``), ``file`` the recipe."""

    def __init__(self, field: str, message: str, file: str | None = None):
        self.field = field
        self.message = message
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return printable(f"{where}{self.field}: {self.message}")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def describe(value: Any) -> str:
    """A short repr of a value of any size (bounded work: never builds the full repr of a huge value)."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # an int of more than 4300 digits
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."
