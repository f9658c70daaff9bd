"""Benchmark: `evaluate_scores` against the obvious per-query loop over scikit-learn, same run.

A Clickture-shaped scores file (by default 10,000 queries x 100 candidates = 1,000,000 rows;
labels Bad 0 / Good 2 / Excellent 3, scores a noisy function of the label rounded to float32)
is written once as Parquet and as TSV. Then, for each format:

- amc-data: `evaluate_scores(path)` (reading, checking, NDCG@5..25, DCG@25, AUC), timed
  `--repeats` times in this process (the median counts; imports are done before timing), and
  `python -m amc_data eval --scores PATH` as a child process (interpreter start and imports
  included).
- the obvious loop: pandas reads the file, groups it by query, and calls
  `sklearn.metrics.ndcg_score` once per query and cut-off (plus `dcg_score` for DCG@25), then
  `roc_auc_score` once over all pairs. The loop runs on a random sample of `--sample` queries
  and its time is extrapolated linearly to all queries (the work per query is the same); the
  reading, grouping and AUC are timed in full. Its per-query NDCG values on the sample are
  checked against amc-data's.

    python benchmarks/bench_eval.py                    # 1,000,000 rows
    python benchmarks/bench_eval.py --queries 1000     # quicker

Wall time and CPU time (user + system, of this process and its children) are both recorded:
on a machine shared with other work, CPU time is the steadier of the two.

Results go to stdout and to bench-results/eval.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_encode import machine

from amc_data.evaluation.metrics import CHALLENGE_K, NDCG_CUTOFFS
from amc_data.evaluation.scores import evaluate_scores, scores_metrics

ROOT = Path(__file__).resolve().parent.parent


def make_scores(folder: Path, queries: int, candidates: int, seed: int) -> dict[str, Path]:
    """Write the scores file once per (queries, candidates, seed), as Parquet and TSV."""
    marker = folder / "scores.json"
    wanted = {"queries": queries, "candidates": candidates, "seed": seed}
    paths = {"parquet": folder / "scores.parquet", "tsv": folder / "scores.tsv"}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = queries * candidates
    labels = rng.choice([0, 2, 3], size=rows, p=[0.55, 0.3, 0.15])
    scores = (0.3 * labels + rng.normal(size=rows)).astype(np.float32).astype(np.float64)
    frame = pd.DataFrame(
        {
            "query_id": np.repeat(rng.permutation(queries * 10)[:queries], candidates),
            # Distinct within a query, shared across queries, as Clickture's candidates are.
            "img_id": (rng.integers(0, 10**6, size=(queries, 1)) + np.arange(candidates)).ravel(),
            "score": scores,
            "label": labels,
        }
    )
    frame.to_parquet(paths["parquet"], index=False)
    frame.to_csv(paths["tsv"], sep="\t", index=False)
    marker.write_text(json.dumps(wanted))
    return paths


class Clock:
    """Wall time and CPU time (this process and its waited-for children) of a block."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, _cpu() - self._cpu


def _cpu() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_amc(path: Path, repeats: int) -> dict[str, object]:
    runs, cli = [], []
    for _ in range(repeats):
        with Clock() as clock:
            evaluate_scores(path)
        runs.append((clock.wall, clock.cpu))
    command = [sys.executable, "-m", "amc_data", "eval", "--scores", str(path)]
    for _ in range(repeats):
        with Clock() as clock:
            subprocess.run(command, check=True, capture_output=True)
        cli.append((clock.wall, clock.cpu))
    return {
        "seconds": float(np.median([wall for wall, _ in runs])),
        "cpu_seconds": float(np.median([cpu for _, cpu in runs])),
        "cli_seconds": float(np.median([wall for wall, _ in cli])),
        "cli_cpu_seconds": float(np.median([cpu for _, cpu in cli])),
        "runs_wall_cpu": runs,
        "cli_runs_wall_cpu": cli,
    }


def time_loop(path: Path, kind: str, sample: int, seed: int) -> dict[str, object]:
    """The obvious way: pandas, groupby, one scikit-learn call per query and cut-off."""
    from sklearn.metrics import dcg_score, ndcg_score, roc_auc_score

    with Clock() as read:
        frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path, sep="\t")
        groups = dict(list(frame.groupby("query_id", sort=False)))

    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.array(list(groups)), size=min(sample, len(groups)), replace=False)
    values = {}
    with Clock() as loop:
        for query in chosen:
            group = groups[query]
            gains = (2.0 ** group["label"].to_numpy() - 1)[None]
            scores = group["score"].to_numpy()[None]
            values[query] = [ndcg_score(gains, scores, k=k) for k in NDCG_CUTOFFS]
            dcg_score(gains, scores, k=CHALLENGE_K)

    with Clock() as auc:
        roc_auc_score(frame["label"] >= 1, frame["score"])

    scale = len(groups) / len(chosen)
    return {
        "seconds": read.wall + loop.wall * scale + auc.wall,
        "cpu_seconds": read.cpu + loop.cpu * scale + auc.cpu,
        "read_and_group_seconds": read.wall,
        "loop_sample_queries": len(chosen),
        "loop_sample_seconds": loop.wall,
        "loop_sample_cpu_seconds": loop.cpu,
        "loop_extrapolated_seconds": loop.wall * scale,
        "auc_seconds": auc.wall,
        "sample_values": values,
    }


def check(path: Path, values: dict[object, list[float]]) -> float:
    """The largest difference between amc-data's and scikit-learn's per-query NDCG."""
    result = scores_metrics(path)
    rows = {query: row for row, query in enumerate(result.query_ids)}
    return max(
        float(np.max(np.abs(result.ndcg[rows[query]] - np.array(expected))))
        for query, expected in values.items()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--sample", type=int, default=500, help="queries the loop really runs")
    parser.add_argument("--repeats", type=int, default=3, help="amc-data runs (the median counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("bench-results/eval-work"))
    args = parser.parse_args(argv)

    paths = make_scores(args.workdir.resolve(), args.queries, args.candidates, args.seed)
    results: dict[str, object] = {
        "queries": args.queries,
        "candidates": args.candidates,
        "rows": args.queries * args.candidates,
        "machine": machine(),
    }
    evaluate_scores(paths["parquet"])  # imports and first-touch costs before any timing
    for kind, path in paths.items():
        print(f"{kind}: amc-data ...", flush=True)
        ours = time_amc(path, args.repeats)
        print(
            f"  {ours['seconds']:.2f} s in process ({ours['cpu_seconds']:.2f} s CPU), "
            f"{ours['cli_seconds']:.2f} s as a command ({ours['cli_cpu_seconds']:.2f} s CPU)"
        )
        print(f"{kind}: per-query loop over scikit-learn ({args.sample} queries) ...", flush=True)
        loop = time_loop(path, kind, args.sample, args.seed)
        difference = check(path, loop.pop("sample_values"))
        print(
            f"  {loop['seconds']:.1f} s ({loop['cpu_seconds']:.1f} s CPU), extrapolated; "
            f"largest NDCG difference {difference:.1e}"
        )
        results[kind] = {
            "amc_data": ours,
            "loop": loop,
            "max_ndcg_difference": difference,
            "speedup": loop["seconds"] / ours["seconds"],
            "speedup_cpu": loop["cpu_seconds"] / ours["cpu_seconds"],
        }

    out = ROOT / "bench-results" / "eval.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
