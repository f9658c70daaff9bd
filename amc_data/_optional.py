"""Optional dependencies (the `train` extra), imported only by what needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def require(
    module: str, purpose: str = "training and evaluation", extra: str = "train"
) -> ModuleType:
    """Import `module` (`torch`, `PIL.Image`, `matplotlib`, ...) or raise a one-line error that
    says how to install it (the optional extra `extra` brings it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f"{top} is needed for {purpose} but could not be imported ({exc}). "
            f'Install the {extra} extra: pip install "amc-data[{extra}]".'
        ) from exc
