"""`amc-data demo`."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from amc_data._optional import require
from amc_data.progress import progress_enabled

from .evaluate import comparison_table
from .options import quiet_option


@click.command("demo")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default="amc-demo")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the whole demo.")
@click.option("--images", type=int, default=None, help="Synthetic images (default: synth's).")
@click.option("--queries", type=int, default=None, help="Synthetic queries (default: synth's).")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: train's).")
@quiet_option
def demo_command(
    out: Path, seed: int, images: int | None, queries: int | None, epochs: int | None, quiet: bool
) -> None:
    """Offline: synth -> train AMC and its baselines -> eval, with pictures (about 30 s with one
    torch thread, OMP_NUM_THREADS=1, on a 2-core machine; longer beside other jobs). Everything
    lands in OUT (default ./amc-demo)."""
    require("torch")
    require("matplotlib", "the demo's pictures")
    from amc_data.ranking.demo import run_demo

    say = (lambda _: None) if quiet else (lambda line: click.echo(line, err=True))
    result = run_demo(
        out,
        seed=seed,
        images=images,
        queries=queries,
        epochs=epochs,
        progress=progress_enabled(quiet),
        say=say,
    )
    click.echo(
        f"\nTest split of {result.data}: every run against the best by NDCG@10 "
        "(paired randomisation and t tests on per-query NDCG@10)\n"
    )
    click.echo(comparison_table(result.evaluation))
    if result.amc_best:
        click.echo("\nAMC ranks best, as the paper reports.")
    else:
        click.echo(
            f"\nAMC did NOT rank best here: {result.evaluation.best} did. Say so when "
            "you report this run."
        )
    click.echo(
        f"Pictures: {result.plot_dir} (roc.png, attention-*.png); metrics: "
        f"{result.out / 'eval'}; finished in {result.seconds:.0f} s."
    )
    if "amc" in result.runs:
        # The page shows AMC beside the visual baseline, when the demo trained it.
        shown = [result.runs["amc"], *(result.runs[k] for k in ("visual",) if k in result.runs)]
        click.echo(
            "See what AMC looked at, in a browser (the serve extra): amc-data serve "
            f"{shlex.join([*map(str, shown), '--data', str(result.data)])}, then open "
            "http://127.0.0.1:8000/"
        )


COMMANDS = [demo_command]
