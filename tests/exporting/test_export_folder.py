"""The export folder: refused when it holds anything unless an earlier export and --force,
never a file no export wrote deleted, nothing half-written left by a failure; and the command
line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.errors import ConfigError, OutputFolderError
from amc_data.exporting import ExportConfig, export
from amc_data.exporting import core as export_core


def _beside(out: Path) -> list[str]:
    """What an export left beside `out` (its lock file aside)."""
    return sorted(
        p.name
        for p in out.parent.iterdir()
        if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock")
    )


def test_a_folder_holding_other_files_is_refused_even_with_force(
    synth_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(OutputFolderError, match=r"notes\.txt.*never deletes"):
            export(synth_folder, out, to="hf", force=force)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert _beside(out) == []


def test_an_earlier_export_is_replaced_with_force_only(synth_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(synth_folder, out, to="wds")
    with pytest.raises(OutputFolderError, match=r"already holds an export.*--force"):
        export(synth_folder, out, to="hf")
    assert (out / "queries.parquet").is_file()
    result = export(synth_folder, out, to="hf", force=True)
    # The wds files are gone with the old export; only the new one's files are there.
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(result.files)
    assert json.loads((out / "export.json").read_text())["to"] == "hf"
    assert _beside(out) == []
    # A file the user put into the export is theirs: refused, and kept.
    (out / "images" / "my-extra.parquet").write_bytes(b"mine")
    with pytest.raises(OutputFolderError, match=r"my-extra\.parquet"):
        export(synth_folder, out, to="hf", force=True)
    assert (out / "images" / "my-extra.parquet").read_bytes() == b"mine"


def test_a_failure_midway_leaves_the_old_export_and_nothing_beside_it(
    synth_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    export(synth_folder, out, to="hf")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_core, "dataset_card", fail)  # after every shard is written
    with pytest.raises(OSError, match="No space"):
        export(synth_folder, out, to="wds", force=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _beside(out) == []
    with pytest.raises(OSError, match="No space"):
        export(synth_folder, tmp_path / "new", to="wds")
    assert not (tmp_path / "new").exists() and _beside(tmp_path / "new") == []


def test_the_export_may_not_live_inside_the_prepared_folder(synth_folder: Path) -> None:
    with pytest.raises(OutputFolderError, match="inside the prepared folder"):
        export(synth_folder, synth_folder / "hf")
    assert not (synth_folder / "hf").exists()


def test_options_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match=r"^to "):
        ExportConfig(to="zip")
    with pytest.raises(ConfigError, match=r"^shard_mb "):
        ExportConfig(shard_mb=0)


def test_the_command_writes_either_format_and_refuses_a_used_folder(
    synth_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "wds"
    done = CliRunner().invoke(cli, ["export", str(synth_folder), "--to", "wds", str(out)])
    assert done.exit_code == 0, done.output
    assert f"wds: exported {synth_folder} into {out}" in done.output
    assert "train         168         54         376" in done.output
    assert (out / "images-train-000000.tar").is_file()
    again = CliRunner().invoke(cli, ["export", str(synth_folder), str(out)])
    assert again.exit_code != 0 and "--force" in again.output
    bad = CliRunner().invoke(cli, ["export", str(synth_folder), "--to", "zip", str(out)])
    assert bad.exit_code == 2 and "'zip' is not one of 'hf', 'wds'" in bad.output
