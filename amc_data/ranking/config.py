"""The options of `amc-data train`, in a module without torch so the CLI can show their defaults
and check them before torch loads. What a resumed run may change is `resume`'s rule.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..checks import check_config, declared, one_of, option
from ..errors import ConfigError
from .registry import BUILT_IN, model_kinds

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset

log = logging.getLogger(__name__)

# The built-in model kinds (AMC, then the paper's baselines); `registry.model_kinds()` adds those
# registered since. Each kind is one row of `amc_data.ranking.registry`.
MODELS = tuple(row.name for row in BUILT_IN)
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

# The whole-number options' upper bounds keep a run from only exhausting memory (a 1,000,000-d
# shared space needs terabytes) or overflowing the random generators.
_TOO_LARGE = "Larger shared spaces do not fit in memory."


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved in `config.json` and every checkpoint).

    Each field declares its default, help, bounds and choices once (`checks.option`); the CLI's
    flags are built from them (`amc-data train --help` lists them).
    """

    # The kinds are a registry that may grow at run time, so `model` is checked against it in
    # `__post_init__` rather than by fixed choices; the CLI takes its choices and help from it.
    model: str = option("amc", "The model: amc, or a baseline (see `amc-data train --help`).")
    # The two ablations of the models with attention: False is mean pooling inside each
    # modality, and fixed 0.5/0.5 modality weights.
    intra: bool = option(True, "Ablation: mean pooling inside each modality.", flag="--no-intra")
    inter: bool = option(True, "Ablation: fixed 0.5/0.5 modality weights.", flag="--no-inter")
    dim: int = option(DEFAULT_DIM, "Size of the shared space.", low=1, high=8192, why=_TOO_LARGE)
    epochs: int = option(8, "Passes over the training pairs.", low=1, high=10_000)
    batch_size: int = option(64, "(query, positive) pairs per step.", low=1, high=65_536)
    lr: float = option(3e-3, "Peak learning rate (AdamW).", low=0, above=True)
    weight_decay: float = option(1e-4, "AdamW weight decay.", low=0)
    warmup: float = option(
        0.05, "Fraction of the steps warming the learning rate up.", low=0, high=1, below=True
    )
    loss: str = option(
        "pool",
        "pool: the batch's queries share one pool of negatives; pairs: each pair its own "
        "(the paper's t).",
        choices=LOSSES,
    )
    # Per pair, with loss "pairs" (the paper's t); at most the training images outside a
    # query's positives, which `check_negatives` checks against the data.
    negatives: int = option(
        8, "With --loss pairs: sampled negatives per positive (the paper's t).", low=1, high=10_000
    )
    # Shared by the batch, with loss "pool"; each image read once.
    pool_negatives: int = option(
        64, "With --loss pool: sampled images added to the batch's pool.", low=0, high=65_536
    )
    hardest: bool = option(
        False,
        "With --loss pool: each query's hardest negative only (VSE++'s max violation).",
        flag="--hardest/--no-hardest",
    )
    margin: float = option(0.2, "Hinge margin of the ranking loss.", low=0)
    in_batch: bool = option(
        False, "With --loss pairs: also use the batch's other positives as negatives."
    )
    clip: float = option(1.0, "Gradient norm cap (0: none).", low=0)
    max_keywords: int = option(64, "Keywords kept per image (the most frequent).", low=1, high=4096)
    seed: int = option(
        0, "Seed of every random choice.", low=0, high=2**63 - 1, why="Seeds are 63-bit."
    )
    workers: int = option(
        0, "Data-loader worker processes (0: load in the training process).", low=0
    )
    device: str = option("auto", "auto: CUDA when torch sees a GPU.", choices=DEVICES)
    amp: bool = option(True, "bf16 autocast on CUDA (no effect on the CPU).", flag="--amp/--no-amp")
    compile: bool = option(False, "torch.compile the model.")
    features_on: str = option(
        "auto",
        "host: the loader reads the features file; device: all features resident on the "
        "device; auto: device on a GPU with room.",
        choices=FEATURE_PLACES,
    )
    word_vectors: str | None = option(
        None, "word2vec/GloVe text file to start the query word embeddings from."
    )

    def __post_init__(self) -> None:
        check_config(self)
        one_of("model", self.model, model_kinds())
        # Each loss's own switches: silently ignoring one would train another run than asked.
        if self.in_batch and self.loss != "pairs":
            raise ConfigError(
                "in_batch goes with the pairs loss: the pool loss already scores every query "
                "against all of the batch's positives. Drop it, or choose loss pairs.",
                parameter="in_batch",
            )
        if self.hardest and self.loss != "pool":
            raise ConfigError(
                "hardest goes with the pool loss (each query's hardest negative in the shared "
                "pool). Drop it, or choose loss pool.",
                parameter="hardest",
            )

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
    """The CLI flag of the TrainConfig field `name`, as its declaration spells it."""
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    rule = declared(field)
    return (rule.flag if rule else None) or "--" + name.replace("_", "-")


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
            f"negatives {config.negatives:,} is more than the {most:,} training images outside "
            f"any query's positives in {prepared.root} ({pool:,} training images): a query cannot "
            f"have more distinct negatives. Use {max(most, 1):,} or fewer.",
            parameter="negatives",
        )
