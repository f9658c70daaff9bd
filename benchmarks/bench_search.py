"""Benchmark: `amc-data search` at scale: the index against today's full scan, same run.

A planted synth world (`--images`, default 200,000, at `--regions` x `--dim`: 49 regions like
COCO's grid, small features, since the index stores the projected regions whose size does not
depend on the feature size) and a 1-epoch AMC run are made once. Then, one torch thread per
`--threads`:

- the reference: today's full scan from the raw features (`Searcher(exact=True)`), a few
  queries (`--reference-queries`);
- the index: its build time and size; exact search over it (every image scored by the dense
  kernel), eager and compiled (`--compile off` / `on`; the compiled kernel's first query,
  which waits for the compiler, is reported apart): median and 95th percentile over
  `--exact-repeats` test queries, one at a time,
  and the `--repeats` queries' exact rankings scored together in batches (the throughput of
  `search --queries`; these rankings are what the shortlist's recall is measured against);
- two-stage: a FAISS flat shortlist of K then the exact score of those K, for each K of
  `--ks`: median / p95 latency over the `--repeats` queries and Recall@10 against exact
  search over the index (the recall-vs-K and latency-vs-K curves).

The load average (the machine may be shared) is recorded before and after.

    python benchmarks/bench_search.py                          # 200,000 images
    python benchmarks/bench_search.py --images 20000 --repeats 20

Results go to stdout and to bench-results/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_encode import machine

import amc_data
from amc_data.ranking.search import Searcher
from amc_data.ranking.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def make_run(folder: Path, images: int, regions: int, dim: int, seed: int) -> tuple[Path, Path]:
    data, run = folder / "data", folder / "run"
    marker = folder / "made.json"
    wanted = {"images": images, "regions": regions, "dim": dim, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return data, run
    folder.mkdir(parents=True, exist_ok=True)
    amc_data.synth(
        data, seed=seed, images=images, queries=2000, regions=regions, dim=dim, force=True
    )
    train(data, run, TrainConfig(epochs=1, device="cpu", workers=0), force=True)
    marker.write_text(json.dumps(wanted))
    return data, run


def percentiles(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(1e3 * statistics.median(values), 2),
        "p95_ms": round(1e3 * float(np.percentile(values, 95)), 2),
    }


def timed(searcher: Searcher, texts: list[str], top: int = 10) -> tuple[list[float], list]:
    seconds, ranked = [], []
    for text in texts:
        started = time.perf_counter()
        result = searcher.search_many([text], top=top)[0]
        seconds.append(time.perf_counter() - started)
        ranked.append([hit.img_id for hit in result.hits])
    return seconds, ranked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--exact-repeats", type=int, default=20)
    parser.add_argument("--reference-queries", type=int, default=3)
    parser.add_argument("--ks", default="100,300,1000,3000,10000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="index blocks scored side by side (0: one per torch thread, the default search)",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-results" / "search-work")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    data, run = make_run(
        args.workdir / f"{args.images}", args.images, args.regions, args.dim, args.seed
    )
    prepared = amc_data.load_prepared(data)
    texts = prepared.split_queries("test")["query"].drop_duplicates().tolist()[: args.repeats]

    reference = Searcher(run, prepared, split="all", exact=True)
    ref_seconds, ref_ranked = timed(reference, texts[: args.reference_queries])

    started = time.perf_counter()
    eager = Searcher(run, prepared, split="all", threads=args.workers, compile="off")
    index = eager.index
    assert index is not None
    build = time.perf_counter() - started
    size = sum(p.stat().st_size for p in index.folder.iterdir())
    timed(eager, texts[:2])  # warm: the memory map paged in
    eager_seconds, eager_ranked = timed(eager, texts[: args.exact_repeats])
    # The compiled one-pass kernel (`search --compile on`; auto from 500,000 images): its
    # first query waits for the compiler (torch's cache on disk may be warm or cold).
    searcher = Searcher(run, prepared, split="all", threads=args.workers, compile="on")
    first_seconds, _ = timed(searcher, texts[:1])
    exact_seconds, exact_top = timed(searcher, texts[: args.exact_repeats])
    same_top = sum(a == b for a, b in zip(eager_ranked, exact_top, strict=True))
    started = time.perf_counter()
    batch = searcher.search_many(texts, top=10)
    batch_seconds = time.perf_counter() - started
    exact_ranked = [[hit.img_id for hit in result.hits] for result in batch]
    agree = [a == b for a, b in zip(ref_ranked, exact_ranked, strict=False)]
    print(
        json.dumps(
            {
                "exact": percentiles(exact_seconds),
                "eager": percentiles(eager_seconds),
                "first_s": first_seconds[0],
                "build_s": build,
            }
        ),
        flush=True,
    )

    curves = []
    for k in (int(k) for k in args.ks.split(",")):
        two = Searcher(run, prepared, split="all", shortlist=k, threads=args.workers)
        timed(two, texts[:2])
        seconds, ranked = timed(two, texts)
        recall = statistics.mean(
            len(set(a) & set(b)) / len(b) for a, b in zip(ranked, exact_ranked, strict=True)
        )
        curves.append({"k": k, "recall_at_10": round(recall, 4), **percentiles(seconds)})
        print(json.dumps(curves[-1]), flush=True)

    result = {
        "machine": machine(),
        "torch_threads": args.threads,
        "scoring_threads": searcher.workers,
        "load_average_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "images": len(index),
        "shape": list(prepared.features.shape[1:]),
        "queries": len(texts),
        "reference_full_scan": percentiles(ref_seconds),
        "reference_top10_equal_index_top10": f"{sum(agree)}/{len(agree)}",
        "index_build_s": round(build, 2),
        "index_mb": round(size / 1e6, 1),
        "index_dtype": index.manifest["dtype"],
        "exact_over_index": percentiles(exact_seconds),
        "exact_over_index_eager": percentiles(eager_seconds),
        "compiled_first_query_s": round(first_seconds[0], 2),
        "compiled_top10_equal_eager_top10": f"{same_top}/{len(exact_top)}",
        "compiled_speedup_vs_eager": round(
            statistics.median(eager_seconds) / statistics.median(exact_seconds), 1
        ),
        "exact_batched_ms_per_query": round(1e3 * batch_seconds / len(texts), 2),
        "speedup_vs_full_scan": round(
            statistics.median(ref_seconds) / statistics.median(exact_seconds), 1
        ),
        "two_stage": curves,
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench-results" / "search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
