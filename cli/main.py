"""The `amc-data` group: global options, logging set-up, and the single place errors are caught."""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import click

from amc_data.errors import AmcDataError, ConfigError


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `kill`, `timeout` and job schedulers send), raised where the program is, so
    that it unwinds exactly as Ctrl-C does: temporary files and work folders removed, nothing
    half-written left behind."""


def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` while the command runs (in the main thread, the only one
    Python delivers signals to); the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class AmcGroup(click.Group):
    """A Click group that turns amc-data's own exceptions into clean exits.

    Errors are caught here, once: the message is printed without a traceback, unless `--debug`
    was given, and the process exits with the error's code.
    """

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            # A group inside another (`prepare`): it knows its own subcommand's flags, so it
            # names them, and leaves the printing to the top group.
            try:
                return super().invoke(ctx)
            except ConfigError as exc:
                message = self._in_flags(ctx, exc)
                if message == str(exc):
                    raise
                raise ConfigError(message) from exc
        try:
            with _sigterm_as_interrupt():
                return super().invoke(ctx)
        except AmcDataError as exc:
            if ctx.params.get("debug"):
                traceback.print_exc(file=sys.stderr)
            click.secho(f"Error: {self._in_flags(ctx, exc)}", err=True, fg="red")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            # What was printed so far reaches a redirected stdout before the last word.
            sys.stdout.flush()
            stopped = "Stopped by SIGTERM" if isinstance(exc, Terminated) else "Interrupted"
            click.echo(f"{stopped}; nothing half-written was left behind.", err=True)
            for note in getattr(exc, "__notes__", []):  # e.g. a training: what is saved, and how
                click.echo(note, err=True)  # to continue
            ctx.exit(128 + signal.SIGTERM if isinstance(exc, Terminated) else 130)

    def _in_flags(self, ctx: click.Context, exc: AmcDataError) -> str:
        """The error's message, with the parameter it names (a library name such as
        `batch_size`) shown as the running command's flag (`--batch-size`): the one place
        library names become flags."""
        message = str(exc)
        parameter = getattr(exc, "parameter", None)
        command = self.get_command(ctx, ctx.invoked_subcommand or "")
        if not parameter or command is None or not message.startswith(parameter):
            return message
        for param in command.params:
            if param.name == parameter and isinstance(param, click.Option):
                # A flag that turns a default-on switch off names the spelling a user types.
                spelling = param.secondary_opts or param.opts
                negated = param.is_flag and param.default is True and param.secondary_opts
                flag = (spelling if negated else param.opts)[0]
                return flag + message[len(parameter) :]
        return message


# Every command, in the pipeline's order, and the module of `cli/` that defines it (its
# `COMMANDS`). A module is imported when one of its commands runs, so `amc-data fetch` loads
# the fetching code and nothing of encode, train or eval (`--help` of the group imports all).
COMMAND_MODULES = {
    "fetch": "fetch",
    "verify": "fetch",
    "info": "fetch",
    "encode": "encode",
    "example": "example",
    "prepare": "prepare",
    "synth": "synth",
    "export": "export",
    "features": "features",
    "clip-scores": "features",
    "train": "train",
    "eval": "evaluate",
    "index": "index",
    "search": "search",
    "serve": "serve",
    "demo": "demo",
}


class CommandTable(AmcGroup):
    """The top group: its commands load on first use (`COMMAND_MODULES`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f".{module_name}", __package__)
        return next((c for c in module.COMMANDS if c.name == cmd_name), None)


@click.group(cls=CommandTable, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="AMC_DATA_DEBUG", help="Show tracebacks on errors.")
@click.option("--verbose", "-v", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="amc-data", prog_name="amc-data")
def cli(debug: bool, verbose: int) -> None:
    """Fetch, verify and encode the AMC keyword datasets (Clickture, MSCOCO) exactly as the
    authors did, and train and evaluate the AMC model on them."""
    levels = {0: logging.WARNING, 1: logging.INFO}
    level = logging.DEBUG if debug else levels.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="amc-data")
