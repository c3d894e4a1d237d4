"""Components by meaning, resolved to module paths on any Hugging Face decoder.

A component names *what* is steered, not where it lives in a particular class:

==================  ==========================================================  ===========
component           meaning                                                     width
==================  ==========================================================  ===========
``block_input``     residual stream entering decoder layer L                    hidden
``block_output``    residual stream leaving decoder layer L                     hidden
``attention_output`` output of layer L's attention block (before the residual)  hidden
``mlp_output``      output of layer L's MLP block (before the residual)         hidden
``mlp_hidden``      the MLP neurons: input of layer L's MLP down-projection     intermediate
``attention_heads`` concatenated head outputs: input of the attention output    heads x
                    projection (``o_proj``)                                     head_dim
==================  ==========================================================  ===========

Resolution is generic: the decoder-layer list is found as the ``nn.ModuleList`` whose length is
the text model's ``num_hidden_layers`` (outside any vision tower); attention and MLP blocks are
found inside a layer by name and class name; the down-projection is the MLP's linear child that
maps back to the hidden size; the attention output projection is the attention block's linear child
named ``o_proj``/``c_proj``/``dense``/``out_proj`` that maps to the hidden size. PEFT wrappers (``PeftModel``/LoRA) and multimodal wrappers whose
text stack is inside (e.g. ``Gemma3ForConditionalGeneration``) are seen through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

COMPONENTS = ("block_input", "block_output", "attention_output", "mlp_output", "mlp_hidden", "attention_heads")
"""The canonical component names."""

UNIT_COMPONENTS = ("mlp_hidden", "attention_heads")
"""Components that hold *units* (the input of a projection), whose width is not the hidden size."""

INPUT_HOOK = "register_forward_pre_hook"
OUTPUT_HOOK = "register_forward_hook"

_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "ff")
_ATTENTION_OUT_NAMES = ("o_proj", "c_proj", "dense", "out_proj")
_VISION_HINTS = ("vision", "visual", "image", "audio", "encoder")


@dataclass(frozen=True)
class ResolvedComponent:
    """Where a component lives: a module path inside the unwrapped base model and a hook type."""

    component: str
    layer: int
    module_path: str
    hook_type: str  # INPUT_HOOK or OUTPUT_HOOK
    width: int

    @property
    def pyvene_component(self) -> str:
        """pyvene's raw-path spelling: ``<module path>.input`` or ``<module path>.output``."""
        return f"{self.module_path}.{'input' if self.hook_type == INPUT_HOOK else 'output'}"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain transformers model under any PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        return get_base()
    return model


def text_config(model: nn.Module):
    config = unwrap(model).config
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


_LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN_SIZE_ATTRS = ("hidden_size", "n_embd", "d_model")


def _config_int(config, attrs: tuple[str, ...]) -> int | None:
    """The first of ``attrs`` that ``config`` has as an int (configs name the same thing differently)."""
    for attr in attrs:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def num_layers(model: nn.Module) -> int:
    value = _config_int(text_config(model), _LAYER_COUNT_ATTRS)
    return value if value is not None else len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    cfg = text_config(model)
    value = _config_int(cfg, _HIDDEN_SIZE_ATTRS)
    if value is None:
        raise ValueError(f"cannot find the hidden size in {type(cfg).__name__}")
    return value


def _find_layer_list(base: nn.Module) -> tuple[str, nn.ModuleList]:
    expected = _config_int(text_config(base), _LAYER_COUNT_ATTRS)
    candidates = []
    for name, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if any(h in name.lower() for h in _VISION_HINTS):
            continue
        if expected is not None and len(module) != expected:
            continue
        n_params = sum(p.numel() for p in module.parameters())
        candidates.append((n_params, -name.count("."), name, module))
    if not candidates:
        raise ValueError(
            f"cannot find the decoder layers of {type(base).__name__}: no nn.ModuleList of "
            f"{expected} identical blocks outside a vision/audio tower"
        )
    _, _, name, module = max(candidates, key=lambda c: (c[0], c[1]))
    return name, module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder layers of any HF decoder (through PEFT/multimodal wrappers)."""
    return _find_layer_list(unwrap(model))[1]


def decoder_layers_path(model: nn.Module) -> str:
    """Module path (inside :func:`unwrap` ``(model)``) of the decoder-layer list, e.g. ``model.layers``."""
    return _find_layer_list(unwrap(model))[0]


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that owns the decoder-layer list (e.g. ``Gemma3TextModel``), called on every forward."""
    base = unwrap(model)
    path = decoder_layers_path(model)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return base.get_submodule(parent) if parent else base


def _child(layer: nn.Module, names: tuple[str, ...], class_hint: str) -> str:
    for name in names:
        if isinstance(getattr(layer, name, None), nn.Module):
            return name
    for name, module in layer.named_children():
        if class_hint in type(module).__name__.lower():
            return name
    raise ValueError(f"cannot find the {class_hint} block in {type(layer).__name__}; "
                     f"children: {[n for n, _ in layer.named_children()]}")


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear, a GPT-2 Conv1D, or a PEFT LoRA wrapper of either."""
    base = getattr(module, "base_layer", module)
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    weight = getattr(base, "weight", None)
    if type(base).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[0], weight.shape[1]  # Conv1D stores (in, out)
    return None


def _down_projection(mlp: nn.Module, hidden: int) -> tuple[str, int]:
    found = []
    for name, module in mlp.named_children():
        shape = _linear_shape(module)
        if shape is not None and shape[1] == hidden and shape[0] != hidden:
            found.append((name, shape[0]))
    if len(found) != 1:
        raise ValueError(f"cannot identify the down-projection of {type(mlp).__name__}: candidates {found}")
    return found[0]


def _output_projection(attention: nn.Module, hidden: int) -> tuple[str, int]:
    """(name, in_features) of the attention block's output projection (by name; it must map to ``hidden``)."""
    for name in _ATTENTION_OUT_NAMES:
        module = getattr(attention, name, None)
        shape = _linear_shape(module) if isinstance(module, nn.Module) else None
        if shape is not None and shape[1] == hidden:
            return name, shape[0]
    raise ValueError(f"cannot identify the output projection of {type(attention).__name__}: expected a linear "
                     f"child named one of {list(_ATTENTION_OUT_NAMES)} with {hidden} outputs; children: "
                     f"{[n for n, _ in attention.named_children()]}")


def resolve(model: nn.Module, component: str, layer: int) -> ResolvedComponent:
    """Resolve a canonical component at ``layer`` to a module path in :func:`unwrap` ``(model)``."""
    if component not in COMPONENTS:
        raise ValueError(f"component: expected one of {list(COMPONENTS)}, got {component!r}")
    layers_path, layers = _find_layer_list(unwrap(model))
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(layers):
        raise ValueError(f"layer: expected an int in [0, {len(layers) - 1}], got {layer!r}")
    block = layers[layer]
    prefix = f"{layers_path}.{layer}"
    hidden = hidden_size(model)
    if component == "block_input":
        return ResolvedComponent(component, layer, prefix, INPUT_HOOK, hidden)
    if component == "block_output":
        return ResolvedComponent(component, layer, prefix, OUTPUT_HOOK, hidden)
    if component in ("attention_output", "attention_heads"):
        name = _child(block, _ATTENTION_NAMES, "attention")
        if component == "attention_output":
            return ResolvedComponent(component, layer, f"{prefix}.{name}", OUTPUT_HOOK, hidden)
        out_proj, width = _output_projection(getattr(block, name), hidden)
        return ResolvedComponent(component, layer, f"{prefix}.{name}.{out_proj}", INPUT_HOOK, width)
    mlp_name = _child(block, _MLP_NAMES, "mlp")
    if component == "mlp_output":
        return ResolvedComponent(component, layer, f"{prefix}.{mlp_name}", OUTPUT_HOOK, hidden)
    down, width = _down_projection(getattr(block, mlp_name), hidden)
    return ResolvedComponent(component, layer, f"{prefix}.{mlp_name}.{down}", INPUT_HOOK, width)


def component_width(model: nn.Module, component: str) -> int:
    """Width of ``component``: the hidden size, the MLP's intermediate size for ``mlp_hidden``, heads x head_dim
    for ``attention_heads``."""
    return resolve(model, component, 0).width
