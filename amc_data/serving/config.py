"""The options of `amc-data serve` (`ServeConfig`), in a module without the server libraries or
torch, so the CLI builds and checks its flags before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import check_config, option

# The most results one page may ask for (top x page): beyond it a request is refused, so that no
# request makes the server explain thousands of images.
MAX_RESULTS = 1000
MAX_TOP = 100  # results on one page
THUMBNAIL_PIXELS = 320  # the longer side of a result's picture
LARGE_PIXELS = 1024  # the longer side of a picture shown large
# Shrunk pictures are kept in memory up to this many bytes (least recently shown dropped first).
CACHE_BYTES = 64 << 20
# The longest request the HTTP parser takes whole (a 1 MB query reaches the API and is refused
# with a message, rather than being cut off by the parser); anything longer is refused by it.
MAX_REQUEST_BYTES = 4 << 20


@dataclass(frozen=True)
class ServeConfig:
    """Where the page listens and how many results it shows."""

    host: str = option("127.0.0.1", "The address to listen on (127.0.0.1: this machine only).")
    port: int = option(8000, "The port to listen on (0: any free port).", low=0, high=65535)
    top: int = option(10, "Results per page.", low=1, high=MAX_TOP)

    def __post_init__(self) -> None:
        check_config(self)
