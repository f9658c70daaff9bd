"""Resuming a run (`amc-data train DATA --out RUN --resume`): what may change, and opening a run
to continue it.

A run knows its options: resumed without options (`options_to_resume`, `train(data, out,
resume=True)`), it continues with the ones its `last.pt` records. A resumed run computes exactly
what the uninterrupted run would have, so an option given again must be the recorded one, except
those in `RESUME_MAY_CHANGE` (how a session runs: `device`, `workers`, `compile`, `features_on`,
`tensorboard`). Any option added later is compared too, unless it is added to that list. An
option missing from an older checkpoint's record counts as the value runs made before it existed
behaved as: `migrations.ADDED_LATER` when listed there, otherwise its default; a recorded option
that the run did not use (amc-data once let `negatives` be given with the pool loss) counts as its
default. The records (`config.json`, `last.pt`, `best.pt`) keep the options the run started with,
so they never disagree; a resumed session's own values of the others are logged. More epochs of
a finished run are a new run started from its weights (`init_from`, `model_to_start_from`).

`open_run` is the one way a run is opened for resuming: it reads `last.pt` (migrated to today's
format by `read_checkpoint`), checks it holds what a resume reads, that the options and the model
are the run's, that the prepared data has the run's vocabularies and features, and that as many
processes run it as did (each process takes its share of every step's pairs, so their number
decides the batches and the schedule). A checkpoint of an amc-data that did not record the
features or the processes resumes without those checks, saying so.

Torch-free at import, so the rules can be checked before torch loads; `open_run`,
`options_to_resume`, `model_to_resume` and `model_to_start_from` load it when called.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError, TrainingError
from . import run_folder
from .config import LAST, LOG_FILE, TrainConfig, check_used, option_flag, unused_options
from .migrations import ADDED_LATER

if TYPE_CHECKING:
    from .model import ModelConfig

log = logging.getLogger(__name__)

# Options a resumed run may change: they decide how a session runs, not what it computes.
# `device` and `compile` choose the kernels of the same formulas (float rounding may differ, as it
# does between any two machines; `amp` changes the precision itself, so it must match), and
# `workers` only moves batch loading into other processes (the batches are the same).
# `features_on` only chooses where the same feature rows are held and gathered; `tensorboard`
# only writes what log.jsonl holds somewhere else too.
RESUME_MAY_CHANGE = frozenset({"device", "workers", "compile", "features_on", "tensorboard"})

# What a resume reads from a checkpoint, and the type each must have.
RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "train_config": dict,
    "model_config": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "epoch": int,
    "step": int,
    "best_metric": (float, int, type(None)),
    "rng": dict,
    "fingerprints": dict,
}


def resume_differences(saved: TrainConfig, current: TrainConfig) -> list[tuple[str, Any, Any]]:
    """`(option, saved value, current value)` for every option outside `RESUME_MAY_CHANGE` that
    differs, in field order."""
    return [
        (f.name, getattr(saved, f.name), getattr(current, f.name))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUME_MAY_CHANGE and getattr(saved, f.name) != getattr(current, f.name)
    ]


def recorded_options(saved: Any, where: str) -> TrainConfig:
    """The options a checkpoint records (its `train_config`): those missing from an older record
    as runs behaved before they existed (`ADDED_LATER`), those the run did not use as their
    defaults. A record that is not valid options is a `TrainingError`; `where` names the run."""
    if not isinstance(saved, Mapping):
        raise TrainingError(
            f"--resume: {where} records no training options (train_config is "
            f"{type(saved).__name__}); it cannot be resumed. Train again with --force, or into "
            "another --out."
        )
    values = {**ADDED_LATER, **saved}
    try:
        for name in unused_options(values):
            del values[name]  # it changed nothing: the run behaved as with the default
        return TrainConfig.from_dict(values)
    except (ConfigError, TypeError) as exc:
        raise TrainingError(
            f"--resume: the training options recorded in {where} are not valid for this amc-data "
            f"({exc}); it cannot be resumed. Train again with --force, or into another --out."
        ) from None


def _refuse_changes(changed: list[tuple[str, Any, Any]], where: str) -> None:
    if changed:
        listed = "; ".join(
            f"{option_flag(name)} is {old!r} in the run, {new!r} now" for name, old, new in changed
        )
        raise TrainingError(
            f"--resume would change what the run in {where} computes: {listed}. Resume with the "
            f"run's options (give none but {', '.join(sorted(RESUME_MAY_CHANGE))}: the run "
            "knows the others), or train into a new --out (--init-from the run to start from its "
            "weights)."
        )


def check_resume(saved: Mapping[str, Any], current: TrainConfig, where: str) -> TrainConfig:
    """The options to record for a run resumed with `current` from a checkpoint whose options
    are `saved` (its `train_config`): the saved ones, once every option that decides what the
    run computes is found equal. Otherwise a `TrainingError` naming each differing option with
    both values. `where` names the run in messages."""
    recorded = recorded_options(saved, where)
    _refuse_changes(resume_differences(recorded, current), where)
    session = [
        f"{name} {getattr(current, name)!r} (recorded: {getattr(recorded, name)!r})"
        for name in sorted(RESUME_MAY_CHANGE)
        if getattr(current, name) != getattr(recorded, name)
    ]
    if session:
        log.info("resuming %s with %s", where, ", ".join(session))
    return recorded


def options_to_resume(out: Path, given: Mapping[str, Any]) -> TrainConfig:
    """The options a resumed session of the run in `out` runs with: the ones its `last.pt`
    records, with the options `given` for this session (how it runs: `RESUME_MAY_CHANGE`; any
    other must be the recorded value, or it is a `TrainingError` naming each). An option given
    that the run does not use is a `ConfigError`, as for a new run."""
    from .checkpoint import read_checkpoint  # torch loads here

    last = Path(out) / LAST
    if not last.is_file():
        raise TrainingError(f"--resume: {last} does not exist; start without --resume.")
    checkpoint = read_checkpoint(last)
    check_resumable(checkpoint, last)
    recorded = recorded_options(checkpoint["train_config"], str(out))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"Unknown training option(s) {', '.join(unknown)}.")
    changed = [
        (name, getattr(recorded, name), value)
        for name, value in given.items()
        if name not in RESUME_MAY_CHANGE and value != getattr(recorded, name)
    ]
    _refuse_changes(changed, str(out))
    current = dataclasses.replace(recorded, **given)
    check_used(current, {name: None for name in given})
    return current


def check_resumable(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse, in one line, a checkpoint that lacks what a resume reads (or holds it as the
    wrong kind of value)."""
    missing = [name for name in RESUME_FIELDS if name not in checkpoint]
    wrong = [
        f"{name} ({type(checkpoint[name]).__name__})"
        for name, kind in RESUME_FIELDS.items()
        if name in checkpoint and not isinstance(checkpoint[name], kind)
    ]
    if missing or wrong:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"holds the wrong kind of {', '.join(wrong)}"] if wrong else []
        )
        raise CheckpointError(
            f"{path} has the amc-data checkpoint marker but {' and '.join(problems)}: it cannot "
            "be resumed. Train again with --force, or into another --out."
        )


def _model_differences(saved: ModelConfig, decided: Mapping[str, Any]) -> list[str]:
    return [
        f"{k} is {getattr(saved, k)!r} in the run, {v!r} now"
        for k, v in decided.items()
        if getattr(saved, k) != v
    ]


def model_to_resume(
    checkpoint: Mapping[str, Any], path: str | os.PathLike[str], decided: Mapping[str, Any]
) -> ModelConfig:
    """The model a resumed run continues: the checkpoint's, once the model options that the
    training options and the prepared data now decide (`decided`) are known to be its own. The
    others (how the attention and the gate are built when no training option says, dropout) are
    the run's and follow the checkpoint, so a run written before a default changed keeps the
    model it was trained with."""
    from .model import ModelConfig  # torch loads here

    saved = ModelConfig.from_dict(checkpoint["model_config"])
    changed = _model_differences(saved, decided)
    if changed:
        raise CheckpointError(
            f"{path} holds another model than the options and the prepared data describe: "
            f"{'; '.join(changed)}. Resume on the prepared folder the run was trained on, or "
            "train into a new --out."
        )
    return saved


def model_to_start_from(
    checkpoint: Mapping[str, Any], path: str | os.PathLike[str], decided: Mapping[str, Any]
) -> ModelConfig:
    """The model of a new run whose weights start from `checkpoint` (`init_from`): the
    checkpoint's, once the model options that this run's training options and prepared data
    decide (`decided`) are its own; a mismatch is a `ConfigError` naming each field (the
    weights would not fit, or would mean another model). The options no training option sets
    follow the checkpoint, as for a resume."""
    from .model import ModelConfig  # torch loads here

    if not isinstance(checkpoint.get("model"), Mapping) or not isinstance(
        checkpoint.get("model_config"), Mapping
    ):
        raise CheckpointError(
            f"{path} holds no model weights and model options to start from; give a run folder "
            "or a checkpoint written by amc-data train."
        )
    saved = ModelConfig.from_dict(checkpoint["model_config"])
    changed = [
        f"{'model' if k == 'kind' else k} is {getattr(saved, k)!r} there, {v!r} here"
        for k, v in decided.items()
        if getattr(saved, k) != v
    ]
    if changed:
        raise ConfigError(
            f"init_from {path} holds another model than this run describes: "
            f"{'; '.join(changed)}. Give the options it was trained with (its config.json), "
            "train on the prepared folder it was trained on, or start from scratch.",
            parameter="init_from",
        )
    return saved


def check_features(
    checkpoint: Mapping[str, Any], fingerprints: Mapping[str, str], where: str, data: str
) -> None:
    """Refuse features other than the ones the run trained on (the same vocabularies over other
    feature values, such as features extracted again with another backbone and prepared again):
    the resumed epochs would learn from other inputs than the first ones."""
    saved = checkpoint["fingerprints"].get("features")
    if saved is None:
        log.info(
            "%s records no fingerprint of its features (an older amc-data wrote it): the "
            "features of %s cannot be checked against the run's",
            where,
            data,
        )
        return
    now = fingerprints.get("features")
    if now != saved:
        raise TrainingError(
            f"--resume: {Path(data) / 'features.npy'} holds other features ({_short(now)}) than "
            f"{where} was trained on ({_short(saved)}): the run would go on learning from other "
            "inputs. Resume on the features the run was trained on, or train on these into a "
            "new --out (or with --force)."
        )


def _short(fingerprint: object) -> str:
    """A features fingerprint (`dtype shape sha256:hex`) with its digest cut to 12 digits."""
    text = str(fingerprint)
    head, _, digest = text.partition(" sha256:")
    return f"{head} sha256 {digest[:12]}…" if digest else text


def check_processes(checkpoint: Mapping[str, Any], processes: int, where: str) -> None:
    """Refuse another number of training processes than the run's: each process takes its share
    of every step's pairs, so the number decides the pairs per step and the schedule."""
    saved = checkpoint.get("processes")
    if saved is None:
        log.info(
            "%s records no number of processes (an older amc-data wrote it): resuming with %d",
            where,
            processes,
        )
        return
    if saved != processes:
        raise TrainingError(
            f"--resume: the run in {where} was trained by {saved} process(es), but this one has "
            f"{processes}: each process takes its share of every step's pairs, so the steps and "
            f"the schedule would change. Resume it with {saved} process(es) (torchrun "
            "--nproc_per_node and --nnodes, or no torchrun for 1), or train into a new --out."
        )


@dataclass
class ResumedRun:
    """What the training loop continues from: `last.pt` (today's format), the options the run
    records, its model, and its log up to that checkpoint."""

    checkpoint: dict[str, Any]
    train_config: TrainConfig
    model_config: ModelConfig
    log: list[dict[str, Any]]


def open_run(
    out: Path,
    current: TrainConfig,
    decided: Mapping[str, Any],
    fingerprints: Mapping[str, str],
    data: str,
    processes: int = 1,
) -> ResumedRun:
    """The run in `out`, once its `last.pt` is known to continue it: the same options as
    `current` (but those a resume may change), the model `decided` by the options and the
    prepared data, the vocabularies and features `fingerprints` of the prepared folder `data`,
    and as many `processes`. Reads only: nothing is written (`run_folder.settle` makes the
    folder whole before the run goes on)."""
    from .checkpoint import check_fingerprints, read_checkpoint  # torch loads here

    last = out / LAST
    if not last.is_file():
        raise TrainingError(f"--resume: {last} does not exist; start without --resume.")
    checkpoint = read_checkpoint(last)
    check_resumable(checkpoint, last)
    recorded = check_resume(checkpoint["train_config"], current, str(out))
    model_config = model_to_resume(checkpoint, last, decided)
    check_fingerprints(checkpoint, fingerprints, str(last), data)
    check_features(checkpoint, fingerprints, str(last), data)
    check_processes(checkpoint, processes, str(out))
    return ResumedRun(
        checkpoint=checkpoint,
        train_config=recorded,
        model_config=model_config,
        log=_log_of(checkpoint, out),
    )


def _log_of(checkpoint: Mapping[str, Any], out: Path) -> list[dict[str, Any]]:
    """The log up to `last.pt`'s epoch: the entries it holds, or (written by an older amc-data)
    those of `log.jsonl`."""
    epoch = checkpoint["epoch"]
    held = checkpoint.get("log")
    if isinstance(held, list) and all(isinstance(entry, dict) for entry in held):
        return [dict(entry) for entry in held[:epoch]]
    entries = run_folder.read_log(out / LOG_FILE)[:epoch]
    epochs = [entry.get("epoch") for entry in entries]
    if epochs != list(range(1, epoch + 1)):
        log.warning(
            "%s holds the entries of epochs %s, but %s is at epoch %d: the missing entries "
            "cannot be recovered",
            out / LOG_FILE,
            epochs,
            out / LAST,
            epoch,
        )
    return entries
