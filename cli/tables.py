"""Tables, the one way every command prints them: plain text, or Markdown, LaTeX and CSV for a
paper or a spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

FORMATS = ("text", "markdown", "latex", "csv")


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell, a rule under the header; the first `left` columns
    are left-aligned, the rest (numbers) right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub/pandoc pipe table; number columns right-aligned."""

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

    rule = "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex(cell: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in cell)


def latex_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A booktabs `tabular` (needs `\\usepackage{booktabs}`); special characters escaped."""
    spec = "l" * left + "r" * (len(header) - left)

    def line(row: Sequence[str]) -> str:
        return " & ".join(map(_latex, row)) + r" \\"

    return "\n".join(
        [
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            line(header),
            r"\midrule",
            *map(line, rows),
            r"\bottomrule",
            r"\end{tabular}",
        ]
    )


def csv_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Comma-separated values, quoted where needed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([header, *rows])
    return buffer.getvalue().rstrip("\n")


def render_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    fmt: str = "text",
    *,
    left: int = 1,
    title: str = "",
    note: str = "",
) -> str:
    """The table in `fmt` (one of `FORMATS`) with a `title` above it and a `note` below it
    (in LaTeX and CSV, where text around a table breaks it, both become comment lines above:
    `% ...`, `# ...`)."""
    render = {"text": text_table, "markdown": markdown_table, "latex": latex_table}
    body = render.get(fmt, csv_table)(header, rows, left)
    if fmt in ("latex", "csv"):
        mark = "%" if fmt == "latex" else "#"
        comments = [f"{mark} {line}" for line in (title, note) if line]
        return "\n".join([*comments, body])
    heading = {"text": title, "markdown": f"**{title}**\n"}[fmt] if title else ""
    footing = f"\n{note}" if note and fmt == "text" else f"\n\n{note}" if note else ""
    return f"{heading}\n{body}{footing}" if heading else f"{body}{footing}"
