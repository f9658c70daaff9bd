"""`amc-data eval`: metrics of scores files (and, with the model half, of trained runs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from amc_data._optional import require
from amc_data.evaluation.protocol import MAX_ROWS, SIGNIFICANCE_K
from amc_data.files import atomic_write_json
from amc_data.progress import progress_enabled
from amc_data.ranking.eval_config import EvalConfig

from .options import config_option, quiet_option
from .tables import render_table

if TYPE_CHECKING:
    from amc_data.evaluation.metrics import RankingMetrics
    from amc_data.evaluation.significance import PairedTest
    from amc_data.ranking.runs import Evaluation, RunEvaluation


def _number(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _p_value(value: float) -> str:
    return f"{value:.1e}" if value < 1e-3 else f"{value:.4f}"


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN: an undefined metric (AUC with one class) is written as null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


GAIN_NAMES = {"exp": "exponential gain 2^label - 1", "linear": "linear gain (the label)"}


def gain_title(gain: str) -> str:
    """How a table names the gain of its NDCG columns."""
    return f"NDCG with the {GAIN_NAMES[gain]}"


def _report(
    runs: dict[str, RankingMetrics], tests: dict[str, PairedTest], fmt: str = "text"
) -> tuple[str, dict[str, dict[str, float | str | None]]]:
    """The printed table and the `--json` content: one row / entry per run."""
    first = next(iter(runs.values()))
    ndcg = [f"ndcg@{k}" for k in first.ks]
    header = ["scores", "queries", "pairs", "no rel", *ndcg, "dcg@25 ch", "auc"]
    if tests:
        header += ["p rand", "p t"]
    rows, data = [], {}
    gain = first.gain
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
        data[name] = {**_finite_or_none(values), "ndcg_gain": gain}
    return render_table(header, rows, fmt, note=gain_title(gain)), data


@click.command("eval")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With RUN folders: the prepared folder to score them on (from synth or prepare).",
)
@config_option(EvalConfig, "split")
@config_option(EvalConfig, "out", type=click.Path(file_okay=False, path_type=Path))
@config_option(EvalConfig, "plot_dir", type=click.Path(file_okay=False, path_type=Path))
@config_option(EvalConfig, "examples")
@config_option(EvalConfig, "device")
@config_option(EvalConfig, "threads", metavar="N")
@config_option(EvalConfig, "random_baseline")
@click.option(
    "--scores",
    "scores_paths",
    multiple=True,
    metavar="PATH",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A ranker's scores file (Parquet, or TSV with a header) with columns query_id, img_id, "
    "score, label. Repeat for several files: one table row each.",
)
@config_option(EvalConfig, "json_path", type=click.Path(dir_okay=False, path_type=Path))
@config_option(EvalConfig, "relevant", metavar="N")
@config_option(EvalConfig, "resamples")
@config_option(EvalConfig, "seed", type=int)  # any whole number: no range to show
@config_option(EvalConfig, "max_rows", show_default=f"{MAX_ROWS:,}")
@config_option(EvalConfig, "gain")
@config_option(EvalConfig, "table_format")
@config_option(EvalConfig, "trec", type=click.Path(file_okay=False, path_type=Path))
@config_option(EvalConfig, "trec_depth")
@config_option(EvalConfig, "words", metavar="N")
@config_option(EvalConfig, "word_min_queries", metavar="N")
@config_option(EvalConfig, "concepts", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@quiet_option
def eval_command(
    runs: tuple[Path, ...],
    data: Path | None,
    scores_paths: tuple[Path, ...],
    quiet: bool,
    **options: Any,
) -> None:
    """Evaluate trained RUN folders on a prepared folder (--data), or rankers' --scores files:
    NDCG@5..25, the challenge DCG@25 and AUC, one row per run or file; on a COCO folder, the
    caption-ranking table (Recall@1/5/10 both ways and rsum) once per protocol.

    Runs are compared with the best of them, files with the first: paired randomisation and
    t-test p-values on per-query NDCG@10.
    """
    if runs and scores_paths:
        raise click.UsageError("Give RUN folders or --scores files, not both.")
    config = EvalConfig(**options, progress=progress_enabled(quiet))
    if runs:
        _check_run_folders(runs)
        _evaluate_runs(runs, data, config)
    elif scores_paths:
        _evaluate_scores(scores_paths, config)
    else:
        raise click.UsageError(
            "Nothing to evaluate: give RUN folders with --data, or --scores PATH."
        )


def _evaluate_scores(scores_paths: Sequence[Path], config: EvalConfig) -> None:
    """One row per scores file, each compared with the first."""
    from amc_data.evaluation.outputs import check_outputs
    from amc_data.evaluation.scores import scores_metrics
    from amc_data.evaluation.significance import compare_to_baseline

    check_outputs([("json_path", config.json_path)])
    results = {
        str(path): scores_metrics(path, config.relevant, max_rows=config.max_rows, gain=config.gain)
        for path in scores_paths
    }
    tests = compare_to_baseline(
        results, k=SIGNIFICANCE_K, resamples=config.resamples, seed=config.seed
    )
    table, rows = _report(results, tests, config.table_format)
    click.echo(table)
    if tests:
        click.echo(
            f"\np: two-sided paired tests on per-query NDCG@{SIGNIFICANCE_K} against "
            f"{next(iter(results))} (randomisation: {config.resamples:,} sign flips, seed "
            f"{config.seed}; t: paired t-test)."
        )
    if any(run.no_relevant for run in results.values()):
        click.echo(
            "no rel: queries with no candidate labelled above 0; they score NDCG 0 and count in "
            "the means."
        )
    if config.json_path is not None:
        atomic_write_json(config.json_path, rows)


def _check_run_folders(runs: Sequence[Path]) -> None:
    missing = [str(run) for run in runs if not run.exists()]
    if missing:
        raise click.UsageError(f"{', '.join(missing)}: no such run folder or checkpoint.")
    files = [str(run) for run in runs if run.is_file() and run.suffix != ".pt"]
    if files:
        hint = " ".join(f"--scores {name}" for name in files)
        raise click.UsageError(
            f"{', '.join(files)}: not a run folder (one written by `amc-data train --out`) or a "
            f"checkpoint (.pt). To "
            f"evaluate scores files, name each with --scores: amc-data eval {hint}"
        )


def _evaluate_runs(runs: Sequence[Path], data: Path | None, config: EvalConfig) -> None:
    if data is None:
        raise click.UsageError("Evaluating RUN folders needs --data: the prepared folder.")
    require("torch")
    if config.plot_dir is not None:
        require("matplotlib", "eval's pictures")
    from amc_data.ranking.runs import evaluate

    evaluation = evaluate(runs, data, config)
    fmt = config.table_format
    click.echo(comparison_table(evaluation, fmt))
    for table in caption_tables(evaluation, fmt):
        click.echo(f"\n{table}")
    note = (
        f"{config.split} queries of {evaluation.data}. p: two-sided paired tests on per-query "
        f"NDCG@{SIGNIFICANCE_K} against the best run, {evaluation.best} (randomisation: "
        f"{config.resamples:,} sign flips, seed {config.seed}; t: paired t-test)."
    )
    if fmt == "text":
        click.echo(f"\n{note}")
    if config.words:
        for run in evaluation.runs:
            if run.words is not None and run.kind != "random":
                click.echo(f"\n{word_table(run, config.words, fmt)}")
    if config.concepts is not None:
        for run in evaluation.runs:
            if run.concepts is not None and run.kind != "random":
                click.echo(f"\n{concept_table(run, WEAKEST_CONCEPTS, fmt)}")
                gate = gate_line(run)
                if gate:
                    click.echo(gate)
    if config.trec is not None:
        click.echo(f"TREC files: {config.trec}/qrels.txt and one <run>.run per run.")
    if config.plot_dir is not None:
        click.echo(f"Pictures: {', '.join(str(p) for p in evaluation.plots)}")


def comparison_table(evaluation: Evaluation, fmt: str = "text") -> str:
    """One row per run, best first, random last, with the paired tests against the best; the
    model column names the kind and its ablations (`amc (no-inter)`)."""
    columns = [c for c in TABLE_METRICS if all(c in run.metrics for run in evaluation.runs)]
    rows = []
    for run in evaluation.runs:
        best = run.name == evaluation.best
        tests = ["best", ""] if best else [_maybe_p(run.p_randomization), _maybe_p(run.p_t)]
        rows.append([run.name, run.label, *(_number(run.metrics[c]) for c in columns), *tests])
    header = ["run", "model", *columns, "p rand", "p t"]
    return render_table(header, rows, fmt, left=2, note=gain_title(evaluation.gain))


# The caption-ranking table's columns, as caption-ranking papers print them: image -> text
# (annotation), then text -> image (retrieval), then rsum.
CAPTION_COLUMNS = (
    ("i2t R@1", "i2t_r@1"),
    ("i2t R@5", "i2t_r@5"),
    ("i2t R@10", "i2t_r@10"),
    ("t2i R@1", "t2i_r@1"),
    ("t2i R@5", "t2i_r@5"),
    ("t2i R@10", "t2i_r@10"),
    ("rsum", "rsum"),
)


def caption_tables(evaluation: Evaluation, fmt: str = "text") -> list[str]:
    """On a COCO split, one caption-ranking table per protocol (the mean over folds first, as
    papers report 1K before 5K), its header naming the protocol; none otherwise."""
    tables = []
    for protocol in ("folds", "pool"):
        described = evaluation.protocols.get(protocol)
        keys = [f"{key}_{protocol}" for _, key in CAPTION_COLUMNS]
        if described is None or not all(k in r.metrics for r in evaluation.runs for k in keys):
            continue
        rows = [
            [run.name, run.label, *(f"{run.metrics[k]:.1f}" for k in keys)]
            for run in evaluation.runs
        ]
        header = ["run", "model", *(name for name, _ in CAPTION_COLUMNS)]
        title = f"Caption ranking, {described} (Recall@K in percent; keys *_{protocol})"
        tables.append(render_table(header, rows, fmt, left=2, title=title))
    return tables


def word_table(run: RunEvaluation, top: int, fmt: str = "text") -> str:
    """The `top` query words of `run` with the lowest mean NDCG@10."""
    assert run.words is not None  # the caller checks
    rows = [
        [str(w), str(int(n)), _number(float(v))]
        for w, n, v in run.words.head(top).itertuples(index=False)
    ]
    title = f"{run.name}: the query words of lowest mean NDCG@10 ({len(run.words):,} reported)"
    return render_table(["word", "queries", "ndcg@10"], rows, fmt, title=title)


def concept_table(run: RunEvaluation, top: int, fmt: str = "text") -> str:
    """The `top` concepts of `run` of lowest share of the ceiling (else NDCG@10), with the
    attention on their own regions or keyword against chance."""
    assert run.concepts is not None  # the caller checks
    rows = [
        [
            str(row["concept"]),
            str(row["modality"]),
            str(int(row["queries"])),
            _number(float(row["ndcg@10"])),
            _maybe_number(float(row["share"]), 2),
            _maybe_number(float(row["mass"]), 2),
            _maybe_number(float(row["mass_alone"]), 2),
            _maybe_number(float(row["chance"]), 2),
        ]
        for _, row in run.concepts.head(top).iterrows()
    ]
    title = (
        f"{run.name}: the concepts of lowest share of the ceiling ({len(run.concepts):,} in "
        "concepts.parquet; mass: median attention on the concept's own regions or keyword; "
        "alone: the same where the query names no other concept in that modality)"
    )
    header = ["concept", "modality", "queries", "ndcg@10", "share", "mass", "alone", "chance"]
    return render_table(header, rows, fmt, title=title)


def gate_line(run: RunEvaluation) -> str:
    """The gate's mean visual weight by what the queries name, or "" without a gate."""
    parts = [
        f"{label} {run.metrics[f'gate_visual_weight_{group}']:.2f} "
        f"({int(run.metrics[f'gate_queries_{group}']):,})"
        for group, label in (
            ("visual_only", "visual concepts only"),
            ("textual_only", "textual only"),
            ("both", "both"),
        )
        if f"gate_visual_weight_{group}" in run.metrics
    ]
    if not parts:
        return ""
    return f"{run.name}: visual modality weight (queries) by what the query names: " + "; ".join(
        parts
    )


def _maybe_number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _maybe_p(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else _p_value(value)


WEAKEST_CONCEPTS = 10  # concepts printed per run; concepts.parquet holds them all
TABLE_METRICS = (
    "ndcg@5",
    "ndcg@10",
    "ndcg@25",
    "dcg@25_challenge",
    "auc",
)

COMMANDS: list[click.Command] = [eval_command]
