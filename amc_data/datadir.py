"""Where amc-data keeps its data: one folder, one sub-folder per dataset."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_DATA_HOME = "AMC_DATA_HOME"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data folder: `data_dir` if given, else `$AMC_DATA_HOME`, else the platform's
    user data folder (for example `~/.local/share/amc-data` on Linux)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_env = os.environ.get(ENV_DATA_HOME)
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_data_dir("amc-data", appauthor=False))


def dataset_dir(data_dir: str | os.PathLike[str] | None, dataset: str) -> Path:
    """Return `<data-dir>/<dataset>`, the folder a dataset's files land in."""
    return resolve_data_dir(data_dir) / dataset
