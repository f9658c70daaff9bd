"""`synth`'s peak memory against the size of the features it writes: it must not grow with them.

Each size runs `amc-data synth` in a process of its own (the peak resident set size is that
process's, read from the kernel when it ends, pages of mapped files included) and records the
wall time, the peak RSS and the size of `features.npy`. The reference is the features file:
at the issue's shape (49 regions of 2,048 values) synth once peaked at 13x its size; it should
stay well under the file and the same from one size to the next.

    python benchmarks/bench_synth.py [--images 1500 3000] [--regions 49] [--dim 2048] [--tmp DIR]

`--images 30000` needs about 6 GB of disk in `--tmp` (the folder is deleted afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amc_data.machine import cpu_count


def _run(out: Path, images: int, regions: int, dim: int) -> dict[str, float]:
    """One synth run in a child process: wall seconds, peak RSS and features.npy bytes."""
    entry = "import sys; from amc_data_cli.main import main; main(sys.argv[1:])"
    command = [
        sys.executable,
        "-c",
        entry,
        "synth",
        str(out),
        "--images",
        str(images),
        "--regions",
        str(regions),
        "--dim",
        str(dim),
        "--quiet",
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"synth failed (exit {child.returncode}): {' '.join(command)}")
    size = (out / "features.npy").stat().st_size
    return {
        "images": images,
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        "features_mb": size / 2**20,
        "rss_over_features": usage.ru_maxrss * 1024 / size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1500, 3000])
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--tmp", type=Path, default=None, help="where the folders are written")
    parser.add_argument("--out", type=Path, default=Path("bench-results/synth.json"))
    args = parser.parse_args(argv)

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-synth-", dir=args.tmp) as work:
        for images in args.images:
            folder = Path(work) / f"synth-{images}"
            run = _run(folder, images, args.regions, args.dim)
            shutil.rmtree(folder)
            runs.append(run)
            print(
                f"{images:,} x {args.regions} x {args.dim}: {run['seconds']:.1f} s, peak RSS "
                f"{run['peak_rss_mb']:,.0f} MB for {run['features_mb']:,.0f} MB of features "
                f"({run['rss_over_features']:.2f}x)",
                flush=True,
            )
    results = {
        "regions": args.regions,
        "dim": args.dim,
        "runs": runs,
        "machine": {
            "cpus": cpu_count(),
            "os_cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
