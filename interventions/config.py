"""Interventions as data: dataclasses, validation, and the intervention directory.

An intervention directory holds ``intervention_config.json`` (sorted keys, ``format_version``),
``intervention_vectors.safetensors`` (every tensor, keyed by the names in the JSON) and a
``README.md`` model card. Loading (:mod:`interventions.loader`) reads JSON and safetensors only:
nothing is unpickled and no class named in a file is imported.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
from torch import nn

from .components import COMPONENTS, UNIT_COMPONENTS, component_width, hidden_size, num_layers, unwrap

FORMAT_VERSION = 1
CONFIG_NAME = "intervention_config.json"
VECTORS_NAME = "intervention_vectors.safetensors"
POSITIONS = ("all", "prompt", "generated", "last")
KINDS = ("additive", "set")


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("surgical-steering")
    except Exception:  # running from a source tree that is not installed
        return "0.1.0"


class InterventionConfigError(ValueError):
    """A config that does not fit: ``field`` names the offending field, the message says what was expected."""

    def __init__(self, field_name: str, message: str, source: str | None = None):
        self.field = field_name
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{field_name}: {message}")


def _check_tensor(t: Any, field_name: str, *, floating: bool) -> torch.Tensor:
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


@dataclass
class AdditiveIntervention:
    """Add ``coefficient * vector`` to ``component`` at ``layer`` on the selected ``positions``."""

    name: str
    component: str
    layer: int
    vector: torch.Tensor
    coefficient: float = 1.0
    positions: str = "all"
    source: dict = field(default_factory=dict)
    kind: ClassVar[str] = "additive"

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{self.name}.vector": self.vector}

    def delta(self) -> torch.Tensor:
        return float(self.coefficient) * self.vector

    def _validate_own(self, where: str) -> None:
        _check_tensor(self.vector, f"{where}.vector", floating=True)
        c = self.coefficient
        ok = not isinstance(c, bool) and isinstance(c, (int, float))
        try:
            ok = ok and math.isfinite(float(c))
        except OverflowError:  # an int too large for a float
            ok = False
        if not ok:
            raise InterventionConfigError(f"{where}.coefficient", f"expected a finite number, got {self.coefficient!r}")

    def width(self) -> int:
        return int(self.vector.shape[0])


@dataclass
class SetIntervention:
    """Force units ``units`` of ``component`` at ``layer`` to ``values`` (e.g. language-expert neurons)."""

    name: str
    component: str
    layer: int
    units: torch.Tensor
    values: torch.Tensor
    positions: str = "all"
    source: dict = field(default_factory=dict)
    kind: ClassVar[str] = "set"

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{self.name}.units": self.units, f"{self.name}.values": self.values}

    def _validate_own(self, where: str) -> None:
        units = _check_tensor(self.units, f"{where}.units", floating=False)
        values = _check_tensor(self.values, f"{where}.values", floating=True)
        if units.shape != values.shape:
            raise InterventionConfigError(f"{where}.values", f"expected shape {tuple(units.shape)} (one value per "
                                          f"unit), got {tuple(values.shape)}")
        if units.numel() and int(units.min()) < 0:
            raise InterventionConfigError(f"{where}.units", "unit indices must be >= 0")
        if units.unique().numel() != units.numel():
            raise InterventionConfigError(f"{where}.units", "unit indices must be unique")

    def width(self) -> int | None:
        return None  # known only from the model: units must be < the component's width


Intervention = Union[AdditiveIntervention, SetIntervention]


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (its hidden states, hence what steering is cast to)."""
    base = unwrap(model)
    dtype = getattr(base, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    return next((p.dtype for p in base.parameters() if p.is_floating_point()), torch.float32)


def check_strength(iv: Intervention, where: str, dtype: torch.dtype) -> None:
    """Refuse a steering strength that is not finite once cast to ``dtype``: ``coefficient * vector`` (or
    a set value) that overflows there (1e308, or a float64 vector near 1e300 in bf16) turns logits into NaN."""
    limit = f"{dtype} holds magnitudes up to {torch.finfo(dtype).max:.3g}"
    if isinstance(iv, AdditiveIntervention):
        if not torch.isfinite(iv.vector.to(dtype)).all():
            raise InterventionConfigError(f"{where}.vector", f"values up to {float(iv.vector.abs().max()):.3g} "
                                          f"overflow in the model's dtype ({limit})")
        if not torch.isfinite(iv.delta().to(dtype)).all():
            peak = abs(float(iv.coefficient)) * float(iv.vector.double().abs().max())
            raise InterventionConfigError(f"{where}.coefficient", f"coefficient {float(iv.coefficient):g} x "
                                          f"vector reaches {peak:.3g}, which overflows in the model's dtype "
                                          f"({limit})")
    elif isinstance(iv, SetIntervention) and not torch.isfinite(iv.values.to(dtype)).all():
        raise InterventionConfigError(f"{where}.values", f"values up to {float(iv.values.abs().max()):.3g} "
                                      f"overflow in the model's dtype ({limit})")


def _model_info(model: nn.Module, revision: str | None = None) -> dict:
    base = unwrap(model)
    config = base.config
    return {
        "name_or_path": getattr(config, "_name_or_path", "") or "",
        "revision": revision or getattr(config, "_commit_hash", None),
        "model_type": getattr(config, "model_type", ""),
        "hidden_size": hidden_size(model),
        "num_hidden_layers": num_layers(model),
    }


@dataclass
class InterventionConfig:
    """A set of interventions applied together, plus the base model they were made for."""

    interventions: list = field(default_factory=list)
    base_model: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def for_model(cls, model: nn.Module, interventions: list, revision: str | None = None) -> "InterventionConfig":
        config = cls(list(interventions), _model_info(model, revision))
        config.validate(model)
        return config

    # ------------------------------------------------------------------ validation
    def validate(self, model: nn.Module | None = None, source: str | None = None) -> "InterventionConfig":
        """Check everything that can be checked; with ``model``, also layers, widths and units against it.

        Raises :class:`InterventionConfigError` naming the field. Never touches the model's weights.
        """
        try:
            self._validate(model)
        except InterventionConfigError as err:
            if source and err.source is None:
                raise InterventionConfigError(err.field, str(err).split(": ", 1)[1], source) from None
            raise
        return self

    def _validate(self, model: nn.Module | None) -> None:
        if self.format_version != FORMAT_VERSION:
            raise InterventionConfigError("format_version", f"expected {FORMAT_VERSION}, got {self.format_version!r}")
        info = self.base_model or {}
        n_layers = num_layers(model) if model is not None else info.get("num_hidden_layers")
        hidden = hidden_size(model) if model is not None else info.get("hidden_size")
        if model is not None and info.get("hidden_size") not in (None, hidden):
            raise InterventionConfigError("base_model.hidden_size", f"the config was made for hidden size "
                                          f"{info['hidden_size']}, the model has {hidden}")
        names = set()
        for i, iv in enumerate(self.interventions):
            where = f"interventions[{i}]"
            if not isinstance(iv, (AdditiveIntervention, SetIntervention)):
                raise InterventionConfigError(where, f"expected AdditiveIntervention or SetIntervention, got "
                                              f"{type(iv).__name__}")
            if not isinstance(iv.name, str) or not iv.name or not iv.name.isprintable() \
                    or any(c in iv.name for c in "/\\ "):
                raise InterventionConfigError(f"{where}.name", f"expected a non-empty name of printable "
                                              f"characters without spaces or slashes, got {iv.name!r}")
            if iv.name in names:
                raise InterventionConfigError(f"{where}.name", f"duplicate name {iv.name!r}")
            names.add(iv.name)
            if iv.component not in COMPONENTS:
                raise InterventionConfigError(f"{where}.component", f"expected one of {list(COMPONENTS)}, got "
                                              f"{iv.component!r}")
            if iv.positions not in POSITIONS:
                raise InterventionConfigError(f"{where}.positions", f"expected one of {list(POSITIONS)}, got "
                                              f"{iv.positions!r}")
            if isinstance(iv.layer, bool) or not isinstance(iv.layer, int):
                raise InterventionConfigError(f"{where}.layer", f"expected an int, got {iv.layer!r}")
            if isinstance(n_layers, int) and not 0 <= iv.layer < n_layers:
                raise InterventionConfigError(f"{where}.layer", f"expected an int in [0, {n_layers - 1}], got "
                                              f"{iv.layer}")
            if not isinstance(iv.source, dict):
                raise InterventionConfigError(f"{where}.source", f"expected a mapping, got {type(iv.source).__name__}")
            iv._validate_own(where)
            if isinstance(iv, AdditiveIntervention):
                width = component_width(model, iv.component) if model is not None else (
                    hidden if iv.component not in UNIT_COMPONENTS else None)
                if width is not None and iv.width() != width:
                    raise InterventionConfigError(f"{where}.vector", f"expected shape ({width},) for "
                                                  f"{iv.component}, got {tuple(iv.vector.shape)}")
            elif model is not None and iv.units.numel():
                width = component_width(model, iv.component)
                if int(iv.units.max()) >= width:
                    raise InterventionConfigError(f"{where}.units", f"unit index {int(iv.units.max())} out of "
                                                  f"range for {iv.component} of width {width}")
            check_strength(iv, where, model_dtype(model) if model is not None else torch.float32)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        entries = []
        for iv in self.interventions:
            entry = {"name": iv.name, "kind": iv.kind, "component": iv.component, "layer": iv.layer,
                     "positions": iv.positions, "source": iv.source}
            if isinstance(iv, AdditiveIntervention):
                entry.update(vector=f"{iv.name}.vector", coefficient=float(iv.coefficient),
                             vector_norm=float(iv.vector.float().norm()))
            else:
                entry.update(units=f"{iv.name}.units", values=f"{iv.name}.values", n_units=int(iv.units.numel()))
            entries.append(entry)
        return {"format_version": self.format_version, "base_model": self.base_model,
                "library": {"name": "surgical-steering", "version": library_version()},
                "interventions": entries}

    def save_pretrained(self, save_directory: str | os.PathLike, model: nn.Module | None = None,
                        card_extra: str | None = None) -> Path:
        """Write the intervention directory atomically (temp dir + rename).

        With ``model``, also writes pyvene's own layout (``config.json`` + ``intkey_*.bin``) so pyvene
        users can ``IntervenableModel.load`` it.
        """
        from .card import model_card
        from .fsutil import fresh_sibling_dir, replace_dir, save_safetensors

        self.validate(model)
        target = Path(save_directory)
        work = fresh_sibling_dir(target)
        try:
            tensors = {}
            for iv in self.interventions:
                for key, t in iv.tensors().items():
                    tensors[key] = t.detach().to("cpu").contiguous()
            save_safetensors(tensors, work / VECTORS_NAME, "pt")
            (work / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
            if model is not None:
                from .steer import export_pyvene

                export_pyvene(model, self, work)
            (work / "README.md").write_text(model_card(self, pyvene_layout=model is not None, extra=card_extra),
                                            encoding="utf-8")
            replace_dir(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, model: nn.Module | None = None,
                        revision: str | None = None, cache_dir: str | None = None) -> "InterventionConfig":
        """Load from a directory or a Hub repo id (``snapshot_download``); JSON + safetensors only.

        Strict: unknown or duplicate keys, malformed JSON and files reached through a symlink that leaves
        the directory are refused with :class:`InterventionConfigError` (see :mod:`interventions.loader`).
        """
        from .hub import resolve
        from .loader import load_directory

        directory, root = resolve(path_or_repo_id, revision=revision, cache_dir=cache_dir)
        return load_directory(directory, model, root)

    def push_to_hub(self, repo_id: str, model: nn.Module | None = None, private: bool = False,
                    token: str | None = None, commit_message: str = "Upload intervention config",
                    card_extra: str | None = None) -> str:
        """Create the Hub repo (if needed) and upload the intervention directory with ``huggingface_hub``."""
        from .hub import push_directory

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "interventions", model=model, card_extra=card_extra)
            return push_directory(folder, repo_id, private=private, token=token, commit_message=commit_message)

    def __repr__(self) -> str:
        from .fsutil import printable

        parts = ", ".join(f"{iv.name}:{iv.kind}@{iv.component}[{iv.layer}]" for iv in self.interventions)
        return printable(f"InterventionConfig({parts}; base={self.base_model.get('name_or_path', '?')})")

