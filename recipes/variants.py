"""One ``Variant`` type: what a plane row adds to the model, parsed once from its name.

A variant name is ``<model>[+<addition>]``: ``model`` is ``base`` (no adapter) or ``cla`` (the alignment
adapter); ``addition`` is one of :data:`ADDITIONS`. Validation, the plan, the evaluation and the claims
all read the typed fields (``adapter``, ``roles``, ``control``, ``positions``) instead of re-parsing names.

Adding a variant is one entry in :data:`evaluate.variants.ADDITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluate.variants import ADDITIONS, Addition  # noqa: F401  (re-exported: the one table)

MODELS = ("base", "cla")

VARIANT_NAMES = tuple(f"{m}+{a}" if a else m for m in MODELS for a in ADDITIONS)
VARIANTS = VARIANT_NAMES
"""Every variant name: base, base+en, base+loc, base+surgical, base+experts, ..., cla, cla+en, ..."""


@dataclass(frozen=True)
class Variant:
    name: str
    adapter: bool
    addition: str
    roles: tuple[str, ...]
    control: bool
    positions: str | None
    crossfit_only: bool

    @property
    def model(self) -> str:
        return "cla" if self.adapter else "base"

    @property
    def steered(self) -> bool:
        return bool(self.roles)

    @classmethod
    def parse(cls, name: str) -> "Variant":
        model, _, addition = name.partition("+")
        if model not in MODELS or addition not in ADDITIONS or (not addition and "+" in name):
            raise ValueError(f"variant: expected one of {', '.join(VARIANT_NAMES)}, got {name!r}")
        a = ADDITIONS[addition]
        return cls(name, model == "cla", addition, a.roles, a.control, a.positions, a.crossfit_only)


def parse_variants(names) -> list[Variant]:
    return [Variant.parse(n) for n in names]


def parse_variant(name: str) -> tuple[str, frozenset[str]]:
    """(model, intervention roles) of a variant name; ValueError for a name not in :data:`VARIANTS`."""
    try:
        v = Variant.parse(name)
    except ValueError:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}") from None
    return v.model, frozenset(v.roles)


__all__ = ["ADDITIONS", "MODELS", "VARIANTS", "VARIANT_NAMES", "Addition", "Variant", "parse_variant", "parse_variants"]
