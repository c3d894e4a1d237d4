"""The helpers recipes share with interventions without loading torch: ``printable`` (interventions.fsutil) and
``library_version`` (interventions.provenance), importable while the package's torch modules load on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from interventions.fsutil import printable
from recipes.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("raw, shown", [
    ("plain ascii", "plain ascii"),
    ("서울 北京 القاهرة", "서울 北京 القاهرة"),  # printable letters of any script stay
    ("a\x1b[2Jb\x07", "a\\x1b[2Jb\\x07"),  # ANSI escape, bell
    ("x\ny\r\tz\x00", "x\\ny\\r\\tz\\x00"),
    ("left\u202eright", "left\\u202eright"),  # a bidi override (format character)
    ("one\u2028two\u2029three", "one\\u2028two\\u2029three"),  # line / paragraph separators split a line
    ("a\u3000b\xa0c", "a\\u3000b\\xa0c"),  # non-ASCII spaces are shown, not hidden
])
def test_printable_escapes_every_non_printable_character(raw, shown):
    assert printable(raw) == shown
    assert printable(shown) == shown  # already printable: unchanged


def test_recipe_errors_are_one_printable_line():
    err = RecipeError("name", "expected a plain run name, got 'a\u2028b\x1b[31m'", file="r\u202e.yaml")
    text = str(err)
    assert text.isprintable() and len(text.splitlines()) == 1
    assert text == "r\\u202e.yaml: name: expected a plain run name, got 'a\\u2028b\\x1b[31m'"


def _run_fresh(code: str) -> None:
    """Run ``code`` in a fresh interpreter from the project root (nothing imported yet); fail with its stderr."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_torch_free_modules_import_without_torch_and_exports_load_on_use():
    code = ("import sys; import interventions.fsutil, interventions.provenance, recipes.run_dir, recipes.plan; "
            "assert 'torch' not in sys.modules, 'torch loaded'; "
            "import interventions; from interventions import InterventionConfig, steer; "
            "assert 'torch' in sys.modules and interventions.steer is steer; "
            "assert set(interventions.__all__) <= set(dir(interventions)); "
            "from recipes.plan import library_version; from interventions.provenance import library_version as v; "
            "assert library_version is v")
    _run_fresh(code)
    import interventions

    with pytest.raises(AttributeError, match="no attribute 'steering'"):
        interventions.steering


def test_the_steer_export_stays_the_function_after_its_submodule_is_imported():
    """Importing the submodule ``interventions.steer`` first (as evaluate/sweep.py does) must not turn
    ``from interventions import steer`` into the module: it did, and 107 tests failed in suite order only."""
    code = ("import interventions.steer as first, interventions.components; from interventions import steer; "
            "import inspect, interventions; "
            "assert inspect.isfunction(steer) and interventions.steer is steer, type(steer); "
            "import importlib; assert importlib.import_module('interventions.steer').steer is steer; "
            "from interventions.steer import steer as direct; assert direct is steer")
    _run_fresh(code)
