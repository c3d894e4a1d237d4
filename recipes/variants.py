"""Plane variants: a model (``base`` or ``cla``, the model with the alignment adapter), optionally steered by the
interventions of one or more roles. Torch-free, so recipe validation and the runtime share one table.

- ``en``: EN-transfer vectors; ``loc``: LOC-cultural vectors; ``surgical``: both;
- ``experts``: the language-expert units of an experts stage directory, loaded with ``steering.load``.
"""

from __future__ import annotations

MODELS = ("base", "cla")
STEERS: dict[str, frozenset[str]] = {"": frozenset(), "en": frozenset({"en"}), "loc": frozenset({"loc"}),
                                     "surgical": frozenset({"en", "loc"}), "experts": frozenset({"experts"})}
"""Intervention roles each variant suffix (``<model>+<suffix>``) applies."""
VARIANTS = tuple(f"{m}+{s}" if s else m for m in MODELS for s in STEERS)
"""Every variant name: base, base+en, base+loc, base+surgical, base+experts, cla, cla+en, ..."""


def parse_variant(name: str) -> tuple[str, frozenset[str]]:
    """(model, intervention roles) of a variant name; ValueError for a name not in :data:`VARIANTS`."""
    model, _, steer = name.partition("+")
    if model not in MODELS or steer not in STEERS or (not steer and "+" in name):
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
    return model, STEERS[steer]
