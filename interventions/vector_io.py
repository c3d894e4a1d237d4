"""Save and load all-layer :class:`~interventions.vectors.SteeringVectors` (safetensors + a small JSON).

``save_vectors(vectors, directory)`` writes ``<name>.safetensors`` (tensors ``vectors`` [n_layers, hidden]
and ``residual_norms`` [n_layers]) and ``<name>.json`` (name, layers, source); ``load_vectors(directory)``
reads every such pair back, keyed by name. A later stage (the recipe's ``analysis``) uses them to compare
the EN and LOC directions at every layer, not only the one the steering stage selected.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from interventions.fsutil import save_safetensors
from interventions.vectors import SteeringVectors

FORMAT = "steering_vectors/1"


def save_vectors(vectors: SteeringVectors, directory: str | Path) -> Path:
    """Write ``vectors`` as ``<directory>/<name>.safetensors`` + ``<name>.json``; returns the JSON path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = vectors.name
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"vectors.name: expected a plain file name, got {name!r}")
    if vectors.vectors.dim() != 2 or vectors.vectors.shape[0] != len(vectors.layers):
        raise ValueError(f"vectors.vectors: expected Tensor[{len(vectors.layers)}, hidden] (one row per layer), "
                         f"got {tuple(vectors.vectors.shape)}")
    # one metadata key (the name is in the JSON): byte-identical files between identical runs
    save_safetensors({"vectors": vectors.vectors.detach().float().cpu().contiguous(),
                      "residual_norms": vectors.residual_norms.detach().float().cpu().contiguous()},
                     directory / f"{name}.safetensors", FORMAT)
    meta = {"format": FORMAT, "name": name, "layers": [int(l) for l in vectors.layers],
            "hidden_size": int(vectors.vectors.shape[1]), "source": vectors.source}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return path


def load_vectors(directory: str | Path) -> dict[str, SteeringVectors]:
    """Every ``<name>.json`` + ``<name>.safetensors`` pair in ``directory``, keyed by name (sorted)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no steering-vector directory: {directory}")
    out = {}
    for meta_path in sorted(directory.glob("*.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            continue
        tensors = load_file(str(meta_path.with_suffix(".safetensors")))
        vectors = SteeringVectors(meta["name"], tensors["vectors"], list(meta["layers"]), tensors["residual_norms"],
                                  dict(meta.get("source") or {}))
        if vectors.vectors.shape[0] != len(vectors.layers):
            raise ValueError(f"{meta_path}: {len(vectors.layers)} layers but a vectors tensor of shape "
                             f"{tuple(vectors.vectors.shape)}")
        out[vectors.name] = vectors
    return out
