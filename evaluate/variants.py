"""What a variant adds to a model: one :class:`Addition` per name in :data:`ADDITIONS` (the one table).

``recipes.variants.Variant`` parses ``<model>[+<addition>]`` names against this table; the cross-fitted
protocol (:mod:`evaluate.crossfit`) builds every out-of-fold variant from it (:func:`crossfit_additions`).
Adding a variant is one entry here, e.g. a norm-matched random control of both vectors at once::

    "random_surgical": Addition(("en", "loc"), control=True, crossfit_only=True,
                                description="random directions, norms/layers/alphas of both chosen vectors"),
"""

from __future__ import annotations

from dataclasses import dataclass

STEERING_ROLES = ("en", "loc")
"""Roles the steering stage estimates (EN-transfer, LOC-cultural); ``experts`` come from a loaded directory."""


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


def crossfit_additions() -> dict[str, Addition]:
    """The additions the cross-fitted protocol scores with per-fold interventions: every steering addition except
    the single estimated vectors (``en``, ``loc``), which the cross-validation itself scores out of fold."""
    return {name: a for name, a in ADDITIONS.items()
            if a.roles and set(a.roles) <= set(STEERING_ROLES)
            and not (len(a.roles) == 1 and not a.control and a.positions is None)}


__all__ = ["ADDITIONS", "Addition", "STEERING_ROLES", "crossfit_additions"]
