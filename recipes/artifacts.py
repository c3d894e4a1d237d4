"""The typed artifacts the recipe's stages hand each other: ``model.json``, ``adapter.json``, ``steering.json``
and ``crossfit.json``, one frozen dataclass each (:class:`ModelInfo`, :class:`AdapterInfo`,
:class:`SteeringResult`, :class:`CrossfitResult`).

``artifact.save(directory)`` writes ``<directory>/<FILE>`` atomically (:func:`interventions.fsutil.atomic_write`)
as JSON with sorted keys and a ``format_version``; ``Cls.load(directory)`` reads it strictly
(:func:`interventions.fsutil.read_json_object`: size cap, UTF-8, no duplicate keys, no NaN) and refuses an unknown
key, a missing key, a value of the wrong type or another ``format_version`` with one :class:`ArtifactError` naming
the file and the field (``.../steering.json: selection.loc_ko.layer: expected an int or null, got 'x'``).
``save`` checks the artifact the same way before writing, so a writer's mistake is refused before a reader meets
it. ``Cls.find(directory)`` is ``load`` when the file exists, else None (a stage that is off or wrote none).

A change of a file's shape bumps :data:`FORMAT_VERSION` and :data:`recipes.run_dir.HASH_VERSION` together: old
stage directories are then recomputed rather than misread.

:mod:`interventions.fsutil` is torch-free: ``--dry-run`` (whose plan imports :mod:`recipes.crossfit_stage`, which
imports this module) imports no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Optional, Union

from interventions.fsutil import JSONInputError, atomic_write, printable, read_json_object

from .errors import RecipeError, describe

FORMAT_VERSION = 1
"""The shape of every artifact below; a file with another ``format_version`` is refused."""


class ArtifactError(RecipeError):
    """A stage artifact that is refused: ``file`` is its path, ``field`` the dotted key in it."""


# ---------------------------------------------------------------------------------------------- strict decoding
def _join(prefix: str, key: str) -> str:
    if key.isidentifier() and key.isprintable():
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{key!r}]"


_KINDS = {bool: "a boolean", int: "an int", float: "a finite number", str: "a string", type(None): "null"}


def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_expected(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is dict:
        return "a JSON object"
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(hint):
        return "a JSON object"
    return _KINDS.get(hint, str(hint))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _decode(value: Any, hint: Any, field: str, file: str) -> Any:
    """``value`` checked against the type ``hint`` (and converted: int to float, objects to dataclasses)."""
    if hint is Any:  # a JSON value whose shape is the producer's (read_json_object already bounded it)
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # the artifacts use Optional only
        if value is not None:
            try:
                return _decode(value, inner, field, file)
            except ArtifactError as err:
                if err.field != (field or "json"):  # refused deeper inside: that field's message
                    raise
    elif origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _decode(v, args[1], _join(field, k), file) for k, v in value.items()}
    elif origin is list:
        if isinstance(value, list):
            return [_decode(v, args[0], f"{field}[{i}]", file) for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _decode_fields(hint, value, field, file)
    elif hint is bool:
        if type(value) is bool:
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{field}: unsupported artifact type {hint!r}")
    raise ArtifactError(field or "json", f"expected {_expected(hint)}, got {describe(value)}", file)


def _decode_fields(cls: type, data: dict, prefix: str, file: str) -> Any:
    """An instance of the dataclass ``cls`` from ``data``, which must name every field and nothing else."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ArtifactError(_join(prefix, key), f"unknown key (expected {', '.join(sorted(names))})", file)
    for name in names:
        if name not in data:
            raise ArtifactError(_join(prefix, name), f"missing (expected {_expected(hints[name])})", file)
    obj = cls(**{n: _decode(data[n], hints[n], _join(prefix, n), file) for n in names})
    for field, message in getattr(obj, "problems", lambda: ())():
        raise ArtifactError(_join(prefix, field), message, file)
    return obj


def _dumps(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


class Artifact:
    """Base of the artifacts: ``FILE`` is the file name in the stage directory."""

    FILE: ClassVar[str]

    def to_dict(self) -> dict:
        """The JSON object of the file: every field (nested dataclasses as objects) and ``format_version``."""
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, file: str | Path | None = None):
        """The artifact from the JSON object of its file, refused (:class:`ArtifactError`) unless exact."""
        file = str(file or cls.FILE)
        if not isinstance(data, dict):
            raise ArtifactError("json", f"expected a JSON object, got {describe(data)}", file)
        if "format_version" not in data:
            raise ArtifactError("format_version", f"missing (expected {FORMAT_VERSION}); written by another version "
                                                  "of surgical-steering: rerun the stage with --force", file)
        version = data["format_version"]
        if type(version) is not int or version != FORMAT_VERSION:
            raise ArtifactError("format_version", f"expected {FORMAT_VERSION}, got {describe(version)}; written by "
                                                  "another version of surgical-steering: rerun the stage with --force",
                                file)
        return _decode_fields(cls, {k: v for k, v in data.items() if k != "format_version"}, "", file)

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/<FILE>`` atomically, after checking the artifact as :meth:`load` would."""
        path = Path(directory) / self.FILE
        try:
            text = _dumps(self.to_dict())
        except (TypeError, ValueError) as err:  # a NaN or a non-JSON value in a free-form (Any) part
            raise ArtifactError("json", f"not writable as JSON: {err}", str(path)) from None
        # checked as a reader would check it, and written as read back (an int alpha as 1.0)
        atomic_write(path, _dumps(type(self).from_dict(json.loads(text), path).to_dict()))
        return path

    @classmethod
    def load(cls, directory: str | Path):
        """Read ``<directory>/<FILE>`` strictly; every refusal is one :class:`ArtifactError` naming file and field."""
        path = Path(directory) / cls.FILE
        try:
            data = read_json_object(path)
        except JSONInputError as err:
            raise ArtifactError(err.path or "json", err.message, str(path)) from None
        except FileNotFoundError:
            raise ArtifactError("json", "not found: the stage directory is incomplete; rerun the stage with --force",
                                str(path)) from None
        except OSError as err:
            raise ArtifactError("json", f"unreadable: {printable(err)}", str(path)) from None
        return cls.from_dict(data, path)

    @classmethod
    def find(cls, directory: str | Path | None):
        """:meth:`load` when ``directory`` holds the file, else None."""
        if directory is None or not (Path(directory) / cls.FILE).is_file():
            return None
        return cls.load(directory)


# ---------------------------------------------------------------------------------------------- the artifacts
@dataclass(frozen=True)
class ModelInfo(Artifact):
    """``model.json`` (model stage): the recipe's model and the shape the later stages check against."""

    FILE: ClassVar[str] = "model.json"
    name_or_path: str
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    dtype: Optional[str]
    revision: Optional[str]


@dataclass(frozen=True)
class AdapterInfo(Artifact):
    """``adapter.json`` (alignment stage): where the alignment adapter is, copied into the stage or on the Hub."""

    FILE: ClassVar[str] = "adapter.json"
    ADAPTER_DIR: ClassVar[str] = "adapter"
    source: str
    """The recipe's ``alignment.adapter`` (a directory or a Hub id), or the trained adapter's directory."""
    local: bool
    """The adapter is in the stage directory's ``adapter/`` (copied or trained)."""
    trained: bool
    method: Optional[str]
    """The alignment method when trained here, else null."""

    def location(self, directory: str | Path) -> str:
        """What ``load_adapter`` takes: the stage's ``adapter/`` directory when local, else the Hub id."""
        return str(Path(directory) / self.ADAPTER_DIR) if self.local else self.source

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.trained and not self.local:
            yield "local", "a trained adapter is in the stage directory (expected true)"
        if self.trained and self.method is None:
            yield "method", "a trained adapter names its method (expected a string)"


@dataclass(frozen=True)
class VectorSelection:
    """Where one vector of the steering stage is applied, and why."""

    layer: Optional[int]
    """Null: unsteered (a cross-validated choice that did not gain on its selection data)."""
    alpha: float
    positions: str
    steered: bool
    kind: Literal["en", "loc"]
    language: str
    selected: str
    """How: ``fixed in the recipe`` or the cross-validated modal choice."""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.steered != (self.layer is not None):
            yield "layer", ("a steered vector has no layer (expected an int)" if self.steered else
                            f"an unsteered vector is applied nowhere (expected null, got {self.layer!r})")


@dataclass(frozen=True)
class SteeringResult(Artifact):
    """``steering.json`` (steering stage): the intervention loaded (``source``) or computed (``protocol``)."""

    FILE: ClassVar[str] = "steering.json"
    computed: bool
    source: Optional[str]
    """The recipe's ``steering.load`` when loaded, else null."""
    protocol: Optional[Literal["fixed", "crossfit"]]
    """``fixed``: the recipe's layers and alphas; ``crossfit``: chosen by cross-validation; null when loaded."""
    selection: dict[str, VectorSelection]
    """Per computed vector (``en_transfer_<L>``, ``loc_<L>``), empty when loaded."""
    primary_run: Optional[Literal["base", "cla"]]
    """The model the saved vectors were computed on (null when loaded)."""
    intervention: bool
    """``intervention/`` holds at least one intervention."""
    grid_rows: Optional[str]
    """The file of the selection grid's rows in the stage directory (``crossfit``), else null."""

    @classmethod
    def loaded(cls, source: str) -> "SteeringResult":
        return cls(computed=False, source=source, protocol=None, selection={}, primary_run=None, intervention=True,
                   grid_rows=None)

    def selection_dicts(self) -> dict[str, dict]:
        """The selection as plain dicts (the claims and the analysis take JSON-like records)."""
        return {name: dataclasses.asdict(sel) for name, sel in self.selection.items()}

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.computed == (self.source is not None):
            yield "source", "null when computed, the loaded directory or Hub id otherwise"
        if self.computed != (self.protocol is not None):
            yield "protocol", "fixed or crossfit when computed, null when loaded"
        if not self.computed and (self.selection or self.primary_run is not None or self.grid_rows is not None):
            yield "selection", "a loaded intervention has no selection, primary_run or grid_rows"


@dataclass(frozen=True)
class ModalChoice:
    """:func:`evaluate.crossfit.modal_choice`: the cell chosen in most folds."""

    layer: Optional[int]
    alpha: float
    steered: bool
    folds: int
    n_folds: int


@dataclass(frozen=True)
class CrossfitLanguage:
    """One run and language of the cross-fitted protocol (:class:`evaluate.crossfit.LanguageResult`)."""

    folds: dict[str, int]
    """Group -> fold."""
    selections: dict[str, list[Any]]
    """``en`` / ``loc``: per fold, the selection record (:func:`evaluate.selection.cross_validate`)."""
    stability: dict[str, Any]
    modal: dict[str, ModalChoice]
    n_items: dict[str, int]


@dataclass(frozen=True)
class SelectionSettings:
    """The cross-fitted protocol's settings (:class:`evaluate.crossfit.CrossfitSettings`) that the result rests on."""

    layers: list[int]
    alphas: list[float]
    k: int
    tolerance: float
    max_kl: Optional[float]
    seed: int


@dataclass(frozen=True)
class CrossfitResult(Artifact):
    """``crossfit.json`` (steering stage with ``auto``): folds, per-fold selections, stability, modal choices."""

    FILE: ClassVar[str] = "crossfit.json"
    protocol: Literal["crossfit"]
    runs: dict[str, dict[str, CrossfitLanguage]]
    """Run (``base`` / ``cla``) -> language -> its result."""
    primary_run: Literal["base", "cla"]
    settings: SelectionSettings
    preregistered_cosine_layer: int

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.primary_run not in self.runs:
            yield "primary_run", f"{self.primary_run!r} is not one of the runs {sorted(self.runs)}"

    def plain(self, part: str) -> dict[str, dict[str, Any]]:
        """``part`` (``modal``, ``stability``, ``n_items``, ...) of every run and language, as plain JSON values."""
        return {run: {lang: dataclasses.asdict(r)[part] for lang, r in langs.items()}
                for run, langs in self.runs.items()}


ARTIFACTS = (ModelInfo, AdapterInfo, SteeringResult, CrossfitResult)

__all__ = ["ARTIFACTS", "AdapterInfo", "Artifact", "ArtifactError", "CrossfitLanguage", "CrossfitResult",
           "FORMAT_VERSION", "ModalChoice", "ModelInfo", "SelectionSettings", "SteeringResult", "VectorSelection"]
