"""The project's own exceptions.

Every error a user can cause or meet is one of these. Messages are complete sentences meant for a
person: what went wrong, where (file, member, URL, list line), what was expected, what was found,
and what to do next. The CLI catches `AmcDataError` once and prints the message without a
traceback (`--debug` shows it).
"""

from __future__ import annotations


class AmcDataError(Exception):
    """Base class of every error amc-data raises on purpose."""

    exit_code: int = 1


class ConfigError(AmcDataError):
    """An option or setting is invalid (unknown dataset, bad data folder, bad parameter).

    `parameter` names the option as Python knows it (`batch_size`) when the error is about one;
    the message then begins with that name, and the CLI shows the option's flag in its place.
    """

    exit_code = 2

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class OutputFolderError(AmcDataError):
    """An output folder refuses the write: it holds an earlier result (and no `--force`), files
    amc-data did not write, another dataset's output, or it is a file or the current folder.
    A refused state of the disk, not a bad option, so exit status 1 as for bad data. As for
    `ConfigError`, `parameter` names the option that chose the folder, when one did."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class ManifestError(AmcDataError):
    """A manifest or lock file is unreadable or malformed."""


class DownloadError(AmcDataError):
    """A file could not be downloaded from any of its sources."""


class HtmlResponseError(DownloadError):
    """A server answered with an HTML page where file data was expected."""


class ChecksumError(AmcDataError):
    """A file's size or hash differs from the expected value."""


class ArchiveError(AmcDataError):
    """A zip archive or one of its members is unsafe, damaged or not as expected."""


class InputError(AmcDataError):
    """Input data (a keyword file, a list file, dataset.json, a pickle) is not as expected."""


class UnsafePickleError(InputError):
    """A pickle tried to load a global (class or function); it was refused, nothing was run."""


class LockTimeoutError(AmcDataError):
    """Another amc-data process held a lock for longer than we were willing to wait."""


class MissingDependencyError(AmcDataError):
    """An optional dependency (torch for `train` and `eval`) is not installed."""


class FetchIncompleteError(DownloadError):
    """`fetch` ended with at least one requested file missing or unverified (details per file)."""


class VerificationError(ChecksumError):
    """`verify` found at least one file missing or different from its expected checksums."""


class TransientDownloadError(DownloadError):
    """A download failed in a way worth retrying: a dropped connection, a timeout, a 5xx, 408 or
    429 answer, or a body shorter than announced (the partial download is kept for resuming)."""


class CheckpointError(AmcDataError):
    """A checkpoint is unreadable, not amc-data's, or does not match the prepared data."""


class TrainingError(AmcDataError):
    """Training cannot go on (a NaN or Inf loss, a run folder that holds another run)."""
