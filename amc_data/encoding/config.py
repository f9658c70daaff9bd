"""What `encode` does, in a module that loads nothing heavy: the command line builds `encode`'s
flags from these declarations at start-up, before numpy, pyarrow or the fetching code load."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..checks import check_config, option
from ..errors import ConfigError
from ..spec import FORMATS
from .analyzer import AUTHORS_MIN_DF, MIN_DF_LOW, MIN_DF_WHY
from .policy import ON_ERROR, OnError


@dataclass(frozen=True)
class EncodeConfig:
    """What `encode` does; the defaults are the authors' settings. Every option is checked
    here, once, whoever builds the config; the CLI builds its flags from these declarations."""

    min_df: int = option(
        AUTHORS_MIN_DF,
        f"Keep a word found in at least this many fitting documents (the authors used "
        f"{AUTHORS_MIN_DF}).",
        low=MIN_DF_LOW,
        why=MIN_DF_WHY,
    )
    stop_words: str = option(  # kept as a string (a path too), so the encode record can hold it
        "english",
        "scikit-learn's English list (the authors'), none, or a file with one word per line.",
    )
    # A comma-separated string is welcome too: "original,csr".
    formats: tuple[str, ...] = option(
        FORMATS, "Comma-separated outputs: original (the authors' .npy), csr (.npz), parquet."
    )
    on_error: OnError = option(  # option() is a dataclasses.field()
        "fail",
        "On a bad keyword file or list line: stop (write nothing), or skip and record it.",
        choices=ON_ERROR,
    )
    jobs: int | None = option(
        None,
        "Worker processes (default: all cores). Output is the same for any value.",
        low=1,
    )
    force: bool = option(False, "Encode again even if the outputs are up to date.")
    progress: bool = False
    # Manifests replacing the bundled ones of the same dataset (`--manifest`): the sha256 the
    # encode record vouches for comes from them.
    manifest_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_words", os.fspath(self.stop_words))
        formats = self.formats
        if isinstance(formats, str):
            formats = tuple(part.strip() for part in formats.split(",") if part.strip())
        object.__setattr__(self, "formats", tuple(formats))
        check_config(self)
        unknown = [part for part in self.formats if part not in FORMATS]
        if unknown or not self.formats:
            raise ConfigError(
                f"formats must be a comma-separated list of {', '.join(FORMATS)}: "
                f"{', '.join(map(str, unknown)) or 'nothing'} is not a format.",
                parameter="formats",
            )
        object.__setattr__(self, "manifest_paths", tuple(map(os.fspath, self.manifest_paths)))
