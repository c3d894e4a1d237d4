"""Intervention kinds: one class each, registered in :data:`INTERVENTION_KINDS` (as peft's
``PEFT_TYPE_TO_CONFIG_MAPPING``).

A kind is a dataclass subclass of :class:`Intervention` that says

* what it stores: ``tensor_fields`` (saved in the safetensors file as ``<name>.<field>``), ``number_fields``
  (JSON numbers, with their defaults) and ``summary()`` (derived numbers written for readers, ignored on load);
* how it is checked: ``validate_own`` (its tensors), ``check_width`` (against the component's width),
  ``check_strength`` (finite in the model's dtype);
* how it is applied: ``steering_module(state)`` (the pyvene module :func:`interventions.steer.steer`
  installs) and ``pyvene_export(width)`` (the pyvene-loadable module of the exported layout);
* how the model card shows it: ``describe()``.

The saver, the loader, ``steer`` and the card only call these, so a new kind is one class plus one
registration line (``register_kind(MyKind)``); the kind's ``kind`` string is what the JSON records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .artifact import POSITIONS, InterventionConfigError, check_role_and_language, role_and_language
from .components import COMPONENTS, unwrap

COMMON_KEYS = ("component", "kind", "language", "layer", "name", "positions", "role", "source")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (its hidden states, hence what steering is cast to)."""
    base = unwrap(model)
    dtype = getattr(base, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    return next((p.dtype for p in base.parameters() if p.is_floating_point()), torch.float32)


def check_tensor(t: Any, field_name: str, *, floating: bool) -> torch.Tensor:
    """A 1-D tensor: floating and finite, or integer (int64/int32); else the error names ``field_name``."""
    if not isinstance(t, torch.Tensor):
        raise InterventionConfigError(field_name, f"expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise InterventionConfigError(field_name, f"expected a 1-D tensor, got shape {tuple(t.shape)}")
    if floating:
        if not t.is_floating_point():
            raise InterventionConfigError(field_name, f"expected a floating-point dtype, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise InterventionConfigError(field_name, "contains non-finite values (nan or inf)")
    elif t.dtype not in (torch.int64, torch.int32):
        raise InterventionConfigError(field_name, f"expected an integer dtype (int64), got {t.dtype}")
    return t


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def overflow_limit(dtype: torch.dtype) -> str:
    return f"{dtype} holds magnitudes up to {torch.finfo(dtype).max:.3g}"


@dataclass
class Intervention:
    """What every kind has: where it acts (``component``, ``layer``; ``positions`` in each kind), what it is
    for (``role`` in :data:`~interventions.artifact.ROLES`, ``language`` an ISO 639 code or None) and its
    ``source`` provenance. ``role``/``language`` left out are derived from ``source``
    (:func:`~interventions.artifact.role_and_language`)."""

    name: str
    component: str
    layer: int
    role: str | None = field(default=None, kw_only=True)
    language: str | None = field(default=None, kw_only=True)

    kind: ClassVar[str] = ""
    tensor_fields: ClassVar[tuple[str, ...]] = ()
    number_fields: ClassVar[dict[str, float]] = {}
    summary_keys: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if self.role is None or self.language is None:
            role, language = role_and_language(getattr(self, "source", None))
            self.role = role if self.role is None else self.role
            self.language = language if self.language is None else self.language

    # ------------------------------------------------------------------ storage
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{self.name}.{f}": getattr(self, f) for f in self.tensor_fields}

    def summary(self) -> dict[str, Any]:
        """Derived numbers written into the JSON for readers (``summary_keys``); ignored when loading."""
        return {}

    def to_entry(self) -> dict[str, Any]:
        entry = {"name": self.name, "kind": self.kind, "component": self.component, "layer": self.layer,
                 "positions": self.positions, "source": self.source, "role": self.role, "language": self.language}
        entry.update({f: f"{self.name}.{f}" for f in self.tensor_fields})
        entry.update({k: float(getattr(self, k)) for k in self.number_fields})
        entry.update(self.summary())
        return entry

    @classmethod
    def entry_keys(cls) -> tuple[str, ...]:
        return tuple(sorted(COMMON_KEYS + cls.tensor_fields + tuple(cls.number_fields) + cls.summary_keys))

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        return ("name", "component", "layer", "role", "language") + cls.tensor_fields

    @classmethod
    def from_entry(cls, entry: dict, tensor: Callable[[str], torch.Tensor]) -> "Intervention":
        """The intervention of a JSON ``entry`` whose keys were checked; ``tensor(field)`` reads a tensor."""
        kwargs = {f: tensor(f) for f in cls.tensor_fields}
        kwargs.update({k: entry.get(k, default) for k, default in cls.number_fields.items()})
        return cls(name=entry["name"], component=entry["component"], layer=entry["layer"],
                   positions=entry.get("positions", "all"), source=entry.get("source", {}), role=entry["role"],
                   language=entry["language"], **kwargs)

    # ------------------------------------------------------------------ checks
    def validate(self, where: str, n_layers: int | None = None) -> None:
        """Everything checkable without a model (``n_layers`` when known); errors name ``where.<field>``."""
        if not isinstance(self.name, str) or not self.name or not self.name.isprintable() \
                or any(c in self.name for c in "/\\ "):
            raise InterventionConfigError(f"{where}.name", f"expected a non-empty name of printable characters "
                                          f"without spaces or slashes, got {self.name!r}")
        if self.component not in COMPONENTS:
            raise InterventionConfigError(f"{where}.component", f"expected one of {list(COMPONENTS)}, got "
                                          f"{self.component!r}")
        if self.positions not in POSITIONS:
            raise InterventionConfigError(f"{where}.positions", f"expected one of {list(POSITIONS)}, got "
                                          f"{self.positions!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise InterventionConfigError(f"{where}.layer", f"expected an int, got {self.layer!r}")
        if isinstance(n_layers, int) and not 0 <= self.layer < n_layers:
            raise InterventionConfigError(f"{where}.layer", f"expected an int in [0, {n_layers - 1}], got "
                                          f"{self.layer}")
        if not isinstance(self.source, dict):
            raise InterventionConfigError(f"{where}.source", f"expected a mapping, got {type(self.source).__name__}")
        check_role_and_language(self.role, self.language, where)
        for key in self.number_fields:
            if not _is_finite_number(getattr(self, key)):
                raise InterventionConfigError(f"{where}.{key}", f"expected a finite number, got "
                                              f"{getattr(self, key)!r}")
        self.validate_own(where)

    def validate_own(self, where: str) -> None:
        """The kind's own tensors (shapes, dtypes, finiteness)."""

    def check_width(self, where: str, width: int | None) -> None:
        """Against the width of ``component`` (None when unknown without the model)."""

    def check_strength(self, where: str, dtype: torch.dtype) -> None:
        """Refuse floating tensors that are not finite once cast to the model's ``dtype`` (1e300 in bf16)."""
        for f in self.tensor_fields:
            t = getattr(self, f)
            if t.is_floating_point() and not torch.isfinite(t.to(dtype)).all():
                raise InterventionConfigError(f"{where}.{f}", f"values up to {float(t.abs().max()):.3g} overflow "
                                              f"in the model's dtype ({overflow_limit(dtype)})")

    # ------------------------------------------------------------------ application and description
    def steering_module(self, state):
        """The pyvene intervention module :func:`~interventions.steer.steer` installs (reads ``state``)."""
        raise NotImplementedError(f"{type(self).__name__} (kind {self.kind!r}) has no steering_module")

    def pyvene_export(self, width: int):
        """The pyvene-loadable module written by :func:`~interventions.pyvene_compat.export_pyvene`."""
        raise NotImplementedError(f"{type(self).__name__} (kind {self.kind!r}) has no pyvene_export")

    def describe(self) -> str:
        """One line for the model card's "what" column."""
        return self.kind


@dataclass
class AdditiveIntervention(Intervention):
    """Add ``coefficient * vector`` to ``component`` at ``layer`` on the selected ``positions``."""

    vector: torch.Tensor
    coefficient: float = 1.0
    positions: str = "all"
    source: dict = field(default_factory=dict)

    kind: ClassVar[str] = "additive"
    tensor_fields: ClassVar[tuple[str, ...]] = ("vector",)
    number_fields: ClassVar[dict[str, float]] = {"coefficient": 1.0}
    summary_keys: ClassVar[tuple[str, ...]] = ("vector_norm",)

    def delta(self) -> torch.Tensor:
        return float(self.coefficient) * self.vector

    def width(self) -> int:
        return int(self.vector.shape[0])

    def summary(self) -> dict[str, Any]:
        return {"vector_norm": float(self.vector.float().norm())}

    def validate_own(self, where: str) -> None:
        check_tensor(self.vector, f"{where}.vector", floating=True)

    def check_width(self, where: str, width: int | None) -> None:
        if width is not None and self.width() != width:
            raise InterventionConfigError(f"{where}.vector", f"expected shape ({width},) for {self.component}, "
                                          f"got {tuple(self.vector.shape)}")

    def check_strength(self, where: str, dtype: torch.dtype) -> None:
        super().check_strength(where, dtype)
        if not torch.isfinite(self.delta().to(dtype)).all():
            peak = abs(float(self.coefficient)) * float(self.vector.double().abs().max())
            raise InterventionConfigError(f"{where}.coefficient", f"coefficient {float(self.coefficient):g} x "
                                          f"vector reaches {peak:.3g}, which overflows in the model's dtype "
                                          f"({overflow_limit(dtype)})")

    def steering_module(self, state):
        from .pyvene_compat import AdditiveSteering

        return AdditiveSteering(self.delta(), self.positions, state)

    def pyvene_export(self, width: int):
        from .pyvene_compat import pyvene

        return pyvene().AdditionIntervention(embed_dim=width, source_representation=self.delta().float())

    def describe(self) -> str:
        return f"add {self.coefficient:g} x vector (norm {float(self.vector.float().norm()):.3g})"


@dataclass
class SetIntervention(Intervention):
    """Force units ``units`` of ``component`` at ``layer`` to ``values`` (e.g. language-expert neurons)."""

    units: torch.Tensor
    values: torch.Tensor
    positions: str = "all"
    source: dict = field(default_factory=dict)

    kind: ClassVar[str] = "set"
    tensor_fields: ClassVar[tuple[str, ...]] = ("units", "values")
    summary_keys: ClassVar[tuple[str, ...]] = ("n_units",)

    def width(self) -> int | None:
        return None  # known only from the model: units must be < the component's width

    def summary(self) -> dict[str, Any]:
        return {"n_units": int(self.units.numel())}

    def validate_own(self, where: str) -> None:
        units = check_tensor(self.units, f"{where}.units", floating=False)
        values = check_tensor(self.values, f"{where}.values", floating=True)
        if units.shape != values.shape:
            raise InterventionConfigError(f"{where}.values", f"expected shape {tuple(units.shape)} (one value per "
                                          f"unit), got {tuple(values.shape)}")
        if units.numel() and int(units.min()) < 0:
            raise InterventionConfigError(f"{where}.units", "unit indices must be >= 0")
        if units.unique().numel() != units.numel():
            raise InterventionConfigError(f"{where}.units", "unit indices must be unique")

    def check_width(self, where: str, width: int | None) -> None:
        if width is not None and self.units.numel() and int(self.units.max()) >= width:
            raise InterventionConfigError(f"{where}.units", f"unit index {int(self.units.max())} out of range for "
                                          f"{self.component} of width {width}")

    def steering_module(self, state):
        from .pyvene_compat import SetUnits

        return SetUnits(self.units, self.values, self.positions, state)

    def pyvene_export(self, width: int):
        from .pyvene_compat import SetUnitsIntervention

        return SetUnitsIntervention.from_units(self.units, self.values, width)

    def describe(self) -> str:
        return f"set {self.units.numel()} units to fixed values"


INTERVENTION_KINDS: dict[str, type[Intervention]] = {"additive": AdditiveIntervention, "set": SetIntervention}


def register_kind(cls: type[Intervention]) -> type[Intervention]:
    """Add ``cls`` to :data:`INTERVENTION_KINDS` under ``cls.kind`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Intervention)):
        raise TypeError(f"expected a subclass of Intervention, got {cls!r}")
    if not isinstance(cls.kind, str) or not cls.kind.isidentifier():
        raise ValueError(f"{cls.__name__}.kind: expected an identifier such as 'additive', got {cls.kind!r}")
    if INTERVENTION_KINDS.get(cls.kind, cls) is not cls:
        raise ValueError(f"kind {cls.kind!r} is already registered to {INTERVENTION_KINDS[cls.kind].__name__}")
    INTERVENTION_KINDS[cls.kind] = cls
    return cls


def kind_class(iv: Any) -> type[Intervention] | None:
    """The registered class ``iv`` is an instance of (exactly: a subclass would not round-trip), else None."""
    cls = INTERVENTION_KINDS.get(getattr(iv, "kind", None))
    return cls if cls is not None and type(iv) is cls else None
