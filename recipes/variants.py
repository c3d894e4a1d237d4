"""One ``Variant`` type: what a plane row adds to the model, parsed once from its name.

A variant name is ``<model>[+<addition>]``: ``model`` is ``base`` (no adapter) or ``cla`` (the alignment
adapter); ``addition`` is one of :data:`ADDITIONS`. Validation, the plan, the evaluation and the claims
all read the typed fields (``adapter``, ``roles``, ``control``, ``positions``) instead of re-parsing names.

Adding a variant is one entry in :data:`ADDITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

MODELS = ("base", "cla")


@dataclass(frozen=True)
class Addition:
    roles: tuple[str, ...]
    """Intervention roles applied: ``en`` (EN-transfer), ``loc`` (LOC-cultural), ``experts``."""
    control: bool = False
    """Norm-matched random directions at the same layer and strength instead of the estimated vectors."""
    positions: str | None = None
    """Override of every vector's positions (None: each vector's own, EN prompt / LOC last token)."""
    crossfit_only: bool = False
    """Exists only in the out-of-fold plane (selection: auto), where a per-fold choice defines it."""
    description: str = ""


ADDITIONS: dict[str, Addition] = {
    "": Addition((), description="the model alone"),
    "en": Addition(("en",), description="EN-transfer vector"),
    "loc": Addition(("loc",), description="LOC-cultural vector"),
    "surgical": Addition(("en", "loc"), description="EN-transfer and LOC-cultural vectors at once"),
    "experts": Addition(("experts",), description="language experts forced (a loaded experts directory)"),
    "random_en": Addition(("en",), control=True, crossfit_only=True,
                          description="random direction, norm/layer/alpha of the chosen EN vector"),
    "random_loc": Addition(("loc",), control=True, crossfit_only=True,
                           description="random direction, norm/layer/alpha of the chosen LOC vector"),
    "surgical_all_positions": Addition(("en", "loc"), positions="all", crossfit_only=True,
                                       description="Surgical with both vectors at every position (sensitivity)"),
}

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
