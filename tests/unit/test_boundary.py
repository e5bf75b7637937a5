"""The arrows point one way: the back-office reaches the core through its facade only, the core never
reaches back, and no two core modules import each other.

Read from the source (``ast``), every ``import`` counts, also those inside a function or under
``TYPE_CHECKING``: an import written in a function is still an arrow between two modules.

- Every module of ``backoffice/`` (and ``wsgi.py``) may import ``archive_core.api`` and the two
  public helper modules, ``archive_core.values`` (DICOM values, Paris day, clock, lock keys) and
  ``archive_core.hashchain`` (the payment journal is chained as the audit trail is), and no other
  ``archive_core`` module.
- No ``archive_core`` module imports Flask (or Werkzeug, a Flask extension) or ``backoffice``.
- The modules of ``archive_core`` import one another without a cycle.

Each rule is also run on a copy of the tree with one bad import added (bad input: ``from
archive_core.render import RenderParams`` in a view, ``import flask`` in the core, a core module
importing one that imports it), and must report exactly that line: this test fails if anyone adds
such an import.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT

FACADE = ("archive_core.api", "archive_core.values", "archive_core.hashchain")
CORE_MUST_NOT_IMPORT = ("flask", "flask_babel", "flask_login", "flask_wtf", "werkzeug", "backoffice")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in *path*; ``from a import b`` gives ``a.b`` when that is a module
    under *root* (a submodule), else ``a``; relative imports are made absolute."""
    name = _module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (root / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (root / Path(*sub.split(".")) / "__init__.py").is_file()
                found.append((node.lineno, sub if is_module else base))
    return found


def _sources(root: Path, package: str) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def backoffice_violations(root: Path) -> list[str]:
    """Imports of an archive_core module other than the facade, from the back-office or wsgi.py."""
    paths = _sources(root, "backoffice") + [p for p in [root / "wsgi.py"] if p.is_file()]
    return [f"{path.relative_to(root)}:{line} imports {module}"
            for path in paths for line, module in imports_of(root, path)
            if module.split(".")[0] == "archive_core" and module not in FACADE]


def core_violations(root: Path) -> list[str]:
    """Imports of Flask or the back-office from an archive_core module."""
    return [f"{path.relative_to(root)}:{line} imports {module}"
            for path in _sources(root, "archive_core") for line, module in imports_of(root, path)
            if module.split(".")[0] in CORE_MUST_NOT_IMPORT]


def core_cycles(root: Path) -> list[list[str]]:
    """The import cycles among archive_core modules, each as the modules that import one another
    (strongly connected components of more than one module, or a module importing itself)."""
    modules = {_module_name(root, p): p for p in _sources(root, "archive_core")}
    graph = {name: sorted({m for _line, m in imports_of(root, path) if m in modules})
             for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(cycles)


def _path(root: Path, module: str) -> Path:
    base = root / Path(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def _describe(root: Path, cycle: list[str]) -> str:
    """The arrows inside one cycle, ``a -> b; b -> a``."""
    return "; ".join(f"{a} -> {b}" for a in cycle
                     for b in sorted({m for _line, m in imports_of(root, _path(root, a))} & set(cycle)))


# -- the tree as it is ----------------------------------------------------------------------------------


def test_the_back_office_imports_the_core_through_the_facade_only():
    assert backoffice_violations(ROOT) == []


def test_the_core_imports_neither_flask_nor_the_back_office():
    assert core_violations(ROOT) == []


def test_the_core_modules_import_one_another_without_a_cycle():
    cycles = core_cycles(ROOT)
    assert cycles == [], [_describe(ROOT, c) for c in cycles]


def test_the_walk_sees_the_back_office_imports():
    """Guards the walk itself: the facade imports the back-office really writes are found (also in functions)."""
    found = {m for p in _sources(ROOT, "backoffice") for _l, m in imports_of(ROOT, p)}
    assert "archive_core.api" in found
    assert "backoffice.extensions" in found


# -- one bad import added: each rule reports it -----------------------------------------------------------


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in ("archive_core", "backoffice"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    return root


def _append(path: Path, code: str) -> int:
    """Add *code* (one import among its lines) at the end of *path*: the line number of that import."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text + code, encoding="utf-8")
    before = text.count("\n") + (0 if text.endswith("\n") else 1)
    return before + next(n for n, line in enumerate(code.split("\n"), start=1) if "import" in line)


@pytest.mark.parametrize("rule, path, code, module", [
    # a core module imported by a view, inside a function
    (backoffice_violations, "backoffice/radiology/views.py",
     "\n\ndef _helper():\n    from archive_core.render import RenderParams  # bad\n", "archive_core.render"),
    # a core submodule reached by ``from archive_core import``
    (backoffice_violations, "backoffice/cli.py", "\nfrom archive_core import errors  # bad\n", "archive_core.errors"),
    (core_violations, "archive_core/render.py", "\nimport flask  # bad\n", "flask"),
    (core_violations, "archive_core/media.py",
     "\n\ndef _f():\n    from backoffice.extensions import facade  # bad\n", "backoffice.extensions"),
])
def test_one_bad_import_is_reported(tmp_path, rule, path, code, module):
    root = _copy(tmp_path)
    line = _append(root / path, code)
    assert rule(root) == [f"{path}:{line} imports {module}"]


def test_a_cycle_in_the_core_is_reported(tmp_path):
    """media.py importing the facade that imports it (the cycle this test was written after)."""
    root = _copy(tmp_path)
    _append(root / "archive_core" / "media.py", "\n\ndef _f():\n    from archive_core import api\n")
    cycles = core_cycles(root)
    assert ["archive_core.api", "archive_core.media"] in cycles
    assert "archive_core.media -> archive_core.api" in _describe(root, ["archive_core.api", "archive_core.media"])
