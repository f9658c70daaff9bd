"""The optional dependencies of feature extraction, each checked in one place.

torch and Pillow come with the `train` extra; torchvision is optional beyond it (a TorchScript
backbone needs only torch). A missing one is a `MissingDependencyError` saying what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError

TRAIN_EXTRA = 'pip install "amc-data[train]"'


def _require(module: str, purpose: str, hint: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed ({exc}). "
            f"Install it with: {hint}"
        ) from exc


def require_torch() -> ModuleType:
    """Import torch, or raise `MissingDependencyError` naming the extra that brings it."""
    return _require("torch", "Feature extraction", TRAIN_EXTRA)


def require_pillow() -> ModuleType:
    """Import Pillow's `PIL.Image`, or raise `MissingDependencyError`."""
    return _require("PIL.Image", "Decoding images", TRAIN_EXTRA)


def require_torchvision() -> ModuleType:
    """Import torchvision's models, or explain how to get a torchvision that matches torch.

    torchvision builds are tied to one torch release (torchvision 0.N+15 goes with torch 2.N)
    and to the same build variant (CPU or CUDA): a mismatched pair fails at import with
    "operator torchvision::nms does not exist".
    """
    try:
        return importlib.import_module("torchvision.models")
    except Exception as exc:  # a mismatched build raises RuntimeError, not ImportError
        import torch

        raise MissingDependencyError(
            f"A torchvision backbone needs torchvision, which cannot be imported ({exc}). "
            f"Install the torchvision built for torch {torch.__version__}, from the same package "
            "index as torch (torchvision 0.N+15 pairs with torch 2.N, e.g. 0.28 with 2.13; a CPU "
            f"torch needs the CPU torchvision), after {TRAIN_EXTRA}; or pass --model-file with a "
            "TorchScript backbone instead."
        ) from exc
