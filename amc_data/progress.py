"""The one progress-bar helper every stage uses.

Bars go to stderr, and only when stderr is a terminal and the caller did not ask for quiet, so
logs, pipes and CI stay clean.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_enabled(quiet: bool = False) -> bool:
    """True when a progress bar should be drawn: not quiet, and stderr is a terminal."""
    if quiet:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    *,
    total: int | None,
    desc: str,
    unit: str = "it",
    enabled: bool,
    position: int | None = None,
    bytes_units: bool = False,
    initial: int = 0,
) -> tqdm[Any]:
    """Return a tqdm bar (a disabled one when `enabled` is false: same API, draws nothing)."""
    return tqdm(
        total=total,
        desc=desc,
        unit="B" if bytes_units else unit,
        unit_scale=bytes_units,
        unit_divisor=1024 if bytes_units else 1000,
        disable=not enabled,
        position=position,
        leave=position is None,
        initial=initial,
        file=sys.stderr,
        dynamic_ncols=True,
    )
