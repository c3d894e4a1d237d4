"""File-system safety for directories a user hands us: no symlink leaves them, no JSON surprises, stable bytes.

* :func:`inside` resolves a file of a directory and refuses it when a symlink leads out of the directory
  (an intervention directory whose README.md points at ``/etc/passwd`` must not be read, copied or uploaded).
* :func:`copy_tree_no_symlinks` copies a directory (``steering.load``, ``alignment.adapter``) and refuses
  any symlink or special file in it, before anything is written.
* :func:`read_json_object` reads a JSON object strictly: size cap, UTF-8, no duplicate keys, no NaN/Infinity,
  no absurd integers, bounded nesting; every refusal is one :class:`JSONInputError` naming the path in the
  document (``interventions[0].layer``).
* :func:`save_safetensors` writes safetensors with byte-identical output between identical runs.
* Atomic writes, the one implementation every writer uses: :func:`atomic_write` (a file from bytes or text),
  :func:`atomic_path` (a file written by a library that wants a path), :func:`atomic_dir` (a directory);
  each goes through a hidden temporary sibling (:func:`fresh_sibling_dir`, ``.<name>.<random>``) renamed
  into place with ``os.replace`` (:func:`replace_dir` for directories), gives the result the ordinary
  permissions of the umask (:func:`ordinary_permissions`), and leaves nothing behind when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 30


class JSONInputError(ValueError):
    """A JSON document that is not accepted: ``path`` is where in the document (``""`` for the whole file)."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path or 'json'}: {message}")
        self.message = message


class UnsafePathError(ValueError):
    """A symlink or special file where a plain file or directory was expected; the message names it."""


def printable(text: Any) -> str:
    """``str(text)`` with every character ``str.isprintable`` refuses escaped as ``repr`` writes it: control and
    format characters (NUL, ANSI escapes, newlines, bidi marks), line/paragraph separators (U+2028/9, which split
    a line) and non-ASCII spaces. The one implementation: CLI output, intervention and recipe errors use it."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


# ---------------------------------------------------------------------------------------------- symlinks
def inside(directory: str | os.PathLike, name: str, root: str | os.PathLike | None = None) -> Path:
    """The real path of ``directory/name``; refuses it if a symlink resolves outside ``root`` (default:
    ``directory``). A Hub cache snapshot passes its repo folder as ``root`` (its files link into ``blobs/``)."""
    base = Path(os.path.realpath(root if root is not None else directory))
    candidate = Path(directory) / name
    real = Path(os.path.realpath(candidate))
    if real != base and base not in real.parents:
        raise UnsafePathError(f"{candidate}: is a symbolic link to {real}, outside {base}; refusing to read it")
    return real


def copy_tree_no_symlinks(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy directory ``src`` to ``dst`` (which must not exist); refuse any symlink or special file inside.

    Everything is checked before anything is written, so a refusal leaves no partial copy. ``src`` itself may
    be a symlink to a directory (the user named it); nothing inside it is followed.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UnsafePathError(f"{src}: expected a directory")
    for folder, dirs, files in os.walk(src, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise UnsafePathError(f"{path}: is a symbolic link (to {os.readlink(path)}); symlinks are not "
                                      f"copied, replace it with the file itself")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafePathError(f"{path}: is not a regular file or directory")
    # symlinks=True: even a link created after the check is copied as a link, never followed
    shutil.copytree(src, dst, symlinks=True)
    return dst


def fresh_sibling_dir(target: str | os.PathLike) -> Path:
    """An empty hidden directory next to ``target`` for an atomic save; ``os.mkdir`` honours the umask
    (0755 by default), unlike ``tempfile.mkdtemp`` (0700), so the renamed result has ordinary permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        work = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(work)
            return work
        except FileExistsError:
            continue


def replace_dir(work: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished ``work`` directory to ``target``, replacing an old ``target`` (file, link or tree)."""
    work, target = Path(work), Path(target)
    old = None
    if target.is_symlink() or target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(target, old)
    os.replace(work, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(root: str | os.PathLike) -> None:
    """Give a file, or a tree and everything in it, the modes of ordinary files: 0777/0666 less the umask
    (``mkstemp`` makes 0600 files, ``mkdtemp`` 0700 directories, safetensors' ``save_file`` 0600 files)."""
    root = Path(root)
    mask = _umask()
    dirs, files = 0o777 & ~mask, 0o666 & ~mask
    if root.is_file() and not root.is_symlink():
        os.chmod(root, files)
        return
    os.chmod(root, dirs)
    for folder, subdirs, names in os.walk(root):
        for name in subdirs + names:
            entry = os.path.join(folder, name)
            if not os.path.islink(entry):
                os.chmod(entry, dirs if name in subdirs else files)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """``with atomic_path(target) as tmp:`` write the file ``tmp``; when the block succeeds it gets ordinary
    permissions and replaces ``target`` (``os.replace``); when it fails, ``tmp`` is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp, done = Path(name), False
    try:
        yield tmp
        ordinary_permissions(tmp)
        os.replace(tmp, target)
        done = True
    finally:
        if not done:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically: readers see the old file or the new one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_dir(target) as work:`` fill the empty directory ``work``; when the block succeeds it
    (and everything in it) gets ordinary permissions and replaces ``target``; when it fails, it is removed."""
    work, done = fresh_sibling_dir(target), False
    try:
        yield work
        ordinary_permissions(work)
        replace_dir(work, target)
        done = True
    finally:
        if not done:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- safetensors
def save_safetensors(tensors: dict, path: str | os.PathLike, format_name: str) -> None:
    """``safetensors.torch.save_file`` with one metadata key: safetensors serialises metadata from a Rust
    ``HashMap``, whose order changes from process to process, so two keys give different bytes between
    identical runs. Tensor order in the header is sorted by safetensors itself. The bytes are written with a
    plain ``open`` so the file gets ordinary permissions (``save_file`` creates it 0600)."""
    from safetensors.torch import save

    data = save({k: tensors[k] for k in sorted(tensors)}, metadata={"format": format_name})
    with open(path, "wb") as fh:
        fh.write(data)


# ---------------------------------------------------------------------------------------------- strict JSON
class _Bad:
    """A value the parser met but refuses; reported with its path after parsing."""

    def __init__(self, message: str):
        self.message = message


class _Object(dict):
    duplicates: tuple = ()


def _pairs(pairs: list) -> _Object:
    obj = _Object()
    dup = []
    for key, value in pairs:
        if key in obj and key not in dup:
            dup.append(key)
        obj[key] = value
    obj.duplicates = tuple(dup)
    return obj


def _parse_int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Bad(f"an integer with {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_constant(name: str) -> _Bad:
    return _Bad(f"{name} is not valid JSON (expected a finite number)")


def _key_path(parent: str, key: str) -> str:
    if key.isidentifier() and key.isprintable():
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{key!r}]"


def _check_tree(value: Any) -> None:
    """Find the first refused value, duplicate key or too-deep nesting, iteratively (no recursion)."""
    stack = [("", value, 0)]
    while stack:
        path, node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise JSONInputError(path, f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, _Bad):
            raise JSONInputError(path, node.message)
        if isinstance(node, dict):
            for key in getattr(node, "duplicates", ()):
                raise JSONInputError(_key_path(path, key), "duplicate key (the JSON object names it twice)")
            stack.extend((_key_path(path, k), v, depth + 1) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in reversed(list(enumerate(node))))


def loads_json_object(data: bytes) -> dict:
    """Parse ``data`` strictly into a JSON object (see the module docstring); plain dicts and lists."""
    if len(data) > MAX_JSON_BYTES:
        raise JSONInputError("", f"{len(data)} bytes, more than the {MAX_JSON_BYTES} bytes accepted")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JSONInputError("", f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})") from None
    try:
        raw = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int, parse_constant=_parse_constant)
    except json.JSONDecodeError as err:
        raise JSONInputError("", f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise JSONInputError("", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:  # e.g. a number the float/int parser refuses
        raise JSONInputError("", f"malformed JSON: {printable(err)}") from None
    if not isinstance(raw, dict):
        raise JSONInputError("", f"expected a JSON object at the top level, got {type(raw).__name__}")
    _check_tree(raw)
    return _plain(raw)


def _plain(value: Any) -> Any:
    """Copy ``_Object`` nodes into plain dicts (the depth is already bounded by ``_check_tree``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_json_object(path: str | os.PathLike) -> dict:
    """Read and strictly parse the JSON object in ``path``, reading at most ``MAX_JSON_BYTES`` + 1 bytes."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_JSON_BYTES + 1)
    return loads_json_object(data)
