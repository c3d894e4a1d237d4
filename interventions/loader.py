"""Reading an intervention directory: strict JSON + safetensors, nothing else.

The loader reads ``intervention_config.json`` with :func:`interventions.fsutil.read_json_object` (size cap,
UTF-8, no duplicate keys, no NaN, bounded nesting), refuses keys it does not know (a misspelled
``"coeficient"`` would otherwise leave the strength at 1.0) with a did-you-mean hint, refuses files reached
through a symlink that leaves the directory, and reads tensors with safetensors only: nothing is unpickled,
no class named in a file is imported (an entry's ``kind`` is looked up in
:data:`interventions.kinds.INTERVENTION_KINDS`), and the model is never touched. Version-1 files are
migrated by :func:`migrate_v1`, the one place that knows the old layout. It returns plain data;
:meth:`interventions.config.InterventionConfig.from_pretrained` builds and validates the config.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from .artifact import (
    CONFIG_NAME,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    VECTORS_NAME,
    InterventionConfigError,
    check_role_and_language,
    role_and_language,
)
from .fsutil import JSONInputError, UnsafePathError, inside, printable, read_json_object
from .kinds import INTERVENTION_KINDS, Intervention

TOP_KEYS = ("base_model", "format_version", "interventions", "library")
BASE_MODEL_KEYS = ("hidden_size", "model_type", "name_or_path", "num_hidden_layers", "revision")
LIBRARY_KEYS = ("name", "version")


def check_keys(mapping: dict, allowed: tuple, where: str, src: str) -> None:
    """Refuse the first key of ``mapping`` not in ``allowed``, naming it, with a did-you-mean hint."""
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected keys: {', '.join(allowed)}"
            field = f"{where}.{key}" if where else str(key)
            if not (isinstance(key, str) and key.isidentifier() and key.isprintable()):
                field = f"{where}[{key!r}]"
            raise InterventionConfigError(field, f"unknown key{hint}", src)


def _file(directory: Path, name: str, root: Path | None, src: str) -> Path:
    try:
        path = inside(directory, name, root)
    except UnsafePathError as err:
        raise InterventionConfigError(name, printable(err), src) from None
    if not path.is_file():
        raise InterventionConfigError(name, f"not found (or not a regular file) in {printable(directory)}", src)
    return path


def migrate_v1(raw: dict, src: str) -> dict:
    """A ``format_version`` 1 config as version 2: each entry gains ``role`` and ``language``, derived from its
    ``source`` (:func:`interventions.artifact.role_and_language`). Entries that are not objects are left for
    the entry checks; a version-1 entry that already has one of the new keys is refused."""
    entries = raw.get("interventions")
    migrated = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict):
            for key in ("role", "language"):
                if key in entry:
                    raise InterventionConfigError(f"interventions[{i}].{key}", "unknown key in a format_version 1 "
                                                  "file (role and language are fields from version 2 on)", src)
            role, language = role_and_language(entry.get("source"))
            entry = dict(entry, role=role, language=language)
        migrated.append(entry)
    return dict(raw, format_version=FORMAT_VERSION, interventions=migrated if isinstance(entries, list) else entries)


def read_directory(directory: Path, root: Path | None = None) -> tuple[list[Intervention], dict, str]:
    """``(interventions, base_model, source)`` of the intervention directory ``directory`` (its files must
    resolve inside ``root``, default itself); ``source`` names the config file in error messages."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    src = printable(directory / CONFIG_NAME)
    config_path = _file(directory, CONFIG_NAME, root, src)
    try:
        raw = read_json_object(config_path)
    except JSONInputError as err:
        raise InterventionConfigError(err.path or "json", err.message, src) from None
    except OSError as err:
        raise InterventionConfigError(CONFIG_NAME, f"unreadable: {printable(err)}", src) from None
    check_keys(raw, TOP_KEYS, "", src)
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool) or not isinstance(version, int):
        raise InterventionConfigError("format_version", f"expected {FORMAT_VERSION} (or 1, migrated on load), "
                                      f"got {version!r}", src)
    if version == 1:
        raw = migrate_v1(raw, src)
    entries = raw.get("interventions")
    if not isinstance(entries, list):
        raise InterventionConfigError("interventions", "expected a list", src)
    base_model = raw.get("base_model", {})
    if not isinstance(base_model, dict):
        raise InterventionConfigError("base_model", "expected a mapping", src)
    check_keys(base_model, BASE_MODEL_KEYS, "base_model", src)
    for key in ("hidden_size", "num_hidden_layers"):
        value = base_model.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InterventionConfigError(f"base_model.{key}", f"expected a positive int, got {value!r}", src)
    library = raw.get("library", {})
    if not isinstance(library, dict):
        raise InterventionConfigError("library", "expected a mapping", src)
    check_keys(library, LIBRARY_KEYS, "library", src)
    vectors_path = _file(directory, VECTORS_NAME, root, src)
    try:
        tensors = load_file(str(vectors_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InterventionConfigError(VECTORS_NAME, f"unreadable safetensors file: {printable(err)}",
                                      printable(vectors_path)) from None
    return [_entry_to_intervention(e, i, tensors, src) for i, e in enumerate(entries)], base_model, src


def _entry_to_intervention(entry: Any, i: int, tensors: dict, src: str) -> Intervention:
    where = f"interventions[{i}]"
    if not isinstance(entry, dict):
        raise InterventionConfigError(where, "expected a JSON object", src)
    kind = entry.get("kind")
    cls = INTERVENTION_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InterventionConfigError(f"{where}.kind", f"expected one of {list(INTERVENTION_KINDS)}, got {kind!r}",
                                      src)
    check_keys(entry, cls.entry_keys(), where, src)
    for key in cls.required_keys():
        if key not in entry:
            raise InterventionConfigError(f"{where}.{key}", "missing", src)
    check_role_and_language(entry["role"], entry["language"], where, src)

    def tensor(key: str) -> torch.Tensor:
        name = entry[key]
        if not isinstance(name, str) or name not in tensors:
            raise InterventionConfigError(f"{where}.{key}", f"tensor {name!r} missing from {VECTORS_NAME}", src)
        return tensors[name]

    return cls.from_entry(entry, tensor)
