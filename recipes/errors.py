"""The one error a recipe raises (:class:`RecipeError`, naming the field) and how its text is made printable.

Kept apart from :mod:`recipes.schema` (which re-exports both) so that modules the schema needs can raise it
without importing the schema back.
"""

from __future__ import annotations

import unicodedata


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


def printable(text: str) -> str:
    """``text`` with control and format characters (NUL, ANSI escapes, newlines, bidi marks) escaped."""
    if all(unicodedata.category(c)[0] != "C" for c in text):
        return text
    return "".join(c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii")
                   for c in text)
