"""The run folder of `amc-data train`: where it may be, whose it is, who writes it, and how it
stays whole whatever stops the run.

- A run folder is never a prepared folder nor inside one: `synth --force` and `prepare --force`
  replace a prepared folder whole and would delete the run with it.
- A new run goes into a missing or empty folder, or one that holds only a run of ours:
  `config.json` written by `amc-data train`, `last.pt`, `best.pt`, `log.jsonl`, the best
  checkpoint waiting for its epoch to be committed (`.best.pt.next`), the result folders
  `eval` writes (`eval-<split>/`, `<stem>-eval-<split>/`), the search indexes `index` and
  `search` build (`index-<split>/`) and temporary files of an interrupted write. Anything else
  refuses the run, naming it, unless `--force`.
- `--force` replaces the run: its checkpoints, log, `config.json`, temporary files and the
  results computed from it (`metrics.json` and `scores.parquet` in its eval folders, its search
  indexes' files, each folder removed once empty) go; every other file is left as it is.
- While a run writes its folder it holds the lock `.<name>.lock` beside it: a second `train`
  into the same folder fails at once.
- A new run goes where no run is (`last.pt`), unless `--force`. `config.json` describes the run
  (its options, model, data, the vocabularies' and the features' fingerprints) before the first
  epoch, and is written again on resume so it agrees with the checkpoints.

Whole after a kill at any instant (`commit_epoch`, `settle`). Every file is written to a
temporary file and renamed over the old one, so each file is always either the old one or the
new one. `last.pt` is the commit point of an epoch: it holds the log up to its epoch, and the
epoch is done once it is renamed into place. An epoch is saved in this order:

1. when it is the best so far, its checkpoint goes to `.best.pt.next` (`best.pt` still holds
   the previous best, which `last.pt` still names);
2. `last.pt` (the commit);
3. `.best.pt.next` is renamed to `best.pt`;
4. `log.jsonl`, rewritten whole from the entries `last.pt` holds.

Stopped anywhere, the folder holds a committed run plus at most one step of the next one, and
`--resume` settles it before training on: a `.best.pt.next` of the epoch `last.pt` holds is
renamed to `best.pt` (step 3 redone), one of a later epoch is deleted (the epoch is trained
again); `log.jsonl` is rewritten from `last.pt`; temporary files are deleted. So best weights
are never lost, the log never loses or repeats an epoch, and a resumed run reaches the files of
an uninterrupted one (bit for bit on the CPU). Between steps 2 and 3, until the next resume,
`best.pt` still holds the previous best epoch (a checkpoint of the run all the same).

- SIGKILL or a power cut (the OOM killer, `kill -9`): the above; temporary files stay until
  the next `--resume` deletes them.
- Ctrl-C and SIGTERM unwind: the temporary file being written is deleted, and an interrupted
  step 2 settles `.best.pt.next` at once (renamed when `last.pt` was replaced, deleted
  otherwise), so only whole files are left; a signal landing between two steps leaves at most
  `.best.pt.next`, which the next `--resume` settles.
- A full disk (or any other OS error) while a file is written: that file's previous version
  is kept whole, its temporary file is deleted, and training stops with a `TrainingError`
  naming the file, the OS error and what to do; `--resume` continues once there is room.

`--resume` also refuses features that are not the ones the run trained on (`config.json` and
every checkpoint record a fingerprint of `features.npy`: its dtype, shape and a sha256 over a
sample of its rows) and another number of processes than the run's (it decides each step's
batches and the schedule). Checkpoints of an older amc-data lack those records, and a resume
of one goes on without those checks (saying so), reading its log from `log.jsonl` (a line cut
mid-write at its end is dropped; other damage is an error naming the line).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import numpy as np

from ..errors import LockTimeoutError, TrainingError
from ..evaluation.outputs import prepared_folder_holding
from ..files import atomic_write_bytes, atomic_write_json
from ..version import __version__
from .config import BEST, CONFIG_FILE, LAST, LOG_FILE, TrainConfig

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset

log = logging.getLogger(__name__)

RUN_FILES = (CONFIG_FILE, LAST, BEST, LOG_FILE)
# The best checkpoint of an epoch not committed yet (see the module's docstring).
PENDING_BEST = f".{BEST}.next"
_OWN = (*RUN_FILES, PENDING_BEST)  # the files whose temporary files are ours
# The rows of features.npy its fingerprint reads: the first, the last and evenly spaced ones.
_FINGERPRINT_BYTES = 4 << 20
_EVAL_FOLDER = re.compile(r"^(?:[^/]+-)?eval-(?:train|val|test)$")
_EVAL_FILES = {
    "metrics.json",
    "scores.parquet",
    "per_query.parquet",
    "words.parquet",
    "concepts.parquet",
}
# The search index `amc-data index` / `search` builds from the run (amc_data.ranking.index):
# `index-<split>/`, `<stem>-index-<split>/`, and its staging folders while it is written.
_INDEX_FOLDER = re.compile(
    r"^(?:\.)?(?:[^/]+-)?index-(?:train|val|test|all)(?:\.\d+(?:\.old)?\.tmp)?$"
)
_SHOWN = 5


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
        read_log(path)
    except (OSError, TrainingError):
        return False
    return True


def _is_our_temporary(name: str) -> bool:
    """A temporary file `files.atomic_write` makes for one of the run's files."""
    return name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in _OWN)


def _is_ours(entry: Path) -> bool:
    name = entry.name
    if name == CONFIG_FILE:
        return _is_our_config(entry)
    if name == LOG_FILE:
        return _is_our_log(entry)
    if name in RUN_FILES or name == PENDING_BEST:
        return entry.is_file()
    if _is_our_temporary(name):
        return True
    if _EVAL_FOLDER.match(name) and entry.is_dir():
        return all(
            p.name in _EVAL_FILES or (p.name.startswith(".") and p.name.endswith(".tmp"))
            for p in entry.iterdir()
        )
    if _INDEX_FOLDER.match(name) and entry.is_dir():
        return all(_is_index_file(p) for p in entry.iterdir())
    return False


def _is_index_file(entry: Path) -> bool:
    name = entry.name
    return entry.is_file() and (
        name == "manifest.json"
        or name.endswith(".npy")
        or (name.startswith(".") and name.endswith(".tmp"))
    )


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
    folder = prepared_folder_holding(out)
    if folder is not None:
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
    fingerprints: Mapping[str, str],
) -> None:
    """Make `out` the folder of a new run: created, cleared of the run it held and of the
    results computed from it when `force`, of temporary files in any case, and `config.json`
    written."""
    out.mkdir(parents=True, exist_ok=True)
    if force:
        for name in (LAST, BEST, LOG_FILE, PENDING_BEST):
            (out / name).unlink(missing_ok=True)
        _remove_results(out)
    _remove_temporaries(out)
    write_config(out, train, model, prepared, fingerprints)


def _remove_results(out: Path) -> None:
    """The results `eval` computed from the run in `out`: the files it writes in the run's eval
    folders, and each folder once empty (a user's own file in one stays, and so does it); and
    the run's search indexes, likewise."""
    for folder in out.iterdir():
        if _INDEX_FOLDER.match(folder.name) and folder.is_dir():
            for entry in folder.iterdir():
                if _is_index_file(entry):
                    entry.unlink()
            with contextlib.suppress(OSError):  # not empty: the user's files stay
                folder.rmdir()
            continue
        if not (_EVAL_FOLDER.match(folder.name) and folder.is_dir()):
            continue
        for entry in folder.iterdir():
            ours = entry.name in _EVAL_FILES or (
                entry.name.startswith(".") and entry.name.endswith(".tmp")
            )
            if ours and entry.is_file():
                entry.unlink()
        with contextlib.suppress(OSError):  # not empty: the user's files stay
            folder.rmdir()


def _remove_temporaries(out: Path) -> None:
    """Temporary files an interrupted write left (the run holds the lock: none is being
    written)."""
    for entry in out.iterdir():
        if _is_our_temporary(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def write_config(
    out: Path,
    train: TrainConfig,
    model: Mapping[str, Any],
    prepared: PreparedDataset,
    fingerprints: Mapping[str, str],
) -> None:
    """`config.json`: the options the run records, its model options (`ModelConfig.to_dict`),
    the prepared folder, the fingerprints of its vocabularies and features, and this amc-data's
    version."""
    atomic_write_json(
        out / CONFIG_FILE,
        {
            "train": train.to_dict(),
            "model": dict(model),
            "data": str(prepared.root),
            "fingerprints": dict(fingerprints),
            "amc_data_version": __version__,
        },
    )


def features_fingerprint(features: np.ndarray) -> str:
    """What the run trains on, cheaply: `features`' dtype and shape and a sha256 over its first
    and last rows and evenly spaced ones between (a few MB in all). It follows the content, so
    features prepared again from the same extraction keep it."""
    rows = int(features.shape[0])
    row_bytes = max(int(np.prod(features.shape[1:])) * features.dtype.itemsize, 1)
    count = max(min(rows, _FINGERPRINT_BYTES // row_bytes), 2)
    picked = np.unique(np.linspace(0, max(rows - 1, 0), num=count).round().astype(np.int64))
    digest = hashlib.sha256()
    digest.update(picked.tobytes())
    if rows:
        digest.update(np.ascontiguousarray(features[picked]).tobytes())
    shape = "x".join(str(n) for n in features.shape)
    return f"{features.dtype.name} {shape} sha256:{digest.hexdigest()}"


def commit_epoch(
    out: Path,
    payload: Mapping[str, Any],
    as_best: bool,
    log_entries: list[dict[str, Any]],
    save: Callable[[Path, Mapping[str, Any]], None],
) -> None:
    """Write the files of the epoch `payload["epoch"]` in the order the module's docstring gives
    (`save` writes one checkpoint atomically; `payload` holds the log up to its epoch).
    Interrupted (Ctrl-C, SIGTERM, an OS error), `.best.pt.next` is settled at once: renamed when
    `last.pt` was replaced, deleted otherwise. An OS error (a full disk) is a `TrainingError`
    naming the file."""
    last, pending, epoch = out / LAST, out / PENDING_BEST, int(payload["epoch"])
    if as_best:
        with _writing(pending, saved=epoch - 1):
            save(pending, payload)
    before = _identity(last)
    try:
        with _writing(last, saved=epoch - 1):
            save(last, payload)
    except BaseException:
        if as_best:
            if _identity(last) != before:  # the rename happened before the interruption
                os.replace(pending, out / BEST)
            else:
                pending.unlink(missing_ok=True)
        raise
    with _writing(out / BEST, saved=epoch):
        if as_best:
            os.replace(pending, out / BEST)
    with _writing(out / LOG_FILE, saved=epoch):
        write_log(out / LOG_FILE, log_entries)


@contextlib.contextmanager
def _writing(path: Path, saved: int) -> Iterator[None]:
    """An OS error while `path` is written, as a one-line `TrainingError`; the run is committed
    up to epoch `saved`."""
    try:
        yield
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0)
        reason = f"{exc.strerror or exc}{f' ({code})' if code else ''}"
        where, then = (
            (f"saved up to epoch {saved}", "continue with --resume and the same options")
            if saved
            else ("not saved yet (no epoch finished)", "run the same command again")
        )
        raise TrainingError(
            f"Could not write {path}: {reason}. The file it replaces is kept whole and no "
            f"temporary file is left; the run is {where}. Free space on that disk (or fix the "
            f"error), then {then}."
        ) from None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def settle(
    out: Path,
    epoch: int,
    log_entries: list[dict[str, Any]],
    epoch_of: Callable[[Path], int | None],
) -> None:
    """Make the run in `out`, committed at `epoch` (its `last.pt`'s), whole again before it goes
    on: a `.best.pt.next` of that epoch becomes `best.pt`, one of another epoch (or unreadable:
    `epoch_of` gives None) is deleted, `log.jsonl` is rewritten from `log_entries`, and
    temporary files are deleted."""
    pending = out / PENDING_BEST
    if pending.is_file():
        if epoch_of(pending) == epoch:
            os.replace(pending, out / BEST)
            log.info("%s: the best checkpoint of epoch %d was put in place", out, epoch)
        else:
            pending.unlink()
            log.info("%s: dropped the best checkpoint of an epoch that was not saved", out)
    _remove_temporaries(out)
    write_log(out / LOG_FILE, log_entries)


def write_log(path: Path, entries: list[dict[str, Any]]) -> None:
    """`log.jsonl`, whole: one JSON line per epoch."""
    lines = "".join(json.dumps(entry) + "\n" for entry in entries)
    atomic_write_bytes(path, lines.encode("utf-8"))


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of `log.jsonl` (none when it is missing). A last line cut mid-write (no
    newline after it, and not a whole entry) is dropped, saying so; any other line that is not
    an epoch's JSON entry is a `TrainingError` naming the file and the line."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    entries: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), int):
                raise ValueError(f"{_json_kind(entry)} without a whole epoch number")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError among them
            if number == len(lines):  # the last line, with no newline after it: cut
                log.warning("%s: its last line (line %d) was cut mid-write; dropped", path, number)
                break
            raise TrainingError(
                f"{path} line {number} is not an epoch's log entry ({_why(exc)}); amc-data "
                "writes one JSON object per line. Delete or repair that line (its epoch's entry "
                "is lost) and run again."
            ) from None
        entries.append(entry)
    return entries


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    kinds = {list: "array", str: "string", int: "number", float: "number", bool: "true/false"}
    return f"a JSON {kinds.get(type(value), 'null')}"


def _why(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1} is not UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at column {exc.colno}"
    return str(exc)
