"""`amc-data train`: the run folder, checkpoints that resume exactly and never run code, the NaN
stop, refusals, the CLI, and two processes under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import amc_data  # noqa: E402
import amc_data.ranking.training as training  # noqa: E402
from amc_data.errors import CheckpointError, ConfigError, TrainingError  # noqa: E402
from amc_data.prepare.format import load_prepared  # noqa: E402
from amc_data.ranking.checkpoint import load_model, read_checkpoint  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

SMALL = {"images": 240, "queries": 90}
# The paper's per-pair loss: these tests patch hinge_ranking_loss to interrupt a run mid-epoch.
FAST = {"epochs": 2, "batch_size": 32, "loss": "pairs", "negatives": 3, "dim": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    amc_data.synth(out, seed=3, **SMALL)
    return out


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return read_checkpoint(run / name)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the loss of training step `step` (counted from 1) raise KeyboardInterrupt (Ctrl-C)."""
    real_loss, calls = training.hinge_ranking_loss, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "hinge_ranking_loss", interrupted)


def test_a_run_folder_holds_config_checkpoints_and_a_log(data: Path, tmp_path: Path) -> None:
    result = train(data, tmp_path / "run", TrainConfig(**FAST))
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["model"]["kind"] == "amc"
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for entry in lines:
        assert entry["loss"] > 0 and 0 <= entry["ndcg@10"] <= 1 and entry["samples_per_s"] > 0
    assert result.epochs == 2 and result.best_metric == max(x["ndcg@10"] for x in lines)
    checkpoint = read_checkpoint(run / "last.pt")
    prepared = load_prepared(data)
    assert checkpoint["epoch"] == 2 and checkpoint["processes"] == 1
    # The vocabularies' fingerprints, and the features': dtype, shape and a sample's sha256.
    fingerprints = checkpoint["fingerprints"]
    assert {k: fingerprints[k] for k in prepared.fingerprints} == prepared.fingerprints
    shape = "x".join(map(str, prepared.features.shape))
    assert fingerprints["features"].startswith(f"{prepared.features.dtype} {shape} sha256:")
    assert config["fingerprints"] == fingerprints and checkpoint["log"] == lines
    assert {"model", "optimizer", "scheduler", "rng", "train_config", "model_config"} <= set(
        checkpoint
    )
    best = read_checkpoint(run / "best.pt")
    assert best["metrics"]["ndcg@10"] == result.best_metric
    loaded = load_model(run, prepared)  # the folder means its best.pt
    assert _same(loaded.model.state_dict(), best["model"])
    assert not loaded.model.training


def test_same_seed_same_weights(data: Path, tmp_path: Path) -> None:
    train(data, tmp_path / "a", TrainConfig(**FAST))
    train(data, tmp_path / "b", TrainConfig(**FAST))
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    train(data, tmp_path / "c", TrainConfig(**{**FAST, "seed": 1}))
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


def test_resume_after_ctrl_c_reaches_the_uninterrupted_weights(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(**{**FAST, "epochs": 3})
    train(data, tmp_path / "whole", config)

    steps_per_epoch = read_checkpoint(tmp_path / "whole" / "last.pt")["step"] // 3
    _interrupt_at_step(monkeypatch, steps_per_epoch + 2)  # inside the second epoch
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "cut", config)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1  # nothing half-written
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")]
    result = train(data, tmp_path / "cut", config, resume=True)
    assert result.epochs == 3
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "cut"))
    whole = (tmp_path / "whole" / "log.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in whole] == [json.loads(x)["loss"] for x in cut]


def test_a_run_from_before_a_model_default_changed_resumes_with_the_model_it_was_trained_with(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older amc-data learned the attention's scale from 4 at the pace of the other weights
    # and did not record attention_scale_rate.
    import dataclasses

    new_model = training.model_config_for

    def old_model(config, prepared):
        return dataclasses.replace(
            new_model(config, prepared), attention_scale=4.0, attention_scale_rate=1.0
        )

    config = TrainConfig(**FAST)
    monkeypatch.setattr(training, "model_config_for", old_model)
    train(data, tmp_path / "whole", config)
    steps_per_epoch = read_checkpoint(tmp_path / "whole" / "last.pt")["step"] // 2
    _interrupt_at_step(monkeypatch, steps_per_epoch + 2)  # inside the second epoch
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "cut", config)
    monkeypatch.undo()  # today's defaults from here on
    last = tmp_path / "cut" / "last.pt"
    checkpoint = read_checkpoint(last)
    del checkpoint["model_config"]["attention_scale_rate"]  # as the older amc-data wrote it
    checkpoint["format_version"] = 1
    torch.save(checkpoint, last)

    train(data, tmp_path / "cut", config, resume=True)
    resumed = read_checkpoint(last)["model_config"]
    assert resumed["attention_scale"] == 4.0 and resumed["attention_scale_rate"] == 1.0
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "cut"))


def test_a_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss, calls = training.hinge_ranking_loss, {"n": 0}
    config = TrainConfig(**FAST)
    train(data, tmp_path / "ref", TrainConfig(**{**FAST, "epochs": 1}))
    steps = read_checkpoint(tmp_path / "ref" / "last.pt")["step"]

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == steps + 3 else loss

    monkeypatch.setattr(training, "hinge_ranking_loss", poisoned)
    with pytest.raises(TrainingError, match=rf"epoch 2, step {steps + 3}\b"):
        train(data, tmp_path / "run", config)
    kept = read_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_an_existing_run_is_kept_unless_resumed_or_forced(data: Path, tmp_path: Path) -> None:
    config = TrainConfig(**{**FAST, "epochs": 1})
    train(data, tmp_path / "run", config)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run"):
        train(data, tmp_path / "run", config)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    with pytest.raises(TrainingError, match="--dim is 16 in the run, 8 now"):
        train(data, tmp_path / "run", TrainConfig(**{**FAST, "dim": 8}), resume=True)
    train(data, tmp_path / "run", config, force=True)


def test_resuming_on_other_prepared_data_is_refused_naming_the_model_options(
    data: Path, tmp_path: Path
) -> None:
    config = TrainConfig(**{**FAST, "epochs": 1})
    train(data, tmp_path / "run", config)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    other = tmp_path / "other"
    amc_data.synth(other, seed=4, images=300, queries=120)
    with pytest.raises(
        CheckpointError, match=r"holds another model .*vocab_size is \d+ in the run"
    ):
        train(other, tmp_path / "run", config, resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_checkpoint_for_other_vocabularies_is_refused(data: Path, tmp_path: Path) -> None:
    train(data, tmp_path / "run", TrainConfig(**{**FAST, "epochs": 1}))
    other = tmp_path / "other"
    amc_data.synth(other, seed=4, **SMALL)
    with pytest.raises(CheckpointError, match=r"vocabulary of .* is not the one"):
        load_model(tmp_path / "run", load_prepared(other))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "amc-data-checkpoint", "x": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="without running code"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.save({"some": "dict"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an amc-data checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"model": "dssm"}, "^model must be one of"),
        ({"epochs": 0}, "^epochs must be"),
        ({"lr": -1.0}, "^lr must be"),
        ({"warmup": 1.5}, "^warmup must be"),
        ({"device": "tpu"}, "^device must be one of"),
    ],
)
def test_bad_options_are_config_errors(changes: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**changes)


def test_cca_is_fitted_in_closed_form_and_checkpointed(data: Path, tmp_path: Path) -> None:
    result = train(data, tmp_path / "cca", TrainConfig(**{**FAST, "model": "cca"}))
    assert result.epochs == 1 and result.best_metric is not None
    loaded = load_model(tmp_path / "cca", load_prepared(data))
    assert loaded.model_config.kind == "cca"


def test_cli_trains_and_reports(data: Path, tmp_path: Path) -> None:
    args = [
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--dim",
        "16",
        "--batch-size",
        "32",
        "--pool-negatives",
        "16",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "val ndcg@10" in result.output and (tmp_path / "run" / "best.pt").is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "already holds a run" in again.output
    assert "Traceback" not in again.output


def test_cli_without_torch_names_the_train_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from amc_data_cli.main import main\n"
        f"main(['train', {str(tmp_path)!r}, '--out', {str(tmp_path / 'run')!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert 'pip install "amc-data[train]"' in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_two_processes_under_torchrun_train_and_write_one_loadable_checkpoint(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "amc_data",
        "train",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--dim",
        "16",
        "--batch-size",
        "16",
        "--loss",
        "pairs",
        "--negatives",
        "3",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1  # rank 0 alone writes
    loaded = load_model(run, load_prepared(data))
    assert loaded.epoch == 1
    # Two processes share each step's pairs: one process would change the steps and schedule.
    assert read_checkpoint(run / "last.pt")["processes"] == 2
    # Resumed with the options it records, by one process.
    with pytest.raises(TrainingError, match=r"trained by 2 process\(es\), but this one has 1"):
        train(data, run, resume=True)


def test_weights_do_not_depend_on_workers_and_resume_stays_exact_with_them(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(**{**FAST, "epochs": 3, "workers": 2})
    train(data, tmp_path / "whole", config)
    train(data, tmp_path / "inline", TrainConfig(**{**FAST, "epochs": 3}))
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "inline"))
    steps_per_epoch = read_checkpoint(tmp_path / "whole" / "last.pt")["step"] // 3
    _interrupt_at_step(monkeypatch, 2 * steps_per_epoch + 1)  # inside the third epoch
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "cut", config)
    monkeypatch.undo()
    train(data, tmp_path / "cut", config, resume=True)
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "cut"))


def test_a_run_that_stopped_in_its_first_epoch_can_simply_be_run_again(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = training.hinge_ranking_loss
    monkeypatch.setattr(
        training, "hinge_ranking_loss", lambda *a, **k: real_loss(*a, **k) * float("nan")
    )
    with pytest.raises(TrainingError, match="no epoch had finished"):
        train(data, tmp_path / "run", TrainConfig(**FAST))
    monkeypatch.setattr(training, "hinge_ranking_loss", real_loss)
    result = train(data, tmp_path / "run", TrainConfig(**FAST))  # no --force needed
    assert result.epochs == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [("margin", float("nan")), ("clip", float("inf")), ("weight_decay", float("nan"))],
)
def test_non_finite_options_are_config_errors(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be a finite number"):
        TrainConfig(**{name: value})


def test_in_batch_negatives_skip_rows_of_the_same_query_or_image() -> None:
    from amc_data.ranking.loss import hinge_ranking_loss

    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.0]])  # (B, 1 + t)
    in_batch = torch.tensor([[0.9, 0.95, 0.1], [0.95, 0.8, 0.1], [0.1, 0.1, 0.7]])  # (B, B)
    same = torch.tensor([[True, False, True], [False, True, True], [True, True, True]])
    # Rows 0 and 1 are the same query: their mutual cells (0.95, above both positives) must not
    # count; everything else is far below the margin, so the loss is that of `scores` alone.
    masked = hinge_ranking_loss(scores, 0.2, in_batch, same & ~torch.eye(3, dtype=torch.bool))
    plain = hinge_ranking_loss(scores, 0.2)
    counted = hinge_ranking_loss(scores, 0.2, in_batch)
    assert masked.item() == pytest.approx(plain.item() * 3 / 7)
    assert counted.item() > masked.item()


def test_in_batch_training_runs_and_the_batch_carries_its_keys(data: Path, tmp_path: Path) -> None:
    from amc_data.ranking.data import train_loader

    batch = next(iter(train_loader(load_prepared(data), batch_size=8, negatives=2)))
    assert batch.query_keys.shape == (8,) and batch.positive_keys.shape == (8,)
    result = train(data, tmp_path / "run", TrainConfig(**{**FAST, "in_batch": True}))
    assert result.epochs == 2


def test_damaged_checkpoints_and_word_vectors_are_one_line_errors(
    data: Path, tmp_path: Path
) -> None:
    (tmp_path / "hello.pt").write_text("hello\n")
    with pytest.raises(CheckpointError, match="damaged or not a torch file"):
        read_checkpoint(tmp_path / "hello.pt")
    vectors = tmp_path / "vectors.txt"
    words = load_prepared(data).query_vocabulary
    vectors.write_text(f"{words[0]} 0.1 nan\n{words[1]} 0.2 0.3\n")
    from amc_data.errors import InputError
    from amc_data.ranking.word_vectors import load_word_vectors

    with pytest.raises(InputError, match=r"line 1: the vector of .* holds NaN"):
        load_word_vectors(vectors, words, 2)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lr", 0.01),
        ("weight_decay", 0.0),
        ("margin", 0.5),
        ("warmup", 0.2),
        ("in_batch", True),
        ("max_keywords", 8),
        ("clip", 0.0),
        ("amp", False),
    ],
)
def test_resume_with_an_option_that_changes_the_run_is_refused_and_nothing_is_written(
    data: Path, tmp_path: Path, option: str, value: object
) -> None:
    run = tmp_path / "run"
    train(data, run, TrainConfig(**{**FAST, "epochs": 1}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    changed = TrainConfig(**{**FAST, "epochs": 1, option: value})
    flag = "--amp/--no-amp" if option == "amp" else f"--{option.replace('_', '-')}"
    with pytest.raises(TrainingError, match=rf"{flag} is .* in the run, {value!r} now"):
        train(data, run, changed, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_resumed_run_keeps_config_json_and_its_checkpoints_in_agreement(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, config = tmp_path / "run", TrainConfig(**FAST)  # device "cpu"
    real_loss = training.hinge_ranking_loss

    def interrupted(*args, **kwargs):
        if (run / "last.pt").exists():  # the first step of the second epoch
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "hinge_ranking_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(data, run, config)
    monkeypatch.setattr(training, "hinge_ranking_loss", real_loss)
    assert read_checkpoint(run / "last.pt")["epoch"] == 1
    train(data, run, TrainConfig(**{**FAST, "device": "auto"}), resume=True)  # may differ
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert read_checkpoint(run / "last.pt")["epoch"] == 2
    assert recorded == read_checkpoint(run / "last.pt")["train_config"] == config.to_dict()
    assert recorded == read_checkpoint(run / "best.pt")["train_config"]


def test_a_config_json_left_behind_a_checkpoint_is_rewritten_on_resume(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(data, run, TrainConfig(**{**FAST, "epochs": 1}))
    config = json.loads((run / "config.json").read_text())
    config["train"]["margin"] = 0.9  # what an older amc-data's resume with --margin 0.9 left
    (run / "config.json").write_text(json.dumps(config))
    train(data, run, TrainConfig(**{**FAST, "epochs": 1}), resume=True)
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert recorded == read_checkpoint(run / "last.pt")["train_config"]


def test_resuming_a_checkpoint_with_only_its_marker_is_one_line_error(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(data, run, TrainConfig(**{**FAST, "epochs": 1}))
    torch.save({"format": "amc-data-checkpoint", "format_version": 1}, run / "last.pt")
    args = [
        "train",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--dim",
        "16",
        "--batch-size",
        "32",
        "--negatives",
        "3",
        "--device",
        "cpu",
        "--resume",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "lacks train_config, model_config" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_more_negatives_than_the_training_pool_holds_are_refused(
    data: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^negatives 10,000 is more than the .* training images"):
        train(data, tmp_path / "run", TrainConfig(**{**FAST, "negatives": 10_000}))
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_configuration_does_not_fit_its_weights_is_refused_before_building(
    data: Path, tmp_path: Path
) -> None:
    import resource

    train(data, tmp_path / "run", TrainConfig(**{**FAST, "epochs": 1}))
    checkpoint = read_checkpoint(tmp_path / "run" / "best.pt")
    checkpoint["model_config"]["dim"] = 1_000_000
    torch.save(checkpoint, tmp_path / "big.pt")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="does not fit its weights"):
        load_model(tmp_path / "big.pt")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 500_000  # without the check: gigabytes


def test_a_folder_holding_the_user_s_own_files_is_refused_by_name_unless_forced(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "mine"
    run.mkdir()
    (run / "config.json").write_text('{"my": "settings"}')
    (run / "log.jsonl").write_text("my notes\n")
    with pytest.raises(
        TrainingError, match=r"not a run of amc-data train \(config.json, log.jsonl\)"
    ):
        train(data, run, TrainConfig(**{**FAST, "epochs": 1}))
    assert (run / "config.json").read_text() == '{"my": "settings"}'
    assert (run / "log.jsonl").read_text() == "my notes\n"
    (run / "notes.txt").write_text("keep me")
    train(data, run, TrainConfig(**{**FAST, "epochs": 1}), force=True)
    assert (run / "notes.txt").read_text() == "keep me" and (run / "last.pt").is_file()


@pytest.mark.parametrize("inside", [".", "runs/amc"])
def test_a_run_folder_in_a_prepared_folder_is_refused(
    data: Path, tmp_path: Path, inside: str
) -> None:
    with pytest.raises(TrainingError, match="inside the prepared folder"):
        train(data, data / inside, TrainConfig(**{**FAST, "epochs": 1}))
    assert not (data / "runs").exists() and not (data / "last.pt").exists()


def test_a_second_train_into_a_folder_being_written_fails_at_once(
    data: Path, tmp_path: Path
) -> None:
    import filelock

    from amc_data.errors import LockTimeoutError

    run = tmp_path / "run"
    with filelock.FileLock(tmp_path / ".run.lock"):  # what a running train holds
        code = (
            "import amc_data\nfrom amc_data.ranking.training import TrainConfig, train\n"
            f"train({str(data)!r}, {str(run)!r}, TrainConfig(epochs=1, dim=16, device='cpu'))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    assert out.returncode != 0 and "Another amc-data train is writing" in out.stderr
    assert LockTimeoutError.__name__ in out.stderr and not run.exists()


def test_an_interrupted_run_resumes_from_the_cli_with_the_options_it_records(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(**{**FAST, "epochs": 3})
    train(data, tmp_path / "whole", config)
    steps_per_epoch = read_checkpoint(tmp_path / "whole" / "last.pt")["step"] // 3
    _interrupt_at_step(monkeypatch, steps_per_epoch + 2)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt) as caught:
        train(data, cut, config)
    monkeypatch.undo()
    assert f"--out {cut} --resume (the run knows its options)" in caught.value.__notes__[-1]

    resume = ["train", str(data), "--out", str(cut), "--resume"]
    changed = CliRunner().invoke(cli, [*resume, "--lr", "0.5", "--epochs", "3"])
    assert changed.exit_code == 1 and "--lr is 0.003 in the run, 0.5 now" in changed.output
    assert "--epochs" not in changed.output  # given again as recorded: no difference
    unused = CliRunner().invoke(cli, [*resume, "--pool-negatives", "64"])  # the recorded value
    assert unused.exit_code != 0 and "--pool-negatives 64 goes with loss pool" in unused.output
    # Only what a session may change is typed; the run knows the rest, --epochs included.
    result = CliRunner().invoke(cli, [*resume, "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(cut / "last.pt")["train_config"] == config.to_dict()
    assert _same(_weights(tmp_path / "whole"), _weights(cut))


def test_resume_from_python_without_a_config_uses_the_recorded_options(
    data: Path, tmp_path: Path
) -> None:
    config = TrainConfig(**{**FAST, "epochs": 1})
    train(data, tmp_path / "run", config)
    result = train(data, tmp_path / "run", resume=True, given={"device": "cpu", "workers": 0})
    assert result.epochs == 1  # finished already: nothing more to train
    with pytest.raises(TrainingError, match=r"--epochs is 1 in the run, 2 now.*--init-from"):
        train(data, tmp_path / "run", resume=True, given={"epochs": 2})
    with pytest.raises(TrainingError, match=r"last\.pt does not exist; start without --resume"):
        train(data, tmp_path / "nothing", resume=True)


def test_init_from_starts_a_new_run_from_another_run_s_weights_and_records_them(
    data: Path, tmp_path: Path
) -> None:
    from amc_data.ranking.training import weights_digest

    source = tmp_path / "source"
    train(data, source, TrainConfig(**{**FAST, "epochs": 1}))
    start = read_checkpoint(source / "best.pt")["model"]
    # A learning rate too small to move a weight: the new run's weights are the source's.
    still = {**FAST, "epochs": 1, "lr": 1e-20, "weight_decay": 0.0, "init_from": str(source)}
    train(data, tmp_path / "more", TrainConfig(**still))
    after = _weights(tmp_path / "more")
    assert all(torch.allclose(after[k], start[k], atol=1e-12) for k in start)
    scratch = {**still, "init_from": None}
    train(data, tmp_path / "scratch", TrainConfig(**scratch))
    assert not _same(_weights(tmp_path / "scratch"), start)
    # Where the weights came from: the file and a digest of its weights, in every record.
    expected = f"{(source / 'best.pt').resolve()} {weights_digest(start)}"
    config = json.loads((tmp_path / "more" / "config.json").read_text())
    assert config["train"]["init_from"] == str(source)
    assert config["fingerprints"]["init_from"] == expected
    assert read_checkpoint(tmp_path / "more" / "last.pt")["fingerprints"]["init_from"] == expected
    # A fresh optimiser and schedule: the new run counts its own steps from 0.
    steps = read_checkpoint(source / "last.pt")["step"]
    assert read_checkpoint(tmp_path / "more" / "last.pt")["step"] == steps


def test_init_from_refuses_another_model_naming_the_field(data: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(data, source, TrainConfig(**{**FAST, "epochs": 1}))
    other = TrainConfig(**{**FAST, "epochs": 1, "dim": 8, "init_from": str(source / "last.pt")})
    with pytest.raises(ConfigError, match=r"^init_from .*last\.pt holds .*dim is 16 there, 8 here"):
        train(data, tmp_path / "other", other)
    assert not (tmp_path / "other" / "last.pt").exists()
    dot = TrainConfig(**{**FAST, "epochs": 1, "attention": "dot", "init_from": str(source)})
    with pytest.raises(ConfigError, match=r"attention is 'cosine' there, 'dot' here"):
        train(data, tmp_path / "dot", dot)
    with pytest.raises(TrainingError, match=r"^init_from .*nothing does not exist"):
        train(data, tmp_path / "x", TrainConfig(**{**FAST, "init_from": str(tmp_path / "nothing")}))


def test_the_paper_preset_trains_the_paper_s_objective_and_inter_attention(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "paper"
    args = ["train", str(data), "--out", str(run), "--preset", "paper", "--epochs", "1"]
    args += ["--dim", "16", "--batch-size", "32", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(run / "last.pt")
    train_config, model_config = checkpoint["train_config"], checkpoint["model_config"]
    assert (train_config["loss"], train_config["negatives"], train_config["margin"]) == (
        "pairs",
        8,
        0.2,
    )
    assert (model_config["attention"], model_config["gate_content"]) == ("dot", True)
    assert model_config["gate_scale"] == 0.0
    # Its options are the run's: a resume needs none of them typed again.
    resumed = CliRunner().invoke(cli, ["train", str(data), "--out", str(run), "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_region_attention_scale_rate_gives_the_regions_their_own_scale(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "own"
    args = ["train", str(data), "--out", str(run), "--epochs", "1", "--dim", "16"]
    args += ["--batch-size", "32", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--region-attention-scale-rate", "3"])
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(run / "last.pt")
    assert checkpoint["model_config"]["region_attention_scale_rate"] == 3.0
    assert checkpoint["train_config"]["region_attention_scale_rate"] == 3.0
    region, keyword = (
        checkpoint["model"]["region_log_scale"],
        checkpoint["model"]["attention_log_scale"],
    )
    # Both started at 1 (log 0) and learned apart: the regions' stored log at 3x, the keywords'
    # at 10x their pace.
    assert float(region) != 0 and float(region) * 3 != pytest.approx(float(keyword) * 10)
    # The default: one scale, as before the option.
    shared = tmp_path / "shared"
    result = CliRunner().invoke(cli, [*args[:3], str(shared), *args[4:]])
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(shared / "last.pt")
    assert checkpoint["model_config"]["region_attention_scale_rate"] == 0.0
    assert "region_log_scale" not in checkpoint["model"]


def test_tensorboard_gets_what_the_log_holds(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = tmp_path / "tb"
    train(data, tmp_path / "run", TrainConfig(**{**FAST, "tensorboard": str(events)}))
    assert list(events.glob("events.out.tfevents.*"))
    reader = EventAccumulator(str(events))
    reader.Reload()
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for tag, key in (("train/loss", "loss"), ("val/ndcg@10", "ndcg@10"), ("train/lr", "lr")):
        scalars = reader.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([e[key] for e in log], rel=1e-6)


def test_tensorboard_without_its_package_names_the_extra(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amc_data.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = TrainConfig(**{**FAST, "tensorboard": str(tmp_path / "tb")})
    with pytest.raises(MissingDependencyError, match=r'pip install "amc-data\[tensorboard\]"'):
        train(data, tmp_path / "run", config)
    assert not (tmp_path / "run").exists()  # refused before the run started
