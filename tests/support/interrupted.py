"""A training cut short as Ctrl-C would cut it: `train` with one of the training module's
functions raising KeyboardInterrupt on its `call`-th call, then resumed to the end; the
resumed run's weights against the uninterrupted run's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import amc_data.ranking.training as training
from amc_data.ranking.checkpoint import read_checkpoint
from amc_data.ranking.config import TrainConfig


def run_weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.pt")["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def resumes_to_the_whole_run(
    data: Path,
    root: Path,
    config: TrainConfig,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    epochs: int,
) -> dict[str, torch.Tensor]:
    """Train `config` whole into `root/whole`; train it again into `root/cut`, interrupted
    inside the second epoch (at a call of `training.<name>`), then resumed; assert the two
    runs' weights are the same to the bit, and return them."""
    training.train(data, root / "whole", config)
    steps_per_epoch = read_checkpoint(root / "whole" / "last.pt")["step"] // epochs
    real, calls = getattr(training, name), {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> Any:  # Ctrl-C inside the second epoch
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, name, interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train(data, root / "cut", config)
    monkeypatch.undo()
    training.train(data, root / "cut", config, resume=True)
    whole = run_weights(root / "whole")
    assert same_weights(whole, run_weights(root / "cut"))
    return whole


def resumes_and_differs_from_off(
    data: Path,
    root: Path,
    config: TrainConfig,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    epochs: int,
    option: str,
) -> None:
    """`resumes_to_the_whole_run`, and the whole run's weights differ from those of the same run
    with `option` at 0 (trained into `root/off`): a term that resumes and does something."""
    whole = resumes_to_the_whole_run(data, root, config, monkeypatch, name, epochs)
    training.train(data, root / "off", dataclasses.replace(config, **{option: 0.0}))
    assert not same_weights(whole, run_weights(root / "off"))
