"""The public API keeps its names whatever sub-package was imported first."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("first", "name"),
    [
        ("amc_data.fetching.core", "fetch"),
        ("amc_data.encoding.core", "encode"),
        ("amc_data.fetching.verify", "verify"),
        ("amc_data.encoding.dataset", "load_encoded"),
    ],
)
def test_public_functions_stay_functions_after_a_submodule_import(first: str, name: str) -> None:
    code = f"import {first}, amc_data, inspect; print(inspect.isfunction(amc_data.{name}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_importing_the_package_and_cli_loads_no_heavy_library() -> None:
    code = (
        "import sys, amc_data, amc_data_cli.main; "
        "print(sorted(m for m in ('torch', 'sklearn', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["fetch", "verify", "info", "encode"])
def test_the_data_commands_start_without_numpy_or_the_model_half(command: str) -> None:
    """`fetch` and `encode` start fast: their commands load no numpy, pyarrow or torch (each
    command module loads when its command runs)."""
    code = (
        "import sys; from amc_data_cli.main import cli; "
        f"assert cli.get_command(None, {command!r}) is not None; "
        "print(sorted(m for m in ('numpy', 'pyarrow', 'torch', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_command_module_s_commands_are_in_the_command_table() -> None:
    import importlib

    from amc_data_cli.main import COMMAND_MODULES, cli

    for module_name in set(COMMAND_MODULES.values()):
        module = importlib.import_module(f"amc_data_cli.{module_name}")
        for command in module.COMMANDS:
            assert COMMAND_MODULES.get(command.name) == module_name, command.name
    assert [cli.get_command(None, name).name for name in COMMAND_MODULES] == list(COMMAND_MODULES)


def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path) -> None:
    import os

    from amc_data.files import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
