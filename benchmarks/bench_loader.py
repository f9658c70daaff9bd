"""Data loader throughput against a training step: is the loader ever the bottleneck?

On a prepared folder (by default a fresh `synth` dataset with its default settings), three rates
in training samples (query, positive, t negatives) per second:

- loader: `train_loader` alone, every batch built and collated, nothing else;
- step: forward, hinge loss, backward and AdamW step of an AMC model of default size, on batches
  already in memory;
- both: the two together, as a training epoch runs them.

The loader should run at 5x the step or more with the default `--workers` (0, the training
default: batches are built in the training process). Results are printed and written to
bench-results/loader.json.

    python benchmarks/bench_loader.py [--data DIR] [--workers 0] [--batch-size 64] [--negatives 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from amc_data.machine import cpu_count
from amc_data.prepare import load_prepared
from amc_data.prepare.synth import synth
from amc_data.ranking.build import build_model
from amc_data.ranking.data import train_loader
from amc_data.ranking.model import ModelConfig


def _loader_rate(loader, epochs: int) -> dict[str, float]:
    """Samples/s over whole epochs (worker start-up included in the first)."""
    rates = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        started, samples = time.perf_counter(), 0
        for batch in loader:
            samples += len(batch.query)
        rates.append(samples / (time.perf_counter() - started))
    return {"first_epoch": rates[0], "median": statistics.median(rates[1:] or rates)}


def _step(model, optimizer, batch, margin: float = 0.2) -> None:
    scores = model(batch.query, batch.images)  # (B, 1 + t)
    loss = F.relu(margin - scores[:, :1] + scores[:, 1:]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _step_rate(model, optimizer, batches, steps: int) -> float:
    for batch in batches[:3]:  # warm-up: allocator, autograd graph caches
        _step(model, optimizer, batch)
    started, samples = time.perf_counter(), 0
    for i in range(steps):
        batch = batches[i % len(batches)]
        _step(model, optimizer, batch)
        samples += len(batch.query)
    return samples / (time.perf_counter() - started)


def _both_rate(model, optimizer, loader, epochs: int) -> float:
    started, samples = time.perf_counter(), 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(100 + epoch)
        for batch in loader:
            _step(model, optimizer, batch)
            samples += len(batch.query)
    return samples / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="prepared folder (default: synth)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (training default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="loader epochs timed")
    parser.add_argument("--steps", type=int, default=40, help="training steps timed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: its own)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/loader.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as work:
        root = args.data or synth(Path(work) / "synth").out
        prepared = load_prepared(root)
        loader = train_loader(
            prepared,
            split="train",
            batch_size=args.batch_size,
            negatives=args.negatives,
            seed=0,
            workers=args.workers,
            pin_memory=False,
        )
        pairs = len(loader.dataset)  # type: ignore[arg-type]
        print(f"{pairs:,} training pairs, {len(loader)} batches per epoch", flush=True)
        loader_rate = _loader_rate(loader, args.epochs)
        print(f"loader alone: {loader_rate['median']:,.0f} samples/s", flush=True)

        torch.manual_seed(0)
        config = ModelConfig(
            query_vocab_size=len(prepared.query_vocabulary),
            keyword_vocab_size=len(prepared.vocabulary),
            feature_dim=prepared.features.shape[-1],
        )
        model = build_model(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader.sampler.set_epoch(50)  # type: ignore[attr-defined]
        batches = [batch for _, batch in zip(range(8), loader, strict=False)]
        # The median of a few runs: on a shared machine one run can be far off.
        step_rate = statistics.median(
            _step_rate(model, optimizer, batches, args.steps) for _ in range(args.repeats)
        )
        print(f"step alone (amc, dim {config.dim}): {step_rate:,.0f} samples/s", flush=True)
        both_rate = statistics.median(
            _both_rate(model, optimizer, loader, 1) for _ in range(args.repeats)
        )
        print(f"loader and step together: {both_rate:,.0f} samples/s", flush=True)

    results = {
        "data": "synth (default settings)" if args.data is None else str(args.data),
        "features": list(prepared.features.shape),
        "batch_size": args.batch_size,
        "negatives": args.negatives,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "model": config.to_dict(),
        "loader_samples_per_s": loader_rate,
        "step_samples_per_s": step_rate,
        "both_samples_per_s": both_rate,
        "loader_over_step": loader_rate["median"] / step_rate,
        "machine": {
            "cpus": cpu_count(),
            "os_cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
    }
    print(f"loader / step: {results['loader_over_step']:.1f}x", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
