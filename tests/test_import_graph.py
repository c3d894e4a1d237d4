"""The packages import each other one way: recipes -> alignment -> evaluate -> interventions.

Every ``import`` / ``from ... import`` anywhere in a file counts, including the ones inside functions
(a function-local import is still a dependency; it only hides it until the function runs). Relative
imports are resolved against the file's package. ``importlib.import_module("...")`` with a literal name
counts too.

Three rules:

- a package imports only itself, the packages below it, and third-party code;
- the files of one package form no import cycle;
- no test module (``tests/test_*.py``) imports another test module (helpers such as
  ``tests/tiny_models.py`` are fine).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest layer first; a package may import the packages at or below its own index.
LAYERS = ("interventions", "evaluate", "alignment", "recipes")
# Top-level names that are ours but not a layer: no package may import them.
OURS = set(LAYERS) | {"tests", "benchmarks"}


def module_files(package: str) -> dict[str, Path]:
    """``{dotted module name: path}`` for every .py file of ``package`` (subpackages included)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


ALL_MODULES: dict[str, Path] = {}
for _package in LAYERS:
    ALL_MODULES.update(module_files(_package))


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute dotted name ``node`` imports from (``from ..a import b`` in ``x.y.z`` -> ``x.a``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(path) else module.split(".")[:-1]
    if node.level - 1 > len(base):
        raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno}: relative import above the top package")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _resolve(name: str) -> str:
    """The module of ours that importing ``name`` runs last: ``a.b.c`` if it is a module, else its longest
    prefix that is one (``from a.b import f`` names ``a.b.f``, which resolves to ``a.b``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in ALL_MODULES:
            return candidate
        parts.pop()
    return name


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """``[(imported name, line)]`` for every import in the file; ``from a import b`` gives ``a.b``
    (resolved later to the module ``a.b`` when it is one, else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            out.extend((f"{base}.{alias.name}" if base else alias.name, node.lineno) for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            out.append((node.args[0].value, node.lineno))
    return out


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def layer_violations() -> list[str]:
    bad = []
    for module, path in ALL_MODULES.items():
        own = LAYERS.index(module.split(".")[0])
        for name, line in imports_of(module, path):
            top = name.split(".")[0]
            if top not in OURS:
                continue
            if top not in LAYERS or LAYERS.index(top) > own:
                bad.append(f"{_where(path, line)}: {module} imports {_resolve(name)} "
                           f"({LAYERS[own]} may import only {', '.join(LAYERS[:own + 1])})")
    return list(dict.fromkeys(bad))  # one line per imported module, not per imported name


def package_graph(package: str) -> dict[str, dict[str, int]]:
    """``{module: {imported module of the same package: first line}}``."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in module_files(package).items():
        edges = graph.setdefault(module, {})
        for name, line in imports_of(module, path):
            target = _resolve(name)
            if target.split(".")[0] == package and target in ALL_MODULES and target != module:
                edges.setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per back edge met by a depth-first search (each as ``[a, b, ..., a]``); empty if acyclic."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def cycle_report(package: str) -> list[str]:
    graph = package_graph(package)
    files = module_files(package)
    out = []
    for cycle in find_cycles(graph):
        hops = [f"{_where(files[a], graph[a][b])}: {a} imports {b}" for a, b in zip(cycle, cycle[1:])]
        out.append(" -> ".join(cycle) + "\n      " + "\n      ".join(hops))
    return out


def test_find_cycles_sees_a_cycle_and_a_dag():
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {}}) == []
    assert find_cycles({"a": {"a": 1}}) == [["a", "a"]]


def test_relative_imports_resolve():
    node = ast.parse("from ..tasks import base").body[0]
    assert _absolute("evaluate.tasks.blend", ROOT / "evaluate/tasks/blend.py", node) == "evaluate.tasks"
    node = ast.parse("from . import blend").body[0]
    assert _absolute("evaluate.tasks", ROOT / "evaluate/tasks/__init__.py", node) == "evaluate.tasks"
    assert _resolve("evaluate.tasks.blend") == "evaluate.tasks.blend"
    assert _resolve("evaluate.tasks.get_task") == "evaluate.tasks"


def test_hidden_imports_are_seen(tmp_path):
    """A function-local import, a relative one and importlib.import_module with a literal all count."""
    path = tmp_path / "mod.py"
    path.write_text("import json\n\n\ndef f():\n    from ..recipes import run\n\n\n"
                    "class C:\n    def g(self):\n        import importlib\n"
                    "        return importlib.import_module('alignment.sft')\n")
    found = imports_of("interventions.sub.mod", path)
    assert ("json", 1) in found and ("interventions.recipes.run", 5) in found
    assert ("alignment.sft", 11) in found


def test_all_four_packages_are_parsed():
    for package in LAYERS:
        assert f"{package}" in ALL_MODULES, package
        assert len(module_files(package)) > 3, package


def test_no_package_imports_a_higher_layer():
    bad = layer_violations()
    assert not bad, (f"{len(bad)} import(s) against the layering {' <- '.join(LAYERS)}:\n  "
                     + "\n  ".join(bad))


def test_no_import_cycle_inside_a_package():
    report = [f"{package}: {line}" for package in LAYERS for line in cycle_report(package)]
    assert not report, f"{len(report)} import cycle(s) among a package's files:\n  " + "\n  ".join(report)


def test_no_test_module_imports_another():
    tests = ROOT / "tests"
    test_modules = {p.stem for p in tests.glob("test_*.py")}
    bad = []
    for path in sorted(tests.glob("*.py")):
        for name, line in imports_of(path.stem, path):
            parts = name.split(".")
            if parts[0] == "tests":
                parts = parts[1:]
            if parts and parts[0] in test_modules and parts[0] != path.stem:
                bad.append(f"{_where(path, line)}: imports the test module {parts[0]}")
    assert not bad, "test modules import each other (move the shared code to a helper such as " \
                    "tests/tiny_models.py):\n  " + "\n  ".join(bad)
