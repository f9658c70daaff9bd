"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU build (a bare `torch` can pull a CUDA build of several GB), and the torchvision of its
# release, so that open_clip (the clip extra) keeps this torch.
TORCH = ("torch==2.13.0", "torchvision==0.28.0")
BENCHMARKS = (
    "fetch",
    "encode",
    "loader",
    "train",
    "eval",
    "search",
    "serve",
    "synth",
    "scale",
    "gpu",
)
# Run by name only: scale writes a 25 GB folder and takes about half an hour; gpu needs CUDA.
BY_NAME_ONLY = ("scale", "gpu")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, as CI runs it."""
    session.install(*TORCH)
    session.install(".[test,clip,search]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy."""
    session.install(*TORCH)
    session.install(".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each against its reference in the same run (see the README for figures).

    Results are printed and written to bench-results/ as JSON. `-- NAME [ARGS]` runs one of
    fetch, encode, loader, train, eval, search, synth, scale, gpu; e.g. `-- encode --docs
    100000` for a quicker run. Without a name all run except scale (COCO's size: 25 GB of
    disk, about half an hour) and gpu (a CUDA machine; `-- gpu --cpu` is a dry run here).
    """
    session.install(*TORCH)
    session.install(".[dev,search]")  # search: faiss for the two-stage search's shortlist
    which = session.posargs[0] if session.posargs else "all"
    if which not in (*BENCHMARKS, "all"):
        session.error(f"unknown benchmark {which!r}; choose from {', '.join(BENCHMARKS)}")
    for name in BENCHMARKS:
        if (which == "all" and name not in BY_NAME_ONLY) or which == name:
            rest = session.posargs[1:] if which == name else []
            session.run("python", f"benchmarks/bench_{name}.py", *rest)
