"""Benchmark: the model half at COCO's size (123,287 images x 49 x 2,048 float16, about 25 GB).

Every step runs in a child process of its own, so each reports its own time and peak memory:

1. `corpus`: a generated `keywords_coco.zip` (Karpathy's split sizes: 82,783 train, 30,504
   restval, 5,000 val, 5,000 test; 5 captions an image from a small vocabulary) and its
   `encode` output. Setup, timed but not the point.
2. `features`: random float16 features streamed to one `.npy` file in bounded memory (64 MiB
   at a time, written back and dropped from the page cache as it goes), rows in `imgid` order.
3. `prepare`: `prepare_coco` on them, as a user runs it (the features file is linked, then
   scanned for NaN/Inf).
4. `subset`: the training folder, written by `write_prepared` from the prepared one: every
   image and feature row (the file is linked again, so training reads a 25 GB memmap), but only
   `--train-captions` train captions and `--val-captions` val captions, so that an epoch is
   short; the test split and both vocabularies are unchanged.
5. `train`: one torch thread, `--epochs` epochs on the training folder, with today's per-pair
   negatives (`loss="pairs"`, `negatives=8`: the reference) and, where the installed amc-data
   has it, the shared pool (`loss="pool"`). Pairs per second is the median epoch after the
   first (warm-up).
6. `eval`: `evaluate` of the pairs run on the prepared folder's test split: 25,000 captions
   against 5,000 images, the 5K and 1K protocols. The time of the protocols' metrics alone
   (`caption_ranking` on a matrix of that shape) is reported beside it.

Peak memory is sampled from /proc every 20 ms in each child: resident set (VmRSS, as `ps`
shows), and its two parts, anonymous memory (RssAnon: what the process itself holds) and
file-backed pages (RssFile: pages of the memory-mapped features that are resident, page cache
the kernel reclaims under pressure). Bounded memory means RssAnon does not grow with the
features file.

    python benchmarks/bench_scale.py                  # COCO size: ~26 GB of disk, ~30 min
    python benchmarks/bench_scale.py --images 20000   # a smaller folder, same steps
    python benchmarks/bench_scale.py --keep --work /big/disk/amc-scale

The work folder is deleted at the end unless `--keep`. Results go to stdout and to
bench-results/scale.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
COCO_IMAGES = 123_287
KARPATHY = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}
CHUNK_BYTES = 64 << 20
SYNC_BYTES = 1 << 30  # written back and dropped from the page cache every this many bytes


# -- data -----------------------------------------------------------------------------------------
def split_counts(images: int) -> dict[str, int]:
    """Karpathy's split sizes at COCO's size; smaller sizes keep val and test at 5,000 while
    there is room (the protocols need them), else 4% each, in whole folds of 1,000 when
    possible."""
    if images == COCO_IMAGES:
        return dict(KARPATHY)
    held = 5_000 if images >= 40_000 else max(1, images * 4 // 100)
    if held >= 2_000:
        held -= held % 1_000
    rest = images - 2 * held
    restval = rest * KARPATHY["restval"] // (KARPATHY["train"] + KARPATHY["restval"])
    return {"train": rest - restval, "restval": restval, "val": held, "test": held}


def features_bytes(images: int, regions: int, dim: int) -> int:
    return images * regions * dim * 2 + 128


def write_features(
    path: Path, images: int, regions: int, dim: int, seed: int = 0, drop_cache: bool = True
) -> None:
    """`(images, regions, dim)` float16 values in [0.5, 2) (finite, no subnormals), written
    64 MiB at a time: the whole array is never in memory, and (`drop_cache`)
    the written pages are dropped from the page cache as the file grows, so a file larger than
    the machine's memory does not push everything else out of it."""
    header = {"descr": "<f2", "fortran_order": False, "shape": (images, regions, dim)}
    rows = max(1, CHUNK_BYTES // (regions * dim * 2))
    rng = np.random.default_rng(seed)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.lib.format.write_array_header_2_0(file, header)  # type: ignore[no-untyped-call]
        unsynced = 0
        # One random block, varied per chunk by XOR with a random mantissa pattern: drawing
        # 25 GB of random bits would take minutes of CPU; the values do not change the timings.
        block = rng.integers(0, 1 << 16, size=rows * regions * dim, dtype=np.uint16)
        block &= 0x07FF  # mantissa and the exponent's lowest bit: exponent 14 or 15
        block |= 0x3800
        bits = np.empty_like(block)
        for start in range(0, images, rows):
            count = min(rows, images - start) * regions * dim
            np.bitwise_xor(block, rng.integers(0, 1 << 10, dtype=np.uint16), out=bits)
            file.write(bits[:count].data)
            unsynced += bits.nbytes
            if drop_cache and unsynced >= SYNC_BYTES:
                _drop(file)
                unsynced = 0
        if drop_cache:
            _drop(file)
    os.replace(partial, path)


def _drop(file: Any) -> None:
    file.flush()
    os.fdatasync(file.fileno())
    os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def training_folder(
    prepared_dir: Path, out: Path, train_captions: int, val_captions: int, seed: int = 0
) -> dict[str, Any]:
    """A copy of the prepared folder (features linked) whose train and val splits keep only a
    sample of their captions; every image, the test split and the vocabularies unchanged."""
    from amc_data.prepare import load_prepared
    from amc_data.prepare.queries import QueryVocabulary
    from amc_data.prepare.writer import FeatureRows, write_prepared

    prepared = load_prepared(prepared_dir, check_features=False)
    rng = np.random.default_rng(seed)
    queries = prepared.queries
    split = queries["split"].to_numpy()
    keep = split == "test"
    for name, count in (("train", train_captions), ("val", val_captions)):
        where = np.flatnonzero(split == name)
        keep[rng.choice(where, size=min(count, where.size), replace=False)] = True
    kept = queries[keep]
    judgments = prepared.judgments[prepared.judgments["query_id"].isin(kept["query_id"])]
    write_prepared(
        out,
        source="coco",
        features=FeatureRows((prepared.features,), path=prepared_dir / "features.npy"),
        feature_ids=prepared.feature_ids,
        keywords_csr=prepared.keywords,
        vocab_tsv_path=prepared_dir / "vocab.tsv",
        images=prepared.images,
        queries=kept,
        judgments=judgments,
        query_vocabulary=QueryVocabulary.read_tsv(prepared_dir / "query_vocab.tsv"),
        options={
            "subset_of": str(prepared_dir),
            "train_captions": train_captions,
            "val_captions": val_captions,
            "seed": seed,
        },
        extra={"coco": prepared.info.get("coco"), "encoded": prepared.info.get("encoded")},
        force=True,
    )
    return {s: int((kept["split"] == s).sum()) for s in ("train", "val", "test")}


# -- measuring ------------------------------------------------------------------------------------
class Memory:
    """Peak VmRSS, RssAnon and RssFile of this process, sampled until stopped."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in self.peak:
                self.peak[name] = max(self.peak[name], int(value.split()[0]))  # kB

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, float]:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        return {
            "peak_rss_mib": max(self.peak["VmRSS"], maxrss) / 1024,
            "peak_anon_mib": self.peak["RssAnon"] / 1024,
            "peak_file_mib": self.peak["RssFile"] / 1024,
        }


def train_options() -> set[str]:
    from amc_data.ranking.config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def train_configs(epochs: int, negatives: int, pool_negatives: int) -> dict[str, dict]:
    """Today's per-pair negatives (the reference) and, where amc-data has it, the shared pool."""
    known = train_options()
    base: dict[str, Any] = {"epochs": epochs, "device": "cpu", "workers": 0}
    if "features_on" in known:
        base["features_on"] = "host"
    if "loss" not in known:
        return {f"pairs t={negatives}": {**base, "negatives": negatives}}
    return {
        f"pairs t={negatives}": {**base, "loss": "pairs", "negatives": negatives},
        f"pool S={pool_negatives}": {**base, "loss": "pool", "pool_negatives": pool_negatives},
    }


# -- the child steps ------------------------------------------------------------------------------
def step_corpus(work: Path, images: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from support import corpus

    from amc_data import EncodeConfig, encode

    started = time.perf_counter()
    corpus.make_coco(work / "data" / "coco", split_counts(images), seed=0, compresslevel=1)
    made = time.perf_counter()
    encode("coco", data_dir=work / "data", config=EncodeConfig(jobs=2))
    done = time.perf_counter()
    return {"corpus_s": made - started, "encode_s": done - made}


def step_features(work: Path, images: int, regions: int, dim: int) -> dict[str, Any]:
    np.save(work / "ids.npy", np.arange(images, dtype=np.int64))  # imgid = dataset.json order
    write_features(work / "features.npy", images, regions, dim)
    return {"bytes": (work / "features.npy").stat().st_size}


def step_prepare(work: Path) -> dict[str, Any]:
    from amc_data.prepare.coco import CocoConfig, prepare_coco

    result = prepare_coco(
        work / "features.npy",
        work / "ids.npy",
        work / "coco-prepared",
        data_dir=work / "data",
        config=CocoConfig(force=True),
    )
    return {"counts": result.counts, "features_stored": result.features_stored}


def step_subset(work: Path, train_captions: int, val_captions: int) -> dict[str, Any]:
    counts = training_folder(
        work / "coco-prepared", work / "train-prepared", train_captions, val_captions
    )
    return {"queries": counts}


def step_train(work: Path, name: str, options: dict[str, Any]) -> dict[str, Any]:
    import torch

    from amc_data.ranking.training import TrainConfig, train

    torch.set_num_threads(1)
    config = TrainConfig(**options)
    run_dir = work / "runs" / name.replace(" ", "_").replace("=", "")
    result = train(work / "train-prepared", run_dir, config, force=True)
    rates = [e["samples_per_s"] for e in result.log[1:]] or [result.log[0]["samples_per_s"]]
    return {
        "options": options,
        "run": str(run_dir),
        "samples_per_s": statistics.median(rates),
        "rates": rates,
        "epoch_seconds": [e["seconds"] for e in result.log],
        "val_ndcg@10": [e.get("ndcg@10") for e in result.log],
    }


def step_eval(work: Path, run: str) -> dict[str, Any]:
    import torch

    from amc_data.evaluation.metrics import caption_ranking
    from amc_data.ranking.runs import evaluate

    torch.set_num_threads(1)
    started = time.perf_counter()
    evaluation = evaluate(
        [run],
        work / "coco-prepared",
        split="test",
        device="cpu",
        out=work / "eval",
        random_baseline=False,
    )
    seconds = time.perf_counter() - started
    metrics = evaluation.runs[0].metrics
    # The protocols' metrics alone, on a random matrix of the same shape.
    prepared_counts = json.loads((work / "coco-prepared" / "prepared.json").read_text())["counts"]
    n_images = prepared_counts["images"]["test"]
    n_captions = prepared_counts["queries"]["test"]
    sims = np.random.default_rng(0).random((n_images, n_captions), dtype=np.float32)
    fold = 1000 if n_images % 1000 == 0 and n_images > 1000 else n_images
    started = time.perf_counter()
    caption_ranking(sims, captions_per_image=n_captions // n_images, fold_size=fold)
    protocols = time.perf_counter() - started
    recalls = {k: v for k, v in metrics.items() if "r@" in k or k.startswith(("5k", "1k"))}
    return {
        "seconds": seconds,
        "protocols_only_s": protocols,
        "images": n_images,
        "captions": n_captions,
        "metrics": recalls,
    }


STEPS = {
    "corpus": step_corpus,
    "features": step_features,
    "prepare": step_prepare,
    "subset": step_subset,
    "train": step_train,
    "eval": step_eval,
}


def child(name: str, arguments: dict[str, Any]) -> None:
    """Run one step here and print its result as the last line of stdout."""
    with Memory() as memory:
        started = time.perf_counter()
        result = STEPS[name](**arguments)
        seconds = time.perf_counter() - started
    print(json.dumps({"step_seconds": seconds, **memory.report(), **result}))


def run_step(step: str, **arguments: Any) -> dict[str, Any]:
    shown = f"{step} {arguments.get('name', '')}".strip()
    print(f"... {shown} ({time.strftime('%H:%M:%S')})", flush=True)
    encoded = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, encoded],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-5:]
        raise SystemExit(f"step {shown} failed:\n" + "\n".join(tail))
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the benchmark --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=COCO_IMAGES)
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--train-captions", type=int, default=2000)
    parser.add_argument("--val-captions", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=8)
    parser.add_argument("--pool-negatives", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/amc-bench-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: reuse the folders a previous run of the same size left in --work",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "scale.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], {k: _path(v) for k, v in json.loads(args.child[1]).items()})
        return

    from bench_encode import machine

    work = args.work.resolve()
    need = features_bytes(args.images, args.regions, args.dim)
    record = work / "setup.json"
    if work.is_dir() and any(work.iterdir()) and not record.is_file():
        raise SystemExit(
            f"{work} holds files that this benchmark did not write (no setup.json); it deletes "
            "its work folder at the end, so choose an empty or new --work."
        )
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    shape = {
        "images": args.images,
        "regions": args.regions,
        "dim": args.dim,
        "train_captions": args.train_captions,
        "val_captions": args.val_captions,
    }
    saved = json.loads(record.read_text()) if args.reuse and record.is_file() else {}
    if saved.get("shape") != shape:
        saved = {"shape": shape}
    steps: dict[str, Any] = dict(saved.get("steps", {}))
    record.write_text(json.dumps({"shape": shape, "steps": steps}))
    free = shutil.disk_usage(work).free
    if "features" not in steps and need + (2 << 30) > free:
        fits = int((free - (2 << 30)) // (args.regions * args.dim * 2))
        raise SystemExit(
            f"{work} has {free / 2**30:.1f} GiB free; {args.images:,} images x {args.regions} x "
            f"{args.dim} float16 need {need / 2**30:.1f} GiB (+2 GiB). Pass --images {fits:,} "
            "or less, or a --work folder on a larger disk."
        )
    setup = {
        "corpus": {"work": work, "images": args.images},
        "features": {"work": work, "images": args.images, "regions": args.regions, "dim": args.dim},
        "prepare": {"work": work},
        "subset": {
            "work": work,
            "train_captions": args.train_captions,
            "val_captions": args.val_captions,
        },
    }
    try:
        for name, arguments in setup.items():
            if name in steps:
                print(f"... {name}: reused from {record}")
                continue
            steps[name] = run_step(name, **arguments)
            record.write_text(json.dumps({"shape": shape, "steps": steps}))
        training = {}
        for name, options in train_configs(
            args.epochs, args.negatives, args.pool_negatives
        ).items():
            training[name] = run_step("train", work=work, name=name, options=options)
        steps["train"] = training
        reference = next(iter(training.values()))
        if not args.skip_eval:
            steps["eval"] = run_step("eval", work=work, run=reference["run"])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "machine": machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "data": {
            "images": args.images,
            "regions": args.regions,
            "dim": args.dim,
            "splits": split_counts(args.images),
            "features_gib": need / 2**30,
            "train_captions": args.train_captions,
            "val_captions": args.val_captions,
            "epochs": args.epochs,
            "torch_threads": 1,
        },
        "steps": steps,
    }
    for result in training.values():
        result["ratio_to_reference"] = result["samples_per_s"] / reference["samples_per_s"]
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def _path(value: Any) -> Any:
    return Path(value) if isinstance(value, str) and value.startswith("/") else value


def print_table(report: dict[str, Any]) -> None:
    data, steps = report["data"], report["steps"]
    print(
        f"\n{data['images']:,} images x {data['regions']} x {data['dim']} float16 "
        f"({data['features_gib']:.1f} GiB); load {report['load_average']['before'][0]:.1f}"
        f" -> {report['load_average']['after'][0]:.1f}"
    )

    def memory(r: dict[str, Any]) -> str:
        return (
            f"RSS {r['peak_rss_mib']:>7,.0f} MiB (anon {r['peak_anon_mib']:>6,.0f}, "
            f"file {r['peak_file_mib']:>6,.0f})"
        )

    corpus = steps["corpus"]
    print(
        f"{'corpus + encode':<26} {corpus['step_seconds']:>8.1f} s  {memory(corpus)}  "
        f"(corpus {corpus['corpus_s']:.0f} s, encode {corpus['encode_s']:.0f} s)"
    )
    gib = data["features_gib"]
    for name, label in (
        ("features", "write features"),
        ("prepare", "prepare coco"),
        ("subset", "write training folder"),
    ):
        r = steps[name]
        rate = f"  {gib / r['step_seconds']:.2f} GiB/s" if name != "subset" else ""
        print(f"{label:<26} {r['step_seconds']:>8.1f} s  {memory(r)}{rate}")
    for name, r in steps["train"].items():
        print(
            f"{'train ' + name:<26} {r['samples_per_s']:>8.1f} pairs/s  {memory(r)}  "
            f"x{r['ratio_to_reference']:.2f}"
        )
    if "eval" in steps:
        r = steps["eval"]
        print(
            f"{'eval 5K + 1K':<26} {r['seconds']:>8.1f} s  {memory(r)}  "
            f"({r['captions']:,} x {r['images']:,}; metrics alone "
            f"{r['protocols_only_s']:.1f} s)"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
