"""The options of `amc-data train`, in a module without torch so the CLI can show their defaults
and check them before torch loads."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

MODELS = ("amc", "visual", "keyword", "fusion", "cca")  # AMC, then the paper's baselines
DEVICES = ("auto", "cpu", "cuda")
# How a batch's negatives are chosen: "pool", every query of the batch against one shared pool
# (the batch's positives and `pool_negatives` sampled images, each projected once); "pairs",
# the paper's `negatives` images sampled for each (query, positive) pair on its own.
LOSSES = ("pool", "pairs")
# Where training reads region features: "host", gathered by the loader from the memory-mapped
# file; "device", the whole file resident on the training device, gathered there; "auto",
# the device when it is a GPU with room for the features.
FEATURE_PLACES = ("auto", "host", "device")
DEFAULT_DIM = 64  # the shared space, for TrainConfig and ModelConfig alike

# The files of a run folder.
CONFIG_FILE, LAST, BEST, LOG_FILE = "config.json", "last.pt", "best.pt", "log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved in `config.json` and every checkpoint)."""

    model: str = "amc"
    intra: bool = True  # attention inside each modality (False: mean pooling)
    inter: bool = True  # query-dependent modality weights (False: fixed 0.5 / 0.5)
    dim: int = DEFAULT_DIM
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of all steps spent warming the learning rate up
    loss: str = "pairs"
    negatives: int = 8  # per pair, with loss="pairs" (the paper's t)
    pool_negatives: int = 64  # shared by the batch, with loss="pool"
    hardest: bool = False  # loss="pool": each query's hardest negative only (VSE++)
    margin: float = 0.2
    in_batch: bool = False  # the batch's other positives count as negatives too
    clip: float = 1.0  # gradient norm cap (0: none)
    max_keywords: int = 64
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    compile: bool = False
    features_on: str = "auto"
    word_vectors: str | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"--model must be one of {', '.join(MODELS)}, not {self.model!r}.")
        positive = {"dim": self.dim, "epochs": self.epochs, "batch_size": self.batch_size,
                    "negatives": self.negatives, "max_keywords": self.max_keywords}  # fmt: skip
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a whole number >= 1, not {value!r}."
                )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, not {self.lr!r}.")
        if not 0 <= self.warmup < 1:
            raise ConfigError(
                f"--warmup is a fraction of the steps in [0, 1), not {self.warmup!r}."
            )
        for name in ("margin", "clip", "weight_decay", "warmup"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a finite number >= 0, not {value!r}."
                )
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ConfigError(f"--workers must be a whole number >= 0, not {self.workers!r}.")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}.")
        if self.features_on not in FEATURE_PLACES:
            raise ConfigError(
                f"--features-on must be one of {', '.join(FEATURE_PLACES)}, "
                f"not {self.features_on!r}."
            )
        if (
            not isinstance(self.pool_negatives, int)
            or isinstance(self.pool_negatives, bool)
            or self.pool_negatives < 0
        ):
            raise ConfigError(
                f"--pool-negatives must be a whole number >= 0, not {self.pool_negatives!r}."
            )
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of `to_dict`; unknown fields are a `ConfigError` (as for `ModelConfig`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown training option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}. Was the run written by a newer amc-data?"
            )
        return cls(**values)
