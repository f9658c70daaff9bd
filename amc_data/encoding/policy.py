"""What an encode does with a bad item (a keyword file, a list line, an image of `dataset.json`):
stop, or leave it out and record it. The rule lives here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..errors import InputError

OnError = Literal["fail", "skip"]
ON_ERROR: tuple[str, ...] = get_args(OnError)
SKIP_HINT = (
    "Use --on-error skip to leave such items out and record them in the encode record "
    "(encode.json)."
)


@dataclass(frozen=True)
class SkippedItem:
    """A document left out under `on_error="skip"`, and why."""

    split: str
    item: str  # the list line, or the image's file name in dataset.json
    member: str
    reason: str


@dataclass
class ErrorPolicy:
    """Applies `on_error` to each problem found: "fail" raises `InputError` with the problem's
    message; "skip" records the item in `skipped`, in the order met.

    `on_error` is validated where the user gives it (`EncodeConfig`); this object trusts it.
    """

    on_error: OnError
    skipped: list[SkippedItem] = field(default_factory=list)

    def problem(self, item: SkippedItem, *, record: bool = True) -> None:
        """Stop on `item` under "fail"; under "skip" record it (unless `record` is false: a pass
        that will meet the item again records it then)."""
        if self.on_error == "fail":
            raise InputError(f"{item.reason} {SKIP_HINT}")
        if record:
            self.skipped.append(item)
