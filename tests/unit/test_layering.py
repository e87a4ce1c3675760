"""The product does not lean on the test suite: nothing under src/, scripts/ or bench/ imports `tests`, the product
imports no `devtools` either, and devtools (which tests, bench and scripts share) does not import `tests`.

Imports are read from the syntax tree (``import x``, ``from x import y``, and module names spelled as strings, as in
``python -m x`` argv lists or ``importlib.import_module``); scripts that are not Python (``scripts/testhost``, a shell
wrapper around ``python3 -m devtools.testhost``) are read as text for ``-m`` module names and dotted references.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# (folder, top-level packages its files must not import)
RULES = (
    ("src", ("tests", "devtools")),
    ("scripts", ("tests",)),
    ("bench", ("tests",)),
    ("devtools", ("tests",)),
)
_MODULE_STRING = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def python_imports(source: str) -> set[str]:
    """The absolute module names `source` imports or names as a module string (relative imports are left out)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            # Only dotted strings count ("tests.support.x"), or a bare name run with -m / import_module below.
            if "." in node.value:
                found.add(node.value)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
        ):
            found.add(node.args[0].value)
    return found


def text_imports(text: str) -> set[str]:
    """Module names a shell script runs with ``-m`` or spells dotted (``tests.support``)."""
    found = set(re.findall(r"-m\s+([A-Za-z_][\w.]*)", text))
    found.update(re.findall(r"(?<![\w./-])((?:tests|devtools)(?:\.\w+)+)", text))
    return found


def _is_python(path: Path) -> bool:
    if path.suffix == ".py":
        return True
    with path.open("rb") as handle:
        first = handle.readline()
    return first.startswith(b"#!") and b"python" in first


def scanned_files(folder: str) -> list[Path]:
    """Every Python file under `folder`, and for scripts/ also its other executables (the shell wrappers)."""
    root = REPO / folder
    files = sorted(root.rglob("*.py"))
    if folder == "scripts":
        files += sorted(p for p in root.iterdir() if p.is_file() and p.suffix != ".py" and p.stat().st_mode & 0o111)
    return files


def imports_of(path: Path) -> set[str]:
    text = path.read_text()
    return python_imports(text) if _is_python(path) else text_imports(text)


def test_the_scanned_folders_hold_what_they_should() -> None:
    """The scan is not vacuous: the files that once imported tests/ are among those it reads."""
    scanned = {p.relative_to(REPO).as_posix() for folder, _ in RULES for p in scanned_files(folder)}
    for expected in (
        "scripts/local_image.py",
        "scripts/testhost",
        "bench/image_build.py",
        "bench/update_noop.py",
        "bench/upload_bytes.py",
        "src/devserver/images/base.py",
        "devtools/testhost/host.py",
        "devtools/fixture_repo.py",
    ):
        assert expected in scanned, expected


@pytest.mark.parametrize(("folder", "forbidden"), RULES, ids=[folder for folder, _ in RULES])
def test_no_forbidden_imports(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        f"{path.relative_to(REPO)}: {module}"
        for path in scanned_files(folder)
        for module in imports_of(path)
        if _top(module) in forbidden
    }
    assert not offenders, f"{folder}/ must not import {', '.join(forbidden)}: {sorted(offenders)}"


@pytest.mark.parametrize(
    "source",
    [
        "import tests.support.testhost",
        "from tests.uploads.conftest import write_fixture_disk",
        "from tests import support",
        "def f():\n    from tests.support import fixture_repo",
        "argv = [sys.executable, '-m', 'tests.support.testhost', 'up']",
        "importlib.import_module('tests')",
    ],
)
def test_the_python_check_sees_an_import_of_tests(source: str) -> None:
    assert "tests" in {_top(module) for module in python_imports(source)}


def test_the_python_check_ignores_paths_and_relative_imports() -> None:
    source = "from . import tests\nargv = ['pytest', 'tests/stacks', '-q']\nname = 'tests'\n"
    assert {_top(module) for module in python_imports(source)} == set()


def test_the_shell_check_sees_python_dash_m() -> None:
    assert "tests.support.testhost" in text_imports('exec python3 -m tests.support.testhost "$@"\n')
    assert text_imports("# See devtools/testhost/. Needs root.\nexec python3 -m devtools.testhost\n") == {
        "devtools.testhost"
    }
