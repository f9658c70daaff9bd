"""The optional dependencies of feature extraction.

torch and Pillow come with the `train` extra (`amc_data._optional` says how to get them);
torchvision is needed only for a torchvision backbone (a model file needs torch alone), and must
be the build made for the installed torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .._optional import require
from ..errors import MissingDependencyError

TRAIN_EXTRA = 'pip install "amc-data[train]"'


def require_torch() -> ModuleType:
    """Import torch, or raise `MissingDependencyError` naming the extra that brings it."""
    return require("torch", "feature extraction")


def require_pillow() -> ModuleType:
    """Import Pillow's `PIL.Image`, or raise `MissingDependencyError`."""
    return require("PIL.Image", "decoding images")


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
            "TorchScript or torch.export backbone instead."
        ) from exc
