"""One exit status per kind of failure, in every command: 2 for a bad option or usage (as Click
does), 1 for bad data or a refused state, an existing output folder included."""

from __future__ import annotations

from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    result = CliRunner().invoke(cli, ["synth", str(out), "--images", "240", "--queries", "90"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    "args",
    [
        ["synth", "OUT", "--images", "many"],
        ["synth", "OUT", "--regions", "1"],
        ["export", "DATA", "--to", "zip", "EXPORT"],
        ["train", "DATA", "--out", "RUN", "--epochs", "0"],
        ["eval", "--split", "holdout", "RUN"],
    ],
)
def test_a_bad_option_exits_2(args: list[str], data: Path, tmp_path: Path) -> None:
    paths = {"OUT": tmp_path / "o", "DATA": data, "RUN": tmp_path / "r", "EXPORT": tmp_path / "e"}
    result = CliRunner().invoke(cli, [str(paths.get(a, a)) for a in args])
    assert result.exit_code == 2, result.output


def test_an_existing_output_folder_exits_1_in_every_command(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    again = runner.invoke(cli, ["synth", str(data), "--images", "240", "--queries", "90"])
    assert again.exit_code == 1 and "--force" in again.output
    export = tmp_path / "export"
    assert runner.invoke(cli, ["export", str(data), "--to", "wds", str(export)]).exit_code == 0
    again = runner.invoke(cli, ["export", str(data), "--to", "wds", str(export)])
    assert again.exit_code == 1 and "--force" in again.output
    pytest.importorskip("torch")
    run = tmp_path / "run"
    train = ["train", str(data), "--out", str(run), "--epochs", "1", "--dim", "8", "--quiet"]
    assert runner.invoke(cli, train).exit_code == 0
    again = runner.invoke(cli, train)
    assert again.exit_code == 1 and "--resume" in again.output
