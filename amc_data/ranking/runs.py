"""`amc-data eval RUN [RUN ...] --data DATA`: score trained runs on a prepared split and put
them side by side, with a random ranker, significance tests and, on request, pictures.

Per run it writes `metrics.json` (flat keys) and `scores.parquet` (`query_id`, `img_id`,
`score`, `label`) into `OUT/<run name>/` (default: `RUN/eval-<split>/` for a run folder, and
`<stem>-eval-<split>/` beside a checkpoint file: `RUN/last.pt` -> `RUN/last-eval-<split>/`).
The significance of each run against the best one (by mean NDCG@10) comes from paired tests on
per-query NDCG@10.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..evaluation.metrics import RankingMetrics, ranking_metrics
from ..evaluation.protocol import SIGNIFICANCE_K
from ..evaluation.significance import paired_by_query
from ..evaluation.streaming import PoolReduction
from ..files import atomic_write, atomic_write_json
from ..prepare.format import PreparedDataset, load_prepared
from .checkpoint import LoadedModel, load_model
from .distributed import resolve_device
from .eval_config import EvalConfig
from .kernel import PoolScorer, RandomScorer, reduce_pool, row_order
from .registry import model_kind
from .scoring import candidates_are_split, score_split, split_query_ids

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RANDOM = "random"


@dataclass
class RunEvaluation:
    """One run's scores and metrics on the split."""

    name: str
    kind: str  # the model kind, or "random"
    metrics: dict[str, float]
    ranking: RankingMetrics
    scores: pd.DataFrame
    roc_sample: tuple[np.ndarray, np.ndarray]  # scores and relevance drawn in the ROC picture
    out_dir: Path | None = None
    p_randomization: float | None = None  # against the best run
    p_t: float | None = None


@dataclass
class Evaluation:
    """Every run of one `eval`, best first by NDCG@10 (random last)."""

    split: str
    data: Path
    runs: list[RunEvaluation]
    best: str
    plots: list[Path] = field(default_factory=list)

    def table(self) -> dict[str, dict[str, float]]:
        """`{run name: {metric: value}}`, as `--json` writes it."""
        table: dict[str, dict[str, float]] = {}
        for run in self.runs:
            row = dict(run.metrics)
            if run.p_randomization is not None:
                row["p_randomization_vs_best"] = run.p_randomization
                row["p_t_vs_best"] = float(run.p_t) if run.p_t is not None else float("nan")
            table[run.name] = row
        return table


def default_out_dir(run: Path, split: str) -> Path:
    """Where a run's results go without --out: inside a run folder, beside a checkpoint file."""
    if run.is_file():
        return run.parent / f"{run.stem}-eval-{split}"
    return run / f"eval-{split}"


def run_names(runs: Sequence[Path]) -> list[str]:
    """A short name per run, unique among `runs`: the fewest trailing parts of its path that
    tell it from every other (its folder name; `exp-a/runs/amc` beside `exp-b/runs/amc`), a
    checkpoint file with its folder (`amc/last.pt`); the same path given twice gets `#2`, ...
    Each run's results are written under its own name, so no two runs share one."""
    parts = [Path(run).resolve().parts for run in runs]
    fewest = [2 if Path(run).is_file() else 1 for run in runs]
    while True:
        names = ["/".join(p[-k:]) for p, k in zip(parts, fewest, strict=True)]
        clashes = [
            i
            for i, name in enumerate(names)
            if any(n == name and parts[j] != parts[i] for j, n in enumerate(names))
            and fewest[i] < len(parts[i])
        ]
        if not clashes:
            break
        for i in clashes:
            fewest[i] += 1
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def evaluate(
    runs: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str] | PreparedDataset,
    config: EvalConfig | None = None,
    **options: Any,
) -> Evaluation:
    """Score every run on the config's split of `data` and compare them (see the module
    docstring). `options` change fields of `config` (default `EvalConfig()`) by name, e.g.
    `evaluate(runs, data, split="val", plot_dir="plots")`."""
    config = replace(config or EvalConfig(), **options)
    if not runs:
        raise ConfigError("eval needs at least one run folder (or --scores files).")
    prepared = data if isinstance(data, PreparedDataset) else load_prepared(data)
    if prepared.split_queries(config.split).empty:
        raise InputError(
            f"{prepared.root} has no {config.split} queries to evaluate; choose another --split."
        )
    device = resolve_device(config.device)
    paths = [Path(run) for run in runs]
    names = run_names(paths)
    pool = _Pool.of(prepared, config.split) if candidates_are_split(prepared) else None
    results, loaded_models = _score_runs(paths, names, prepared, pool, device, config)
    if config.random_baseline:
        random_name = RANDOM if RANDOM not in names else f"{RANDOM}-ranker"
        results.append(_random_ranker(random_name, results[0], pool, config))
    best = max((r for r in results if r.kind != RANDOM), key=lambda r: r.metrics["ndcg@10"])
    _significance(best, results, config.resamples, config.seed)
    results.sort(key=lambda r: (r.kind == RANDOM, -r.metrics["ndcg@10"]))
    evaluation = Evaluation(split=config.split, data=prepared.root, runs=results, best=best.name)
    _write(evaluation, dict(zip(names, paths, strict=True)), config)
    if config.plot_dir is not None:
        evaluation.plots.extend(_draw(evaluation, loaded_models, prepared, device, config))
    return evaluation


def _score_runs(
    paths: list[Path],
    names: list[str],
    prepared: PreparedDataset,
    pool: _Pool | None,
    device: torch.device,
    config: EvalConfig,
) -> tuple[list[RunEvaluation], dict[str, LoadedModel]]:
    """Each run's scores and metrics on the split, in the order given, and its loaded model."""
    results: list[RunEvaluation] = []
    loaded_models = {}
    for path, name in zip(paths, names, strict=True):
        loaded = load_model(path, prepared, device)
        loaded_models[name] = loaded
        kind = loaded.model_config.kind
        max_keywords = int(loaded.train_config.get("max_keywords", 64))
        if pool is not None:
            scorer = PoolScorer(
                loaded.model,
                prepared,
                row_order(pool.queries, pool.images, pool.judged),
                pool.images,
                device=device,
                max_keywords=max_keywords,
            )
            results.append(pool.measure(name, kind, scorer, config.relevant, config.progress))
        else:
            frame = score_split(
                loaded.model,
                prepared,
                config.split,
                device=device,
                max_keywords=max_keywords,
                progress=config.progress,
            )
            results.append(_measure(name, kind, frame, config.relevant))
    return results, loaded_models


def _random_ranker(
    name: str, first: RunEvaluation, pool: _Pool | None, config: EvalConfig
) -> RunEvaluation:
    """A ranker of uniform random scores (seeded) over the candidates the runs ranked."""
    rng = np.random.default_rng(config.seed)
    if pool is not None:
        scorer = RandomScorer(pool.queries, len(pool.images), config.seed)
        return pool.measure(name, RANDOM, scorer, config.relevant)
    reference = first.scores
    frame = reference.assign(score=rng.random(len(reference)).astype(np.float32))
    return _measure(name, RANDOM, frame, config.relevant)


def _write(evaluation: Evaluation, paths: dict[str, Path], config: EvalConfig) -> None:
    """Each run's metrics.json and scores.parquet (not the random ranker's) and, when asked
    for, every row's metrics in one JSON file."""
    for result in evaluation.runs:
        path = paths.get(result.name) if result.kind != RANDOM else None
        if path is None:
            continue
        if config.out is not None:
            result.out_dir = config.out / result.name
        else:
            result.out_dir = default_out_dir(path, config.split)
        _write_run(result)
    if config.json_path is not None:
        table = evaluation.table()
        atomic_write_json(config.json_path, {k: _json_safe(v) for k, v in table.items()})


def _draw(
    evaluation: Evaluation,
    loaded_models: dict[str, LoadedModel],
    prepared: PreparedDataset,
    device: torch.device,
    config: EvalConfig,
) -> list[Path]:
    """The ROC curves of every row and, for the first AMC run, its attention on a few queries."""
    from .plots import plot_attention, plot_roc

    assert config.plot_dir is not None  # drawn only when asked for
    plot_dir = config.plot_dir
    plot_dir.mkdir(parents=True, exist_ok=True)
    results = evaluation.runs
    drawn = [plot_roc(results, plot_dir / "roc.png", config.relevant)]
    attentive = [
        (n, m) for n, m in loaded_models.items() if model_kind(m.model_config.kind).explains
    ]
    if attentive and config.examples > 0:
        name, loaded = attentive[0]
        scores = next(r for r in results if r.name == name).scores
        drawn.extend(
            plot_attention(
                loaded.model, prepared, scores, config.split, plot_dir, config.examples, device
            )
        )
    return drawn


def _measure(name: str, kind: str, frame: pd.DataFrame, relevant: int) -> RunEvaluation:
    """Metrics of a run whose candidates are each query's judged images."""
    ranking = ranking_metrics(
        frame["query_id"].to_numpy(),
        frame["score"].to_numpy(),
        frame["label"].to_numpy(),
        relevant=relevant,
    )
    roc = (frame["score"].to_numpy(), frame["label"].to_numpy() >= relevant)
    return RunEvaluation(
        name=name,
        kind=kind,
        metrics=ranking.summary(),
        ranking=ranking,
        scores=frame,
        roc_sample=roc,
    )


@dataclass(frozen=True)
class _Pool:
    """A split whose every query is ranked over every image of the split (COCO): the queries,
    the images, the judged cells and the test folds, in the order of the score matrix."""

    queries: np.ndarray  # (Q,) ascending
    images: np.ndarray  # (N,) ascending
    judged: pd.DataFrame
    folds: np.ndarray | None  # (N,) fold of each image, when the split has several

    @classmethod
    def of(cls, prepared: PreparedDataset, split: str) -> _Pool:
        queries = split_query_ids(prepared, split)
        images = prepared.images[prepared.images["split"] == split].sort_values("img_id")
        judged = prepared.judgments[prepared.judgments["query_id"].isin(queries)]
        judged = judged[judged["img_id"].isin(images["img_id"])]
        folds = images["fold"].to_numpy() if "fold" in images else None
        if folds is not None and not ((folds >= 0).all() and len(np.unique(folds)) > 1):
            folds = None
        return cls(queries, images["img_id"].to_numpy(np.int64), judged, folds)

    def measure(
        self,
        name: str,
        kind: str,
        scorer: PoolScorer | RandomScorer,
        relevant: int,
        progress: bool = False,
    ) -> RunEvaluation:
        """NDCG and DCG from each query's best 100 images and its judged ones (exact for
        k <= 100); AUC over every cell of the matrix; caption ranking both ways: all folded in
        tile by tile (`evaluation.streaming`), never holding the whole matrix."""
        reduction = PoolReduction(
            scorer.grid,
            scorer.query_ids,
            self.images,
            self.judged,
            relevant=relevant,
            folds=self.folds,
        )
        reduce_pool(scorer, reduction, progress)
        frame = reduction.frame()
        ranking = ranking_metrics(
            frame["query_id"].to_numpy(),
            frame["score"].to_numpy(),
            frame["label"].to_numpy(),
            relevant=relevant,
        )
        metrics = ranking.summary()
        assert reduction.auc is not None and reduction.captions is not None  # metrics=True
        metrics["auc"] = reduction.auc.auc()
        metrics |= reduction.captions.result().summary()
        return RunEvaluation(
            name=name,
            kind=kind,
            metrics=metrics,
            ranking=ranking,
            scores=frame,
            roc_sample=reduction.roc_sample(),
        )


def _significance(
    best: RunEvaluation, results: list[RunEvaluation], resamples: int, seed: int
) -> None:
    for result in results:
        if result is best:
            continue
        test = paired_by_query(
            best.ranking.query_ids,
            best.ranking.ndcg_at(SIGNIFICANCE_K),
            result.ranking.query_ids,
            result.ranking.ndcg_at(SIGNIFICANCE_K),
            resamples=resamples,
            seed=seed,
        )
        result.p_randomization, result.p_t = test.p_randomization, test.p_t


def _json_safe(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: an undefined metric (AUC with one class) is written as null."""
    return {
        k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in metrics.items()
    }


def _write_run(result: RunEvaluation) -> None:
    assert result.out_dir is not None  # set for every run before writing
    result.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result.out_dir / "metrics.json", _json_safe(result.metrics))
    with atomic_write(result.out_dir / "scores.parquet") as handle:
        result.scores.to_parquet(handle, index=False)
