"""`amc-data fetch`, `verify` and `info`."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
