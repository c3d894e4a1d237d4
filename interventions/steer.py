"""Apply an :class:`InterventionConfig` through pyvene: ``with steer(model, config): ...``.

pyvene 0.1.8 cannot wrap a ``PeftModel`` nor model classes it does not map by type, so the
``IntervenableModel`` is built over the *unwrapped* base model (LoRA layers stay injected in it)
with raw module paths from :mod:`interventions.components`. pyvene's own ``forward``/``generate``
strip every forward hook from the model (``remove_forward_hooks``) and its constructor freezes all
parameters; ``steer`` therefore installs exactly pyvene's setter hooks for the duration of the
``with`` block, removes exactly those (even on exceptions), and restores the model's
``requires_grad`` flags and train/eval mode, so the model is never mutated. Inside the block the
model is called as usual (``model(...)``, ``model.generate(...)``, also a ``PeftModel`` around it).

Positions are decided per forward call (:mod:`interventions.positions`). Each intervention's pyvene module
comes from its kind (``steering_module``, :mod:`interventions.kinds`); ``steer`` only places them.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .components import decoder_stack
from .kinds import model_dtype
from .positions import StepState


def build_intervenable(model: nn.Module, config, state: StepState | None = None):
    """A pyvene ``IntervenableModel`` over the unwrapped base model with ``config``'s interventions (each
    kind's ``steering_module``, reading ``state``)."""
    from .pyvene_compat import intervenable_model  # imports pyvene: only when steering, not on `import interventions`

    state = state or StepState()
    dtype = model_dtype(model)
    placed = []
    for i, iv in enumerate(config.interventions):
        # also checked by validate(); repeated here for callers that build without validating
        iv.check_strength(f"interventions[{i}]", dtype)
        placed.append((iv.component, iv.layer, iv.steering_module(state)))
    return intervenable_model(model, placed)


@contextmanager
def steer(model: nn.Module, config):
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
