"""Where evaluation results may go: never into a prepared folder, which `synth --force` and
`prepare --force` replace whole (the results would go with it)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import OutputFolderError

# prepared.json's `format` (`prepare.format.FORMAT_NAME`, which loads numpy and pandas).
PREPARED_FORMAT = "amc-data prepared dataset"


def prepared_folder_holding(path: str | os.PathLike[str]) -> Path | None:
    """The prepared folder that is `path` or holds it, or None."""
    resolved = Path(path).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        try:
            info = json.loads((folder / "prepared.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("format") == PREPARED_FORMAT:
            return folder
    return None


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """Refuse any `(parameter, path)` whose path is, or is inside, a prepared folder: a
    `OutputFolderError` naming the parameter, the path and the folder."""
    for parameter, path in outputs:
        if path is None:
            continue
        folder = prepared_folder_holding(path)
        if folder is not None:
            raise OutputFolderError(
                f"{parameter} {path} is inside the prepared folder {folder}: preparing it "
                "again would delete it. Write the results outside it.",
                parameter=parameter,
            )
