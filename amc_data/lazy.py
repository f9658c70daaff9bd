"""Packages whose public names load their module on first use.

A package lists its public names once, as the imports of an `if TYPE_CHECKING:` block in its
`__init__.py`: type checkers and readers see ordinary imports, and at run time the same lines are
parsed into a map (name -> module) that `__getattr__` follows. So importing a package, or one of
its light modules, loads none of the heavy ones (pandas, torch) until a name that needs them is
used.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def type_checking_names(init_file: str) -> dict[str, str]:
    """Public name -> module (relative to the package) of the `if TYPE_CHECKING:` block of
    `init_file`."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )
    return {
        alias.name: str(statement.module)
        for statement in block.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }


def lazy_names(
    package: str, init_file: str
) -> tuple[dict[str, str], Callable[[str], Any], Callable[[], list[str]]]:
    """For the package `package` (its `__init__.py` is `init_file`): its lazy names, and the
    module-level `__getattr__` and `__dir__` that serve them (a name, once loaded, is kept in the
    package's namespace)."""
    names = type_checking_names(init_file)

    def get(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def listing() -> list[str]:
        return sorted([*vars(sys.modules[package]), *names])

    return names, get, listing
