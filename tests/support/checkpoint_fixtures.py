"""The committed runs and checkpoints of `tests/fixtures/v1/` (written by
`tests/fixtures/make_fixtures.py`): where they are, and the digest their weights are recorded by.
Imports torch: only the ranking tests and the generator use it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "v1"
DATA = FIXTURES / "data"  # the synth prepared folder every run was trained on
RUNS = FIXTURES / "runs"
EXPECTED = FIXTURES / "expected.json"
# Every fixture run is evaluated on the test split, one run at a time, without the random row.
EVAL_SPLIT = "test"


def state_digest(state: Mapping[str, Any]) -> str:
    """sha256 over a state dict's tensors in sorted-name order: each name, dtype, shape and raw
    bytes (so two states agree exactly when every tensor is bit for bit the same)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Model options added after the fixtures were written, with the value their runs had: what
# reading them today fills in.
ADDED_SINCE = {"region_attention_scale_rate": 0.0}


def read_expected() -> dict[str, Any]:
    """The manifest, each run's model options in today's terms (`ADDED_SINCE` filled in)."""
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    for entry in expected["runs"].values():
        entry["model_config"] = {**ADDED_SINCE, **entry["model_config"]}
    return expected
