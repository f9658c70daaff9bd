"""A dataset is one module and one row: a toy recipe, registered here, becomes `amc-data prepare
toy` (in `prepare --help`, with its own options from its config) and writes a prepared folder
that records its source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support.prepare_helpers import small_parts

from amc_data.checks import check_config, option
from amc_data.errors import ConfigError
from amc_data.prepare import load_prepared
from amc_data.prepare.common import PrepareResult, force_option
from amc_data.prepare.registry import (
    FileInput,
    PrepareRecipe,
    recipes,
    register,
    unregister,
)
from amc_data.prepare.writer import write_prepared


@dataclass(frozen=True)
class ToyConfig:
    regions: int = option(3, "Feature vectors per image.", low=1, high=8)
    force: bool = force_option()

    def __post_init__(self) -> None:
        check_config(self)


def prepare_toy(
    *,
    features: str | os.PathLike[str],
    feature_ids: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None,
    encoded: str | os.PathLike[str] | None,
    notes: str | os.PathLike[str] | None,
    config: ToyConfig,
) -> PrepareResult:
    """A toy dataset: the features given, the small tables of the prepare tests around them."""
    assert out is not None and data_dir is None and encoded is None
    folder = Path(out)
    parts = small_parts(folder.parent, regions=config.regions)
    parts.update(
        source="toy",
        features=np.load(features),
        feature_ids=np.load(feature_ids),
        options={"regions": config.regions, "notes": str(notes)},
    )
    written = write_prepared(folder, force=config.force, **parts)
    data = load_prepared(written)
    return PrepareResult(written, "toy", data.info["counts"], "copy")


TOY = PrepareRecipe(
    name="toy",
    config=ToyConfig,
    prepare=prepare_toy,
    help="A toy dataset of twelve images, for the registry's test.",
    options=("regions", FileInput("notes", "A notes file, recorded by path.")),
)


@pytest.fixture
def toy() -> Any:
    register(TOY)
    yield TOY
    unregister("toy")


def test_a_registered_dataset_is_a_prepare_command_end_to_end(tmp_path: Path, toy: Any) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["prepare", "--help"])
    assert listed.exit_code == 0 and "toy" in listed.output and "A toy dataset" in listed.output
    shown = runner.invoke(cli, ["prepare", "toy", "--help"])
    assert "--regions INTEGER RANGE" in shown.output and "1<=x<=8" in shown.output
    assert "--notes FILE" in shown.output and "--force" in shown.output
    assert "--missing" not in shown.output  # the toy's config declares no such field

    parts = small_parts(tmp_path, regions=2)
    np.save(tmp_path / "f.npy", parts["features"])
    np.save(tmp_path / "ids.npy", parts["feature_ids"])
    notes = tmp_path / "notes.txt"
    notes.write_text("toy\n")
    out = tmp_path / "prepared"
    args = ["prepare", "toy", "--features", str(tmp_path / "f.npy")]
    args += ["--feature-ids", str(tmp_path / "ids.npy"), "--out", str(out)]
    result = runner.invoke(cli, [*args, "--regions", "2", "--notes", str(notes)])
    assert result.exit_code == 0, result.output
    assert f"toy: prepared into {out}" in result.output
    data = load_prepared(out)
    assert data.info["source"] == "toy"
    assert data.info["options"] == {"regions": 2, "notes": str(notes)}
    assert data.features.shape == (12, 2, 4)

    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--force" in again.output


def test_the_toy_options_are_checked_by_the_config_and_by_click(tmp_path: Path, toy: Any) -> None:
    with pytest.raises(ConfigError, match="regions must be a whole number from 1 to 8, not 9"):
        ToyConfig(regions=9)
    np.save(tmp_path / "f.npy", np.zeros((1, 4), np.float32))
    np.save(tmp_path / "ids.npy", np.zeros(1, np.int64))
    args = ["prepare", "toy", "--features", str(tmp_path / "f.npy"), "--regions", "9"]
    result = CliRunner().invoke(cli, [*args, "--feature-ids", str(tmp_path / "ids.npy")])
    assert result.exit_code == 2 and "--regions" in result.output


def test_unregistering_removes_the_command_and_names_are_unique(toy: Any) -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register(TOY)
    with pytest.raises(ConfigError, match="already registered"):
        register(PrepareRecipe("coco", ToyConfig, prepare_toy, "Another coco."))
    unregister("toy")
    assert "toy" not in recipes()
    assert list(recipes()) == ["clickture", "coco"]
    assert CliRunner().invoke(cli, ["prepare", "toy", "--help"]).exit_code == 2


def test_a_recipe_refuses_an_option_its_config_does_not_declare() -> None:
    with pytest.raises(ConfigError, match="shows the option 'colour'"):
        PrepareRecipe("toy2", ToyConfig, prepare_toy, "Toy.", options=("colour",))
    with pytest.raises(ConfigError, match="non-empty word"):
        PrepareRecipe("two words", ToyConfig, prepare_toy, "Toy.")


def test_a_library_error_naming_a_parameter_shows_the_subcommand_flag(tmp_path: Path) -> None:
    """A value Click lets through but the config refuses (a rule across fields, say) is shown
    with the flag of the running `prepare` subcommand, not the library's parameter name."""

    def refuse(values: dict[str, Any]) -> ToyConfig:
        raise ConfigError("regions must be even here, not 3.", parameter="regions")

    register(PrepareRecipe("odd", ToyConfig, prepare_toy, "Odd.", ("regions",), None, refuse))
    try:
        parts = small_parts(tmp_path)
        np.save(tmp_path / "f.npy", parts["features"])
        np.save(tmp_path / "ids.npy", parts["feature_ids"])
        args = ["prepare", "odd", "--features", str(tmp_path / "f.npy")]
        result = CliRunner().invoke(cli, [*args, "--feature-ids", str(tmp_path / "ids.npy")])
    finally:
        unregister("odd")
    assert result.exit_code == 2
    assert "Error: --regions must be even here, not 3." in result.output
