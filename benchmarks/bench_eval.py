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

`--coco` measures instead a trained model's `eval` of a COCO-shaped prepared folder (random
region features, `--regions` x `--feature-dim`; the kernel works on the projected regions, so
the feature size matters only for reading and projecting each image once): today's path as the
reference, the whole `(captions, images)` matrix (`score_matrix`, then `pool_frame`,
`matrix_auc`, `caption_ranking`), against the tiled kernel (`evaluate`), each in a child
process of its own with one torch thread per `--threads`: wall time and peak resident memory
(VmRSS sampled from /proc every 20 ms, and the child's ru_maxrss). Every metric of the two is
compared. `--val-images` adds a second, validation-sized split (val, the reference skipped
when its matrix would not fit `--reference-limit-gb`):

    python benchmarks/bench_eval.py --coco                       # 25,000 x 5,000, 49 x 256
    python benchmarks/bench_eval.py --coco --feature-dim 2048

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
from bench_scale import Memory

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


# -- COCO: the whole-split pool -------------------------------------------------------------------
def coco_folder(work: Path, test: int, val: int, regions: int, dim: int) -> Path:
    """A prepared COCO folder (5 captions an image, folds of 1,000) and a model trained one
    short epoch on it; made once per shape."""
    import os

    sys.path.insert(0, str(ROOT / "tests"))
    from support import corpus

    from amc_data import EncodeConfig, encode
    from amc_data.prepare.coco import CocoConfig, prepare_coco
    from amc_data.ranking.training import TrainConfig, train

    wanted = {"test": test, "val": val, "regions": regions, "dim": dim}
    marker = work / "coco.json"
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    counts = {"train": 500, "restval": 0, "val": val, "test": test}
    made = corpus.make_coco(work / "data" / "coco", counts, seed=0, compresslevel=1)
    encode("coco", data_dir=work / "data", config=EncodeConfig(jobs=1))
    ids = np.array([image.imgid for image in made.images], dtype=np.int64)
    rng = np.random.default_rng(0)
    features = np.lib.format.open_memmap(
        work / "features.npy", "w+", np.float16, (len(ids), regions, dim)
    )
    for lo in range(0, len(ids), 1000):
        block = rng.standard_normal((min(1000, len(ids) - lo), regions, dim))
        features[lo : lo + 1000] = block.astype(np.float16)
    features.flush()
    del features
    np.save(work / "ids.npy", ids)
    prepare_coco(
        work / "features.npy",
        work / "ids.npy",
        work / "prepared",
        data_dir=work / "data",
        config=CocoConfig(force=True, min_query_count=1),
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = TrainConfig(epochs=1, device="cpu", workers=0)
    train(work / "prepared", work / "run", config, force=True)
    marker.write_text(json.dumps(wanted))
    return work


def coco_child(
    kind: str, work: Path, split: str, threads: int, workers: int = 0
) -> dict[str, object]:
    """One measured evaluation in this (child) process: 'kernel' or 'reference'; the kernel
    scores with `workers` threads side by side (0: one per torch thread)."""
    import torch

    torch.set_num_threads(threads)
    from amc_data.prepare.format import load_prepared
    from amc_data.ranking.runs import _Pool, evaluate

    prepared = load_prepared(work / "prepared")
    with Memory() as memory, Clock() as clock:
        if kind == "kernel":
            evaluation = evaluate(
                [work / "run"],
                prepared,
                split=split,
                device="cpu",
                out=work / f"eval-{split}",
                random_baseline=False,
                threads=workers,
            )
            metrics = evaluation.runs[0].metrics
        else:
            metrics = reference_metrics(prepared, work / "run", _Pool.of(prepared, split))
    pool = _Pool.of(prepared, split)
    return {
        "seconds": clock.wall,
        "cpu_seconds": clock.cpu,
        **memory.report(),
        "captions": len(pool.queries),
        "images": len(pool.images),
        "metrics": {k: (None if v != v else v) for k, v in metrics.items()},
    }


def reference_metrics(prepared: object, run: Path, pool: object) -> dict[str, float]:
    """Today's path before the kernel: the whole matrix, then the metrics of it."""
    from amc_data.evaluation.metrics import caption_ranking, matrix_auc, ranking_metrics
    from amc_data.ranking.checkpoint import load_model
    from amc_data.ranking.scoring import pool_frame, score_matrix

    model = load_model(run, prepared).model  # type: ignore[arg-type]
    queries, images, judged = pool.queries, pool.images, pool.judged  # type: ignore[attr-defined]
    matrix = score_matrix(model, prepared, queries, images)  # type: ignore[arg-type]
    frame = pool_frame(matrix, queries, images, judged)
    metrics = ranking_metrics(frame["query_id"], frame["score"], frame["label"]).summary()
    rows = np.searchsorted(queries, judged["query_id"])
    cols = np.searchsorted(images, judged["img_id"])
    metrics["auc"] = matrix_auc(matrix, rows, cols)
    own = (judged["label"] > 0).to_numpy() & ~judged["query_id"].duplicated().to_numpy()
    own_rows, own_cols = rows[own], cols[own]
    folds = pool.folds  # type: ignore[attr-defined]
    metrics |= caption_ranking(matrix[own_rows].T, own_cols, image_folds=folds).summary()
    return metrics


def run_coco_child(
    kind: str, work: Path, split: str, threads: int, workers: int = 0
) -> dict[str, object]:
    command = [sys.executable, __file__, "--coco-child", kind, str(work), split, str(threads)]
    command.append(str(workers))
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{kind} on {split} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["children_maxrss_mib_so_far"] = children
    return result  # type: ignore[no-any-return]


def coco_main(args: argparse.Namespace) -> None:
    work = coco_folder(
        args.workdir.resolve() / f"coco-{args.regions}x{args.feature_dim}",
        args.test_images,
        args.val_images,
        args.regions,
        args.feature_dim,
    )
    results: dict[str, object] = {"machine": machine(), "threads": args.threads}
    splits = ["test"] + (["val"] if args.val_images else [])
    for split in splits:
        row: dict[str, object] = {}
        cells = args.test_images * 5 * args.test_images if split == "test" else None
        if split == "val":
            cells = args.val_images * 5 * args.val_images
        # The kernel as it runs by default (one scoring thread per torch thread, each with one
        # torch thread) and, with --one-worker-too, as before that: one scoring thread using
        # every torch thread.
        variants = [("reference", "reference", 0), ("kernel", "kernel", 0)]
        if args.one_worker_too and args.threads > 1:
            variants.append(("kernel_one_worker", "kernel", 1))
        for label, kind, workers in variants:
            if kind == "reference" and cells * 4 > args.reference_limit_gb * 2**30:
                row[label] = {"skipped": f"its matrix needs {cells * 4 / 2**30:.1f} GiB"}
                continue
            print(f"{split}: {label} ...", flush=True)
            row[label] = run_coco_child(kind, work, split, args.threads, workers)
            shown = row[label]
            print(
                f"  {shown['seconds']:.1f} s, peak RSS {shown['peak_rss_mib']:.0f} MiB "
                f"({shown['captions']} captions x {shown['images']} images)",
                flush=True,
            )
        reference, kernel = row.get("reference"), row["kernel"]
        if isinstance(reference, dict) and "metrics" in reference:
            a, b = reference["metrics"], kernel["metrics"]  # type: ignore[index]
            worst = max(abs(a[k] - b[k]) for k in a if a[k] is not None)
            row["max_metric_difference"] = worst
            row["same_keys"] = sorted(a) == sorted(b)
            row["speedup"] = reference["seconds"] / kernel["seconds"]  # type: ignore[index]
            row["memory_ratio"] = reference["peak_rss_mib"] / kernel["peak_rss_mib"]  # type: ignore[index]
            if "kernel_one_worker" in row:
                one = row["kernel_one_worker"]
                row["one_worker_max_metric_difference"] = max(
                    abs(a[k] - one["metrics"][k])
                    for k in a
                    if a[k] is not None  # type: ignore[index]
                )
                row["one_worker_speedup"] = reference["seconds"] / one["seconds"]  # type: ignore[index]
            print(f"  speed-up {row['speedup']:.1f}x, largest metric difference {worst:.1e}")
        results[split] = row
    out = ROOT / "bench-results" / f"eval-coco-{args.regions}x{args.feature_dim}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--coco-child"]:
        kind, work, split, threads, workers = argv[1:6]
        print(json.dumps(coco_child(kind, Path(work), split, int(threads), int(workers))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco", action="store_true", help="the COCO pool case (see above)")
    parser.add_argument("--test-images", type=int, default=5_000)
    parser.add_argument("--val-images", type=int, default=0, help="0: no validation case")
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--feature-dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each child")
    parser.add_argument(
        "--one-worker-too",
        action="store_true",
        help="--coco: also the kernel with one scoring thread using every torch thread",
    )
    parser.add_argument("--reference-limit-gb", type=float, default=8.0)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--sample", type=int, default=500, help="queries the loop really runs")
    parser.add_argument("--repeats", type=int, default=3, help="amc-data runs (the median counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("bench-results/eval-work"))
    args = parser.parse_args(argv)
    if args.coco:
        coco_main(args)
        return

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
