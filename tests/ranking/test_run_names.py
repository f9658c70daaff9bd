"""Every evaluated run keeps its own name, results and row, however its path is spelled."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")  # the eval module scores with torch

from amc_data.ranking.runs import run_names


def _folders(root: Path, *names: str) -> list[Path]:
    paths = [root / name for name in names]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return paths


def test_a_folder_name_alone_where_it_is_unique(tmp_path: Path) -> None:
    assert run_names(_folders(tmp_path, "runs/amc", "runs/visual")) == ["amc", "visual"]


def test_runs_of_the_same_folder_name_are_told_apart_by_as_many_parents_as_needed(
    tmp_path: Path,
) -> None:
    paths = _folders(tmp_path, "exp-a/runs/amc", "exp-b/runs/amc", "exp-b/runs/visual")
    assert run_names(paths) == ["exp-a/runs/amc", "exp-b/runs/amc", "visual"]


def test_a_checkpoint_file_is_named_with_its_run_folder(tmp_path: Path) -> None:
    (run,) = _folders(tmp_path, "amc")
    for name in ("last.pt", "best.pt"):
        (run / name).write_bytes(b"")
    names = run_names([run, run / "last.pt", run / "best.pt"])
    assert names == ["amc", "amc/last.pt", "amc/best.pt"]


def test_the_same_run_twice_gets_two_names(tmp_path: Path) -> None:
    (run,) = _folders(tmp_path, "amc")
    assert run_names([run, tmp_path / "." / "amc"]) == ["amc", "amc#2"]


def test_two_runs_of_one_folder_name_each_keep_their_results_and_row(tmp_path: Path) -> None:
    import json

    from amc_data_cli.main import cli
    from click.testing import CliRunner

    from amc_data import synth, train
    from amc_data.ranking.config import TrainConfig

    data = tmp_path / "data"
    synth(data, seed=4, images=240, queries=90)
    fast = {"epochs": 1, "dim": 8, "device": "cpu"}
    amc = train(data, tmp_path / "exp-a" / "runs" / "amc", TrainConfig(**fast)).run_dir
    other = train(data, tmp_path / "exp-b" / "runs" / "amc", TrainConfig(model="visual", **fast))
    table = tmp_path / "table.json"
    result = CliRunner().invoke(
        cli,
        ["eval", str(other.run_dir), str(amc), "--data", str(data), "--json", str(table)],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(table.read_text())
    assert {"exp-a/runs/amc", "exp-b/runs/amc"} <= set(rows)
    for run, name in ((amc, "exp-a/runs/amc"), (other.run_dir, "exp-b/runs/amc")):
        own = json.loads((run / "eval-test" / "metrics.json").read_text())
        assert own["ndcg@10"] == pytest.approx(rows[name]["ndcg@10"])
    assert rows["exp-a/runs/amc"]["ndcg@10"] != rows["exp-b/runs/amc"]["ndcg@10"]
