"""The committed runs of `tests/fixtures/v1/` (written once by `tests/fixtures/make_fixtures.py`
with the amc-data of before the checkpoint migration chain) still load, score and resume as
they did when they were written: the weights bit for bit, the metrics to float precision.

Older kinds among them (`v0-*`) lack fields that amc-data added later: they must keep loading as
the model they were trained with and resume to the weights of their uninterrupted run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from support.checkpoint_fixtures import (  # noqa: E402
    DATA,
    EVAL_SPLIT,
    FIXTURES,
    RUNS,
    read_expected,
    state_digest,
)

from amc_data.prepare.format import PreparedDataset, load_prepared  # noqa: E402
from amc_data.ranking.checkpoint import load_model, read_checkpoint  # noqa: E402
from amc_data.ranking.resume import recorded_options  # noqa: E402
from amc_data.ranking.runs import evaluate  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402

EXPECTED = read_expected()["runs"]
ALL = sorted(EXPECTED)
ROUNDING_GAP = 1e-4  # another CPU's rounding over a fixture run's steps, with room
RESUMABLE = sorted(name for name, entry in EXPECTED.items() if "resumed_digest" in entry)
OLD = sorted(name for name, e in EXPECTED.items() if e["train_removed"] or e["model_removed"])
# Scores come from float32 matrix products whose last bits may differ on another CPU or torch
# build (other SIMD kernels); the metrics are compared within this relative tolerance, which
# any real change of the model or the metrics exceeds by orders of magnitude. On the machine that
# wrote them they agree exactly (checked twice by the generator).
METRIC_REL = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    """The fixtures were written with one torch thread: reductions keep the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared() -> PreparedDataset:
    return load_prepared(DATA)


def test_the_fixture_folder_holds_every_recorded_run_and_nothing_else() -> None:
    assert sorted(p.name for p in RUNS.iterdir()) == ALL
    for name in ALL:
        assert {p.name for p in (RUNS / name).iterdir()} == {
            "config.json",
            "last.pt",
            "best.pt",
            "log.jsonl",
        }
    assert sorted(p.stem for p in (FIXTURES / "final").iterdir()) == RESUMABLE
    assert set(RESUMABLE) >= set(OLD) and {"amc-interrupted", "amc", "cca"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_a_fixture_run_rebuilds_with_its_recorded_weights_and_model(
    name: str, prepared: PreparedDataset
) -> None:
    entry = EXPECTED[name]
    best = load_model(RUNS / name, prepared)  # the folder means its best.pt
    last = load_model(RUNS / name / "last.pt", prepared)
    assert state_digest(best.model.state_dict()) == entry["best_digest"]
    assert state_digest(last.model.state_dict()) == entry["last_digest"]
    assert (best.epoch, last.epoch) == (entry["best_epoch"], entry["last_epoch"])
    # The model as trained, old defaults included for the fields an older amc-data left out.
    assert best.model_config.to_dict() == entry["model_config"]
    assert last.model_config.to_dict() == entry["model_config"]
    assert not best.model.training


@pytest.mark.parametrize("name", ALL)
def test_a_fixture_run_evaluates_to_its_recorded_metrics(
    name: str, prepared: PreparedDataset, tmp_path: Path
) -> None:
    evaluation = evaluate(
        [RUNS / name],
        prepared,
        split=EVAL_SPLIT,
        out=tmp_path,  # never into the fixtures
        device="cpu",
        random_baseline=False,
    )
    (result,) = evaluation.runs
    recorded: dict[str, Any] = EXPECTED[name]["metrics"]
    assert result.metrics.keys() == recorded.keys()
    for key, value in recorded.items():
        got = result.metrics[key]
        if isinstance(value, int):  # counts: queries, pairs
            assert got == value, key
        elif math.isnan(value):
            assert math.isnan(got), key
        else:
            assert got == pytest.approx(value, rel=METRIC_REL, abs=1e-12), key


@pytest.mark.parametrize("name", RESUMABLE)
def test_an_interrupted_fixture_run_resumes_to_the_uninterrupted_weights(
    name: str, prepared: PreparedDataset, tmp_path: Path
) -> None:
    entry = EXPECTED[name]
    run = tmp_path / name
    shutil.copytree(RUNS / name, run)
    # The options it recorded, in today's terms (read_checkpoint migrates: options added since
    # take the value the run behaved as).
    last = read_checkpoint(run / "last.pt")
    config = recorded_options(last["train_config"], str(run))
    assert {k: getattr(config, k) for k in entry["options"]} == entry["options"]
    assert last["epoch"] < config.epochs  # it was interrupted

    result = train(DATA, run, resume=True)  # the run knows its options

    assert result.epochs == config.epochs
    resumed = read_checkpoint(run / "last.pt")
    assert resumed["epoch"] == config.epochs
    # The resumed records are whole: the options as run, the model it was trained with.
    assert resumed["train_config"] == config.to_dict()
    assert resumed["model_config"] == entry["model_config"]
    # Bit for bit on the machine that wrote the fixtures, as the suite's own resume tests demand
    # of two runs on one machine. Another CPU rounds some steps differently, and the fixture's
    # first epochs were computed there: an AMD EPYC resumed the Intel-written runs to within
    # 1.5e-8 to 3.6e-6 of their weights. What this test guards, the options an old run is
    # resumed with, moves them far more when wrong (the attention scale's rate migrated as 10
    # instead of 1: 2.7e-3), so beyond bit equality it allows another CPU's rounding.
    if state_digest(resumed["model"]) != entry["resumed_digest"]:
        gap = _gap(name, resumed)
        if gap is None or gap > ROUNDING_GAP:
            pytest.fail(
                f"{name} resumed to other weights than its uninterrupted run: "
                + (
                    "other parameter names or shapes"
                    if gap is None
                    else f"largest difference "
                    f"{gap:.3g}, beyond another CPU's float rounding ({ROUNDING_GAP:g})"
                )
            )
    lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, config.epochs + 1))


@pytest.mark.parametrize("name", OLD)
def test_old_kind_fixtures_really_lack_the_fields_added_later(name: str) -> None:
    """Guards the fixtures themselves: what the migration must convert is really absent."""
    entry = EXPECTED[name]
    config = json.loads((RUNS / name / "config.json").read_text(encoding="utf-8"))
    records = [(config["train"], config["model"])]
    for file in ("last.pt", "best.pt"):
        # Read raw, without the migration read_checkpoint applies: these are the files as stored.
        checkpoint = torch.load(RUNS / name / file, map_location="cpu", weights_only=True)
        records.append((checkpoint["train_config"], checkpoint["model_config"]))
    for train_config, model_config in records:
        assert not set(entry["train_removed"]) & set(train_config)
        assert not set(entry["model_removed"]) & set(model_config)


def _gap(name: str, resumed: dict[str, Any]) -> float | None:
    """The largest difference of resumed weights from the uninterrupted run's; None where their
    names or shapes differ."""
    final = torch.load(FIXTURES / "final" / f"{name}.pt", weights_only=True)
    got = resumed["model"]
    if got.keys() != final.keys() or any(got[k].shape != final[k].shape for k in final):
        return None
    return max(float((got[k].double() - final[k].double()).abs().max()) for k in final)
