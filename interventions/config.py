"""Interventions as data: the config of a set of interventions, and the intervention directory.

An intervention directory holds ``intervention_config.json`` (sorted keys, ``format_version``; see
:mod:`interventions.artifact`), ``intervention_vectors.safetensors`` (every tensor, keyed by the names in the
JSON) and a ``README.md`` model card. The kinds of intervention (``additive``, ``set``, ...) are classes in
:data:`interventions.kinds.INTERVENTION_KINDS`; this module only calls them. Loading
(:mod:`interventions.loader`) reads JSON and safetensors only: nothing is unpickled and no class named in a
file is imported.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .artifact import (  # noqa: F401 (the artifact's vocabulary, importable from here as before)
    CONFIG_NAME,
    FORMAT_VERSION,
    POSITIONS,
    ROLES,
    VECTORS_NAME,
    InterventionConfigError,
)
from .card import model_card
from .components import UNIT_COMPONENTS, component_width, hidden_size, num_layers, unwrap
from .fsutil import atomic_dir, printable, save_safetensors
from .hub import push_to_hub, resolve
from .kinds import (  # noqa: F401 (the built-in kinds, importable from here as before)
    INTERVENTION_KINDS,
    AdditiveIntervention,
    Intervention,
    SetIntervention,
    kind_class,
    model_dtype,
)
from .loader import read_directory
from .provenance import library_version


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
        dtype = model_dtype(model) if model is not None else torch.float32
        names = set()
        for i, iv in enumerate(self.interventions):
            where = f"interventions[{i}]"
            if kind_class(iv) is None:
                kinds = ", ".join(cls.__name__ for cls in INTERVENTION_KINDS.values())
                raise InterventionConfigError(where, f"expected an intervention of a registered kind ({kinds}), got "
                                              f"{type(iv).__name__}")
            iv.validate(where, n_layers)
            if iv.name in names:
                raise InterventionConfigError(f"{where}.name", f"duplicate name {iv.name!r}")
            names.add(iv.name)
            if model is not None:
                width = component_width(model, iv.component)
            else:  # without the model only the residual-stream width is known (from base_model)
                width = hidden if iv.component not in UNIT_COMPONENTS else None
            iv.check_width(where, width)
            iv.check_strength(where, dtype)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "base_model": self.base_model,
                "library": {"name": "surgical-steering", "version": library_version()},
                "interventions": [iv.to_entry() for iv in self.interventions]}

    def save_pretrained(self, save_directory: str | os.PathLike, model: nn.Module | None = None,
                        card_extra: str | None = None) -> Path:
        """Write the intervention directory (always the current ``format_version``) atomically (temp dir +
        rename).

        With ``model``, also writes pyvene's own layout (``config.json`` + ``intkey_*.bin``) so pyvene
        users can ``IntervenableModel.load`` it.
        """
        self.validate(model)
        target = Path(save_directory)
        with atomic_dir(target) as work:
            tensors = {}
            for iv in self.interventions:
                for key, t in iv.tensors().items():
                    tensors[key] = t.detach().to("cpu").contiguous()
            save_safetensors(tensors, work / VECTORS_NAME, "pt")
            (work / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
            if model is not None:
                from .pyvene_compat import export_pyvene  # imports pyvene: only when asked for its layout

                export_pyvene(model, self.interventions, work)
            card = model_card(self.base_model, self.interventions, pyvene_layout=model is not None, extra=card_extra)
            (work / "README.md").write_text(card, encoding="utf-8")
        return target

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, model: nn.Module | None = None,
                        revision: str | None = None, cache_dir: str | None = None) -> "InterventionConfig":
        """Load from a directory or a Hub repo id (``snapshot_download``); JSON + safetensors only.
        A ``format_version`` 1 directory is migrated on load (:func:`interventions.loader.migrate_v1`).

        Strict: unknown or duplicate keys, malformed JSON and files reached through a symlink that leaves
        the directory are refused with :class:`InterventionConfigError` (see :mod:`interventions.loader`).
        """
        directory, root = resolve(path_or_repo_id, revision=revision, cache_dir=cache_dir)
        interventions, base_model, src = read_directory(directory, root)
        return cls(interventions, base_model).validate(model, source=src)

    def push_to_hub(self, repo_id: str, model: nn.Module | None = None, private: bool = False,
                    token: str | None = None, commit_message: str = "Upload intervention config",
                    card_extra: str | None = None) -> str:
        """Create the Hub repo (if needed) and upload the intervention directory with ``huggingface_hub``."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "interventions", model=model, card_extra=card_extra)
            return push_to_hub(repo_id, [(folder, "")], private=private, token=token,
                               commit_message=commit_message)[1][0]

    def __repr__(self) -> str:
        parts = ", ".join(f"{iv.name}:{iv.kind}@{iv.component}[{iv.layer}]" for iv in self.interventions)
        return printable(f"InterventionConfig({parts}; base={self.base_model.get('name_or_path', '?')})")

