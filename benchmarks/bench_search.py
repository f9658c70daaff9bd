"""Benchmark: one free-text query against a split's images with `amc-data search`, against the
per-pair scoring path (the model's `forward`, every image a candidate of the query), same run.

A synth folder (by default 33,400 images at synth's shape, 8 regions x 32, of which 15% are the
test split's: about 5,000) and a 1-epoch AMC run are made once. Then:

- `Searcher(run, data).search(text)`: the model and folder loaded once, the split's images kept
  in memory, each query projected and scored against them with `score_pool` and the top 10
  explained; the median of `--repeats` different test queries counts.
- `search(run, data, text)`: the one-shot call the CLI makes (loading included).
- the per-pair path: the same query scored by `model(query, images)` with all images as its
  candidates, the images read from the folder each time, as `score_split` does for judged lists.
  Its scores are checked against search's.

    python benchmarks/bench_search.py                  # about 5,000 test images
    python benchmarks/bench_search.py --images 4000    # quicker

Results go to stdout and to bench-results/search.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_encode import machine

import amc_data
from amc_data.ranking.data import image_batch, query_batch
from amc_data.ranking.search import Searcher, search
from amc_data.ranking.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def make_run(folder: Path, images: int, seed: int) -> tuple[Path, Path]:
    data, run = folder / "data", folder / "run"
    marker = folder / "made.json"
    wanted = {"images": images, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return data, run
    amc_data.synth(data, seed=seed, images=images, queries=max(200, images // 5), force=True)
    train(data, run, TrainConfig(epochs=1, device="cpu", workers=0), force=True)
    marker.write_text(json.dumps(wanted))
    return data, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=33_400)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-results" / "search-work")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, run = make_run(args.workdir, args.images, args.seed)
    prepared = amc_data.load_prepared(data)
    queries = prepared.split_queries("test").head(args.repeats)
    texts = queries["query"].tolist()

    started = time.perf_counter()
    searcher = Searcher(run, prepared)
    load_seconds = time.perf_counter() - started
    pool = searcher.img_ids
    searcher.search(texts[0])  # warm-up
    per_query = []
    for text in texts:
        started = time.perf_counter()
        searcher.search(text)
        per_query.append(time.perf_counter() - started)

    started = time.perf_counter()
    search(run, data, texts[0])
    one_shot = time.perf_counter() - started

    model = searcher.loaded.model
    per_pair = []
    for query_id, text in zip(queries["query_id"], texts, strict=True):
        started = time.perf_counter()
        with torch.no_grad():
            images = image_batch(prepared, pool, searcher.max_keywords)
            grid = images.map(lambda t: t.unsqueeze(0))  # (1, N, ...): every image a candidate
            reference = model(query_batch(prepared, [query_id]), grid)[0].numpy()
        per_pair.append(time.perf_counter() - started)
        _, _, batch = searcher.read_query(text)
        np.testing.assert_allclose(searcher.scores(batch), reference, rtol=1e-4, atol=1e-5)

    result = {
        "machine": machine(),
        "torch_threads": args.threads,
        "images": int(pool.size),
        "shape": list(prepared.features.shape[1:]),
        "queries": len(texts),
        "searcher_load_s": round(load_seconds, 3),
        "search_median_s": round(statistics.median(per_query), 4),
        "one_shot_search_s": round(one_shot, 3),
        "per_pair_median_s": round(statistics.median(per_pair), 4),
        "speedup_vs_per_pair": round(statistics.median(per_pair) / statistics.median(per_query), 1),
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench-results" / "search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
