"""The import graph of amc_data: no cycles, and stages import only earlier stages.

Read statically (every `import` in every module, including those inside functions and under
`if TYPE_CHECKING:`, for a cycle through type hints is a cycle a reader has to untangle too), so
the test needs neither torch nor any other optional dependency.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "amc_data"

# The pipeline, in the one direction data flows. The foundation (errors, files, progress, ...)
# serves every stage; a stage may import the foundation and any earlier stage, never a later one.
STAGES = (
    "fetching",
    "archive",
    "encoding",
    "prepare",
    "exporting",
    "featurizing",
    "evaluation",
    "ranking",
    "serving",
)


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


@functools.cache
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


# The modules that load torch when imported: the model half (`ranking/`, but for its package and
# its torch-free options) and the image backbone. Every other module must load without torch, so
# that `fetch`, `encode` and `prepare` work where torch is not installed and the CLI checks a
# command's options before torch loads.
TORCH_MODULES = frozenset(
    {
        "amc_data.featurizing.backbone",
        "amc_data.featurizing.loader",
        *(
            f"amc_data.ranking.{name}"
            for name in (
                *("batch", "build", "cca", "checkpoint", "data", "demo", "distributed", "loss"),
                *("index", "kernel", "model", "resident", "runs", "scoring", "search", "training"),
                "word_vectors",
            )
        ),
    }
)


def _load_time_imports(path: Path) -> set[str]:
    """What importing `path` imports at once: its top-level imports (not those inside functions,
    nor those under `if TYPE_CHECKING:`), with their parent packages."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


@functools.cache
def _loads_torch() -> dict[str, bool]:
    """For every module, whether importing it loads torch (read statically)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    direct = {name: _load_time_imports(path) for name, path in paths.items()}
    answers: dict[str, bool] = {}

    def loads(module: str, trail: frozenset[str]) -> bool:
        if module in answers:
            return answers[module]
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        targets = [*parents, *direct.get(module, ())]
        found = any(t == "torch" or t.startswith("torch.") for t in targets) or any(
            loads(t, trail | {module}) for t in targets if t in paths and t not in trail
        )
        answers[module] = found
        return found

    return {name: loads(name, frozenset()) for name in paths}


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_each_module_keeps_to_the_pipeline_and_the_torch_boundary(module: str) -> None:
    """A module imports the foundation and earlier stages only (the foundation none; the
    package's own __init__ and __main__, the public API and the entry point, may), and loads
    torch only when it is one of TORCH_MODULES."""
    own = _stage(module)
    wrong = []
    for target in sorted(_graph()[module]):
        theirs = _stage(target)
        if own is None:
            if theirs is not None and module not in ("amc_data", "amc_data.__main__"):
                wrong.append(f"{module} (foundation) -> {target}")
        elif theirs is not None and theirs > own:
            wrong.append(f"{module} ({STAGES[own]}) -> {target} ({STAGES[theirs]})")
    assert not wrong, "imports against the pipeline:\n" + "\n".join(wrong)
    assert _loads_torch()[module] == (module in TORCH_MODULES), (
        f"{module} {'loads' if _loads_torch()[module] else 'does not load'} torch when imported; "
        "TORCH_MODULES says otherwise"
    )


def test_the_static_torch_reading_holds_at_run_time() -> None:
    """Importing every module outside TORCH_MODULES in one fresh interpreter leaves torch unloaded
    (a check of the static reading the parametrised test relies on)."""
    import subprocess
    import sys

    free = [m for m in MODULES if m not in TORCH_MODULES and m != "amc_data.__main__"]
    code = f"import sys, importlib; [importlib.import_module(m) for m in {free!r}]; "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
