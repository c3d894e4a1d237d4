"""Make pyvene 0.1.8 work on any decoder, for users of pyvene's own API.

pyvene maps abstract component names to modules only for model classes it knows by type (no
Gemma 3, Qwen 3, Phi 3, OLMo 2, ...), and its ``IntervenableModel.load`` fails with a KeyError on
any other class. :func:`register` adds the model's class to pyvene's tables with this library's
canonical components (``block_output``, ``block_input``, ``attention_output``, ``mlp_output``,
``mlp_hidden``), resolved generically; classes pyvene already maps are left untouched.

Every import of pyvene in this library goes through :func:`pyvene`, which silences the line pyvene
prints on import ("nnsight is not detected ..."); :func:`quiet` silences what it prints when saving
("Directory ... already exists").

It also holds the pyvene modules the built-in intervention kinds apply (:class:`AdditiveSteering`,
:class:`SetUnits`, which read :mod:`interventions.positions`), the export to pyvene's own directory layout
(:func:`export_pyvene`) and :func:`intervenable_model`, which builds an ``IntervenableModel`` without
letting pyvene's constructor freeze the model. Everything here takes plain interventions (objects with
``component``, ``layer`` and the kind's ``pyvene_export``), never the config class.
"""

from __future__ import annotations

import contextlib
import io
import sys

from pathlib import Path

import torch
from torch import nn

from .components import COMPONENTS, INPUT_HOOK, resolve, unwrap
from .positions import StepState, position_mask


def quiet():
    """A context that swallows what pyvene prints on stdout (it uses bare ``print`` for status lines)."""
    return contextlib.redirect_stdout(io.StringIO())


def pyvene():
    """The ``pyvene`` module, imported without its import-time stdout line."""
    module = sys.modules.get("pyvene")
    if module is None:
        with quiet():
            import pyvene as module
    return module


def register(model: nn.Module) -> bool:
    """Register ``type(unwrap(model))`` with pyvene; returns False if pyvene already maps it."""
    pv = pyvene()

    base = unwrap(model)
    cls = type(base)
    if cls in pv.type_to_module_mapping:
        return False
    modules, dims = {}, {}
    for component in COMPONENTS:
        where = resolve(model, component, 0)
        # pyvene spells the layer index as a "%s" placeholder in a bracketed path
        path = where.module_path.replace(".0", "[%s]", 1) if ".0" in where.module_path else where.module_path
        modules[component] = (path, INPUT_HOOK if where.hook_type == INPUT_HOOK else "register_forward_hook")
        dims[component] = (str(where.width),)
    pv.type_to_module_mapping[cls] = modules
    pv.type_to_dimension_mapping[cls] = dims
    return True


def _constant_source_bases():
    """The bases of a pyvene intervention with a constant source acting on units of the last dimension."""
    pv = pyvene()
    return pv.ConstantSourceIntervention, pv.LocalistRepresentationIntervention


class SetUnitsIntervention(*_constant_source_bases()):
    """pyvene-loadable "set" intervention: ``source_representation`` holds the forced value of each
    unit and NaN for units left alone, so one buffer carries both the unit indices and the values."""

    def __init__(self, **kwargs):
        kwargs.setdefault("keep_last_dim", True)
        super().__init__(**kwargs)

    @classmethod
    def from_units(cls, units: torch.Tensor, values: torch.Tensor, width: int) -> "SetUnitsIntervention":
        source = torch.full((width,), float("nan"))
        source[units.long()] = values.float()
        return cls(embed_dim=width, source_representation=source)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        source = self.source_representation.to(device=base.device)
        keep = torch.isnan(source)
        return torch.where(keep, base, source.to(base.dtype))


class AdditiveSteering(*_constant_source_bases()):
    """Adds ``delta`` (``coefficient * vector``) on the selected positions (no flattening: keep_last_dim)."""

    def __init__(self, delta: torch.Tensor, positions: str, state: StepState, **kwargs):
        super().__init__(keep_last_dim=True, **kwargs)
        self.register_buffer("delta", delta.detach().clone())
        self.positions, self.state = positions, state

    def forward(self, base, source=None, subspaces=None, **kwargs):
        mask = position_mask(self.state, self.positions, base)
        if mask is False:
            return base  # pyvene hands us a copy; writing it back is a no-op
        delta = self.delta.to(device=base.device, dtype=base.dtype)
        return base + delta if mask is True else base + mask * delta


class SetUnits(*_constant_source_bases()):
    """Forces ``units`` to ``values`` on the selected positions."""

    def __init__(self, units: torch.Tensor, values: torch.Tensor, positions: str, state: StepState, **kwargs):
        super().__init__(keep_last_dim=True, **kwargs)
        self.register_buffer("units", units.detach().clone().long())
        self.register_buffer("values", values.detach().clone())
        self.positions, self.state = positions, state

    def forward(self, base, source=None, subspaces=None, **kwargs):
        mask = position_mask(self.state, self.positions, base)
        if mask is False or self.units.numel() == 0:
            return base
        units = self.units.to(base.device)
        values = self.values.to(device=base.device, dtype=base.dtype)
        out = base.clone()
        if mask is True:
            out[..., units] = values
        else:
            out[..., units] = torch.where(mask, values, base[..., units])
        return out


def preserving_model_state(model: nn.Module):
    """A function that restores ``model``'s ``requires_grad`` flags and train/eval modes as they are now."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = [(m, m.training) for m in model.modules()]

    def restore():
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in training:
            m.training = mode

    return restore


def intervenable_model(model: nn.Module, placed: list):
    """pyvene's ``IntervenableModel`` over the unwrapped base model; ``placed`` = ``[(component, layer,
    pyvene intervention), ...]`` with this library's component names. The model's flags are restored."""
    pv = pyvene()
    representations = [pv.RepresentationConfig(component=resolve(model, component, layer).pyvene_component,
                                                intervention=intervention)
                       for component, layer, intervention in placed]
    base = unwrap(model)
    restore = preserving_model_state(base)
    try:
        return pv.IntervenableModel(pv.IntervenableConfig(representations=representations), base)
    finally:
        restore()  # pyvene's constructor freezes every parameter and calls eval()


def export_pyvene(model: nn.Module, interventions: list, directory: str | Path) -> None:
    """Write pyvene's own layout (``config.json`` + ``intkey_*.bin``) of ``interventions`` into ``directory``.

    Each intervention gives its pyvene-loadable form (``pyvene_export(width)`` of its kind): additive ones
    become pyvene's native ``AdditionIntervention`` with the scaled vector as its constant source (positions
    are chosen by the caller's ``unit_locations`` in pyvene); set ones :class:`SetUnitsIntervention`.
    """
    register(model)
    placed = [(iv.component, iv.layer, iv.pyvene_export(resolve(model, iv.component, iv.layer).width))
              for iv in interventions]
    base = unwrap(model)
    restore = preserving_model_state(base)
    try:
        intervenable = intervenable_model(model, placed)
        with quiet():  # pyvene prints "Directory ... already exists" on every save
            intervenable.save(str(directory))
    finally:
        restore()
