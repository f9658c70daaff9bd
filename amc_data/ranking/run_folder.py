"""The run folder of `amc-data train`: where it may be, whose it is, and who writes it.

- A run folder is never a prepared folder nor inside one: `synth --force` and `prepare --force`
  replace a prepared folder whole and would delete the run with it.
- A new run goes into a missing or empty folder, or one that holds only a run of ours:
  `config.json` written by `amc-data train`, `last.pt`, `best.pt`, `log.jsonl`, the result
  folders `eval` writes (`eval-<split>/`, `<stem>-eval-<split>/`) and temporary files of an
  interrupted write. Anything else refuses the run, naming it, unless `--force`: then
  `config.json`, `last.pt`, `best.pt` and `log.jsonl` are replaced and every other file is left
  as it is. (`--resume` writes only those four files, so it needs no such check.)
- While a run writes its folder it holds the lock `.<name>.lock` beside it: a second `train`
  into the same folder fails at once.
- A new run goes where no run is (`last.pt`), unless `--force`: it clears the old checkpoints
  and log. `config.json` describes the run (its options, model, data and vocabularies) before
  the first epoch, and is written again on resume so it agrees with the checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from ..errors import LockTimeoutError, TrainingError
from ..files import atomic_write_bytes, atomic_write_json
from ..prepare.format import FORMAT_NAME
from ..version import __version__
from .config import BEST, CONFIG_FILE, LAST, LOG_FILE, TrainConfig

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset

RUN_FILES = (CONFIG_FILE, LAST, BEST, LOG_FILE)
_EVAL_FOLDER = re.compile(r"^(?:[^/]+-)?eval-(?:train|val|test)$")
_EVAL_FILES = {"metrics.json", "scores.parquet"}
_SHOWN = 5


def _is_prepared(folder: Path) -> bool:
    try:
        info = json.loads((folder / "prepared.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT_NAME


def _is_our_config(path: Path) -> bool:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(
        isinstance(record.get(k), dict) for k in ("train", "model")
    )


def _is_our_log(path: Path) -> bool:
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError):
        return False
    return all(isinstance(line, dict) and "epoch" in line for line in lines)


def _is_ours(entry: Path) -> bool:
    name = entry.name
    if name == CONFIG_FILE:
        return _is_our_config(entry)
    if name == LOG_FILE:
        return _is_our_log(entry)
    if name in RUN_FILES:
        return entry.is_file()
    if any(name.startswith(f".{own}.") and name.endswith(".tmp") for own in RUN_FILES):
        return True
    if _EVAL_FOLDER.match(name) and entry.is_dir():
        return all(
            p.name in _EVAL_FILES or (p.name.startswith(".") and p.name.endswith(".tmp"))
            for p in entry.iterdir()
        )
    return False


def foreign_entries(out: Path) -> list[str]:
    """The names in `out` that are not part of a run of ours (none when `out` is missing)."""
    if not out.is_dir():
        return []
    return sorted(entry.name for entry in out.iterdir() if not _is_ours(entry))


def check_location(out: Path, data: Path) -> None:
    """Refuse a run folder that is, or is inside, a prepared folder (the one trained on or any)."""
    out, data = out.expanduser().resolve(), Path(data).expanduser().resolve()
    if out == data or data in out.parents:
        raise TrainingError(
            f"--out {out} is inside the prepared folder {data} being trained on: preparing it "
            "again would delete the run. Choose a run folder outside it, such as --out ./runs/amc."
        )
    for folder in (out, *out.parents):
        if _is_prepared(folder):
            raise TrainingError(
                f"--out {out} is inside the prepared folder {folder}: preparing it again would "
                "delete the run. Choose a run folder outside it."
            )


@contextlib.contextmanager
def claim(out: Path, data: Path, *, resume: bool, force: bool) -> Iterator[None]:
    """Hold `out` for one run: its location checked, its lock held, and (for a new run) no
    foreign file in it unless `force`."""
    check_location(out, data)
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out.parent / f".{out.name}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise LockTimeoutError(
            f"Another amc-data train is writing {out} (it holds {lock.lock_file}). Wait for it "
            "to finish, or choose another --out."
        ) from None
    try:
        if not resume and not force:
            foreign = foreign_entries(out)
            if foreign:
                shown = ", ".join(foreign[:_SHOWN])
                more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
                raise TrainingError(
                    f"--out {out} holds files that are not a run of amc-data train ({shown}{more})."
                    f" Pass --force to train there anyway ({', '.join(RUN_FILES)} are replaced, "
                    "every other file is left as it is), or choose another --out."
                )
        yield
    finally:
        lock.release()


def new_run_problem(out: Path, force: bool) -> str | None:
    """Why `out` cannot take a new run (None when it can): it holds one (unless `force`), or it
    is a file."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder for the run."
    if (out / LAST).exists() and not force:
        return (
            f"{out} already holds a run; continue it with --resume, replace it with --force, or "
            "choose another --out."
        )
    return None


def start(
    out: Path,
    force: bool,
    train: TrainConfig,
    model: Mapping[str, Any],
    prepared: PreparedDataset,
) -> None:
    """Make `out` the folder of a new run: created, cleared of an old run's checkpoints and log
    when `force`, and `config.json` written."""
    out.mkdir(parents=True, exist_ok=True)
    if force:
        for name in (LAST, BEST, LOG_FILE):
            (out / name).unlink(missing_ok=True)
    write_config(out, train, model, prepared)


def write_config(
    out: Path, train: TrainConfig, model: Mapping[str, Any], prepared: PreparedDataset
) -> None:
    """`config.json`: the options the run records, its model options (`ModelConfig.to_dict`),
    the prepared folder and its vocabularies' fingerprints, and this amc-data's version."""
    atomic_write_json(
        out / CONFIG_FILE,
        {
            "train": train.to_dict(),
            "model": dict(model),
            "data": str(prepared.root),
            "fingerprints": dict(prepared.fingerprints),
            "amc_data_version": __version__,
        },
    )


def write_log(path: Path, entries: list[dict[str, Any]]) -> None:
    """`log.jsonl`, whole: one JSON line per epoch."""
    lines = "".join(json.dumps(entry) + "\n" for entry in entries)
    atomic_write_bytes(path, lines.encode("utf-8"))


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of `log.jsonl` (none when it is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
