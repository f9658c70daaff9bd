"""Fetch throughput on loopback: amc-data against curl, same file, same server, same run.

A generated file (512 MiB by default) is served from a separate process (sendfile, Range
support). curl downloads it with `curl -s -o`; amc-data runs its whole `fetch` (lock, stream,
sha256 while streaming, size check, rename). Each is run a few times; the best and median speeds
are printed as a table and written to bench-results/fetch.json.

    python benchmarks/bench_fetch.py [--size-mib 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from amc_data.fetching.core import Outcome, fetch
from amc_data.machine import cpu_count

MIB = 1 << 20


class _SendfileHandler(BaseHTTPRequestHandler):
    """Serves the one file at any path, with `Range: bytes=N-`, through sendfile."""

    protocol_version = "HTTP/1.1"
    path_to_serve = ""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        size = os.path.getsize(self.path_to_serve)
        start = 0
        asked = self.headers.get("Range", "")
        if asked.startswith("bytes=") and asked.endswith("-"):
            start = int(asked[6:-1])
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        self.wfile.flush()
        with open(self.path_to_serve, "rb") as fh:
            try:
                self.connection.sendfile(fh, offset=start)
            except OSError:  # the client went away
                self.close_connection = True


def _serve(path: str, port_queue: mp.Queue) -> None:
    _SendfileHandler.path_to_serve = path
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SendfileHandler)
    server.daemon_threads = True
    port_queue.put(server.server_address[1])
    server.serve_forever()


def _make_file(path: Path, size_mib: int) -> str:
    """Random-looking data (a random MiB, each copy salted), and its sha256."""
    block = bytearray(os.urandom(MIB))
    sha = hashlib.sha256()
    with open(path, "wb") as fh:
        for i in range(size_mib):
            block[:8] = i.to_bytes(8, "little")
            fh.write(block)
            sha.update(block)
    return sha.hexdigest()


def _time(action, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results/fetch.json"))
    args = parser.parse_args()
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is not installed; the benchmark compares against it.")

    with tempfile.TemporaryDirectory(prefix="amc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "served.bin"
        sha256 = _make_file(source, args.size_mib)
        size = source.stat().st_size
        ports: mp.Queue = mp.Queue()
        server = mp.get_context("fork").Process(target=_serve, args=(str(source), ports))
        server.start()
        try:
            url = f"http://127.0.0.1:{ports.get(timeout=30)}/served.bin"
            manifest = tmp / "bench.toml"
            manifest.write_text(
                f'name = "bench"\n[[files]]\nname = "file.bin"\nurls = ["{url}"]\n'
                f'size = {size}\nsha256 = "{sha256}"\n'
            )
            out_curl = tmp / "curl.bin"

            def run_curl() -> None:
                subprocess.run([curl, "-s", "-o", str(out_curl), url], check=True)
                out_curl.unlink()

            def run_amc() -> None:
                data_dir = tmp / "data"
                [result] = fetch(data_dir=data_dir, manifest_paths=[manifest], jobs=1)
                if result.outcome is not Outcome.DOWNLOADED:
                    raise SystemExit(f"amc-data fetch failed: {result.reason}")
                shutil.rmtree(data_dir)

            run_curl()  # warm-up: page cache and server
            runs = {"curl": [], "amc-data": []}
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                runs["curl"] += _time(run_curl, 1)
                runs["amc-data"] += _time(run_amc, 1)
        finally:
            server.terminate()
            server.join()

    speeds = {
        tool: {
            "seconds": [round(t, 4) for t in times],
            "best_MBps": round(size / min(times) / 1e6, 1),
            "median_MBps": round(size / statistics.median(times) / 1e6, 1),
        }
        for tool, times in runs.items()
    }
    ratio_best = speeds["amc-data"]["best_MBps"] / speeds["curl"]["best_MBps"]
    ratio_median = speeds["amc-data"]["median_MBps"] / speeds["curl"]["median_MBps"]
    report = {
        "benchmark": "fetch over loopback",
        "file_bytes": size,
        "repeats": args.repeats,
        "cpu": _cpu_model(),
        "cores": cpu_count(),
        "python": platform.python_version(),
        "results": speeds,
        "ratio_amc_over_curl_best": round(ratio_best, 3),
        "ratio_amc_over_curl_median": round(ratio_median, 3),
        "notes": "amc-data verifies sha256 and size while streaming; curl only writes.",
    }
    print(
        f"fetch, {size / MIB:.0f} MiB over loopback, {args.repeats} runs each "
        f"({report['cpu']}, {report['cores']} cores)"
    )
    print(f"{'tool':<10}{'best MB/s':>12}{'median MB/s':>14}")
    for tool, speed in speeds.items():
        print(f"{tool:<10}{speed['best_MBps']:>12.1f}{speed['median_MBps']:>14.1f}")
    print(f"amc-data / curl: {ratio_best:.2f}x (best), {ratio_median:.2f}x (median)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
