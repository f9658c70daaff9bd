"""Checkpoints: written atomically, read with `torch.load(weights_only=True)` so a checkpoint
can never run code, and checked against the prepared data they are used with.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
`format`, `format_version`, `amc_data_version`, `train_config`, `model_config`, `model`
(state dict), `optimizer`, `scheduler`, `epoch` (epochs completed), `step`, `best_metric`,
`metrics` (the last validation), `rng` (torch's CPU and CUDA generator states), `fingerprints`
(sha256 of the keyword and query vocabularies the model was trained with, and `features`: the
dtype, shape and a sampled sha256 of its features), `processes` (how many trained it) and `log`
(the log entries up to its epoch). The last three are missing from checkpoints of an older
amc-data, which are resumed without them. Older formats are brought up to today's by
`migrations.migrate` as they are read.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import AmcDataError, CheckpointError
from ..files import atomic_write
from .build import build_model
from .config import BEST
from .migrations import FORMAT_VERSION, migrate
from .model import ModelConfig, RankingModel

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset

FORMAT = "amc-data-checkpoint"


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Write `payload` to `path` through a temporary file in the same folder and one rename, so
    an interruption leaves the previous checkpoint whole."""
    with atomic_write(path) as handle:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, handle)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint at `path` as a dict (tensors on the CPU), brought up to today's format by
    `migrate`: every reader of a checkpoint comes here, so an older one is migrated in this one
    place. Anything that is not an amc-data checkpoint, that would need code to load, or that
    a newer amc-data wrote, is a `CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint file such as {path / BEST}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: train first (amc-data train).") from None
    except Exception as exc:  # torch raises many kinds on a damaged or foreign file
        unsafe = isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc)
        reason = (
            "it would need to run code to load"
            if unsafe
            else f"it is damaged or not a torch file ({type(exc).__name__})"
        )
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint without running code: {reason}; it was not "
            f"loaded. Use a checkpoint written by amc-data train."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an amc-data checkpoint (no '{FORMAT}' marker).")
    return migrate(payload, str(path))


def check_fingerprints(
    checkpoint: Mapping[str, Any], fingerprints: Mapping[str, str], where: str, data: str
) -> None:
    """Refuse to score data whose vocabularies differ from the ones the model learnt: the word
    ids would mean other words."""
    saved = checkpoint.get("fingerprints", {})
    for name in ("keywords", "queries"):
        if saved.get(name) != fingerprints.get(name):
            raise CheckpointError(
                f"The {name} vocabulary of {data} (sha256 {str(fingerprints.get(name))[:12]}…) is "
                f"not the one {where} was trained with ({str(saved.get(name))[:12]}…): its word "
                f"ids would mean other words. Use the prepared folder the run was trained on, or "
                f"train on this one."
            )


def _check_shapes(state: Any, model_config: ModelConfig, path: Path) -> None:
    """Refuse a configuration its weights do not fit before building it: a few-KB checkpoint
    whose configuration says dim=1000000 would otherwise allocate gigabytes first. The model is
    built on the meta device, which allocates nothing."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds no model weights; train again with this version.")
    with torch.device("meta"):
        expected = {
            name: tuple(t.shape) for name, t in build_model(model_config).state_dict().items()
        }
    found = {name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
    wrong = [
        f"{name} is {found.get(name)} for {shape}"
        for name, shape in expected.items()
        if found.get(name) != shape
    ]
    if wrong:
        raise CheckpointError(
            f"{path}: its model configuration does not fit its weights ({'; '.join(wrong[:3])}"
            f"{'; ...' if len(wrong) > 3 else ''}); it was not built. Train again with this "
            "version."
        )


@dataclass
class LoadedModel:
    """A trained model rebuilt from its checkpoint's own configuration."""

    model: RankingModel
    model_config: ModelConfig
    train_config: dict[str, Any]
    epoch: int
    metrics: dict[str, float]
    path: Path


def load_model(
    path: str | os.PathLike[str],
    prepared: PreparedDataset | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Rebuild the model of a checkpoint (a `.pt` file, or a run folder: its `best.pt`), checked
    against `prepared`'s vocabularies when given, in eval mode on `device`."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    checkpoint = read_checkpoint(path)
    if prepared is not None:
        check_fingerprints(checkpoint, prepared.fingerprints, str(path), str(prepared.root))
    try:
        model_config = ModelConfig.from_dict(checkpoint["model_config"])
        _check_shapes(checkpoint["model"], model_config, path)
        model = build_model(model_config)
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, AmcDataError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(
            f"{path} does not hold a model this amc-data can rebuild ({first_line}); train "
            f"again with this version."
        ) from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        model_config=model_config,
        train_config=dict(checkpoint.get("train_config", {})),
        epoch=int(checkpoint.get("epoch", 0)),
        metrics=dict(checkpoint.get("metrics", {})),
        path=path,
    )
