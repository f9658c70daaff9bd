"""Benchmark: training throughput and peak memory of AMC at its default size.

A synthetic prepared folder (`amc-data synth`, larger than the default so an epoch is long
enough to time) is trained for a few epochs in child processes: on the CPU with and without
`--compile`, and where CUDA is present also on the GPU with and without bf16 autocast. Each
configuration reports training pairs per second (the median epoch, the first epoch excluded as
warm-up) and peak memory: the process's peak RSS, and on CUDA `torch.cuda.max_memory_allocated`.

    python benchmarks/bench_train.py                 # CPU (and CUDA when present)
    python benchmarks/bench_train.py --images 4000   # another data size

Results go to stdout and to bench-results/train.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, torch
from amc_data.ranking.training import TrainConfig, train
config = TrainConfig(**json.loads(sys.argv[3]))
if config.device == "cuda":
    torch.cuda.reset_peak_memory_stats()
result = train(sys.argv[1], sys.argv[2], config, force=True)
rates = [e["samples_per_s"] for e in result.log[1:]] or [result.log[0]["samples_per_s"]]
print(json.dumps({
    "rates": rates,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if config.device == "cuda" else None,
}))
"""


def run(data: Path, work: Path, name: str, options: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(work / name), json.dumps(options)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"name": name, "error": out.stderr.strip().splitlines()[-1:]}
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "name": name,
        "options": options,
        "samples_per_s": statistics.median(measured["rates"]),
        **measured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "train.json")
    args = parser.parse_args()

    import torch

    import amc_data

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        amc_data.synth(data, seed=0, images=args.images, queries=args.queries)
        base = {"epochs": args.epochs, "device": "cpu"}
        configs = {
            "cpu": base,
            "cpu --loss pairs": {**base, "loss": "pairs"},
            "cpu --compile": {**base, "compile": True},
        }
        if torch.cuda.is_available():
            gpu = {**base, "device": "cuda"}
            configs |= {
                "cuda bf16": {**gpu, "amp": True},
                "cuda fp32": {**gpu, "amp": False},
                "cuda bf16 --compile": {**gpu, "amp": True, "compile": True},
            }
        results = [
            run(data, work, name.replace(" ", "_"), options) for name, options in configs.items()
        ]
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": len(__import__("os").sched_getaffinity(0)),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "data": {"images": args.images, "queries": args.queries, "epochs": args.epochs},
        "results": results,
    }
    for r in results:
        if "error" in r:
            print(f"{r['name']:<22} failed: {r['error']}")
            continue
        cuda = f"  GPU peak {r['peak_cuda_mib']:.0f} MiB" if r.get("peak_cuda_mib") else ""
        print(
            f"{r['name']:<22} {r['samples_per_s']:>9.0f} pairs/s  RSS peak "
            f"{r['peak_rss_mib']:.0f} MiB{cuda}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
