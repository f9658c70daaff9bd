"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"  # the CPU build; a bare `torch` can pull a CUDA build of several GB


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, as CI runs it."""
    session.install(TORCH)
    session.install(".[test]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: fetch against curl, encode against the reference workflow.

    Results are printed and written to bench-results/ as JSON; the README quotes them.
    Pass `-- fetch` or `-- encode` to run one; `-- encode --docs 100000` for a quicker run.
    """
    session.install(".[dev]")
    which = session.posargs[0] if session.posargs else "all"
    rest = session.posargs[1:]
    if which in ("all", "fetch"):
        session.run("python", "benchmarks/bench_fetch.py", *(rest if which == "fetch" else []))
    if which in ("all", "encode"):
        session.run("python", "benchmarks/bench_encode.py", *(rest if which == "encode" else []))
