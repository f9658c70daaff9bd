"""`amc-data eval RUN [RUN ...] --data DATA`: score trained runs on a prepared split and put
them side by side, with a random ranker, significance tests and, on request, pictures.

Per run it writes `metrics.json` (flat keys), `scores.parquet` (`query_id`, `img_id`,
`score`, `label`), `per_query.parquet` (each query's metrics), `words.parquet` (the mean
NDCG@10 of the queries holding each query word, worst first) and, given a concepts file,
`concepts.parquet` (`evaluation.concepts`: per concept, NDCG@10, its share of the ceiling and
where the attention goes; the gate's visual weight by what the query names goes into
metrics.json) into `OUT/<run name>/` (default:
`RUN/eval-<split>/` for a run folder, and `<stem>-eval-<split>/` beside a checkpoint file:
`RUN/last.pt` -> `RUN/last-eval-<split>/`); with `trec`, TREC run and qrels files
(`evaluation.trec`). No output may be inside a prepared folder (preparing it again would delete
it). The significance of each run against the best one (by mean NDCG@10) comes from paired
tests on per-query NDCG@10.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..evaluation.concepts import (
    ConceptTruth,
    concept_report,
    gate_by_named,
    read_concepts,
    relevant_pairs,
)
from ..evaluation.metrics import FOLDS, POOL, RankingMetrics, ranking_metrics
from ..evaluation.outputs import check_outputs
from ..evaluation.per_query import per_query_metrics, word_report
from ..evaluation.protocol import SIGNIFICANCE_K
from ..evaluation.significance import paired_by_query
from ..evaluation.streaming import CaptionRanks, PoolReduction
from ..evaluation.trec import run_rows, write_qrels, write_run
from ..files import atomic_write, atomic_write_json
from ..prepare.format import PreparedDataset, load_prepared
from ..prepare.queries import query_analyzer
from .checkpoint import LoadedModel, load_model
from .distributed import resolve_device
from .eval_config import EvalConfig
from .kernel import PoolScorer, RandomScorer, reduce_pool, row_order
from .model import _PART_FLAGS, ModelConfig
from .registry import model_kind
from .scoring import candidates_are_split, score_split, split_query_ids

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RANDOM = "random"
KEEP = 100  # each query's best images kept of a whole-split ranking (NDCG@k exact for k <= 100)


@dataclass
class RunEvaluation:
    """One run's scores and metrics on the split."""

    name: str
    kind: str  # the model kind, or "random"
    metrics: dict[str, float]
    ranking: RankingMetrics
    scores: pd.DataFrame
    roc_sample: tuple[np.ndarray, np.ndarray]  # scores and relevance drawn in the ROC picture
    per_query: pd.DataFrame  # `per_query.metrics`, plus the caption ranks of a COCO split
    label: str = ""  # the kind and its ablations, e.g. "amc (no-inter)"; default the kind
    trec_rows: pd.DataFrame | None = None  # the TREC run file's rows, when asked for
    words: pd.DataFrame | None = None  # `per_query.word_report`
    concepts: pd.DataFrame | None = None  # `evaluation.concepts.concept_report`, when asked for
    out_dir: Path | None = None
    p_randomization: float | None = None  # against the best run
    p_t: float | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.kind


@dataclass
class Evaluation:
    """Every run of one `eval`, best first by NDCG@10 (random last)."""

    split: str
    data: Path
    runs: list[RunEvaluation]
    best: str
    plots: list[Path] = field(default_factory=list)
    gain: str = "exp"  # of every NDCG
    # The caption-ranking protocols of a COCO split, by stable key suffix ("pool", "folds"):
    # what each is, e.g. {"pool": "5K: the whole pool of 5,000 images", ...}.
    protocols: dict[str, str] = field(default_factory=dict)

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


def run_label(config: ModelConfig) -> str:
    """The model kind and the ablations switched off, each named as its training flag:
    `amc`, `amc (no-inter)`, `amc (no-intra, no-inter)`."""
    off = [f"no-{name}" for name in _PART_FLAGS if not getattr(config, name, True)]
    return f"{config.kind} ({', '.join(off)})" if off else config.kind


def check_run_outputs(config: EvalConfig, defaults: Sequence[Path] = ()) -> None:
    """Refuse an output (`out`, `plot_dir`, `json_path`, `trec`, or a run's default result
    folder) that is, or is inside, a prepared folder."""
    named = [(name, getattr(config, name)) for name in ("out", "plot_dir", "json_path", "trec")]
    check_outputs([*named, *(("runs", path) for path in defaults)])


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
    truth = read_concepts(config.concepts) if config.concepts is not None else None
    paths = [Path(run) for run in runs]
    defaults = [default_out_dir(p, config.split) for p in paths] if config.out is None else []
    check_run_outputs(config, defaults)
    device = resolve_device(config.device)
    names = run_names(paths)
    pool = _Pool.of(prepared, config.split) if candidates_are_split(prepared) else None
    results, loaded_models = _score_runs(paths, names, prepared, pool, device, config)
    if config.random_baseline:
        random_name = RANDOM if RANDOM not in names else f"{RANDOM}-ranker"
        results.append(_random_ranker(random_name, results[0], pool, config))
    best = max((r for r in results if r.kind != RANDOM), key=lambda r: r.metrics["ndcg@10"])
    _significance(best, results, config.resamples, config.seed)
    results.sort(key=lambda r: (r.kind == RANDOM, -r.metrics["ndcg@10"]))
    for result in results:
        result.words = word_report(
            result.per_query, _query_words(prepared), config.word_min_queries
        )
    if truth is not None:
        _report_concepts(results, loaded_models, prepared, truth, device, config)
    evaluation = Evaluation(
        split=config.split,
        data=prepared.root,
        runs=results,
        best=best.name,
        gain=config.gain,
        protocols=_protocols(pool) if pool is not None else {},
    )
    _write(evaluation, dict(zip(names, paths, strict=True)), config)
    if config.trec is not None:
        _write_trec(evaluation, prepared, pool, config.trec)
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
                workers=config.threads or None,
            )
            result = pool.measure(name, kind, scorer, config)
        else:
            frame = score_split(
                loaded.model,
                prepared,
                config.split,
                device=device,
                max_keywords=max_keywords,
                progress=config.progress,
                workers=config.threads or None,
            )
            result = _measure(name, kind, frame, config)
        result.label = run_label(loaded.model_config)
        results.append(result)
    return results, loaded_models


def _report_concepts(
    results: list[RunEvaluation],
    loaded_models: dict[str, LoadedModel],
    prepared: PreparedDataset,
    truth: ConceptTruth,
    device: torch.device,
    config: EvalConfig,
) -> None:
    """Each run's per-concept report (`evaluation.concepts`), the attention measured on the
    split's (query, relevant image) pairs; the gate's visual weight by what the query names
    goes into its metrics. The random row gets the report without attention."""
    from .concepts import attention_on_concepts

    query_ids = split_query_ids(prepared, config.split)
    pairs = relevant_pairs(truth, prepared.judgments, query_ids, config.relevant)
    if pairs.empty:
        log.warning(
            "eval: the concepts file %s names no concept of a relevant %s image: the concept "
            "report has no attention figures",
            truth.path,
            config.split,
        )
    for result in results:
        loaded = loaded_models.get(result.name) if result.kind != RANDOM else None
        measured = None
        if loaded is not None:
            measured = attention_on_concepts(
                loaded.model,
                prepared,
                pairs,
                device,
                int(loaded.train_config.get("max_keywords", 64)),
            )
            result.metrics |= gate_by_named(truth, measured)
        result.concepts = concept_report(result.per_query, truth, measured)


def _random_ranker(
    name: str, first: RunEvaluation, pool: _Pool | None, config: EvalConfig
) -> RunEvaluation:
    """A ranker of uniform random scores (seeded) over the candidates the runs ranked."""
    rng = np.random.default_rng(config.seed)
    config = replace(config, trec=None, progress=False)  # no TREC file of the random row
    if pool is not None:
        scorer = RandomScorer(pool.queries, len(pool.images), config.seed)
        return pool.measure(name, RANDOM, scorer, config)
    reference = first.scores
    frame = reference.assign(score=rng.random(len(reference)).astype(np.float32))
    return _measure(name, RANDOM, frame, config)


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
        _write_run(result, evaluation.gain)
    if config.json_path is not None:
        table = evaluation.table()
        atomic_write_json(
            config.json_path,
            {k: {**_json_safe(v), "ndcg_gain": evaluation.gain} for k, v in table.items()},
        )


def _write_trec(
    evaluation: Evaluation, prepared: PreparedDataset, pool: _Pool | None, folder: Path
) -> None:
    """`qrels.txt` (every judgment of the split's queries, in the pool when there is one) and
    one `<run>.run` per trained run."""
    if pool is not None:
        judged = pool.judged
    else:
        queries = split_query_ids(prepared, evaluation.split)
        judged = prepared.judgments[prepared.judgments["query_id"].isin(queries)]
    write_qrels(folder / "qrels.txt", judged)
    for result in evaluation.runs:
        if result.trec_rows is not None:
            write_run(folder / f"{result.name}.run", result.trec_rows, result.name)


def _protocols(pool: _Pool) -> dict[str, str]:
    """What each caption-ranking protocol of the split is: the whole pool ("5K" when it holds
    5,000 images) and, with several folds, the mean over folds of the prepared folder's fold
    size ("1K" for folds of 1,000)."""
    images = len(pool.images)
    out = {POOL: f"{'5K: ' if images == 5000 else ''}the whole pool of {images:,} images"}
    if pool.folds is not None:
        folds = len(np.unique(pool.folds))
        name = "1K: " if pool.fold_size == 1000 else ""
        out[FOLDS] = f"{name}the mean over {folds} folds of {pool.fold_size:,} images"
    return out


def _query_words(prepared: PreparedDataset) -> Callable[[np.ndarray], list[list[str]]]:
    """Each query's words, as the query analyzer cuts them."""
    analyzer = query_analyzer()
    text = pd.Series(prepared.queries["query"].to_numpy(), index=prepared.queries["query_id"])

    def words(query_ids: np.ndarray) -> list[list[str]]:
        return [list(analyzer(t)) for t in text.reindex(query_ids).fillna("").tolist()]

    return words


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


def _measure(name: str, kind: str, frame: pd.DataFrame, config: EvalConfig) -> RunEvaluation:
    """Metrics of a run whose candidates are each query's judged images."""
    ranking = ranking_metrics(
        frame["query_id"].to_numpy(),
        frame["score"].to_numpy(),
        frame["label"].to_numpy(),
        relevant=config.relevant,
        gain=config.gain,
    )
    roc = (frame["score"].to_numpy(), frame["label"].to_numpy() >= config.relevant)
    trec = None if config.trec is None else run_rows(frame, frame, config.trec_depth)
    return RunEvaluation(
        name=name,
        kind=kind,
        metrics=ranking.summary(),
        ranking=ranking,
        scores=frame,
        roc_sample=roc,
        per_query=per_query_metrics(ranking, frame, config.relevant),
        trec_rows=trec,
    )


@dataclass(frozen=True)
class _Pool:
    """A split whose every query is ranked over every image of the split (COCO): the queries,
    the images, the judged cells and the test folds, in the order of the score matrix."""

    queries: np.ndarray  # (Q,) ascending
    images: np.ndarray  # (N,) ascending
    judged: pd.DataFrame
    folds: np.ndarray | None  # (N,) fold of each image, when the split has several
    fold_size: int = 0  # the folds' nominal size (prepared.json's, else the largest fold)

    @property
    def protocol_sizes(self) -> dict[str, float]:
        """The sizes of the caption-ranking protocols, as metrics: `caption_pool_images`,
        and with folds `caption_folds` and `caption_fold_size`."""
        out = {"caption_pool_images": float(len(self.images))}
        if self.folds is not None:
            out["caption_folds"] = float(len(np.unique(self.folds)))
            out["caption_fold_size"] = float(self.fold_size)
        return out

    @classmethod
    def of(cls, prepared: PreparedDataset, split: str) -> _Pool:
        queries = split_query_ids(prepared, split)
        images = prepared.images[prepared.images["split"] == split].sort_values("img_id")
        judged = prepared.judgments[prepared.judgments["query_id"].isin(queries)]
        judged = judged[judged["img_id"].isin(images["img_id"])]
        folds = images["fold"].to_numpy() if "fold" in images else None
        if folds is not None and not ((folds >= 0).all() and len(np.unique(folds)) > 1):
            folds = None
        fold_size = 0
        if folds is not None:
            recorded = prepared.info.get(str(prepared.info.get("source")), {})
            recorded = recorded.get("fold_size") if isinstance(recorded, dict) else None
            largest = int(np.unique(folds, return_counts=True)[1].max())
            fold_size = recorded if isinstance(recorded, int) and recorded > 0 else largest
        return cls(queries, images["img_id"].to_numpy(np.int64), judged, folds, fold_size)

    def measure(
        self, name: str, kind: str, scorer: PoolScorer | RandomScorer, config: EvalConfig
    ) -> RunEvaluation:
        """NDCG and DCG from each query's best 100 images and its judged ones (exact for
        k <= 100); AUC over every cell of the matrix; caption ranking both ways: all folded in
        tile by tile (`evaluation.streaming`), never holding the whole matrix. With `trec`,
        each query's best `trec_depth` images are kept for the run file."""
        keep = KEEP if config.trec is None else max(KEEP, config.trec_depth)
        reduction = PoolReduction(
            scorer.grid,
            scorer.query_ids,
            self.images,
            self.judged,
            keep=keep,
            relevant=config.relevant,
            folds=self.folds,
        )
        reduce_pool(scorer, reduction, config.progress)
        frame = reduction.frame(limit=KEEP)
        ranking = ranking_metrics(
            frame["query_id"].to_numpy(),
            frame["score"].to_numpy(),
            frame["label"].to_numpy(),
            relevant=config.relevant,
            gain=config.gain,
        )
        metrics = ranking.summary()
        assert reduction.auc is not None and reduction.captions is not None  # metrics=True
        metrics["auc"] = reduction.auc.auc()
        metrics |= reduction.captions.result().summary() | self.protocol_sizes
        per_query = per_query_metrics(ranking, frame, config.relevant)
        trec = None
        if config.trec is not None:
            trec = run_rows(reduction.frame(), self.judged, config.trec_depth)
        return RunEvaluation(
            name=name,
            kind=kind,
            metrics=metrics,
            ranking=ranking,
            scores=frame,
            roc_sample=reduction.roc_sample(),
            per_query=_with_caption_ranks(per_query, reduction.queries, reduction.captions),
            trec_rows=trec,
        )


def _with_caption_ranks(
    per_query: pd.DataFrame, queries: np.ndarray, captions: CaptionRanks
) -> pd.DataFrame:
    """`per_query` with each caption's rank of its image among all images (`rank`) and among
    its fold's (`rank_in_fold`, with folds): exact at any depth, ties against the model."""
    is_caption = captions.caption_image >= 0
    ranks = pd.DataFrame(
        {
            "query_id": queries[is_caption],
            "rank": captions.retrieval[is_caption],
            "rank_in_fold": captions.retrieval_in_fold[is_caption],
        }
    ).set_index("query_id")
    columns = ["rank", "rank_in_fold"] if len(np.unique(captions.image_folds)) > 1 else ["rank"]
    found = ranks.reindex(per_query["query_id"])[columns].fillna(0).astype(np.int64)
    return per_query.assign(**{c: found[c].to_numpy() for c in columns})


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


def _write_run(result: RunEvaluation, gain: str) -> None:
    assert result.out_dir is not None  # set for every run before writing
    result.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        result.out_dir / "metrics.json", {**_json_safe(result.metrics), "ndcg_gain": gain}
    )
    frames = {
        "scores": result.scores,
        "per_query": result.per_query,
        "words": result.words,
        "concepts": result.concepts,
    }
    for stem, frame in frames.items():
        if frame is not None:
            with atomic_write(result.out_dir / f"{stem}.parquet") as handle:
                frame.to_parquet(handle, index=False)
        elif stem == "concepts":
            # An earlier eval's report would sit beside metrics it no longer describes.
            (result.out_dir / "concepts.parquet").unlink(missing_ok=True)
