"""A response body as amc-data reads it: undone content encoding, and HTML caught before a byte
of it is kept.

amc-data asks for `Accept-Encoding: identity`, because sizes and hashes are of the file as
stored. A server that still compresses the body (`Content-Encoding: gzip` or `deflate`) has it
decoded here, before hashing; any other encoding is refused. The first KB of the decoded body is
held back until it is known not to be an HTML page, however the bytes arrive (a first read of one
newline, a one-byte first segment).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import requests

HTML_WINDOW = 1024  # bytes of a body looked at to tell an HTML page from data
_HTML_STARTS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<body",
    b"<meta",
    b"<title",
    b"<script",
)
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def looks_like_html(first_bytes: bytes, content_type: str | None = None) -> bool:
    """True when a response is an HTML page: by its Content-Type, or by the first KB of its body
    (after any byte-order mark and white space)."""
    if content_type and "html" in content_type.lower():
        return True
    head = first_bytes[:HTML_WINDOW].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return head.startswith(_HTML_STARTS)


def content_encoding(resp: requests.Response) -> str | None:
    """The body's Content-Encoding (lower case), None for none or `identity`."""
    value = resp.headers.get("Content-Encoding", "").strip().lower()
    return None if value in ("", "identity") else value


def decodable(encoding: str | None) -> bool:
    """True for the encodings `BodyReader` undoes (and for no encoding)."""
    return encoding is None or encoding in _DECODERS


class BodyReader:
    """The decoded body, chunk by chunk, as it arrives (one socket read at a time, so every byte
    received is kept even when the connection then breaks).

    `raw_bytes` counts the bytes as sent (what Content-Length counts); `complete` is False when
    an encoded body stopped before its encoding's own end.
    """

    def __init__(self, resp: requests.Response, chunk_size: int) -> None:
        self._resp = resp
        self._chunk_size = chunk_size
        encoding = content_encoding(resp)
        self._decoder = zlib.decompressobj(_DECODERS[encoding]) if encoding else None
        self.raw_bytes = 0

    @property
    def complete(self) -> bool:
        """False when the encoded stream ended early (a decoded body has its own end mark)."""
        return self._decoder is None or self._decoder.eof

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._resp.raw.read1(self._chunk_size):
            self.raw_bytes += len(chunk)
            if self._decoder is None:
                yield chunk
            elif data := self._decoder.decompress(chunk):
                yield data
        if self._decoder is not None and (rest := self._decoder.flush()):
            yield rest


class HtmlSniffer:
    """Holds back the first `HTML_WINDOW` bytes of a body until they can be judged.

    `feed` returns the bytes that may be kept now (nothing while the window fills); `finish`
    returns what is still held when the body is shorter than the window. `is_html` turns True
    once the held bytes are judged to be a page; nothing is released then.
    """

    def __init__(self) -> None:
        self._head = bytearray()
        self._judged = False
        self.is_html = False

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk; return the bytes cleared to be kept."""
        if self._judged:
            return chunk
        self._head += chunk
        return self._judge() if len(self._head) >= HTML_WINDOW else b""

    def finish(self) -> bytes:
        """The bytes still held at the end of the body (after judging them)."""
        return b"" if self._judged else self._judge()

    def _judge(self) -> bytes:
        self._judged = True
        head, self._head = bytes(self._head), bytearray()
        self.is_html = looks_like_html(head)
        return b"" if self.is_html else head
