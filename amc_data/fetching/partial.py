"""A partial download and what it may be continued from.

Bytes held in `.<name>.part` are worth continuing only when a spliced file (the head of one
version, the tail of another) cannot slip through. Either the server proves the file has not
changed: the first answer's validator (a strong ETag, else its Last-Modified) is kept beside the
partial in `.<name>.part.json`, with the source and the whole file's size, and a resume sends it
as `If-Range`. Or a published hash will be checked once the file is whole, which catches a splice
(the downloader then starts over from zero once): such a partial is kept with no validator. A
partial with neither (no validator and no known hash), or with a body of unknown length or a
compressed body, is never continued, only restarted from zero.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartState:
    """What a partial download was started from."""

    source: str  # the source's URL (a Drive folder URL for a Drive file)
    validator: str | None  # sent as If-Range when continuing; None: the hash check guards it
    total: int  # the whole file's size, as the first answer announced it


def state_path(part: Path) -> Path:
    """Where the state of the partial download `part` is kept."""
    return part.with_name(part.name + ".json")


def validator_of(resp: requests.Response) -> str | None:
    """The answer's validator for If-Range: a strong ETag, else Last-Modified, else None (a weak
    ETag never matches in If-Range)."""
    etag = resp.headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified", "").strip() or None


def load(part: Path, source: str) -> PartState | None:
    """The state of `part` when it was started from `source` and can be continued, else None."""
    try:
        raw = json.loads(state_path(part).read_text(encoding="utf-8"))
        validator = raw["validator"]
        if validator is not None and not isinstance(validator, str):
            raise TypeError(f"validator is {validator!r}")
        state = PartState(str(raw["source"]), validator, int(raw["total"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.info("%s: unreadable resume state (%s); starting over", part, exc)
        return None
    return state if state.source == source else None


def remember(part: Path, state: PartState | None) -> None:
    """Keep `state` beside `part` (None: the partial cannot be continued; forget any state)."""
    if state is None:
        forget(part)
        return
    state_path(part).write_text(json.dumps(asdict(state)) + "\n", encoding="utf-8")


def forget(part: Path) -> None:
    """Drop the resume state of `part` (the partial itself stays)."""
    state_path(part).unlink(missing_ok=True)


def discard(part: Path) -> None:
    """Delete a partial download and its state."""
    part.unlink(missing_ok=True)
    forget(part)
