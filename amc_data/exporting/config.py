"""What `amc-data export` writes (`ExportConfig`): apart from the writers, so that the command
line builds its options from the config without loading pandas or pyarrow."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import check_config, option

__all__ = ["FORMATS", "ExportConfig"]

#: The formats `export` writes: a Hugging Face dataset folder, or webdataset tar shards.
FORMATS = ("hf", "wds")


@dataclass(frozen=True)
class ExportConfig:
    """How `export` writes a prepared folder."""

    to: str = option(
        "hf",
        "The format: hf (a Hugging Face dataset folder: Parquet shards and a dataset card, opened "
        "by datasets.load_dataset) or wds (webdataset tar shards, one sample per image, for "
        "streaming training).",
        choices=FORMATS,
    )
    shard_mb: float = option(
        500.0,
        "The most megabytes (uncompressed) of one shard; a split larger than this is cut into "
        "several shards.",
        low=0,
        above=True,
    )
    force: bool = option(
        False,
        "Replace an earlier export at DIR (only files an export wrote are replaced; a folder "
        "holding other files is refused).",
    )

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def shard_bytes(self) -> int:
        """The shard size in bytes (at least 1)."""
        return max(1, int(self.shard_mb * 1_000_000))
