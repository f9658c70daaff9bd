"""Benchmark: `amc-data encode` against the reference workflow, in the same run.

The reference workflow is what the authors' scripts do: unzip the archives to disk, read one JSON
file per image, fit scikit-learn's CountVectorizer and encode every document into a Python list
of rows (`tests/support/reference_encode.py`, one process). Both run as child processes on the same
generated Clickture-shaped corpus (by default 1,000,000 documents: the real 79,665-line dev list
when `../shared/data` is there, else a generated list of its shape, the rest Lite), with the
inputs in the page cache before every run. amc-data is timed three times (the median counts)
without the memory sampler, which would compete for the cores it uses, then run once more for
its peak memory; the reference (one process, leaving a core to the sampler) is timed and
sampled in one run. Peak memory is the sum of the proportional set size of the process and its
workers, sampled every 100 ms, so pages that forked workers share are counted once. Last, the
outputs are checked to be identical.

    python benchmarks/bench_encode.py                  # 1M documents (about 10 minutes)
    python benchmarks/bench_encode.py --docs 100000    # quicker

Results go to stdout and to bench-results/encode.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import corpus  # noqa: E402

from amc_data.machine import cpu_count  # noqa: E402

REFERENCE_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from support import reference_encode
result = reference_encode.reference_clickture(Path({dataset!r}), Path({work!r}))
reference_encode.write_reference(result, Path({out!r}))
"""


class PeakMemory:
    """Samples the summed PSS (and RSS) of a process tree until stopped."""

    def __init__(self, process: psutil.Process, interval: float = 0.1) -> None:
        self.process = process
        self.interval = interval
        self.peak_pss = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pss = rss = 0
            try:
                tree = [self.process, *self.process.children(recursive=True)]
            except psutil.Error:
                break
            for proc in tree:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                pss += info.pss
                rss += info.rss
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(command: list[str], sample_memory: bool = True) -> dict[str, float]:
    """Run `command`; return its wall time and, when sampled, its peak memory."""
    started = time.perf_counter()
    process = psutil.Popen(command)
    if sample_memory:
        with PeakMemory(process) as memory:
            code = process.wait()
    else:
        code = process.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{command[:3]} failed with exit code {code}")
    if not sample_memory:
        return {"seconds": seconds}
    return {
        "seconds": seconds,
        "peak_pss_mib": memory.peak_pss / 2**20,
        "peak_rss_mib": memory.peak_rss / 2**20,
    }


def warm_cache(folder: Path) -> None:
    """Read the inputs once, so every measured run starts with them in the page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as file:
                while file.read(1 << 24):
                    pass


def make_corpus(folder: Path, docs: int, dev: int, seed: int) -> Path:
    """Generate the corpus once per (docs, dev, seed); later runs reuse it."""
    marker = folder / "corpus.json"
    wanted = {"docs": docs, "dev": dev, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    dev_lines = corpus.dev_lines(dev)  # the real list where it is at hand, else its shape
    lite_lines = corpus.lite_lines(docs - len(dev_lines), seed=seed)
    started = time.perf_counter()
    corpus.make_clickture(folder / "clickture", dev_lines, lite_lines, seed=seed)
    print(f"generated {docs:,} documents in {time.perf_counter() - started:.0f} s", flush=True)
    marker.write_text(json.dumps(wanted))
    return folder


def compare(reference_dir: Path, encoded_dir: Path) -> list[str]:
    """Names of the original outputs that differ (empty: identical)."""
    differ = []
    for path in sorted(reference_dir.glob("*.npy")):
        if path.read_bytes() != (encoded_dir / path.name).read_bytes():
            ours, theirs = np.load(encoded_dir / path.name), np.load(path)
            if not (ours.dtype == theirs.dtype and np.array_equal(ours, theirs)):
                differ.append(path.name)
    words = (reference_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    lines = (encoded_dir / "vocab.tsv").read_text(encoding="utf-8").splitlines()[1:]
    if words != [line.split("\t")[1] for line in lines]:
        differ.append("vocabulary")
    return differ


def machine() -> dict[str, object]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dev", type=int, default=80_000, help="dev documents (79,665 at most)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None, help="amc-data --jobs (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-results/encode-work"))
    parser.add_argument("--skip-reference", action="store_true", help="time amc-data only")
    parser.add_argument("--repeats", type=int, default=3, help="amc-data runs (the median counts)")
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    data_dir = make_corpus(work / "corpus", args.docs, min(args.dev, args.docs), args.seed)
    dataset = data_dir / "clickture"
    results: dict[str, object] = {"documents": args.docs, "machine": machine()}

    encoded = work / "encoded"
    shutil.rmtree(encoded, ignore_errors=True)
    # The interpreter running the benchmark, so it works whether or not its venv is activated.
    command = [
        sys.executable,
        "-m",
        "amc_data",
        "encode",
        "clickture",
        "--data-dir",
        str(data_dir),
        "--out",
        str(encoded),
    ]
    command += ["--quiet", "--force", *(["--jobs", str(args.jobs)] if args.jobs else [])]
    # Timed without the memory sampler, which would compete for the cores amc-data uses (the
    # reference leaves one idle); peak memory comes from one more, sampled run.
    runs = []
    for repeat in range(args.repeats):
        warm_cache(dataset)
        print(f"amc-data encode, timed run {repeat + 1} of {args.repeats} ...", flush=True)
        runs.append(measure(command, sample_memory=False)["seconds"])
        print(f"  {runs[-1]:.2f} s", flush=True)
    warm_cache(dataset)
    print("amc-data encode, memory run ...", flush=True)
    memory = measure(command)
    print(f"  {memory}", flush=True)
    results["amc_data"] = {
        "seconds": sorted(runs)[len(runs) // 2],
        "runs": runs,
        "peak_pss_mib": memory["peak_pss_mib"],
        "peak_rss_mib": memory["peak_rss_mib"],
    }

    if not args.skip_reference:
        reference_out, reference_work = work / "reference-out", work / "reference-unzipped"
        for folder in (reference_out, reference_work):
            shutil.rmtree(folder, ignore_errors=True)
        script = REFERENCE_SCRIPT.format(
            tests=str(ROOT / "tests"),
            dataset=str(dataset),
            work=str(reference_work),
            out=str(reference_out),
        )
        warm_cache(dataset)
        print("reference workflow (unzip to disk, then scikit-learn) ...", flush=True)
        results["reference"] = measure([sys.executable, "-c", script])
        print(f"  {results['reference']}", flush=True)
        shutil.rmtree(reference_work, ignore_errors=True)
        differ = compare(reference_out, encoded)
        results["identical"] = not differ
        results["differ"] = differ
        ours, theirs = results["amc_data"], results["reference"]
        results["speedup"] = theirs["seconds"] / ours["seconds"]
        results["memory_ratio"] = ours["peak_pss_mib"] / theirs["peak_pss_mib"]

    out = ROOT / "bench-results" / "encode.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if results.get("identical") is False:
        raise SystemExit(f"outputs differ: {results['differ']}")


if __name__ == "__main__":
    main()
