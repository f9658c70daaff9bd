"""The `amc-data` command line: Click commands that parse options and call the library."""

from .main import cli, main

__all__ = ["cli", "main"]
