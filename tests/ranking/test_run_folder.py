"""A run folder stays whole whatever stops the run: a SIGKILL at any point of an epoch's writes,
a full disk, SIGTERM mid-write, Ctrl-C; `--force` takes the replaced run's results with it; and
`--resume` refuses other features or another number of processes, and reads a damaged log."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import amc_data  # noqa: E402
import amc_data.ranking.training as training  # noqa: E402
from amc_data.errors import TrainingError  # noqa: E402
from amc_data.files import atomic_write  # noqa: E402
from amc_data.prepare.format import load_prepared  # noqa: E402
from amc_data.ranking.checkpoint import read_checkpoint  # noqa: E402
from amc_data.ranking.run_folder import read_log  # noqa: E402
from amc_data.ranking.runs import evaluate  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

SMALL = {"images": 240, "queries": 90}
# Training seed 5 on this data (synth seed 3) with today's defaults: validation NDCG@10 improves
# at epochs 1 and 2 and not after, so epoch 2 writes best.pt and the epochs after it must leave
# it alone (seed 2's best epoch moved to the last with session 16's defaults, seed 4's with
# session 18's region mean hinge at 0.5). (A change of
# defaults can move the best epoch: the fixture says so, and another seed with a best epoch
# inside the run restores the premise.)
OPTIONS = {
    "epochs": 4,
    "batch_size": 32,
    "loss": "pairs",
    "negatives": 3,
    "dim": 16,
    "device": "cpu",
    "seed": 5,
}
CONFIG = TrainConfig(**OPTIONS)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    amc_data.synth(out, seed=3, **SMALL)
    return out


@pytest.fixture(scope="module")
def whole(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must end up as."""
    run = tmp_path_factory.mktemp("whole") / "run"
    result = train(data, run, CONFIG)
    assert result.best_epoch is not None and 1 < result.best_epoch < CONFIG.epochs, (
        "the premise of these tests (a best epoch inside the run) no longer holds: pick another "
        "training seed"
    )
    return run


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _hidden(run: Path) -> list[str]:
    """Temporary files and a best checkpoint left waiting: none in a whole run folder."""
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def _assert_as_uninterrupted(run: Path, whole: Path) -> None:
    for name in ("last.pt", "best.pt"):
        got, expected = read_checkpoint(run / name), read_checkpoint(whole / name)
        assert _same(got["model"], expected["model"]), name
        assert got["epoch"] == expected["epoch"], name
    assert [e["epoch"] for e in _log(run)] == list(range(1, CONFIG.epochs + 1))
    assert [e["loss"] for e in _log(run)] == [e["loss"] for e in _log(whole)]
    assert _hidden(run) == []


# Run by the test in a subprocess: trains, and SIGKILLs itself just before or just after the
# rename that puts a given file in place while a given epoch is saved (the epoch being saved is
# one more than the log writes done: the log is each epoch's last file).
_KILLER = """
import json, os, signal, sys
from pathlib import Path

data, run, options, target, when, epoch = sys.argv[1:]
real_replace, logs_written = os.replace, [0]


def replace(src, dst, *args, **kwargs):
    hit = Path(dst).name == target and logs_written[0] + 1 == int(epoch)
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if hit and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    if Path(dst).name == "log.jsonl":
        logs_written[0] += 1


os.replace = replace
from amc_data.ranking.training import TrainConfig, train

train(data, run, TrainConfig(**json.loads(options)))
"""


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("target", [".best.pt.next", "last.pt", "best.pt", "log.jsonl"])
def test_a_run_killed_at_any_point_of_an_epoch_s_writes_resumes_to_the_uninterrupted_run(
    data: Path, whole: Path, tmp_path: Path, target: str, when: str
) -> None:
    run = tmp_path / "run"
    best_epoch = read_checkpoint(whole / "best.pt")["epoch"]  # an epoch that writes best.pt
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = [str(data), str(run), json.dumps(OPTIONS), target, when, str(best_epoch)]
    out = subprocess.run(
        [sys.executable, "-c", _KILLER, *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]  # killed where asked

    result = train(data, run, CONFIG, resume=True)

    assert result.best_epoch == best_epoch
    _assert_as_uninterrupted(run, whole)


@pytest.mark.parametrize("failing", ["last", "best"])
def test_a_full_disk_keeps_the_previous_checkpoint_whole_and_says_what_to_do(
    data: Path, whole: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    run = tmp_path / "run"
    best_epoch = read_checkpoint(whole / "best.pt")["epoch"]
    real_save = training.save_checkpoint

    def full_disk(path: Path, payload: dict[str, Any]) -> None:
        wanted = {"last": {"last.pt"}, "best": {"best.pt", ".best.pt.next"}}[failing]
        if path.name in wanted and payload["epoch"] == best_epoch:
            with atomic_write(path) as handle:
                handle.write(b"the first bytes of a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(path, payload)

    monkeypatch.setattr(training, "save_checkpoint", full_disk)
    with pytest.raises(TrainingError) as caught:
        train(data, run, CONFIG)
    message = str(caught.value)
    assert "\n" not in message
    assert "No space left on device (ENOSPC)" in message and "--resume" in message
    assert f"saved up to epoch {best_epoch - 1}" in message
    assert ("last.pt" if failing == "last" else "best.pt") in message
    # Nothing lost: the previous epoch's checkpoints whole, no temporary file.
    assert read_checkpoint(run / "last.pt")["epoch"] == best_epoch - 1
    assert read_checkpoint(run / "best.pt")["epoch"] <= best_epoch - 1
    assert _hidden(run) == []

    monkeypatch.undo()  # room again
    train(data, run, CONFIG, resume=True)
    _assert_as_uninterrupted(run, whole)


# Run by the test in a subprocess: the CLI trains, and the write of last.pt at the given epoch
# (one that also writes best.pt) stalls halfway, having said so, until SIGTERM arrives.
_STALLED = """
import sys, time
from pathlib import Path

import amc_data.ranking.training as training
from amc_data.files import atomic_write
from amc_data_cli.main import main

marker, epoch, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
real_save = training.save_checkpoint


def stalled(path, payload):
    if path.name == "last.pt" and payload["epoch"] == epoch:
        with atomic_write(path) as handle:
            handle.write(b"half a checkpoint")
            handle.flush()
            marker.touch()
            time.sleep(120)
    real_save(path, payload)


training.save_checkpoint = stalled
main(args)
"""


def test_sigterm_in_the_middle_of_a_checkpoint_write_leaves_only_whole_files(
    data: Path, whole: Path, tmp_path: Path
) -> None:
    best = read_checkpoint(whole / "best.pt")["epoch"]  # that epoch also writes best.pt
    run, marker = tmp_path / "run", tmp_path / "writing"
    options = ["--epochs", "4", "--batch-size", "32", "--loss", "pairs", "--negatives", "3"]
    options += ["--dim", "16", "--device", "cpu", "--seed", str(OPTIONS["seed"]), "--quiet"]
    args = ["train", str(data), "--out", str(run), *options]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, "-c", _STALLED, str(marker), str(best), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate(timeout=60)[1][-3000:]
    assert any(p.name.startswith(".last.pt.") for p in run.iterdir())  # mid-write
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert _hidden(run) == []  # no temporary file, no best checkpoint left waiting
    assert read_checkpoint(run / "last.pt")["epoch"] == best - 1
    assert read_checkpoint(run / "best.pt")["epoch"] <= best - 1
    assert [e["epoch"] for e in _log(run)] == list(range(1, best))
    train(data, run, CONFIG, resume=True)
    _assert_as_uninterrupted(run, whole)


def test_an_interrupted_training_says_how_many_epochs_are_saved_and_how_to_go_on(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real_loss = training.hinge_ranking_loss

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if (run / "last.pt").exists() and read_checkpoint(run / "last.pt")["epoch"] == 2:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "hinge_ranking_loss", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(data, run, CONFIG)
    (note,) = caught.value.__notes__
    assert f"{run} holds 2 of 4 epochs" in note
    assert (
        f"amc-data train {data.resolve()} --out {run} --resume (the run knows its options)" in note
    )

    def at_once(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "hinge_ranking_loss", at_once)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(data, tmp_path / "fresh", CONFIG)
    assert "No epoch had finished" in caught.value.__notes__[0]


def test_force_removes_the_results_of_the_run_it_replaces_and_keeps_the_user_s_files(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = TrainConfig(**{**OPTIONS, "epochs": 1})
    train(data, run, config)
    evaluate([run], load_prepared(data), split="test", device="cpu", random_baseline=False)
    evaluate([run / "last.pt"], load_prepared(data), split="val", device="cpu")
    assert (run / "eval-test" / "metrics.json").is_file()
    assert (run / "last-eval-val" / "scores.parquet").is_file()
    (run / "eval-val").mkdir()
    (run / "eval-val" / "metrics.json").write_text("{}")
    (run / "eval-val" / "my-notes.txt").write_text("mine")
    (run / "notes.txt").write_text("mine too")
    (run / ".last.pt.abc123.tmp").write_bytes(b"left by a kill")

    train(data, run, TrainConfig(**{**OPTIONS, "epochs": 1, "seed": 4}), force=True)

    assert not (run / "eval-test").exists() and not (run / "last-eval-val").exists()
    assert sorted(p.name for p in (run / "eval-val").iterdir()) == ["my-notes.txt"]
    assert (run / "notes.txt").read_text() == "mine too"
    assert _hidden(run) == []


def test_resume_refuses_other_features_and_accepts_the_same_ones_prepared_again(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, copy)
    config = TrainConfig(**{**OPTIONS, "epochs": 1})
    train(copy, run, config)
    features = copy / "features.npy"
    values = np.load(features)
    np.save(features, values)  # the same values written again: resumes
    train(copy, run, config, resume=True)

    np.save(features, (values[::-1] * 0.5).astype(values.dtype))  # same shape, other values
    with pytest.raises(TrainingError) as caught:
        train(copy, run, config, resume=True)
    message = str(caught.value)
    assert f"{copy.resolve() / 'features.npy'} holds other features" in message
    assert message.count("sha256") == 2 and "\n" not in message
    recorded = read_checkpoint(run / "last.pt")["fingerprints"]["features"]
    assert recorded[: recorded.index(":") + 13].replace("sha256:", "sha256 ") in message

    # A run of an older amc-data recorded no fingerprint of its features: resumed as before.
    checkpoint = read_checkpoint(run / "last.pt")
    del checkpoint["fingerprints"]["features"]
    torch.save(checkpoint, run / "last.pt")
    with caplog.at_level("INFO", logger="amc_data"):
        train(copy, run, config, resume=True)
    assert "cannot be checked" in caplog.text


def test_resume_refuses_another_number_of_processes_naming_both(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    config = TrainConfig(**{**OPTIONS, "epochs": 1})
    train(data, run, config)
    checkpoint = read_checkpoint(run / "last.pt")
    checkpoint["processes"] = 2  # as two torchrun processes wrote it
    torch.save(checkpoint, run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(TrainingError, match=r"trained by 2 process\(es\), but this one has 1"):
        train(data, run, config, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    del checkpoint["processes"]  # an older amc-data did not record it
    torch.save(checkpoint, run / "last.pt")
    with caplog.at_level("INFO", logger="amc_data"):
        train(data, run, config, resume=True)
    assert "records no number of processes" in caplog.text


def _interrupted_after(data: Path, run: Path, epochs: int) -> None:
    """The run of CONFIG stopped (Ctrl-C) once `epochs` epochs are saved."""
    real_loss = training.hinge_ranking_loss

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if (run / "last.pt").exists() and read_checkpoint(run / "last.pt")["epoch"] == epochs:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    training.hinge_ranking_loss = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            train(data, run, CONFIG)
    finally:
        training.hinge_ranking_loss = real_loss


def _as_older_amc_data(run: Path) -> None:
    """`last.pt` as an amc-data that kept the log in log.jsonl alone wrote it."""
    checkpoint = read_checkpoint(run / "last.pt")
    checkpoint.pop("log", None)
    torch.save(checkpoint, run / "last.pt")


def test_a_log_with_a_byte_that_is_not_utf8_is_rewritten_from_last_pt_on_resume(
    data: Path, whole: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _interrupted_after(data, run, 2)
    (run / "log.jsonl").write_bytes(b'{"epoch": 1}\n\xff\xfe\n')
    train(data, run, CONFIG, resume=True)
    _assert_as_uninterrupted(run, whole)


def test_a_log_cut_mid_line_is_repaired_on_resume(data: Path, whole: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _interrupted_after(data, run, 2)
    _as_older_amc_data(run)
    with (run / "log.jsonl").open("ab") as log:
        log.write(b'{"epoch": 3, "loss": 0.4')  # a crash while the line was written
    assert [e["epoch"] for e in read_log(run / "log.jsonl")] == [1, 2]
    train(data, run, CONFIG, resume=True)
    _assert_as_uninterrupted(run, whole)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (b'{"epoch": 1, "loss": 0.5\n', r"not JSON: .* at column \d+"),
        (b'{"epoch": 1, "loss": \xff}\n', r"byte 0xff at column 22 is not UTF-8"),
        (b"[1, 2]\n", r"a JSON array without a whole epoch number"),
    ],
)
def test_other_damage_in_the_log_is_a_one_line_error_naming_the_file_and_line(
    data: Path, tmp_path: Path, damage: bytes, words: str
) -> None:
    run = tmp_path / "run"
    _interrupted_after(data, run, 2)
    _as_older_amc_data(run)
    lines = (run / "log.jsonl").read_bytes().splitlines(keepends=True)
    (run / "log.jsonl").write_bytes(damage + lines[1])
    with pytest.raises(
        TrainingError, match=rf"log\.jsonl line 1 is not an epoch's log entry \({words}\)"
    ) as caught:
        train(data, run, CONFIG, resume=True)
    assert "\n" not in str(caught.value)
