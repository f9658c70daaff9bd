"""Benchmark: the search page's API (`amc-data serve`) against one-shot `amc-data search` runs.

A synth world at synth's default size (`--images` 2,000, 8 regions) and a 1-epoch AMC run are
made once. Then `amc-data serve` is started as a process (torch threads: `--threads`) and timed:

- start-up: from the process's start to its address printed (the run and index loaded);
- the first query after start, over HTTP (`/api/search`, every weight included);
- later queries: `--repeats` distinct test queries, median and 95th percentile;
- 20 queries at once (20 client threads): the wall time for all and the slowest answer;
- the reference, in the same run: `amc-data search RUN QUERY --json` as a process, which pays
  the loading on every query (median of `--reference-queries`), and `Searcher.search` called in
  this process (the library's own latency, without HTTP).

    python benchmarks/bench_serve.py
    python benchmarks/bench_serve.py --images 20000 --repeats 50

Results go to stdout and to bench-results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from bench_encode import machine
from bench_search import percentiles

import amc_data
from amc_data.ranking.search import Searcher
from amc_data.ranking.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "amc_data"]


def make_run(folder: Path, images: int, seed: int) -> tuple[Path, Path]:
    data, run = folder / "data", folder / "run"
    marker = folder / "made.json"
    wanted = {"images": images, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return data, run
    folder.mkdir(parents=True, exist_ok=True)
    amc_data.synth(data, seed=seed, images=images, force=True)
    train(data, run, TrainConfig(epochs=1, device="cpu", workers=0), force=True)
    marker.write_text(json.dumps(wanted))
    return data, run


def ask(url: str, text: str) -> float:
    started = time.perf_counter()
    address = f"{url}api/search?{urllib.parse.urlencode({'q': text})}"
    with urllib.request.urlopen(address, timeout=120) as response:
        body = json.loads(response.read())
    assert body["results"], body
    return time.perf_counter() - started


def timed_server(run: Path, data: Path, texts: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(
        [*COMMAND, "serve", str(run), "--data", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        start_up = time.perf_counter() - started
        first = ask(url, texts[0])
        later = [ask(url, text) for text in texts[1:]]
        burst_started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=20) as pool:
            burst = list(pool.map(lambda t: ask(url, t), (texts * 20)[:20]))
        burst_wall = time.perf_counter() - burst_started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return {
        "start_up_s": round(start_up, 2),
        "first_query_ms": round(1e3 * first, 1),
        "later_queries": percentiles(later),
        "twenty_at_once": {"wall_ms": round(1e3 * burst_wall, 1), **percentiles(burst)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--reference-queries", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-results" / "serve-work")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    data, run = make_run(args.workdir / f"{args.images}", args.images, args.seed)
    prepared = amc_data.load_prepared(data)
    texts = prepared.split_queries("test")["query"].drop_duplicates().tolist()[: args.repeats + 1]

    served = timed_server(run, data, texts, env)

    one_shot = []
    for text in texts[: args.reference_queries]:
        started = time.perf_counter()
        subprocess.run(
            [*COMMAND, "search", str(run), text, "--data", str(data), "--json", "-q"],
            check=True,
            capture_output=True,
            env=env,
        )
        one_shot.append(time.perf_counter() - started)
    searcher = Searcher(run, prepared)
    searcher.search(texts[0])  # the index opened
    library = []
    for text in texts[1:]:
        started = time.perf_counter()
        searcher.search(text)
        library.append(time.perf_counter() - started)

    later_ms = served["later_queries"]["median_ms"]
    result = {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "torch_threads": args.threads,
        "images": len(prepared.images),
        "shape": list(prepared.features.shape[1:]),
        "queries": len(texts),
        "serve": served,
        "reference_cli_search_one_shot": percentiles(one_shot),
        "reference_searcher_in_process": percentiles(library),
        "later_query_vs_cli_search": round(statistics.median(one_shot) * 1e3 / later_ms, 1),
        "later_query_vs_searcher": round(later_ms / (statistics.median(library) * 1e3), 2),
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench-results" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
