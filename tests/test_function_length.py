"""No function in amc_data/ longer than 60 lines of code without a reason written beside it.

Lines of code: not blank, not a comment, not the docstring. A longer function gives its reason in
a comment on the line above its `def` that starts with `# long:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "amc_data"
LIMIT = 60


def _functions() -> list[tuple[str, int, bool]]:
    """(qualified place, lines of code, has a written reason) of every function in amc_data."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            skipped: set[int] = set()
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skipped = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
            code = sum(
                1
                for number in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                if number not in skipped
                and lines[number - 1].strip()
                and not lines[number - 1].strip().startswith("#")
            )
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            reason = start >= 2 and lines[start - 2].strip().startswith("# long:")
            place = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
            found.append((place, code, reason))
    return found


def test_the_count_reads_functions() -> None:
    places = [place for place, _, _ in _functions()]
    assert any(place.endswith(" check_config") for place in places)


def test_no_long_function_without_a_reason() -> None:
    unexplained = [
        f"{place} ({code} lines)"
        for place, code, reason in _functions()
        if code > LIMIT and not reason
    ]
    assert not unexplained, f"over {LIMIT} lines of code without a '# long:' reason: " + ", ".join(
        unexplained
    )
