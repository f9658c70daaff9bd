"""The page's own files travel in the wheel: an installed amc-data serves its page offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_page_s_files(tmp_path: Path) -> None:
    source, wheel_dir = tmp_path / "src", tmp_path / "wheel"
    for part in ("amc_data", "cli", "manifests"):  # a copy: building writes beside the sources
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheel_dir, source],
        check=True,
        cwd=tmp_path,
    )
    [wheel] = wheel_dir.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = REPO / "amc_data" / "serving" / "static"
    wanted = {f"amc_data/serving/static/{p.name}" for p in static.iterdir()}
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in static.iterdir()}
    assert wanted <= names, f"the wheel lacks {sorted(wanted - names)}"
    assert "amc_data/serving/app.py" in names and "amc_data_cli/serve.py" in names
