"""The import graph of amc_data: no cycles, and stages import only earlier stages.

Read statically (every `import` in every module, including those inside functions and under
`if TYPE_CHECKING:`, for a cycle through type hints is a cycle a reader has to untangle too), so
the test needs neither torch nor any other optional dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "amc_data"

# The pipeline, in the one direction data flows. The foundation (errors, files, progress, ...)
# serves every stage; a stage may import the foundation and any earlier stage, never a later one.
STAGES = ("fetching", "archive", "encoding", "prepare", "featurizing", "evaluation", "ranking")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The amc_data modules `path` imports (absolute names)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, child.module] if child.module else base)
                else:
                    target = child.module or ""
                if target == "amc_data" or target.startswith("amc_data."):
                    # `from . import partial` imports a sibling module (kept if it is one), and
                    # `from .x import y` the module x: the package itself only when named.
                    found.update(f"{target}.{alias.name}" for alias in child.names)
                    if child.module:
                        found.add(target)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("amc_data"))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        # `from .x import y` names a module y or a name y in x: keep the modules that exist.
        graph[name] = {t for t in _imports(path) if t in paths and t != name}
    return graph


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "amc_data.ranking.model" in graph["amc_data.ranking.training"]
    assert "amc_data.encoding.analyzer" in graph["amc_data.prepare.queries"]


def test_no_import_cycles() -> None:
    graph = _graph()
    # Top-level package files import everything (the public API, the entry point): left out.
    graph = {
        m: e - {"amc_data"} for m, e in graph.items() if m not in ("amc_data", "amc_data.__main__")
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_stages_import_only_earlier_stages() -> None:
    wrong = []
    for module, targets in _graph().items():
        own = _stage(module)
        for target in targets:
            theirs = _stage(target)
            if own is None:
                # The foundation imports no stage (the package's own __init__ and __main__ are
                # the public API and the entry point, and may).
                if theirs is not None and module not in ("amc_data", "amc_data.__main__"):
                    wrong.append(f"{module} (foundation) -> {target}")
            elif theirs is not None and theirs > own:
                wrong.append(f"{module} ({STAGES[own]}) -> {target} ({STAGES[theirs]})")
    assert not wrong, "imports against the pipeline:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("module", ["amc_data.ranking", "amc_data.ranking.config"])
def test_the_torch_boundary(module: str) -> None:
    """The ranking package and its options load without torch (the CLI checks options first)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
