"""Structure rules of the package, checked over its source (issue #12).

No module of ``mqlogging`` may use another module's private names: ``from .x import _name``
or ``x._name`` where ``x`` is a module of the package. Private *modules* (``from . import
_fork``, ``mqlogging._json``) are fine to import; the names used from them must be public.
Dunder names (``__version__``) are not private. Names of other distributions (``os._exit``,
``sys._getframe``) are outside these rules: the rule is about the package's own seams.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import mqlogging

PACKAGE_DIR = Path(mqlogging.__file__).resolve().parent


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_names(root: Path, package: str) -> dict[Path, str]:
    """Every module file under ``root`` with its dotted name (a package is its __init__)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[path] = ".".join(parts)
    return names


@dataclass(frozen=True, order=True)
class Offence:
    """One use of another module's private name."""

    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


class _Checker:
    """Finds the offences of one module (see the module docstring for the rules)."""

    def __init__(self, path: Path, module: str, modules: set[str], package: str) -> None:
        self.path = path
        self.module = module
        self.modules = modules
        self.package = package
        self.is_package = path.name == "__init__.py"
        self.bound: dict[str, str] = {}  # local name -> package module it refers to
        self.offences: set[Offence] = set()

    def run(self, tree: ast.AST, shown_as: str) -> set[Offence]:
        self.shown_as = shown_as
        nodes = list(ast.walk(tree))
        for node in nodes:  # bindings first: an attribute use may precede its import
            if isinstance(node, ast.Import):
                self._import(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
        for node in nodes:
            if isinstance(node, ast.Attribute):
                self._attribute(node)
        return self.offences

    def _ours(self, dotted: str) -> bool:
        return dotted == self.package or dotted.startswith(self.package + ".")

    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._ours(alias.name):
                continue
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:
                head = alias.name.split(".")[0]
                self.bound[head] = head

    def _base_of(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.module.split(".")
        if not self.is_package:
            parts.pop()
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, node.module] if node.module else parts)

    def _import_from(self, node: ast.ImportFrom) -> None:
        base = self._base_of(node)
        if not self._ours(base):
            return
        for alias in node.names:
            target = f"{base}.{alias.name}"
            if target in self.modules:
                self.bound[alias.asname or alias.name] = target
            elif _is_private(alias.name) and base != self.module:
                what = f"from {base} import {alias.name}"
                self.offences.add(Offence(self.shown_as, node.lineno, what))

    def _attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in self.bound:
            return
        resolved = self.bound[value.id]
        for attr in reversed(chain):
            candidate = f"{resolved}.{attr}"
            if candidate in self.modules:
                resolved = candidate
                continue
            if _is_private(attr) and resolved != self.module:
                self.offences.add(Offence(self.shown_as, node.lineno, f"{resolved}.{attr}"))
            return


def private_name_offences(root: Path, package: str) -> list[Offence]:
    """Every use, in the package at ``root``, of another module's private name."""
    files = _module_names(root, package)
    modules = set(files.values())
    offences: set[Offence] = set()
    for path, module in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        shown_as = f"{package}/{path.relative_to(root).as_posix()}"
        offences |= _Checker(path, module, modules, package).run(tree, shown_as)
    return sorted(offences)


def test_no_module_uses_another_modules_private_names() -> None:
    """No module of the package imports, or reaches through a module object for, a private
    name of another of its modules (each offender is listed as file:line)."""
    offences = private_name_offences(PACKAGE_DIR, "mqlogging")
    assert not offences, "private names used across modules:\n" + "\n".join(map(str, offences))


class TestTheChecker:
    """The checker itself, on a small package written for the purpose."""

    def _package(self, tmp_path: Path, files: dict[str, str]) -> list[str]:
        root = tmp_path / "pkg"
        for name, text in {"__init__.py": "", **files}.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return [str(o) for o in private_name_offences(root, "pkg")]

    def test_flags_private_names_imported_or_reached_through_a_module(self, tmp_path: Path) -> None:
        """``from .a import _x``, ``from ..a import _x``, ``pkg.a._x``, ``a._x`` (with ``a``
        bound by ``from . import a`` or ``import pkg.a as a``) are each reported with their
        file and line."""
        found = self._package(
            tmp_path,
            {
                "a.py": "_x = 1\n",
                "b.py": "from .a import _x\nfrom . import a\nprint(a._x)\n",
                "sub/__init__.py": "",
                "sub/c.py": "from ..a import _x as y\nimport pkg.a\nprint(pkg.a._x)\n",
                "d.py": "import pkg.a as m\ndef f():\n    return m._x\n",
            },
        )
        assert found == [
            "pkg/b.py:1: from pkg.a import _x",
            "pkg/b.py:3: pkg.a._x",
            "pkg/d.py:3: pkg.a._x",
            "pkg/sub/c.py:1: from pkg.a import _x",
            "pkg/sub/c.py:3: pkg.a._x",
        ]

    def test_allows_private_modules_dunders_own_names_and_other_packages(
        self, tmp_path: Path
    ) -> None:
        """Importing a private module and its public names, dunders, a module's own private
        names and other distributions' private names (``os._exit``) are all fine."""
        found = self._package(
            tmp_path,
            {
                "_impl.py": "helper = 1\n_own = 2\nprint(_own)\n",
                "_version.py": "__version__ = '1'\n",
                "user.py": (
                    "import os\nfrom . import _impl\nfrom ._impl import helper\n"
                    "from ._version import __version__\nimport pkg._impl\n"
                    "print(_impl.helper, pkg._impl.helper, __version__)\nos._exit\n"
                ),
                "sub/__init__.py": "from .. import _impl\n",
            },
        )
        assert found == []
