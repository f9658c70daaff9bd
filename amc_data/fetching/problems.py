"""Why a fetch went wrong, in a form a program can read: the `Problem` enum, and the exceptions
of the transport that carry one.

Each `SourceError` is one of the project's own exceptions (a `DownloadError`; the HTML and
wrong-file kinds are also `HtmlResponseError` and `ChecksumError`), so a caller can catch it by
kind or read its `problem`. Messages are escaped on the way in: text a server chose (a reason
phrase, a page's words) never reaches a terminal with control characters in it.
"""

from __future__ import annotations

import enum

from ..errors import ChecksumError, DownloadError, HtmlResponseError, TransientDownloadError


class Problem(enum.Enum):
    """What went wrong with one file or one of its sources."""

    UNREACHABLE = "unreachable"  # the name does not resolve, the connection is refused
    NETWORK = "network"  # a dropped connection or a read timeout
    SERVER_ERROR = "server error"  # 5xx, 408, 429
    HTTP_STATUS = "http status"  # another unusable status (403, 404, ...)
    SHORT_BODY = "short body"  # the body ended before the announced or expected end
    BAD_RANGE = "bad range"  # a 206 for a range that was not asked for
    REDIRECT = "redirect"  # a redirect loop, or a redirect away from http(s)
    HTML = "html"  # an HTML page where file data was expected
    ENCODING = "encoding"  # a Content-Encoding amc-data does not decode
    WRONG_FILE = "wrong file"  # size or hash differs from what is expected
    TOO_LARGE = "too large"  # a file of unknown size went past the cap
    INVALID_ARCHIVE = "invalid archive"  # a zip with no known hash that does not open whole
    DEADLINE = "deadline"  # the download took longer than its deadline
    NOT_LISTED = "not listed"  # the Google Drive folder has no file of that name
    LOCKED = "locked"  # another process held the file's lock past --lock-timeout
    BAD_RECORD = "bad record"  # the checksum record cannot be read
    IO = "io"  # the local file system refused (disk full, permissions, a folder in the way)
    OTHER = "other"

    @property
    def transient(self) -> bool:
        """True when trying the same source again may succeed."""
        return self in _TRANSIENT


_TRANSIENT = frozenset(
    {
        Problem.UNREACHABLE,
        Problem.NETWORK,
        Problem.SERVER_ERROR,
        Problem.SHORT_BODY,
        Problem.BAD_RANGE,
    }
)


def printable(text: str) -> str:
    """`text` with every non-printable character (control characters, line breaks, bidi
    overrides) written as its escape (`\\x1b`, `\\n`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class SourceError(DownloadError):
    """One source could not deliver the file; `problem` says why."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(printable(message))
        self.problem = problem


class RetryableSourceError(SourceError, TransientDownloadError):
    """A failure worth retrying on the same source (see `Problem.transient`)."""


class HtmlSourceError(SourceError, HtmlResponseError):
    """The source answered with an HTML page."""


class WrongFileError(SourceError, ChecksumError):
    """The source served bytes that are not the expected file."""


def source_error(problem: Problem, message: str) -> SourceError:
    """The `SourceError` of the right kind for `problem`."""
    if problem is Problem.HTML:
        return HtmlSourceError(problem, message)
    if problem is Problem.WRONG_FILE:
        return WrongFileError(problem, message)
    if problem.transient:
        return RetryableSourceError(problem, message)
    return SourceError(problem, message)
