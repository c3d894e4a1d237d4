"""Make pyvene 0.1.8 work on any decoder, for users of pyvene's own API.

pyvene maps abstract component names to modules only for model classes it knows by type (no
Gemma 3, Qwen 3, Phi 3, OLMo 2, ...), and its ``IntervenableModel.load`` fails with a KeyError on
any other class. :func:`register` adds the model's class to pyvene's tables with this library's
canonical components (``block_output``, ``block_input``, ``attention_output``, ``mlp_output``,
``mlp_hidden``), resolved generically; classes pyvene already maps are left untouched.

Every import of pyvene in this library goes through :func:`pyvene`, which silences the line pyvene
prints on import ("nnsight is not detected ..."); :func:`quiet` silences what it prints when saving
("Directory ... already exists").
"""

from __future__ import annotations

import contextlib
import io
import sys

import torch
from torch import nn

from .components import COMPONENTS, INPUT_HOOK, resolve, unwrap


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


def _set_units_base():
    pv = pyvene()
    return pv.ConstantSourceIntervention, pv.LocalistRepresentationIntervention


class SetUnitsIntervention(*_set_units_base()):
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
