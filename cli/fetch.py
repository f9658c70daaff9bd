"""`amc-data fetch`, `verify` and `info`: parse options, call the library, print tables."""

from __future__ import annotations

from collections.abc import Sequence

import click

from amc_data.errors import FetchIncompleteError, VerificationError
from amc_data.fetching.core import FetchResult, Outcome, fetch_manifests
from amc_data.fetching.download import HttpDownloader
from amc_data.fetching.manifest import CHECKSUMS_FILE_NAME, resolve_manifests
from amc_data.fetching.problems import Problem
from amc_data.fetching.verify import FileStatus, info, verify
from amc_data.progress import progress_enabled

from .options import config_option, data_dir_option, jobs_option, manifest_option, quiet_option
from .tables import text_table


def human_size(size: int | None) -> str:
    """Bytes as a short human-readable size ("1.5 MiB"); "-" when unknown."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


_OUTCOME_COLOUR = {Outcome.FAILED: "red", Outcome.RECORDED: "yellow"}


def _print_fetch(results: Sequence[FetchResult], quiet: bool) -> None:
    if not quiet:
        rows = [(f"{r.dataset}/{r.name}", human_size(r.size), r.outcome.value) for r in results]
        click.echo(text_table(("file", "size", "outcome"), rows))
        recorded = [r for r in results if r.outcome is Outcome.RECORDED]
        if recorded:
            click.secho(
                f"\n{len(recorded)} file(s) had no published hash: their size and sha256 were "
                f"recorded in the dataset's {CHECKSUMS_FILE_NAME}; later runs and `verify` hold "
                "them to it.",
                fg="yellow",
            )
    failed = [r for r in results if not r.ok]
    if failed:
        click.secho("\nFailures:", fg="red", err=True)
        for r in failed:
            click.echo(f"  {r.dataset}/{r.name}: {r.reason}", err=True)


@click.command("fetch")
@click.argument("datasets", nargs=-1)
@data_dir_option
@manifest_option
@click.option(
    "--from",
    "from_dir",
    type=click.Path(file_okay=False, exists=True, path_type=str),
    help="Folder of files placed by hand (DIR/<file> or DIR/<dataset>/<file>), looked at before "
    "any network call; each is verified, then copied or linked in.",
)
@click.option(
    "--with",
    "with_optional",
    multiple=True,
    metavar="GROUP",
    help="Fetch also the optional files of GROUP (e.g. `coco --with precomp`: SCAN's "
    "precomputed features); repeat for several.",
)
@jobs_option(4, "Files fetched at once.")
@config_option(HttpDownloader, "retries")
@config_option(HttpDownloader, "timeout")
@config_option(HttpDownloader, "deadline", show_default=False)
@config_option(HttpDownloader, "backoff")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds to wait for another amc-data process fetching the same file "
    "(default: as long as it takes).",
)
@quiet_option
def fetch_command(
    datasets: tuple[str, ...],
    data_dir: str | None,
    manifest_paths: tuple[str, ...],
    from_dir: str | None,
    with_optional: tuple[str, ...],
    jobs: int,
    retries: int,
    timeout: float,
    backoff: float,
    deadline: float | None,
    lock_timeout: float | None,
    quiet: bool,
) -> None:
    """Download DATASETS (default: every bundled one) into the data folder, verified.

    A file already present and verified costs no network call; a partial download resumes;
    files without a published hash get their size and sha256 recorded. Exits 0 only when every
    requested file is present and verified. Optional files (a manifest's `optional` groups)
    are fetched only with `--with GROUP`.
    """
    results = fetch_manifests(
        resolve_manifests(datasets, manifest_paths, with_optional),
        data_dir=data_dir,
        from_dir=from_dir,
        jobs=jobs,
        downloader=HttpDownloader(
            retries=retries,
            timeout=timeout,
            backoff=backoff,
            deadline=deadline,
            progress=progress_enabled(quiet),
        ),
        lock_timeout=lock_timeout,
    )
    _print_fetch(results, quiet)
    failed = [r for r in results if not r.ok]
    if failed:
        offline = all(set(r.problems) == {Problem.UNREACHABLE} for r in failed)
        next_step = (
            "No source could be reached: check the network connection, then run the same "
            "command again"
            if offline
            else "Run the same command again to resume"
        )
        raise FetchIncompleteError(
            f"{len(failed)} of {len(results)} file(s) are not in place (reasons above). "
            f"{next_step}, or download by hand and use `--from DIR`."
        )


@click.command("verify")
@click.argument("datasets", nargs=-1)
@data_dir_option
@manifest_option
@quiet_option
def verify_command(
    datasets: tuple[str, ...], data_dir: str | None, manifest_paths: tuple[str, ...], quiet: bool
) -> None:
    """Re-hash the files of DATASETS (default: every bundled one) against their manifests and
    the recorded hashes. Exits non-zero on any missing or different file."""
    reports = verify(
        datasets, data_dir=data_dir, manifest_paths=manifest_paths, progress=progress_enabled(quiet)
    )
    failed = [r for r in reports if r.status.failed]
    shown = failed if quiet else reports
    if shown:
        rows = [
            (f"{r.dataset}/{r.name}", human_size(r.size), r.status.value, r.detail or "")
            for r in shown
        ]
        click.echo(text_table(("file", "size", "status", "detail"), rows))
    if failed:
        raise VerificationError(
            f"{len(failed)} of {len(reports)} file(s) are missing, unreadable or not the expected "
            "files (see the table). Fix what is unreadable, then run `amc-data fetch` to download "
            "the rest again."
        )


@click.command("info")
@click.argument("datasets", nargs=-1)
@data_dir_option
@manifest_option
@click.option("--no-hash", is_flag=True, help="Check presence and size only (fast).")
@quiet_option
def info_command(
    datasets: tuple[str, ...],
    data_dir: str | None,
    manifest_paths: tuple[str, ...],
    no_hash: bool,
    quiet: bool,
) -> None:
    """Show the data folder, the manifests, and which files are present and verified."""
    report = info(
        datasets,
        data_dir=data_dir,
        manifest_paths=manifest_paths,
        hash_files=not no_hash,
        progress=progress_enabled(quiet),
    )
    click.echo(f"data folder: {report.data_dir}")
    for ds in report.datasets:
        kind = "bundled" if ds.manifest.bundled else "given"
        click.echo(f"\n{ds.manifest.name}: {ds.manifest.description or ''}".rstrip())
        click.echo(f"  manifest ({kind}): {ds.manifest.source}")
        click.echo(f"  folder: {ds.folder}")
        if ds.manifest.note:
            click.echo(f"  note: {ds.manifest.note}")
        if no_hash:
            ready = sum(r.status is FileStatus.NOT_HASHED for r in ds.files)
            click.echo(f"  {ready} of {len(ds.files)} file(s) present (not hashed: --no-hash)")
        else:
            ready = sum(r.status is FileStatus.OK for r in ds.files)
            click.echo(f"  {ready} of {len(ds.files)} file(s) present and verified")
        rows = [
            (r.name, human_size(r.size), r.status.value, r.expected.source, r.detail or "")
            for r in ds.files
        ]
        table = text_table(("file", "size", "status", "checksums", "detail"), rows)
        click.echo("\n".join("  " + line for line in table.splitlines()))


COMMANDS: list[click.Command] = [fetch_command, verify_command, info_command]
