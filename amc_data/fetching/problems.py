"""Why a fetch went wrong, in a form a program can read: the `Problem` enum, the exceptions of
the transport that carry one, and the sorting of HTTP statuses and network failures into them.

Each `SourceError` is one of the project's own exceptions (a `DownloadError`; the HTML and
wrong-file kinds are also `HtmlResponseError` and `ChecksumError`), so a caller can catch it by
kind or read its `problem`. Messages are escaped on the way in: text a server chose (a reason
phrase, a page's words) never reaches a terminal with control characters in it.
"""

from __future__ import annotations

import enum
import errno
import socket
from urllib.parse import urlsplit

import requests
import urllib3

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


# --------------------------------------------------------------------------- sorting failures

_REDIRECT_ERRORS = (  # what requests raises for a redirect loop or to a non-http(s) address
    requests.TooManyRedirects,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
)
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}


def status_error(resp: requests.Response, label: str) -> SourceError:
    """An unusable HTTP status: retryable (5xx, 408, 429) or the end of that URL."""
    code = resp.status_code
    text = f"{label} answered HTTP {code} {resp.reason or ''}".rstrip()
    if code >= 500 or code in (408, 429):
        return source_error(Problem.SERVER_ERROR, f"{text}.")
    return source_error(Problem.HTTP_STATUS, f"{text}; trying the next source, if any.")


def network_error(
    exc: BaseException, label: str, url: str, timeout: float, kept: str
) -> SourceError:
    """A requests or urllib3 failure met while fetching from `label` (at `url`) as a
    `SourceError` in plain words; `kept` says what became of the bytes received."""
    if isinstance(exc, _REDIRECT_ERRORS):
        return source_error(
            Problem.REDIRECT,
            f"{label} redirected in a loop or to an address that is not http(s) "
            f"({_describe(exc)}); trying the next source, if any.",
        )
    host = _host(exc, url)
    why = _unreachable_reason(exc, timeout)
    if why is not None:
        return source_error(Problem.UNREACHABLE, f"{host} could not be reached ({why}).")
    if isinstance(exc, requests.Timeout | urllib3.exceptions.TimeoutError):
        return source_error(Problem.NETWORK, f"{label}: no data for {timeout:g} s; {kept}")
    return source_error(Problem.NETWORK, f"{label}: {_describe(exc)}; {kept}")


def _unreachable_reason(exc: BaseException, timeout: float) -> str | None:
    """Why no connection could be made, in plain words; None when one was made."""
    if isinstance(exc, requests.ConnectTimeout):
        return f"no answer to the connection within {timeout:g} s"
    for cause in _causes(exc):
        if isinstance(cause, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return "its name does not resolve: no network, or a wrong address"
        if isinstance(cause, OSError) and cause.errno in _UNREACHABLE_ERRNOS:
            if cause.errno == errno.ECONNREFUSED:
                return "the connection was refused"
            return "the network is unreachable"
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps (requests wraps urllib3, which wraps the socket error)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                todo.append(linked)
    return seen


def _host(exc: BaseException, fallback_url: str) -> str:
    """The host a failed request went to."""
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None) or fallback_url
    return urlsplit(url).netloc or url


def _describe(exc: BaseException) -> str:
    """A network error in one line (urllib3 repeats its message inside a tuple)."""
    while exc.args and isinstance(exc.args[0], BaseException):  # requests wraps urllib3
        exc = exc.args[0]
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
