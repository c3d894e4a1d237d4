"""Reading a recipe file: strict YAML (no duplicate keys, no aliases) and ``--set`` overrides.

PyYAML's ``safe_load`` silently keeps the last of two equal keys (``seed: 0`` then ``seed: 1``; a second
``evaluate:`` block) and expands aliases, so a few hundred bytes of ``&a [*b, *b, ...]`` become billions of
nodes. Recipes are refused on both: :class:`RecipeLoader` refuses any alias while composing (before anything
is expanded), and :func:`parse_yaml` walks the composed nodes for repeated keys, naming the dotted field and
both lines. A recipe file larger than :data:`MAX_BYTES` is refused before it is parsed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from interventions.fsutil import printable

from .errors import RecipeError, describe
from .schema import Recipe

MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_BYTES = 1 << 20
"""A recipe is a few kilobytes; anything above 1 MiB is refused unread."""


class RecipeLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases (``*name``, and so ``<<: *name`` merges) as soon as it meets one."""

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a recipe (write the value out instead)",
                event.start_mark)
        return super().compose_node(parent, index)


def _where(path: str, key: Any) -> str:
    shown = key if isinstance(key, str) and re.fullmatch(r"[\w+-]+", key) else describe(key)
    return f"{path}.{shown}" if path else shown


def _check_duplicates(loader: RecipeLoader, node, path: str) -> None:
    """Refuse a mapping that names a key twice (anywhere in the document), naming the field and both lines."""
    stack = [(node, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, SequenceNode):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(current.value))
        elif isinstance(current, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in current.value:
                key = (loader.construct_object(key_node, deep=True)
                       if isinstance(key_node, ScalarNode) and key_node.tag != MERGE_TAG else None)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key) if key is not None else None
                except TypeError:  # unhashable: the schema refuses it as a non-string key
                    first = None
                if first is not None:
                    raise RecipeError(_where(where, key), f"duplicate key at line {line} (first at line {first}); "
                                                          "the second value would silently replace the first")
                if key is not None:
                    try:
                        seen[key] = line
                    except TypeError:
                        pass
                stack.append((value_node, _where(where, key) if key is not None else where))


def parse_yaml(text: str, file: str = "<recipe>") -> Any:
    """The document in ``text`` (None when empty); every problem is one :class:`RecipeError` naming ``file``."""
    loader = None
    try:
        loader = RecipeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(loader, node, "")
        return loader.construct_document(node)
    except RecipeError as err:
        err.file = file
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise RecipeError(line, f"invalid YAML: {err.problem or err.context}", file) from None
    except yaml.YAMLError as err:  # e.g. a control character the YAML reader refuses
        raise RecipeError("YAML", f"invalid YAML: {printable(str(err))[:200]}", file) from None
    except RecursionError:
        raise RecipeError("YAML", "nesting too deep", file) from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise RecipeError("YAML", f"unreadable value ({printable(str(err))[:100]})", file) from None
    finally:
        if loader is not None:
            loader.dispose()


def _known_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _merge(node: dict, value: dict, cls: type, where: str) -> None:
    """Merge a mapping given for a section into the section: keys not given keep their value."""
    hints = typing.get_type_hints(cls)
    for key, item in value.items():
        tp = hints.get(key) if isinstance(key, str) else None
        child = node.get(key) if tp is not None else None
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(item, dict) and isinstance(child, dict):
            _merge(child, item, tp, _where(where, key))
        else:
            node[key] = item  # unknown keys and wrong types are named by the schema


def apply_override(data: dict, assignment: str) -> dict:
    """Apply ``a.b.c=value`` (value parsed as YAML, so ``14`` is an int) to a raw recipe mapping.

    A mapping given for a section (``evaluate={n: 5}``) is merged into it, not put in its place."""
    if "=" not in assignment:
        raise RecipeError("--set", f"expected KEY=VALUE (e.g. evaluate.n=20), got {describe(assignment)}")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise RecipeError("--set", f"expected a dotted key such as steering.loc.layer, got {describe(key)}")
    if len(raw) > MAX_BYTES:
        raise RecipeError(key.strip(), f"--set value of {len(raw)} characters; at most {MAX_BYTES}")
    try:
        value = parse_yaml(raw, "--set") if raw.strip() else ""
    except RecipeError as err:
        if "invalid YAML" not in err.message:  # duplicates, huge numbers: refused as in a file
            inner = "" if err.field.startswith(("line ", "YAML")) else f".{err.field}"
            raise RecipeError(key.strip() + inner, err.message) from None
        if "alias" in err.message:
            raise RecipeError(key.strip(), err.message.removeprefix("invalid YAML: ")) from None
        value = raw  # not YAML: the text itself (e.g. a description with a colon)
    cls: Any = Recipe
    node = data
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        names = _known_keys(cls)
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise RecipeError(where, f"unknown key{hint}")
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(node.get(part), dict):
                _merge(node[part], value, tp, where)
            else:
                node[part] = value
        else:
            if not dataclasses.is_dataclass(tp):
                raise RecipeError(key.strip(), f"{where} is not a section; cannot set a key inside it")
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(where, f"expected a mapping, got {describe(child)}")
            node = child
            cls = tp
    return data


def read_recipe_data(path: Path, overrides: list[str] = ()) -> dict:
    """The raw mapping of a recipe file with overrides applied (errors name the file)."""
    file = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise RecipeError("recipe", f"{size} bytes; a recipe file is at most {MAX_BYTES} bytes", file)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe", f"no such recipe file: {file}") from None
    except UnicodeDecodeError as err:
        raise RecipeError("recipe", f"not UTF-8 text (byte {err.start}): {file}") from None
    except OSError as err:
        raise RecipeError("recipe", f"cannot read {file}: {err.strerror or err}") from None
    data = parse_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError("recipe", f"expected a mapping of sections at the top level, got {describe(data)}",
                          file)
    try:
        for assignment in overrides:
            apply_override(data, assignment)
    except RecipeError as err:
        err.file = err.file if err.file and err.file != "--set" else file
        raise
    return data
