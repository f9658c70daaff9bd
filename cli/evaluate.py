"""`amc-data eval`: metrics of scores files (and, with the model half, of trained runs)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from amc_data.errors import ConfigError

from .fetch import _table

if TYPE_CHECKING:
    from amc_data.evaluation.metrics import PairedTest, RankingMetrics

SIGNIFICANCE_K = 10
_SCORES_SUFFIXES = (".parquet", ".pq", ".tsv", ".gz", ".txt")


def _number(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _p_value(value: float) -> str:
    return f"{value:.1e}" if value < 1e-3 else f"{value:.4f}"


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: an undefined metric (AUC with one class) is written as null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def _write_json(path: Path, data: object) -> None:
    """Write through a temporary file in the same folder, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2, allow_nan=False)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _report(
    runs: dict[str, RankingMetrics], tests: dict[str, PairedTest]
) -> tuple[str, dict[str, dict[str, float | None]]]:
    """The printed table and the `--json` content: one row / entry per run."""
    first = next(iter(runs.values()))
    ndcg = [f"ndcg@{k}" for k in first.ks]
    header = ["scores", "queries", "pairs", "no rel", *ndcg, "dcg@25 ch", "auc"]
    if tests:
        header += ["p rand", "p t"]
    rows, data = [], {}
    for name, run in runs.items():
        values = run.summary()
        row = [name, str(values["queries"]), str(values["pairs"])]
        row += [str(values["queries_without_relevant"])]
        row += [_number(values[key]) for key in (*ndcg, "dcg@25_challenge", "auc")]
        test = tests.get(name)
        if test is not None:
            row += [_p_value(test.p_randomization), _p_value(test.p_t)]
            values[f"p_randomization_ndcg@{SIGNIFICANCE_K}"] = test.p_randomization
            values[f"p_t_ndcg@{SIGNIFICANCE_K}"] = test.p_t
        elif tests:
            row += ["base", "base"]
        rows.append(row)
        data[name] = _finite_or_none(values)
    return _table(header, rows), data


@click.command("eval")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--scores", "scores_paths", multiple=True, metavar="PATH",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A ranker's scores file (Parquet, or TSV with a header) with columns query_id, img_id, "
    "score, label. Repeat for several files: one table row each.",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write every row's metrics to this file: {name: {metric: value}}.",
)  # fmt: skip
@click.option(
    "--relevant", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
    help="For AUC, a pair is relevant when its label is at least N.",
)  # fmt: skip
@click.option(
    "--resamples", type=click.IntRange(min=1), default=10_000, show_default=True,
    help=f"Sign flips of the paired randomisation test (per-query NDCG@{SIGNIFICANCE_K}, "
    "each row against the first).",
)  # fmt: skip
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the randomisation test."
)
def eval_command(
    runs: tuple[Path, ...],
    scores_paths: tuple[Path, ...],
    json_path: Path | None,
    relevant: int,
    resamples: int,
    seed: int,
) -> None:
    """Evaluate rankings: NDCG@5..25, the challenge DCG@25 and AUC, one row per scores file.

    With several files, each row after the first gets paired randomisation and t-test p-values
    on per-query NDCG@10 against the first.
    """
    if runs:
        _refuse_runs(runs)
    if not scores_paths:
        raise click.UsageError("Nothing to evaluate: give --scores PATH (repeatable).")
    from amc_data.evaluation.metrics import compare_to_baseline
    from amc_data.evaluation.scores import scores_metrics

    results = {str(path): scores_metrics(path, relevant) for path in scores_paths}
    tests = compare_to_baseline(results, k=SIGNIFICANCE_K, resamples=resamples, seed=seed)
    table, data = _report(results, tests)
    click.echo(table)
    if tests:
        click.echo(
            f"\np: two-sided paired tests on per-query NDCG@{SIGNIFICANCE_K} against "
            f"{next(iter(results))} (randomisation: {resamples:,} sign flips, seed {seed}; "
            "t: paired t-test)."
        )
    if any(run.no_relevant for run in results.values()):
        click.echo(
            "no rel: queries with no candidate labelled above 0; they score NDCG 0 and count in "
            "the means."
        )
    if json_path is not None:
        _write_json(json_path, data)


def _refuse_runs(runs: Sequence[Path]) -> None:
    hint = ""
    if any(str(run).endswith(_SCORES_SUFFIXES) for run in runs):
        hint = " To evaluate several scores files, repeat the option: --scores A --scores B."
    raise ConfigError(
        f"Evaluating trained runs ({', '.join(map(str, runs))}) with `amc-data eval RUN --data "
        "DATA` comes with the model half of amc-data; this version evaluates rankers' scores "
        f"files: amc-data eval --scores PATH.{hint}"
    )


COMMANDS: list[click.Command] = [eval_command]
