"""Steering as data: components by meaning, additive and "set" interventions, applied through pyvene.

>>> from interventions import load_model, load_tokenizer, AdditiveIntervention, InterventionConfig, steer

The names below load on first use (PEP 562), so the torch-free modules of this package (``fsutil``,
``provenance``) import without torch: ``recipes`` validates and hashes a recipe (``--dry-run``) with them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .components import COMPONENTS, decoder_layers, resolve, unwrap
    from .config import AdditiveIntervention, InterventionConfig, InterventionConfigError, SetIntervention
    from .models import load_model, load_tokenizer
    from .steer import steer

_EXPORTS = {
    "COMPONENTS": "components", "decoder_layers": "components", "resolve": "components", "unwrap": "components",
    "AdditiveIntervention": "config", "InterventionConfig": "config", "InterventionConfigError": "config",
    "SetIntervention": "config", "load_model": "models", "load_tokenizer": "models", "steer": "steer",
}
"""Public name -> the submodule that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps an export whose name is also a submodule's (``steer``): importing ``interventions.steer`` anywhere
    binds the submodule to the package's ``steer`` attribute, which would turn ``from interventions import steer``
    into the module (the eager ``from .steer import steer`` used to rebind it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
