"""`amc-data demo`: the whole system offline in a few minutes. It makes a synthetic dataset
(through the real encode path), trains AMC and the paper's baselines on it, evaluates them side
by side with significance tests, and draws the ROC curves and AMC's attention."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..prepare.synth import SynthConfig, synth
from .config import MODELS
from .runs import Evaluation, evaluate
from .training import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """Where everything went, the evaluation, and whether AMC came out on top."""

    out: Path
    data: Path
    runs: dict[str, Path]
    evaluation: Evaluation
    plot_dir: Path
    amc_best: bool
    seconds: float


def run_demo(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    images: int | None = None,
    queries: int | None = None,
    epochs: int | None = None,
    models: tuple[str, ...] = MODELS,
    progress: bool = False,
    say: Callable[[str], None] = log.info,
) -> DemoResult:
    """synth -> train every model -> eval with plots, into `out` (replaced if it holds a demo)."""
    started = time.perf_counter()
    out = Path(out)
    data = out / "data"
    defaults = SynthConfig()
    say(f"1/3 making a synthetic dataset in {data}")
    synth(
        data,
        seed=seed,
        force=True,
        images=defaults.images if images is None else images,
        queries=defaults.queries if queries is None else queries,
    )
    runs: dict[str, Path] = {}
    for number, kind in enumerate(models, start=1):
        say(f"2/3 training {kind} ({number}/{len(models)})")
        config = TrainConfig(model=kind, seed=seed, device="cpu", workers=0)
        if epochs is not None:
            config = replace(config, epochs=epochs)
        result = train(data, out / "runs" / kind, config, force=True, progress=progress)
        runs[kind] = result.run_dir
    say("3/3 evaluating on the test queries")
    plot_dir = out / "plots"
    evaluation = evaluate(
        list(runs.values()),
        data,
        split="test",
        out=out / "eval",
        json_path=out / "eval" / "metrics.json",
        plot_dir=plot_dir,
        device="cpu",
        seed=seed,
    )
    return DemoResult(
        out=out,
        data=data,
        runs=runs,
        evaluation=evaluation,
        plot_dir=plot_dir,
        amc_best=evaluation.best == "amc",
        seconds=time.perf_counter() - started,
    )
