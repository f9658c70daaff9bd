"""Paired significance tests between two rankers on the same queries: a sign-flip randomisation
test and a paired t-test, on per-query values (NDCG@k by default)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..checks import whole_number
from ..errors import ConfigError, InputError
from .metrics import CHUNK_BYTES, RankingMetrics, _check_scores, _chunk, _vector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairedTest:
    """Two runs compared on the same queries: means, difference and two-sided p-values."""

    n: int
    mean_a: float
    mean_b: float
    difference: float  # mean_a - mean_b
    p_randomization: float
    p_t: float
    resamples: int
    seed: int


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = _check_scores("a", _vector("a", a))
    b = _check_scores("b", _vector("b", b))
    if len(a) != len(b) or not len(a):
        raise InputError(
            f"paired tests need the same non-empty set of queries in both runs; got {len(a)} and "
            f"{len(b)} values."
        )
    return a - b


def randomization_test(
    a: np.ndarray, b: np.ndarray, *, resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided paired randomisation (sign-flip) test of mean(a - b) = 0; returns the p-value.

    Each resample flips the sign of every per-query difference with probability 1/2; the
    p-value is (resamples at least as extreme as observed + 1) / (resamples + 1), so it is never
    0 and identical runs give exactly 1. Deterministic for `seed`; resamples run in chunks of
    bounded memory.
    """
    whole_number("resamples", resamples, 1)
    diff = _paired(a, b)
    n = len(diff)
    total = diff.sum()
    observed = abs(total)
    # Flipped sums differ from the observed one by rounding alone when they are equal in exact
    # arithmetic; the tolerance keeps those as "at least as extreme".
    tolerance = 1e-9 * float(np.abs(diff).sum())
    rng = np.random.default_rng(seed)
    step = _chunk(resamples, n * 9, CHUNK_BYTES // 2)
    extreme = 0
    for begin in range(0, resamples, step):
        flips = rng.integers(0, 2, size=(min(step, resamples - begin), n), dtype=np.int8)  # (R, n)
        flipped = total - 2.0 * (flips.astype(np.float64) @ diff)  # (R,) sum with those flipped
        extreme += int((np.abs(flipped) >= observed - tolerance).sum())
    return (extreme + 1) / (resamples + 1)


def paired_t_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value (`scipy.stats.ttest_rel`); 1.0 when a == b everywhere."""
    diff = _paired(a, b)
    if not diff.any():
        return 1.0  # scipy gives NaN (0 / 0); no difference at all is no evidence of one
    from scipy import stats  # slow to import; only this function needs it

    return float(stats.ttest_rel(np.asarray(a, float), np.asarray(b, float)).pvalue)


def paired_test(
    a: np.ndarray, b: np.ndarray, *, resamples: int = 10_000, seed: int = 0
) -> PairedTest:
    """Both paired tests on per-query values `a` and `b` (same queries, same order)."""
    diff = _paired(a, b)
    return PairedTest(
        n=len(diff),
        mean_a=float(np.mean(a)),
        mean_b=float(np.mean(b)),
        difference=float(diff.mean()),
        p_randomization=randomization_test(a, b, resamples=resamples, seed=seed),
        p_t=paired_t_test(a, b),
        resamples=resamples,
        seed=seed,
    )


def paired_by_query(
    ids_a: np.ndarray,
    values_a: np.ndarray,
    ids_b: np.ndarray,
    values_b: np.ndarray,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedTest:
    """`paired_test` on the queries both runs hold, matched by query id."""
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    if (ids_a.dtype.kind in "iuf") != (ids_b.dtype.kind in "iuf"):
        # One run names its queries with numbers, the other with text: compare them as text.
        ids_a, ids_b = ids_a.astype(str), ids_b.astype(str)
    common, index_a, index_b = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    if not len(common):
        raise InputError("the two runs share no query; a paired test needs the same queries.")
    if len(common) < max(len(ids_a), len(ids_b)):
        log.warning("paired test on the %d queries both runs hold", len(common))
    return paired_test(
        np.asarray(values_a)[index_a], np.asarray(values_b)[index_b], resamples=resamples, seed=seed
    )


def compare_to_baseline(
    runs: dict[str, RankingMetrics],
    *,
    k: int = 10,
    baseline: str | None = None,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, PairedTest]:
    """Paired tests of each run against `baseline` (default: the first) on per-query NDCG@k.

    Queries are matched by id; `difference` is run minus baseline; the baseline itself is left
    out of the result.
    """
    if not runs:
        return {}
    baseline = next(iter(runs)) if baseline is None else baseline
    if baseline not in runs:
        raise ConfigError(f"baseline {baseline!r} is not one of the runs: {', '.join(runs)}.")
    base = runs[baseline]
    return {
        name: paired_by_query(
            run.query_ids,
            run.ndcg_at(k),
            base.query_ids,
            base.ndcg_at(k),
            resamples=resamples,
            seed=seed,
        )
        for name, run in runs.items()
        if name != baseline
    }
