"""Apply an :class:`InterventionConfig` through pyvene: ``with steer(model, config): ...``.

pyvene 0.1.8 cannot wrap a ``PeftModel`` nor model classes it does not map by type, so the
``IntervenableModel`` is built over the *unwrapped* base model (LoRA layers stay injected in it)
with raw module paths from :mod:`interventions.components`. pyvene's own ``forward``/``generate``
strip every forward hook from the model (``remove_forward_hooks``) and its constructor freezes all
parameters; ``steer`` therefore installs exactly pyvene's setter hooks for the duration of the
``with`` block, removes exactly those (even on exceptions), and restores the model's
``requires_grad`` flags and train/eval mode, so the model is never mutated. Inside the block the
model is called as usual (``model(...)``, ``model.generate(...)``, also a ``PeftModel`` around it).

Positions are decided per forward call from what the decoder stack receives: a call with an empty
KV cache is a *prompt* call (``last`` = each row's last non-padding token); a call that extends a
non-empty cache holds *generated* tokens.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .components import decoder_stack, resolve, unwrap
from .config import AdditiveIntervention, InterventionConfig, SetIntervention, check_strength, model_dtype


class StepState:
    """What the current forward call is: prompt or generated tokens, and each row's last position."""

    def __init__(self) -> None:
        self.generated = False
        self.last_index: torch.Tensor | None = None

    def pre_hook(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        seq_len = x.shape[1] if x is not None and x.dim() >= 2 else 1
        # the KV cache is passed as `past_key_values` or `cache` depending on the model and version
        past = next((v for v in list(kwargs.values()) + list(args) if hasattr(v, "get_seq_length")), None)
        past_len = int(past.get_seq_length()) if past is not None else 0
        cache_position = kwargs.get("cache_position")
        if past_len == 0 and isinstance(cache_position, torch.Tensor) and cache_position.numel():
            past_len = int(cache_position.reshape(-1)[0])
        self.generated = past_len > 0
        mask = kwargs.get("attention_mask")
        if not self.generated and isinstance(mask, torch.Tensor) and mask.dim() == 2:
            current = mask[:, -seq_len:].to(torch.long)
            # index of the last non-padding token of each row (left or right padding)
            self.last_index = seq_len - 1 - torch.flip(current, dims=[1]).argmax(dim=1)
        else:
            self.last_index = None
        return None


def _position_mask(state: StepState, positions: str, base: torch.Tensor) -> torch.Tensor | bool:
    """True where the intervention applies: a bool, or a (batch, seq, 1) mask."""
    if positions == "all":
        return True
    if positions == "prompt":
        return not state.generated
    if positions == "generated":
        return state.generated
    # last
    if state.generated:
        return False
    b, s = base.shape[0], base.shape[1]
    idx = state.last_index if state.last_index is not None else torch.full((b,), s - 1)
    mask = torch.zeros(b, s, 1, dtype=torch.bool, device=base.device)
    mask[torch.arange(b, device=base.device), idx.to(base.device)] = True
    return mask


def _pyvene():
    from .pyvene_compat import pyvene

    return pyvene()


def _intervention_classes():
    pv = _pyvene()

    class AdditiveSteering(pv.ConstantSourceIntervention, pv.LocalistRepresentationIntervention):
        """Adds ``coefficient * vector`` on the selected positions (no flattening: keep_last_dim)."""

        def __init__(self, delta: torch.Tensor, positions: str, state: StepState, **kwargs):
            super().__init__(keep_last_dim=True, **kwargs)
            self.register_buffer("delta", delta.detach().clone())
            self.positions, self.state = positions, state

        def forward(self, base, source=None, subspaces=None, **kwargs):
            mask = _position_mask(self.state, self.positions, base)
            if mask is False:
                return base  # pyvene hands us a copy; writing it back is a no-op
            delta = self.delta.to(device=base.device, dtype=base.dtype)
            return base + delta if mask is True else base + mask * delta

    class SetUnits(pv.ConstantSourceIntervention, pv.LocalistRepresentationIntervention):
        """Forces ``units`` to ``values`` on the selected positions."""

        def __init__(self, units: torch.Tensor, values: torch.Tensor, positions: str, state: StepState, **kwargs):
            super().__init__(keep_last_dim=True, **kwargs)
            self.register_buffer("units", units.detach().clone().long())
            self.register_buffer("values", values.detach().clone())
            self.positions, self.state = positions, state

        def forward(self, base, source=None, subspaces=None, **kwargs):
            mask = _position_mask(self.state, self.positions, base)
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

    return AdditiveSteering, SetUnits


def _preserving_model_state(model: nn.Module):
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = [(m, m.training) for m in model.modules()]

    def restore():
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in training:
            m.training = mode

    return restore


def build_intervenable(model: nn.Module, config: InterventionConfig, state: StepState | None = None):
    """A pyvene ``IntervenableModel`` over the unwrapped base model with this config's interventions."""
    pv = _pyvene()
    AdditiveSteering, SetUnits = _intervention_classes()
    state = state or StepState()
    base = unwrap(model)
    representations = []
    dtype = model_dtype(model)
    for i, iv in enumerate(config.interventions):
        # also checked by validate(); repeated here for callers that build without validating
        check_strength(iv, f"interventions[{i}]", dtype)
        where = resolve(model, iv.component, iv.layer)
        if isinstance(iv, AdditiveIntervention):
            intervention = AdditiveSteering(iv.delta(), iv.positions, state)
        elif isinstance(iv, SetIntervention):
            intervention = SetUnits(iv.units, iv.values, iv.positions, state)
        else:  # validated before, kept for safety
            raise TypeError(f"unknown intervention {type(iv).__name__}")
        representations.append(pv.RepresentationConfig(component=where.pyvene_component, intervention=intervention))
    restore = _preserving_model_state(base)
    try:
        intervenable = pv.IntervenableModel(pv.IntervenableConfig(representations=representations), base)
    finally:
        restore()  # pyvene's constructor freezes every parameter and calls eval()
    return intervenable


@contextmanager
def steer(model: nn.Module, config: InterventionConfig):
    """Apply ``config`` to ``model`` inside the block; every hook is removed on exit, even on errors.

    Works on a plain transformers model, a ``PeftModel`` (unmerged LoRA) or a merged one; the
    config is validated against the model before any hook is installed. Yields the pyvene
    ``IntervenableModel`` (for pyvene-native use); call ``model`` itself as usual.
    """
    config.validate(model)
    state = StepState()
    intervenable = build_intervenable(model, config, state)
    handles = []
    try:
        handles.append(decoder_stack(model).register_forward_pre_hook(state.pre_hook, with_kwargs=True))
        n_groups = len(intervenable._intervention_group)
        setters = intervenable._wait_for_forward_with_parallel_intervention(
            [None] * n_groups, intervenable._broadcast_unit_locations(1, None), None, None, None)
        handles.append(setters)
        yield intervenable
    finally:
        for handle in reversed(handles):
            handle.remove()
        intervenable.activations.clear()


def export_pyvene(model: nn.Module, config: InterventionConfig, directory: str | Path) -> None:
    """Write pyvene's own layout (``config.json`` + ``intkey_*.bin``) next to our files.

    Additive interventions become pyvene's native ``AdditionIntervention`` with the scaled vector as
    its constant source (positions are chosen by the caller's ``unit_locations`` in pyvene); set
    interventions use ``interventions.pyvene_compat.SetUnitsIntervention``.
    """
    pv = _pyvene()
    from .pyvene_compat import SetUnitsIntervention, quiet, register

    register(model)
    representations = []
    for iv in config.interventions:
        where = resolve(model, iv.component, iv.layer)
        if isinstance(iv, AdditiveIntervention):
            intervention = pv.AdditionIntervention(embed_dim=where.width, source_representation=iv.delta().float())
        else:
            intervention = SetUnitsIntervention.from_units(iv.units, iv.values, where.width)
        representations.append(pv.RepresentationConfig(component=where.pyvene_component, intervention=intervention))
    base = unwrap(model)
    restore = _preserving_model_state(base)
    try:
        intervenable = pv.IntervenableModel(pv.IntervenableConfig(representations=representations), base)
        with quiet():  # pyvene prints "Directory ... already exists" on every save
            intervenable.save(str(directory))
    finally:
        restore()
