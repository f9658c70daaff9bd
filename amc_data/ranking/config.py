"""The options of `amc-data train`, in a module without torch so the CLI can show their defaults
and check them before torch loads. What a resumed run may change is `resume`'s rule.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset

log = logging.getLogger(__name__)

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

# The whole-number options' bounds, checked before torch loads: beyond them a run only exhausts
# memory (a 1,000,000-d shared space needs terabytes) or overflows the random generators.
BOUNDS = {
    "dim": (1, 8192),
    "epochs": (1, 10_000),
    "batch_size": (1, 65_536),
    "negatives": (1, 10_000),  # and at most the training images outside a query's positives
    "pool_negatives": (0, 65_536),  # images added to a batch's pool, each read once
    "max_keywords": (1, 4096),
    "seed": (0, 2**63 - 1),
}
_BOUND_REASONS = {
    "dim": " Larger shared spaces do not fit in memory.",
    "seed": " Seeds are 63-bit.",
}

# How the CLI spells an option whose flag is not `--<name>`.
_FLAGS = {"intra": "--no-intra", "inter": "--no-inter", "amp": "--amp/--no-amp"}


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
    loss: str = "pool"
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
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be a whole number from {low} to {high:,}, "
                    f"not {value!r}.{_BOUND_REASONS.get(name, '')}"
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
        # Each loss's own switches: silently ignoring one would train another run than asked.
        if self.in_batch and self.loss != "pairs":
            raise ConfigError(
                "--in-batch goes with --loss pairs: the pool loss already scores every query "
                "against all of the batch's positives. Drop --in-batch, or add --loss pairs."
            )
        if self.hardest and self.loss != "pool":
            raise ConfigError(
                "--hardest goes with --loss pool (each query's hardest negative in the shared "
                "pool). Drop --hardest, or use --loss pool."
            )
        if self.features_on not in FEATURE_PLACES:
            raise ConfigError(
                f"--features-on must be one of {', '.join(FEATURE_PLACES)}, "
                f"not {self.features_on!r}."
            )
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The inverse of `to_dict`; unknown fields are a `ConfigError` (as for `ModelConfig`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown training option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}. Was the run written by a newer amc-data?"
            )
        return cls(**values)


def option_flag(name: str) -> str:
    """The CLI flag of the TrainConfig field `name`."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def check_negatives(config: TrainConfig, prepared: PreparedDataset) -> None:
    """Refuse more negatives than the training pool allows: a query cannot have more distinct
    negatives than the training images outside its positives, and more draws only repeat them
    while the batch's memory grows with each."""
    judgments = prepared.judgments
    queries = prepared.split_queries("train")["query_id"]
    positive = judgments[judgments["query_id"].isin(queries) & (judgments["label"] > 0)]
    pool = len(prepared.split_images("train"))
    if positive.empty or pool == 0:
        return  # the data layer says there is nothing to train on
    fewest = int(positive.drop_duplicates(["query_id", "img_id"])["query_id"].value_counts().min())
    most = pool - fewest
    if config.negatives > most:
        raise ConfigError(
            f"--negatives {config.negatives:,} is more than the {most:,} training images outside "
            f"any query's positives in {prepared.root} ({pool:,} training images): a query cannot "
            f"have more distinct negatives. Use --negatives {max(most, 1):,} or fewer."
        )
