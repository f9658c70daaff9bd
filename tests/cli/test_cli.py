"""The command line as a whole: entry points, start-up cost, the one place errors are caught."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import click
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

import amc_data
from amc_data.checks import declared, default_of
from amc_data.encoding.core import EncodeConfig
from amc_data.errors import MissingDependencyError
from amc_data.featurizing.core import FeatureConfig
from amc_data.ranking.eval_config import EvalConfig
from amc_data.ranking.search_config import SearchConfig


def test_every_public_name_resolves():
    torch_missing = importlib.util.find_spec("torch") is None
    for name in amc_data.__all__:
        try:
            value = getattr(amc_data, name)
        except (MissingDependencyError, ImportError):  # the model half, without torch
            assert torch_missing, name
            continue
        assert value is not None, name


def test_importing_the_package_loads_neither_scikit_learn_nor_torch():
    code = (
        "import sys, amc_data, amc_data_cli.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "amc_data", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("fetch", "verify", "info", "encode"):
        assert command in out.stdout


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert amc_data.__version__ in result.output


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ["encode", "coco", "--data-dir", str(tmp_path)]
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 1
    assert plain.stderr.startswith("Error: Input ")
    assert "Traceback" not in plain.stderr
    debug = CliRunner().invoke(cli, ["--debug", *args])
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "InputError" in debug.stderr


def test_unknown_formats_are_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["encode", "coco", "--formats", "original,xml"])
    assert result.exit_code == 2
    assert "xml is not a format" in result.stderr


# The flags that keep a default of their own, and why: --backbone defaults to nothing so that
# giving it with --model-file is refused; --formats is the same list, written as Click reads it.
OWN_DEFAULTS = {("features", "backbone"), ("encode", "formats")}


@pytest.mark.parametrize(
    ("command", "config_type"),
    [
        ("encode", EncodeConfig),
        ("features", FeatureConfig),
        ("eval", EvalConfig),
        ("search", SearchConfig),
    ],
)
def test_each_flag_takes_its_default_and_help_from_the_config(command, config_type):
    fields = {field.name: declared(field) for field in dataclasses.fields(config_type)}
    params = [
        p for p in cli.get_command(None, command).params if fields.get(p.name or "") is not None
    ]
    assert params, f"{command} builds no flag from {config_type.__name__}"
    for param in params:
        assert isinstance(param, click.Option)
        rule = fields[param.name]
        assert rule is not None and rule.help in (param.help or ""), param.name
        if (command, param.name) not in OWN_DEFAULTS:
            assert param.default == default_of(config_type, param.name), param.name
    formats = next(p for p in cli.get_command(None, "encode").params if p.name == "formats")
    assert EncodeConfig(formats=formats.default).formats == EncodeConfig().formats
