"""Export a PEFT LoRA adapter directory as a llama.cpp LoRA GGUF (``llama-cli --lora FILE``).

The layout is the one llama.cpp's own ``convert_lora_to_gguf.py`` writes and ``src/llama-adapter.cpp``
(``llama_adapter_lora_init_impl``) loads (ggml-org/llama.cpp, read for this module):

- metadata ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha`` (float32) and
  ``general.architecture``, which must equal the model's architecture or the load fails;
- for every adapted weight ``W`` (GGUF name, e.g. ``blk.3.attn_q.weight``) two tensors ``<name>.lora_a`` = PEFT's
  ``lora_A`` as is (torch shape ``[r, in]``, GGUF ``ne = [in, r]``) and ``<name>.lora_b`` = PEFT's ``lora_B``
  (``[out, r]``, ``ne = [r, out]``), here in F32 (the converter's default ``--outtype``);
- at run time llama.cpp adds ``scale * alpha / r * B (A x)`` with ``r = lora_b.ne[0]`` (``get_scale`` in
  ``src/llama-adapter.h``): PEFT's ``lora_alpha / r`` scaling at ``--lora`` scale 1.0, per module, so PEFT's
  ``rank_pattern`` is honoured as is.

Hugging Face module names are mapped to GGUF tensor names with ``gguf.get_tensor_name_map``. Refused, with one
message naming what is wrong: modules it cannot map; embedding / output-head LoRA (llama.cpp transposes or
ties them); DoRA, rsLoRA and ``alpha_pattern`` (llama.cpp has one alpha and the plain ``alpha / r`` scaling);
LoRA biases and ``modules_to_save`` (full weights, not low-rank); ``fan_in_fan_out`` (Conv1D) models; and
architectures whose HF -> GGUF conversion permutes weight rows (e.g. llama's q/k for its rope layout), for
which PEFT's ``lora_B`` rows would need the same permutation. The architectures allowed are those whose
converter (``convert_hf_to_gguf.py``) writes linear weights unchanged.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .gguf_io import EMBEDDED_GGUF_ARCH, gguf_architecture, write_gguf
from .models import EMBEDDED_HUB_ID, EMBEDDED_MODELS, cache_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
UNPERMUTED_ARCHS = ("gemma", "gemma2", "gemma3", "qwen2", "qwen3")
"""GGUF architectures whose ``convert_hf_to_gguf.py`` model class copies linear weights unchanged (Gemma*Model only
shifts norm weights by 1; Qwen2/Qwen3Model only rename), so a PEFT LoRA pair applies to the GGUF weight as is."""

_PREFIXES = (("base_model.model.", ""), ("model.language_model.", "model."), ("language_model.", ""))
_SUFFIXES = {".lora_A.weight": "a", ".lora_B.weight": "b"}


class LoraExportError(ValueError):
    """A LoRA adapter llama.cpp cannot load as exported: ``field`` names the offending field or tensor."""

    def __init__(self, field_name: str, message: str, source: str | None = None):
        self.field = field_name
        self.source = source
        super().__init__(f"{source + ': ' if source else ''}{field_name}: {message}")


@dataclass
class LoraExport:
    """What :func:`write_lora` writes: the GGUF architecture, alpha and ``{gguf name: array}``."""

    arch: str
    alpha: float
    tensors: dict = field(default_factory=dict)
    modules: dict = field(default_factory=dict)  # HF module name -> GGUF weight name


def _architecture(cfg: dict, src: str, base_model: str | None, model_type: str | None, arch: str | None) -> str:
    def canonical(name):  # the embedded model answers to two names and to its converted cache directory
        if name and Path(name).name in EMBEDDED_MODELS and Path(name).parent == cache_dir():
            return EMBEDDED_HUB_ID
        return EMBEDDED_HUB_ID if name in EMBEDDED_MODELS else name

    adapter_base, base_model = canonical(cfg.get("base_model_name_or_path") or None), canonical(base_model)
    if base_model and adapter_base and base_model != adapter_base:
        raise LoraExportError("base_model_name_or_path", f"the adapter was trained on {adapter_base!r}, the "
                              f"interventions were made for {base_model!r}; expected the same base model", src)
    for name in (arch, model_type):
        if name:
            resolved = gguf_architecture(name)
            if resolved is None:
                raise LoraExportError("architecture", f"{name!r} is not a GGUF architecture known to the gguf "
                                      "package", src)
            return resolved
    base = base_model or adapter_base
    if base in EMBEDDED_MODELS:
        return EMBEDDED_GGUF_ARCH
    config_json = Path(base) / "config.json" if base else None
    if config_json is not None and config_json.is_file():
        hf = json.loads(config_json.read_text(encoding="utf-8"))
        resolved = gguf_architecture(hf.get("model_type"))
        if resolved:
            return resolved
    raise LoraExportError("base_model_name_or_path", f"cannot tell the base model's architecture from {base!r}; "
                          "pass arch= (e.g. 'gemma3') or the base model's local directory", src)


def _check_config(cfg: dict, src: str) -> float:
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoraExportError("peft_type", f"{cfg.get('peft_type')!r}; expected 'LORA'", src)
    refusals = [
        ("use_dora", bool(cfg.get("use_dora")), "DoRA rescales the merged weight; llama.cpp applies plain LoRA"),
        ("use_rslora", bool(cfg.get("use_rslora")), "rsLoRA scales by alpha/sqrt(r); llama.cpp uses alpha/r"),
        ("alpha_pattern", bool(cfg.get("alpha_pattern")), "per-module alphas; a llama.cpp adapter has one alpha"),
        ("bias", cfg.get("bias", "none") != "none", "LoRA biases are not low-rank; expected 'none'"),
        ("modules_to_save", bool(cfg.get("modules_to_save")), "fully trained modules are not a LoRA pair"),
        ("fan_in_fan_out", bool(cfg.get("fan_in_fan_out")), "Conv1D (fan_in_fan_out) weights are transposed in "
                                                             "GGUF; not supported"),
    ]
    for name, bad, why in refusals:
        if bad:
            raise LoraExportError(name, f"{cfg.get(name)!r}: {why}", src)
    alpha = cfg.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha <= 0:
        raise LoraExportError("lora_alpha", f"expected a positive number (llama.cpp reads alpha 0 as 'no scaling'), "
                              f"got {alpha!r}", src)
    return float(alpha)


def _module_name(key: str) -> tuple[str, str] | None:
    for suffix, which in _SUFFIXES.items():
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            for prefix, replacement in _PREFIXES:
                if name.startswith(prefix):
                    name = replacement + name[len(prefix):]
            return name, which
    return None


def lora_export(adapter_dir: str | os.PathLike, *, arch: str | None = None, base_model: str | None = None,
                model_type: str | None = None) -> LoraExport:
    """Read and map a PEFT LoRA adapter directory; raises :class:`LoraExportError` naming what cannot be exported.

    The architecture comes from ``arch`` (a GGUF architecture or a transformers ``model_type``), else
    ``model_type``, else the base model (``base_model`` or the adapter's ``base_model_name_or_path``: the embedded
    gemma-3-270m, or a local directory with ``config.json``).
    """
    import gguf
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(adapter_dir)
    src = str(directory / ADAPTER_CONFIG)
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise LoraExportError("adapter", f"{directory} is not a PEFT adapter directory (expected {ADAPTER_CONFIG} "
                              f"and {ADAPTER_WEIGHTS})")
    try:
        cfg = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LoraExportError("json", f"malformed JSON at line {err.lineno}: {err.msg}", src) from None
    if not isinstance(cfg, dict):
        raise LoraExportError("json", "expected a JSON object", src)
    alpha = _check_config(cfg, src)
    resolved = _architecture(cfg, src, base_model, model_type, arch)
    if resolved not in UNPERMUTED_ARCHS:
        raise LoraExportError("architecture", f"{resolved!r}: its HF -> GGUF conversion may permute weight rows; "
                              f"LoRA export supports {list(UNPERMUTED_ARCHS)}", src)
    weights_src = str(directory / ADAPTER_WEIGHTS)
    try:
        raw = load_file(weights_src)
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraExportError(ADAPTER_WEIGHTS, f"unreadable safetensors file: {err}", weights_src) from None
    pairs: dict[str, dict[str, np.ndarray]] = {}
    unexpected = []
    for key, array in raw.items():
        parsed = _module_name(key)
        if parsed is None:
            unexpected.append(key)
        else:
            pairs.setdefault(parsed[0], {})[parsed[1]] = array
    if unexpected:
        raise LoraExportError("tensors", f"not LoRA A/B weights (embedding LoRA, biases or saved modules?): "
                              f"{sorted(unexpected)}", weights_src)
    if not pairs:
        raise LoraExportError("tensors", "no lora_A/lora_B weights", weights_src)
    blocks = max((int(n) for name in pairs for n in re.findall(r"\.(\d+)\.", name)), default=0) + 1
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == resolved)
    name_map = gguf.get_tensor_name_map(arch_enum, blocks)
    mapped = {module: name_map.get_name(module + ".weight", try_suffixes=(".weight",)) for module in pairs}
    unmapped = sorted(m for m, g in mapped.items() if g is None)
    if unmapped:
        raise LoraExportError("target_modules", f"no {resolved} GGUF tensor for {unmapped}", src)
    heads = sorted(m for m, g in mapped.items() if g.split(".")[0] in ("token_embd", "output"))
    if heads:
        raise LoraExportError("target_modules", f"{heads}: LoRA on the embedding / output head is not exported "
                              "(llama.cpp transposes the one and ties the other)", src)
    export = LoraExport(resolved, alpha, modules=dict(sorted(mapped.items())))
    for module, ab in sorted(pairs.items()):
        a, b = ab.get("a"), ab.get("b")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraExportError(module, f"expected lora_A [r, in] and lora_B [out, r], got "
                                  f"{None if a is None else a.shape} and {None if b is None else b.shape}", weights_src)
        export.tensors[mapped[module] + ".lora_a"] = a.astype(np.float32)
        export.tensors[mapped[module] + ".lora_b"] = b.astype(np.float32)
    return export


def write_lora(export: LoraExport, out_path: str | os.PathLike) -> Path:
    """Write ``export`` as a llama.cpp LoRA GGUF (atomically); returns the path."""
    import gguf

    def fill(writer):
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, export.alpha)

    return write_gguf(out_path, export.arch, fill, sorted(export.tensors.items()))


def export_lora(adapter_dir: str | os.PathLike, out_path: str | os.PathLike, *, arch: str | None = None,
                base_model: str | None = None, model_type: str | None = None) -> Path:
    """PEFT LoRA adapter directory -> llama.cpp LoRA GGUF at ``out_path``; nothing is written on refusal."""
    return write_lora(lora_export(adapter_dir, arch=arch, base_model=base_model, model_type=model_type), out_path)
