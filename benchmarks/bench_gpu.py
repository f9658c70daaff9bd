"""Benchmark: training on a GPU at COCO's shape, features resident on the device or read by the
loader from the memory-mapped file, as one prepared command.

It builds a COCO-shaped prepared folder (`write_prepared`, features linked; by default 123,287
images x 49 x 2,048 float16, about 25 GB, Karpathy's split sizes with restval in train, random
keywords and captions from a small vocabulary; `--train-captions` train captions so that an
epoch is short), then trains it in one child process per configuration: features on the device
(`features_on="device"`) and on the host (`"host"`, the loader gathers from the memmap, pinned
memory, `--workers` loader processes), each with the per-pair negatives (`loss="pairs"`) and
the shared pool (`loss="pool"`), bf16 autocast. Each child reports:

- pairs per second, the median epoch after the first (warm-up: workers start, features copied);
- `torch.cuda.max_memory_allocated` and the process's peak RSS;
- the share of step time spent waiting for data: the loader is wrapped so that each batch's
  wait (from asking for the next batch to having it, after `torch.cuda.synchronize()` so that
  the previous step's GPU work is charged to the step) is timed against the rest of the step
  (moving the batch to the device, forward, backward, optimiser, until the next request).

Last, a `torchrun` smoke run on 2 GPUs with NCCL (1 epoch through `amc-data train`), when there
are 2 GPUs; skipped otherwise. Options the installed amc-data does not have yet (`loss`,
`features_on`) are left out, and said so.

    python benchmarks/bench_gpu.py                    # a CUDA machine, COCO size
    python benchmarks/bench_gpu.py --images 30000     # a smaller folder
    python benchmarks/bench_gpu.py --cpu              # dry run on the CPU at a tiny size

Without a GPU (and without `--cpu`) it says so and exits 0. Results go to stdout and to
bench-results/gpu.json; the work folder is deleted unless `--keep`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scale import COCO_IMAGES, Memory, split_counts, write_features  # noqa: E402

ROOT = HERE.parent
CAPTION_WORDS = [
    "a",
    "the",
    "man",
    "woman",
    "dog",
    "cat",
    "sits",
    "on",
    "in",
    "with",
    "red",
    "blue",
    "table",
    "street",
    "bus",
    "train",
    "plate",
    "pizza",
    "field",
    "ball",
    "kitchen",
    "bed",
    "horse",
    "beach",
    "snow",
    "player",
    "phone",
    "window",
    "car",
    "bike",
]
KEYWORDS = 2_000


# -- the folder -----------------------------------------------------------------------------------
def coco_shaped_folder(
    work: Path,
    images: int,
    regions: int,
    dim: int,
    train_captions: int,
    val_captions: int,
    seed: int = 0,
) -> Path:
    """A prepared folder of COCO's shape, written by `write_prepared` (features linked)."""
    import pandas as pd
    import scipy.sparse

    from amc_data.prepare.queries import fit_query_vocabulary
    from amc_data.prepare.writer import FeatureRows, write_prepared

    rng = np.random.default_rng(seed)
    counts = split_counts(images)
    n_train, n_val, n_test = counts["train"] + counts["restval"], counts["val"], counts["test"]
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    split = split[rng.permutation(images)]
    img_ids = np.arange(images, dtype=np.int64)
    fold = np.full(images, -1, dtype=np.int8)
    test = np.flatnonzero(split == "test")
    fold[test] = np.arange(test.size) // 1000 if test.size >= 2000 else 0
    # Captions: every test image's 5 (the protocols), a sample of train and val ones.
    owners = [np.repeat(test, 5)]
    for name, count in (("train", train_captions), ("val", val_captions)):
        owners.append(rng.choice(np.flatnonzero(split == name), size=count))
    owner = np.concatenate(owners)
    words = rng.integers(len(CAPTION_WORDS), size=(owner.size, 8))
    texts = [" ".join(CAPTION_WORDS[w] for w in row) for row in words]
    queries = pd.DataFrame(
        {"query_id": np.arange(owner.size, dtype=np.int64), "query": texts, "split": split[owner]}
    )
    judgments = pd.DataFrame(
        {"query_id": queries["query_id"], "img_id": img_ids[owner], "label": np.int32(1)}
    )
    per_image = rng.integers(10, 31, size=images)
    indptr = np.concatenate([[0], np.cumsum(per_image)])
    indices = np.concatenate([np.sort(rng.choice(KEYWORDS, n, replace=False)) for n in per_image])
    keywords = scipy.sparse.csr_matrix(
        (np.ones(indices.size, np.int32), indices, indptr), shape=(images, KEYWORDS)
    )
    df = np.bincount(indices, minlength=KEYWORDS)
    vocab = work / "vocab.tsv"
    vocab.write_text(
        "word_id\tword\tdf\n" + "".join(f"{i}\tkw{i:05d}\t{df[i]}\n" for i in range(KEYWORDS)),
        encoding="utf-8",
    )
    features = work / "features.npy"
    write_features(features, images, regions, dim, seed=seed, drop_cache=False)
    out = work / "prepared"
    write_prepared(
        out,
        source="coco",
        features=FeatureRows((np.load(features, mmap_mode="r"),), path=features),
        feature_ids=img_ids,
        keywords_csr=keywords,
        vocab_tsv_path=vocab,
        images=pd.DataFrame({"img_id": img_ids, "split": split, "fold": fold}),
        queries=queries,
        judgments=judgments,
        query_vocabulary=fit_query_vocabulary(queries.loc[queries.split == "train", "query"]),
        options={"bench_gpu": True, "seed": seed},
        extra={
            "coco": {"test_folds": int(fold.max()) + 1, "fold_size": 1000, "captions_per_image": 5}
        },
        force=True,
    )
    return out


# -- one training run, timed ----------------------------------------------------------------------
class TimedLoader:
    """A training loader whose iteration records, per epoch, the time spent waiting for each
    batch and the time of the rest of each step."""

    def __init__(self, loader: Any, sync: Any) -> None:
        self.loader, self.sync = loader, sync
        self.epochs: list[dict[str, float]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Any:
        record = {"wait_s": 0.0, "step_s": 0.0, "batches": 0}
        self.epochs.append(record)
        batches = iter(self.loader)
        last = None
        while True:
            self.sync()  # the previous step's GPU work belongs to the step
            asked = time.perf_counter()
            if last is not None:
                record["step_s"] += asked - last
            try:
                batch = next(batches)
            except StopIteration:
                return
            last = time.perf_counter()
            record["wait_s"] += last - asked
            record["batches"] += 1
            yield batch


def child_train(data: str, run: str, options: dict[str, Any]) -> dict[str, Any]:
    import torch

    import amc_data.ranking.training as training
    from amc_data.ranking.training import TrainConfig, train

    cuda = options.get("device") == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timed: list[TimedLoader] = []
    original = training.train_loader

    def timed_loader(*args: Any, **kwargs: Any) -> TimedLoader:
        timed.append(TimedLoader(original(*args, **kwargs), sync))
        return timed[-1]

    training.train_loader = timed_loader  # type: ignore[assignment]
    result = train(data, run, TrainConfig(**options), force=True)
    later = result.log[1:] or result.log
    epochs = timed[0].epochs[1:] or timed[0].epochs if timed else []
    wait = sum(e["wait_s"] for e in epochs)
    step = sum(e["step_s"] for e in epochs)
    return {
        "options": options,
        "samples_per_s": statistics.median(e["samples_per_s"] for e in later),
        "epoch_seconds": [e["seconds"] for e in result.log],
        "data_wait_share": wait / (wait + step) if wait + step > 0 else None,
        "wait_s": wait,
        "step_s": step,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "val_ndcg@10": [e.get("ndcg@10") for e in result.log],
    }


def child(arguments: dict[str, Any]) -> None:
    with Memory() as memory:
        result = child_train(**arguments)
    print(json.dumps({**result, **memory.report()}))


def run_child(data: Path, run: Path, options: dict[str, Any]) -> dict[str, Any]:
    encoded = json.dumps({"data": str(data), "run": str(run), "options": options})
    env = dict(os.environ)
    if options.get("device") == "cpu":
        # The dry run shares a small CPU: several OpenMP threads there wait on each other.
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", encoded],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if out.returncode != 0:
        return {"options": options, "error": out.stderr.strip().splitlines()[-3:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def configurations(device: str, epochs: int, workers: int, pool_negatives: int) -> dict[str, dict]:
    from amc_data.ranking.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {"device": device, "epochs": epochs, "amp": True}
    places = ["device", "host"] if "features_on" in known else ["host"]
    losses = ["pairs", "pool"] if "loss" in known else ["pairs"]
    configs = {}
    for place in places:
        for loss in losses:
            options = {**base, "workers": workers if place == "host" else 0}
            if "features_on" in known:
                options["features_on"] = place
            if "loss" in known:
                options["loss"] = loss
                if loss == "pool":
                    options["pool_negatives"] = pool_negatives
            configs[f"{place} {loss}"] = options
    return configs


def nccl_smoke(data: Path, run: Path) -> dict[str, Any]:
    """`amc-data train` for 1 epoch under torchrun on 2 GPUs (NCCL)."""
    import torch

    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): the NCCL run needs 2"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "amc_data",
        "train",
        str(data),
        "--out",
        str(run),
        "--device",
        "cuda",
        "--epochs",
        "1",
        "--force",
    ]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    return {
        "returncode": out.returncode,
        "seconds": time.perf_counter() - started,
        "tail": out.stderr.strip().splitlines()[-3:],
    }


# -- the benchmark --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="dry run on the CPU at a tiny size (unless sizes are given)",
    )
    parser.add_argument("--images", type=int)
    parser.add_argument("--regions", type=int)
    parser.add_argument("--dim", type=int)
    parser.add_argument("--train-captions", type=int)
    parser.add_argument("--val-captions", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--pool-negatives", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/amc-bench-gpu"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(
            "bench_gpu: torch sees no CUDA device here, so there is nothing to measure; run it "
            "on a GPU machine, or pass --cpu for a dry run on the CPU."
        )
        return 0
    tiny = {"images": 3000, "regions": 7, "dim": 64, "train_captions": 1000}
    full = {"images": COCO_IMAGES, "regions": 49, "dim": 2048, "train_captions": 20000}
    for name, value in (tiny if args.cpu else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    device = "cpu" if args.cpu else "cuda"
    work = args.work.resolve()
    if work.exists():
        raise SystemExit(f"{work} exists; remove it or choose another --work.")
    need = args.images * args.regions * args.dim * 2
    work.mkdir(parents=True)
    if need + (2 << 30) > shutil.disk_usage(work).free:
        shutil.rmtree(work)
        raise SystemExit(f"{work}: {need / 2**30:.1f} GiB of features do not fit; pass --images.")
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "data": {
            k: getattr(args, k)
            for k in (
                "images",
                "regions",
                "dim",
                "train_captions",
                "val_captions",
                "epochs",
                "workers",
            )
        },
    }
    try:
        started = time.perf_counter()
        data = coco_shaped_folder(
            work, args.images, args.regions, args.dim, args.train_captions, args.val_captions
        )
        report["build_s"] = time.perf_counter() - started
        print(f"built {data} in {report['build_s']:.0f} s", flush=True)
        results = {}
        for name, options in configurations(
            device, args.epochs, args.workers, args.pool_negatives
        ).items():
            print(f"... {name}", flush=True)
            results[name] = run_child(data, work / "runs" / name.replace(" ", "-"), options)
        report["results"] = results
        report["nccl"] = (
            nccl_smoke(data, work / "runs" / "nccl") if device == "cuda" else {"skipped": "--cpu"}
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{report['device']}: {args.images:,} x {args.regions} x {args.dim} float16, "
        f"{args.train_captions:,} train captions, "
        f"{'bf16 autocast' if device == 'cuda' else 'float32 on the CPU'}"
    )
    for name, r in report["results"].items():
        if "error" in r:
            print(f"{name:<14} failed: {r['error']}")
            continue
        cuda = f"  GPU peak {r['peak_cuda_mib']:,.0f} MiB" if r["peak_cuda_mib"] else ""
        share = r["data_wait_share"]
        print(
            f"{name:<14} {r['samples_per_s']:>10,.0f} pairs/s  waiting for data "
            f"{'-' if share is None else f'{100 * share:.0f}%'}{cuda}  RSS peak "
            f"{r['peak_rss_mib']:,.0f} MiB"
        )
    print(f"torchrun NCCL: {report['nccl']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
