"""The evaluation metrics, as pure numpy functions vectorised over queries.

- Clickture protocol: gain `2**label - 1` (`gain="exp"`, the paper's and MSR-Bing's) or
  `label` (`gain="linear"`, trec_eval's and torchmetrics'), `DCG@k = sum_{i<=k} gain_i /
  log2(i + 1)`, NDCG@k normalised per query and averaged over queries, and the MSR-Bing
  challenge figure `0.01757 * DCG@25` (always the exponential gain) averaged over queries.
- ROC curve and AUC over all (query, image) pairs.
- COCO caption ranking: Recall@K, median and mean rank for image annotation (image -> caption)
  and image retrieval (caption -> image), on the full test set and averaged over folds.
- Paired significance between two runs on the same queries: randomisation and t tests.

Nothing here prints, and nothing loops over queries in Python: candidates are sorted once by
(query, -score) and every per-query sum is a segment reduction over that order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from amc_data.checks import one_of, real_number
from amc_data.errors import ConfigError, InputError
from amc_data.prepare.format import MAX_EVAL_LABEL

from .protocol import GAINS

log = logging.getLogger(__name__)

NDCG_CUTOFFS: tuple[int, ...] = (5, 10, 15, 20, 25)
CHALLENGE_K = 25
# The MSR-Bing challenge scale: 1 / DCG@25 of 25 Excellent (label 3, gain 7) results, rounded as
# the challenge published it, so a perfect list of 25 Excellent images scores about 1.
CHALLENGE_SCALE = 0.01757
RECALL_CUTOFFS: tuple[int, ...] = (1, 5, 10)
# Intermediate arrays of the chunked computations stay near this many bytes.
CHUNK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------------
# Input checks


def _vector(name: str, values: object) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name} must be one-dimensional; found shape {array.shape}.")
    return array


def _check_scores(name: str, scores: np.ndarray) -> np.ndarray:
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(
        scores.dtype, np.complexfloating
    ):
        raise InputError(f"{name} must be real numbers; found dtype {scores.dtype}.")
    scores = scores.astype(np.float64, copy=False)
    bad = ~np.isfinite(scores)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{name}[{first}] is {scores[first]}; every score must be a finite number "
            f"({int(bad.sum())} are not). Fix the ranker's output or drop those rows."
        )
    return scores


def _check_labels(labels: np.ndarray) -> np.ndarray:
    if np.issubdtype(labels.dtype, np.floating):
        whole = np.isfinite(labels) & (labels == np.floor(labels))
        if not whole.all():
            first = int(np.flatnonzero(~whole)[0])
            raise InputError(
                f"labels[{first}] is {labels[first]}; labels are graded relevance as whole "
                "numbers (Clickture: Excellent 3, Good 2, Bad 0)."
            )
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise InputError(f"labels must be integers; found dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        first = int(np.flatnonzero(labels < 0)[0])
        raise InputError(
            f"labels[{first}] is {labels[first]}; labels must be 0 or more (0 = not relevant)."
        )
    if labels.size and labels.max() > MAX_EVAL_LABEL:
        first = int(np.flatnonzero(labels > MAX_EVAL_LABEL)[0])
        raise InputError(
            f"labels[{first}] is {labels[first]}; the gain 2**label - 1 of a label above "
            f"{MAX_EVAL_LABEL} does not fit a float. Labels are relevance grades (Clickture: 0..3)."
        )
    return labels


def _check_cutoffs(name: str, ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ConfigError(f"{name} must be one or more cut-offs of at least 1; got {ks}.")
    return ks


# --------------------------------------------------------------------------------------------
# Clickture protocol: NDCG@k, DCG@25, AUC


@dataclass(frozen=True)
class RankingMetrics:
    """Per-query and mean ranking metrics of one run over (query, image, score, label) rows.

    Queries are in ascending `query_id` order, so two runs on the same queries line up row for
    row (see `paired_test`). `ndcg[:, j]` and `dcg[:, j]` hold NDCG@`ks[j]` and DCG@`ks[j]`.
    A query with no candidate of label above 0 has no ideal DCG; it scores 0 (as scikit-learn's
    `ndcg_score` does) and is counted in `no_relevant`. `auc` is NaN when every pair is on
    the same side of `relevant`.
    """

    query_ids: np.ndarray  # (Q,) ascending
    candidates: np.ndarray  # (Q,) candidates per query
    ks: tuple[int, ...]
    ndcg: np.ndarray  # (Q, len(ks))
    dcg: np.ndarray  # (Q, len(ks))
    challenge_dcg: np.ndarray  # (Q,) DCG@25, unscaled
    no_relevant: int
    auc: float
    relevant: int
    gain: str = "exp"  # of `ndcg` and `dcg`; `challenge_dcg` is always "exp"

    def ndcg_at(self, k: int) -> np.ndarray:
        """Per-query NDCG@k, shape (Q,)."""
        if k not in self.ks:
            raise ConfigError(f"NDCG@{k} was not computed; the cut-offs are {self.ks}.")
        return self.ndcg[:, self.ks.index(k)]

    @property
    def challenge(self) -> float:
        """The MSR-Bing challenge figure: 0.01757 * DCG@25, averaged over queries."""
        return CHALLENGE_SCALE * float(self.challenge_dcg.mean())

    def summary(self) -> dict[str, float]:
        """Flat means: `ndcg@5` ... `ndcg@25`, `dcg@25_challenge`, `auc`, and the counts."""
        out: dict[str, float] = {
            f"ndcg@{k}": float(m) for k, m in zip(self.ks, self.ndcg.mean(0), strict=True)
        }
        out[f"dcg@{CHALLENGE_K}_challenge"] = self.challenge
        out["auc"] = self.auc
        out["queries"] = len(self.query_ids)
        out["pairs"] = int(self.candidates.sum())
        out["queries_without_relevant"] = self.no_relevant
        return out


def _query_key(query_ids: np.ndarray) -> np.ndarray:
    """An integer sort key with the order of `query_ids`, as narrow as the ids allow.

    NumPy's stable sort is a radix sort for 16-bit keys, about ten times faster than for
    64-bit ones; Clickture-sized query sets (ids in a range under 65,536) get it.
    """
    if np.issubdtype(query_ids.dtype, np.integer) and len(query_ids):
        low, high = int(query_ids.min()), int(query_ids.max())
        if high - low < 2**16:
            return (query_ids.astype(np.int64) - low).astype(np.uint16)
        return query_ids
    return np.unique(query_ids, return_inverse=True)[1]


def _small_codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of non-negative int `labels` (ascending) and each label's index."""
    if labels.max() < 2**16:  # a counting pass instead of a sort
        present = np.flatnonzero(np.bincount(labels))
        lookup = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        lookup[present] = np.arange(len(present))
        return present, lookup[labels]
    return np.unique(labels, return_inverse=True)


def _cumulative_discount(length: int) -> np.ndarray:
    """`out[p]` = sum of the discounts 1 / log2(i + 1) of ranks i = 1..p; out[0] = 0."""
    out = np.zeros(length + 1)
    np.cumsum(1.0 / np.log2(np.arange(length) + 2.0), out=out[1:])
    return out


def _block_dcg(
    block_query: np.ndarray,
    block_first: np.ndarray,
    block_size: np.ndarray,
    block_gain: np.ndarray,
    n_queries: int,
    ks: tuple[int, ...],
    cumulative: np.ndarray,
) -> np.ndarray:
    """DCG@k of ranked lists given as blocks of tied candidates; returns (n_queries, len(ks)).

    A block is a run of candidates of one query that share a score, holding ranks
    `block_first + 1 .. block_first + block_size` and gains summing to `block_gain`. Averaged
    over every order of the tie, each of its ranks carries the block's mean gain, so the block
    adds `mean gain * (sum of the discounts of its ranks that fall within k)`; that sum is a
    difference of the cumulative discount. This is exactly scikit-learn's tie-averaged DCG.
    """
    # Blocks that start past the largest cut-off add nothing at any k.
    within = np.flatnonzero((block_first < max(ks)) & (block_size > 0))
    block_query, block_first = block_query[within], block_first[within]
    block_size, block_gain = block_size[within], block_gain[within]
    mean_gain = block_gain / block_size
    last = block_first + block_size
    out = np.empty((n_queries, len(ks)))
    for j, k in enumerate(ks):  # a loop over the few cut-offs, not over queries
        discount = cumulative[np.minimum(last, k)] - cumulative[np.minimum(block_first, k)]
        out[:, j] = np.bincount(block_query, weights=mean_gain * discount, minlength=n_queries)
    return out


def ranking_metrics(
    query_ids: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    relevant: int = 1,
    ks: Sequence[int] = NDCG_CUTOFFS,
    gain: str = "exp",
) -> RankingMetrics:
    """NDCG@k, DCG@25 and AUC of a run, from one row per (query, candidate image).

    `query_ids` (any sortable ids), `scores` (higher ranks first) and `labels` (graded
    relevance, 0 = not relevant) are parallel 1-D arrays. The gain of NDCG@k and DCG@k is
    `2**label - 1` (`gain="exp"`) or `label` (`"linear"`); the challenge's DCG@25 always uses
    `2**label - 1`. Tied scores
    are averaged over every order of the tie, exactly as `sklearn.metrics.ndcg_score` with its
    default `ignore_ties=False`, so a ranker gains nothing from how a sort breaks ties. A query
    with no label above 0 scores NDCG 0 and is counted. AUC treats `label >= relevant` as
    relevant.
    """
    ks = _check_cutoffs("ks", ks)
    real_number("relevant", relevant, 1, why="Label 0 means not relevant.")
    one_of("gain", gain, GAINS)
    query_ids, scores, labels = _checked_rows(query_ids, scores, labels)
    ranked = _Ranked.of(query_ids, scores, labels)
    all_ks = tuple(sorted({*ks, CHALLENGE_K}))
    cumulative = _cumulative_discount(int(ranked.sizes.max()))
    dcg = _run_dcg(ranked, all_ks, cumulative, gain)
    ideal = _ideal_dcg(ranked, all_ks, cumulative, gain)
    challenge = dcg if gain == "exp" else _run_dcg(ranked, (CHALLENGE_K,), cumulative, "exp")

    has_gain = ideal[:, 0] > 0  # every cut-off sees the top candidate
    ndcg = np.zeros_like(dcg)
    np.divide(dcg, ideal, out=ndcg, where=has_gain[:, None])
    columns = [all_ks.index(k) for k in ks]
    no_relevant = int(ranked.n_queries - has_gain.sum())
    if no_relevant:
        log.info(
            "%d of %d queries have no relevant candidate; they score 0",
            no_relevant,
            ranked.n_queries,
        )
    descending = ranked.descending
    return RankingMetrics(
        query_ids=ranked.queries[ranked.starts],
        candidates=ranked.sizes,
        ks=ks,
        ndcg=ndcg[:, columns],
        dcg=dcg[:, columns],
        challenge_dcg=challenge[:, all_ks.index(CHALLENGE_K) if gain == "exp" else 0],
        no_relevant=no_relevant,
        auc=_auc(_roc_points(scores[descending], labels[descending] >= relevant)),
        relevant=relevant,
        gain=gain,
    )


def _checked_rows(
    query_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three parallel columns as checked 1-D arrays (scores float64, labels int64)."""
    query_ids = _vector("query_ids", query_ids)
    scores = _check_scores("scores", _vector("scores", scores))
    labels = _check_labels(_vector("labels", labels))
    if not len(query_ids) == len(scores) == len(labels):
        raise InputError(
            f"query_ids, scores and labels must have one entry per candidate; their lengths are "
            f"{len(query_ids)}, {len(scores)} and {len(labels)}."
        )
    if len(query_ids) == 0:
        raise InputError("there are no candidates to evaluate (zero rows).")
    return query_ids, scores, labels


@dataclass(frozen=True)
class _Ranked:
    """The candidates sorted by query, best score first within each query, and where each
    query's list starts.

    One global sort by score serves the ROC curve (`descending`) and, refined by a stable sort
    on the query, the per-query rankings. Ties may land in any order: both metrics treat tied
    candidates as one block.
    """

    descending: np.ndarray  # (n,) row order by score alone, best first
    queries: np.ndarray  # (n,) the sorted rows' query ids
    scores: np.ndarray  # (n,)
    labels: np.ndarray  # (n,)
    new_query: np.ndarray  # (n,) True where a query's list starts
    starts: np.ndarray  # (Q,) first sorted row of each query
    row_query: np.ndarray  # (n,) query index of each sorted row
    sizes: np.ndarray  # (Q,) candidates per query
    position: np.ndarray  # (n,) 0-based rank within the query

    @classmethod
    def of(cls, query_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> _Ranked:
        n = len(query_ids)
        descending = np.argsort(-scores)
        order = descending[np.argsort(_query_key(query_ids)[descending], kind="stable")]
        sorted_queries = query_ids[order]
        new_query = np.ones(n, dtype=bool)
        np.not_equal(sorted_queries[1:], sorted_queries[:-1], out=new_query[1:])
        starts = np.flatnonzero(new_query)
        row_query = np.cumsum(new_query) - 1
        return cls(
            descending=descending,
            queries=sorted_queries,
            scores=scores[order],
            labels=labels[order],
            new_query=new_query,
            starts=starts,
            row_query=row_query,
            sizes=np.diff(np.append(starts, n)),
            position=np.arange(n) - starts[row_query],
        )

    @property
    def n_queries(self) -> int:
        return len(self.starts)


def _gain(labels: np.ndarray, gain: str) -> np.ndarray:
    """Each label's gain: `2**label - 1` ("exp") or the label itself ("linear")."""
    return np.exp2(labels) - 1.0 if gain == "exp" else labels.astype(np.float64)


def _run_dcg(
    ranked: _Ranked, ks: tuple[int, ...], cumulative: np.ndarray, gain: str = "exp"
) -> np.ndarray:
    """(Q, len(ks)) DCG of the run's ranking: its blocks are runs of equal score in a query."""
    n = len(ranked.queries)
    new_block = ranked.new_query.copy()
    new_block[1:] |= ranked.scores[1:] != ranked.scores[:-1]
    block_starts = np.flatnonzero(new_block)
    gains = _gain(ranked.labels, gain)
    return _block_dcg(
        ranked.row_query[block_starts],
        ranked.position[block_starts],
        np.diff(np.append(block_starts, n)),
        np.add.reduceat(gains, block_starts),
        ranked.n_queries,
        ks,
        cumulative,
    )


def _ideal_dcg(
    ranked: _Ranked, ks: tuple[int, ...], cumulative: np.ndarray, gain: str = "exp"
) -> np.ndarray:
    """(Q, len(ks)) DCG of the ideal ranking. It needs no sort: labels in descending order,
    so each label value of a query is one block whose first rank is the count of that query's
    higher labels."""
    n_queries = ranked.n_queries
    values, codes = _small_codes(ranked.labels)
    n_values = len(values)
    counts = np.bincount(ranked.row_query * n_values + codes, minlength=n_queries * n_values)
    counts = counts.reshape(n_queries, n_values)[:, ::-1]  # (Q, U) best label first
    first = np.cumsum(counts, axis=1) - counts
    return _block_dcg(
        np.repeat(np.arange(n_queries), n_values),
        first.ravel(),
        counts.ravel(),
        (counts * _gain(values[::-1], gain)).ravel(),
        n_queries,
        ks,
        cumulative,
    )


def ndcg_at_k(
    scores: np.ndarray,
    labels: np.ndarray,
    k: int = 10,
    *,
    query_ids: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    gain: str = "exp",
) -> float:
    """Mean NDCG@k over queries (gain `2**label - 1`, or `label` with `gain="linear"`; ties
    averaged), for training validation.

    Either 2-D `scores` and `labels` of shape (Q, M), one row per query (`mask` (Q, M) marks
    the real candidates of padded rows), or 1-D arrays with `query_ids` naming each row's query.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape:
        raise InputError(f"scores {scores.shape} and labels {labels.shape} differ in shape.")
    if scores.ndim == 2:
        rows = np.broadcast_to(np.arange(scores.shape[0])[:, None], scores.shape)
        keep = np.ones(scores.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if keep.shape != scores.shape:
            raise InputError(f"mask {keep.shape} and scores {scores.shape} differ in shape.")
        query_ids, scores, labels = rows[keep], scores[keep], labels[keep]
    elif query_ids is None:
        raise InputError("1-D scores need query_ids naming the query of each score.")
    return float(ranking_metrics(query_ids, scores, labels, ks=(k,), gain=gain).ndcg.mean())


# --------------------------------------------------------------------------------------------
# ROC


@dataclass(frozen=True)
class RocCurve:
    """False and true positive rates at each distinct score threshold (highest first)."""

    fpr: np.ndarray  # (T,)
    tpr: np.ndarray  # (T,)
    thresholds: np.ndarray  # (T,) starts with +inf: nothing predicted relevant


def _roc_points(sorted_scores: np.ndarray, sorted_relevant: np.ndarray) -> RocCurve:
    """The ROC curve of pairs already sorted by descending score, collinear points dropped."""
    last_of_value = np.append(np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1)
    tps = np.cumsum(sorted_relevant, dtype=np.float64)[last_of_value]
    fps = 1.0 + last_of_value - tps
    thresholds = sorted_scores[last_of_value]
    if len(fps) > 2:
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.concatenate(([True], corner, [True])))
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.append(0.0, fps), np.append(0.0, tps)
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(len(fps), np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(len(tps), np.nan)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=np.append(np.inf, thresholds))


def _auc(curve: RocCurve) -> float:
    if np.isnan(curve.fpr[-1]) or np.isnan(curve.tpr[-1]):
        log.warning("AUC is undefined: the pairs are all relevant or all not relevant")
        return float("nan")
    return float(np.trapezoid(curve.tpr, curve.fpr))


def _roc_inputs(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = _check_scores("scores", _vector("scores", scores))
    relevant = _vector("relevant", relevant).astype(bool)
    if len(scores) != len(relevant) or not len(scores):
        raise InputError(
            f"scores and relevant must be equally long and not empty; their lengths are "
            f"{len(scores)} and {len(relevant)}."
        )
    order = np.argsort(-scores)  # ties in any order: a threshold takes all of them together
    return scores[order], relevant[order]


def roc_curve(scores: np.ndarray, relevant: np.ndarray) -> RocCurve:
    """ROC curve of `scores` against boolean `relevant`, as `sklearn.metrics.roc_curve`.

    One point per distinct score (tied pairs move together), collinear points dropped
    (scikit-learn's default `drop_intermediate=True`), starting at (0, 0) with threshold
    +inf. Rates are NaN when one class is absent.
    """
    return _roc_points(*_roc_inputs(scores, relevant))


def roc_auc(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Area under the ROC curve (ties count half), as `sklearn.metrics.roc_auc_score`.

    NaN, with a logged warning, when every pair is relevant or none is.
    """
    return _auc(roc_curve(scores, relevant))


# --------------------------------------------------------------------------------------------
# COCO caption ranking


def matrix_auc(matrix: np.ndarray, q_index: np.ndarray, i_index: np.ndarray) -> float:
    """ROC AUC over every cell of `matrix`, the cells `(q_index, i_index)` relevant and all
    others not: the probability that a relevant cell outscores an irrelevant one, ties counting
    half (what `roc_auc_score` gives on the flattened matrix)."""
    positives = np.sort(matrix[q_index, i_index])
    n_pos, n_neg = positives.size, matrix.size - positives.size
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    everything = np.sort(matrix, axis=None)
    below = np.searchsorted(everything, positives, "left") - np.searchsorted(
        positives, positives, "left"
    )
    ties = (
        np.searchsorted(everything, positives, "right")
        - np.searchsorted(everything, positives, "left")
    ) - (
        np.searchsorted(positives, positives, "right")
        - np.searchsorted(positives, positives, "left")
    )
    return float((below.sum() + 0.5 * ties.sum()) / (n_pos * n_neg))


@dataclass(frozen=True)
class RecallAtK:
    """Ranks (1-based) of the first true item for each query item, and their summary.

    `recall[K]` is the percentage of items whose true item ranks within K (as VSE++ reports);
    `medr` is the median rank rounded down, `meanr` the mean rank.
    """

    ranks: np.ndarray  # (n,) int64, 1 = the true item ranked first
    recall: dict[int, float]
    medr: float
    meanr: float

    def summary(self) -> dict[str, float]:
        """Flat values: `r@1`, `r@5`, `r@10`, `medr`, `meanr`."""
        return {
            **{f"r@{k}": v for k, v in self.recall.items()},
            "medr": self.medr,
            "meanr": self.meanr,
        }


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = RECALL_CUTOFFS) -> RecallAtK:
    """Recall@K (percent), median rank and mean rank of 1-based `ranks`."""
    ks = _check_cutoffs("ks", ks)
    ranks = _vector("ranks", ranks).astype(np.int64)
    if not len(ranks) or ranks.min() < 1:
        raise InputError("ranks must be a non-empty array of 1-based ranks.")
    return RecallAtK(
        ranks=ranks,
        recall={k: 100.0 * float(np.mean(ranks <= k)) for k in ks},
        medr=float(np.floor(np.median(ranks))),
        meanr=float(ranks.mean()),
    )


def _chunk(count: int, row_bytes: int, chunk_bytes: int) -> int:
    return max(1, min(count, chunk_bytes // max(row_bytes, 1)))


def _check_finite_block(block: np.ndarray, where: str) -> None:
    if not np.isfinite(block).all():
        raise InputError(f"the similarity matrix has a NaN or infinite value in {where}.")


def annotation_ranks(
    sims: np.ndarray, caption_image: np.ndarray, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Image annotation: for each image, the 1-based rank of its best-ranked true caption.

    `sims` is (images, captions); `caption_image[c]` is the image of caption c. Only other
    images' captions can outrank it, and those tied with it do (ties count against the model:
    a constant scorer gets the worst rank, not the best). Processed in chunks of images.
    """
    n_images, n_captions = sims.shape
    ranks = np.empty(n_images, dtype=np.int64)
    step = _chunk(n_images, n_captions * 24, chunk_bytes)
    for begin in range(0, n_images, step):
        end = min(begin + step, n_images)
        block = np.asarray(sims[begin:end])  # (b, C)
        _check_finite_block(block, f"image rows {begin}..{end - 1}")
        true = caption_image[None, :] == np.arange(begin, end)[:, None]  # (b, C)
        best_true = np.where(true, block, -np.inf).max(axis=1)  # (b,)
        ranks[begin:end] = 1 + ((block >= best_true[:, None]) & ~true).sum(axis=1)
    return ranks


def retrieval_ranks(
    sims: np.ndarray, caption_image: np.ndarray, *, chunk_bytes: int = CHUNK_BYTES
) -> np.ndarray:
    """Image retrieval: for each caption, the 1-based rank of its image among all images.

    Images tied with the true one rank before it (ties count against the model). Processed in
    chunks of captions.
    """
    n_images, n_captions = sims.shape
    ranks = np.empty(n_captions, dtype=np.int64)
    step = _chunk(n_captions, n_images * 16, chunk_bytes)
    for begin in range(0, n_captions, step):
        end = min(begin + step, n_captions)
        block = np.asarray(sims[:, begin:end])  # (I, b)
        _check_finite_block(block, f"caption columns {begin}..{end - 1}")
        true_score = block[caption_image[begin:end], np.arange(end - begin)]  # (b,)
        ranks[begin:end] = (block >= true_score[None, :]).sum(axis=0)  # counts the true one too
    return ranks


# The stable names of the two caption-ranking protocols in metric keys: every image of the split
# ranked at once ("pool": the 5K protocol on COCO's 5,000 test images), and the mean over folds
# ranked apart ("folds": the 1K protocol, folds of 1,000 images).
POOL, FOLDS = "pool", "folds"


@dataclass(frozen=True)
class CaptionRanking:
    """COCO caption ranking in both directions, on the whole set and averaged over folds.

    `annotation` is image -> caption (i2t), `retrieval` caption -> image (t2i). `folds` holds
    one (annotation, retrieval) pair per fold; empty when the set is a single fold.
    """

    annotation: RecallAtK
    retrieval: RecallAtK
    folds: tuple[tuple[RecallAtK, RecallAtK], ...]
    full_label: str  # e.g. "5k": the size-carrying key suffix of files written before "pool"
    fold_label: str  # e.g. "1k"

    def fold_means(self) -> dict[str, float]:
        """Each fold-level value (`i2t_r@1`, ..., `t2i_meanr`) averaged over the folds."""
        rows = [
            {**_prefixed("i2t", a.summary()), **_prefixed("t2i", r.summary())}
            for a, r in self.folds
        ]
        return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]} if rows else {}

    def pool_values(self) -> dict[str, float]:
        """The whole set's values: `i2t_r@1`, ..., `t2i_meanr`."""
        return {
            **_prefixed("i2t", self.annotation.summary()),
            **_prefixed("t2i", self.retrieval.summary()),
        }

    def summary(self) -> dict[str, float]:
        """Flat keys `<direction>_<metric>_<protocol>` with a stable protocol name, `pool` (all
        images) or `folds` (the mean over the folds): `i2t_r@1_pool`, `t2i_medr_folds`, and
        `rsum_pool`, `rsum_folds` (the sum of the six recalls). The same values (not rsum)
        also go under the keys of files written before those names, whose protocol is the
        set's size (`i2t_r@1_5k`, `t2i_medr_1k`; `_25` for 25 images)."""
        pool, folds = self.pool_values(), self.fold_means()
        out = {f"{key}_{POOL}": value for key, value in pool.items()}
        with_rsum = all(f"t2i_r@{k}" in pool for k in RECALL_CUTOFFS)
        if with_rsum:
            out[f"rsum_{POOL}"] = rsum(pool)
        if folds:
            out.update({f"{key}_{FOLDS}": value for key, value in folds.items()})
            if with_rsum:
                out[f"rsum_{FOLDS}"] = rsum(folds)
        out.update({f"{key}_{self.full_label}": value for key, value in pool.items()})
        out.update({f"{key}_{self.fold_label}": value for key, value in folds.items()})
        return out


def rsum(values: dict[str, float]) -> float:
    """The sum of Recall@1, @5 and @10 both ways (keys `i2t_r@1` ... `t2i_r@10`), in percent
    points: the single figure caption-ranking papers compare."""
    return float(sum(values[f"{d}_r@{k}"] for d in ("i2t", "t2i") for k in RECALL_CUTOFFS))


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in values.items()}


def _size_label(count: int) -> str:
    return f"{count // 1000}k" if count % 1000 == 0 else str(count)


def caption_ranking(
    sims: np.ndarray,
    caption_image: np.ndarray | None = None,
    *,
    captions_per_image: int = 5,
    fold_size: int = 1000,
    image_folds: np.ndarray | None = None,
    ks: Sequence[int] = RECALL_CUTOFFS,
    chunk_bytes: int = CHUNK_BYTES,
) -> CaptionRanking:
    """Recall@K, medr and meanr both ways, on all images (5K) and averaged over folds (1K).

    `sims[i, c]` is the similarity of image i and caption c. `caption_image[c]` names the image
    of caption c; by default captions come `captions_per_image` per image, in image order.
    Folds are consecutive blocks of `fold_size` images (the 1K protocol: five folds of the 5K
    test set) unless `image_folds` gives each image's fold; a fold holds its images' captions.
    Ranks are 1-based; recall is in percent.
    """
    sims = np.asarray(sims) if not isinstance(sims, np.ndarray) else sims
    if sims.ndim != 2 or 0 in sims.shape:
        raise InputError(f"sims must be a non-empty (images, captions) matrix; found {sims.shape}.")
    n_images = sims.shape[0]
    caption_image = _caption_images(sims.shape, caption_image, captions_per_image)
    image_folds = _image_folds(n_images, fold_size, image_folds)
    fold_values = np.unique(image_folds)

    def both(s: np.ndarray, assign: np.ndarray) -> tuple[RecallAtK, RecallAtK]:
        return (
            recall_at_k(annotation_ranks(s, assign, chunk_bytes=chunk_bytes), ks),
            recall_at_k(retrieval_ranks(s, assign, chunk_bytes=chunk_bytes), ks),
        )

    annotation, retrieval = both(sims, caption_image)
    folds = []
    if len(fold_values) > 1:
        for fold in fold_values:
            images = np.flatnonzero(image_folds == fold)
            captions = np.flatnonzero(image_folds[caption_image] == fold)
            local = np.full(n_images, -1, dtype=np.int64)
            local[images] = np.arange(len(images))
            folds.append(both(sims[np.ix_(images, captions)], local[caption_image[captions]]))
    sizes = {int((image_folds == f).sum()) for f in fold_values}
    return CaptionRanking(
        annotation=annotation,
        retrieval=retrieval,
        folds=tuple(folds),
        full_label=_size_label(n_images),
        fold_label=_size_label(sizes.pop()) if len(sizes) == 1 else "folds",
    )


def _caption_images(
    shape: tuple[int, ...], caption_image: np.ndarray | None, captions_per_image: int
) -> np.ndarray:
    """The image of each caption, checked: given, or `captions_per_image` per image in order."""
    n_images, n_captions = shape
    if caption_image is None:
        if captions_per_image < 1 or n_captions != n_images * captions_per_image:
            raise InputError(
                f"{n_captions} captions for {n_images} images is not {captions_per_image} per "
                "image; pass caption_image (the image of each caption) or fix captions_per_image."
            )
        caption_image = np.repeat(np.arange(n_images), captions_per_image)
    caption_image = _vector("caption_image", caption_image).astype(np.int64)
    if len(caption_image) != n_captions:
        raise InputError(
            f"caption_image has {len(caption_image)} entries for {n_captions} captions."
        )
    if caption_image.min() < 0 or caption_image.max() >= n_images:
        raise InputError(f"caption_image must hold image indices 0..{n_images - 1}.")
    captionless = np.flatnonzero(np.bincount(caption_image, minlength=n_images) == 0)
    if len(captionless):
        raise InputError(
            f"{len(captionless)} image(s) have no caption (first: image {captionless[0]}); "
            "annotation ranks need at least one true caption per image."
        )
    return caption_image


def _image_folds(n_images: int, fold_size: int, image_folds: np.ndarray | None) -> np.ndarray:
    """The fold of each image, checked: given, or consecutive blocks of `fold_size` images."""
    if image_folds is None:
        if fold_size < 1 or (n_images > fold_size and n_images % fold_size):
            raise ConfigError(
                f"{n_images} images do not split into folds of {fold_size}; pass a fold_size "
                "that divides the number of images, or image_folds."
            )
        image_folds = np.arange(n_images) // fold_size
    image_folds = _vector("image_folds", image_folds)
    if len(image_folds) != n_images:
        raise InputError(f"image_folds has {len(image_folds)} entries for {n_images} images.")
    return image_folds
