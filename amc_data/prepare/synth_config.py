"""What `amc-data synth` generates (`SynthConfig`) and the concept names it draws from: apart
from `synth`, so that the command line builds its options from the config without loading the
generator's libraries (pandas, scipy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..checks import check_config, option
from ..errors import ConfigError

__all__ = ["CONCEPTS", "SynthConfig"]

# What `synth` holds in memory, measured (peak resident set, numpy 2.4, pandas 3.1) and rounded
# up: a fixed part (the libraries' working set, the encoder), per image (its truth, keyword
# list, zip entry and encoded row), per region of an image (its truth: clutter direction, the
# faint look, the masks and their temporaries), per judgment, and a few buffers of the chunk of
# feature rows being drawn (at least one row).
_FIXED_BYTES = 128 << 20
_IMAGE_BYTES = 2048
_REGION_BYTES = 96
_JUDGMENT_BYTES = 64
_CHUNK_BUFFERS = 4
CHUNK_BYTES = 8 << 20  # one float64 buffer of a chunk of feature rows
_IMAGE_DISK_BYTES = 1024
_SEVERAL_FIELDS = (
    "shown",
    "labelled",
    "query_concepts",
    "both_intents",
)  # an image's keywords: the archive, the encoded files, the tables

# Concept names: words that are both a thing one can picture and a brand name, as "jaguar" is.
CONCEPTS = (
    "jaguar",
    "puma",
    "shell",
    "dove",
    "mustang",
    "corona",
    "galaxy",
    "eclipse",
    "phoenix",
    "falcon",
    "mercury",
    "orion",
    "polo",
    "nova",
    "atlas",
    "comet",
    "delta",
    "fossil",
    "gemini",
    "lotus",
    "magnum",
    "oasis",
    "pioneer",
    "sierra",
    "summit",
    "vertex",
    "zenith",
    "cobra",
    "raven",
    "tiger",
    "fox",
    "swan",
    "oak",
    "cedar",
    "crystal",
    "arrow",
    "anchor",
    "compass",
    "lighthouse",
    "pyramid",
)


@dataclass(frozen=True)
class SynthConfig:
    """What `synth` generates; the defaults make a dataset that trains in seconds on a CPU."""

    seed: int = option(
        0, "Seed of every random choice; the same settings give the same bytes.", low=0
    )
    images: int = option(
        2000,
        "Images in all: at least 10 per concept (240 with the 24 concepts of the default), so "
        "that every split shows and names every concept.",
    )
    queries: int = option(600, "Queries in all, split train/val/test 60/20/20.", low=10)
    regions: int = option(8, "Feature vectors (regions) per image.", low=2)
    dim: int = option(32, "Dimensions of a region's feature vector.", low=2)
    concepts: int = option(
        24, "Concepts (words both pictured and brands).", low=2, high=len(CONCEPTS)
    )
    clutter: int = option(48, "Clutter directions, shared by all images.", low=1)
    noise: float = option(0.35, "Norm of the noise added to every region.", low=0)
    background: float = option(
        0.5, "P(a clutter region also shows a faint look of another concept).", low=0, high=1
    )
    faint: float = option(
        0.5, "Strength of such a faint look (a shown concept has strength 1).", low=0
    )
    two_intent_words: float = option(
        0.5, "P(a query has two words that say its intent, not one).", low=0, high=1
    )
    no_keywords: float = option(0.01, "P(an image has no keywords at all).", low=0, high=0.5)
    distractors: tuple[int, int] = (12, 28)  # distractor keywords per image, inclusive range
    train_positives: int = option(8, "True matches of a train query among the train images.", low=1)
    candidates: int = option(
        30,
        "Images a val/test query ranks: true matches, decoys and others (at most its split's "
        "images: a large N ranks the whole split; a several-concept world with queries enough "
        "to anchor every val/test image is then one pool, as COCO's splits are).",
        low=1,
    )
    true_candidates: int = option(8, "True matches among a val/test query's candidates.", low=1)
    decoy_candidates: int = option(8, "Decoys among a val/test query's candidates.", low=0)
    shown: int = option(
        1,
        "Concepts an image's pixels show, each in 1 or 2 regions. Above 1 (or labelled or "
        "query_concepts above 1), a several-concept world: each query is written from one "
        "image, its only relevant one.",
        low=1,
    )
    labelled: int = option(1, "Concepts an image's keywords name.", low=1)
    query_concepts: int = option(
        1,
        "Most concepts a query names (in a several-concept world each query names 1 to N of "
        "its image's concepts, with its intent).",
        low=1,
    )
    both_intents: float = option(
        0.2,
        "In a several-concept world, P(a query asks for its concepts in both modalities: "
        "shown and named).",
        low=0,
        high=1,
    )
    min_df: int = option(3, "The encoder's min_df for the keyword vocabulary.", low=1)
    query_min_count: int = option(
        1, "The query vocabulary's minimum count over the train queries.", low=1
    )

    @property
    def several(self) -> bool:
        """Whether this is a several-concept world (see `amc_data.prepare.synth`)."""
        return max(self.shown, self.labelled, self.query_concepts) > 1

    def options(self) -> dict[str, object]:
        """The settings as prepared.json records them: the several-concept settings only where
        they make a several-concept world, so that a one-concept folder keeps its bytes."""
        record = asdict(self)
        if not self.several:
            for name in _SEVERAL_FIELDS:
                del record[name]
        return record

    def memory_estimate(self) -> int:
        """Bytes of memory `synth` needs at its peak for these settings, roughly (within a few
        tens of percent above what it takes); the features themselves are never all held."""
        row_bytes = self.regions * self.dim * 8
        judgments = self.queries * max(self.candidates, self.train_positives)
        return (
            _FIXED_BYTES
            + self.images * (_IMAGE_BYTES + self.regions * _REGION_BYTES)
            + judgments * _JUDGMENT_BYTES
            + _CHUNK_BUFFERS * max(CHUNK_BYTES, row_bytes)
        )

    def disk_estimate(self) -> int:
        """Bytes of disk `synth` writes: the float16 features (linked from the work folder into
        the prepared one) and the keywords on their way through the encoder."""
        return self.images * (self.regions * self.dim * 2 + _IMAGE_DISK_BYTES)

    def __post_init__(self) -> None:
        check_config(self)
        if self.images < 10 * self.concepts:
            raise ConfigError(
                f"images must be >= {10 * self.concepts} (10 per concept, so that every split "
                f"shows and names every concept), not {self.images}.",
                parameter="images",
            )
        fewest_candidates = self.true_candidates + self.decoy_candidates
        if self.candidates < fewest_candidates:
            raise ConfigError(
                f"candidates must be >= {fewest_candidates} (true_candidates + "
                f"decoy_candidates), not {self.candidates}.",
                parameter="candidates",
            )
        if 2 * self.shown > self.regions:
            raise ConfigError(
                f"shown must be <= regions / 2 ({self.regions // 2}: a shown concept fills up "
                f"to 2 regions), not {self.shown}.",
                parameter="shown",
            )
        if max(self.shown, self.labelled) > self.concepts:
            raise ConfigError(
                f"shown and labelled must be <= concepts ({self.concepts}), not "
                f"{max(self.shown, self.labelled)}.",
                parameter="shown" if self.shown > self.concepts else "labelled",
            )
        fewest, most = self.distractors
        if not 1 <= fewest <= most:
            raise ConfigError(
                f"distractors must be a range 1 <= low <= high, not {self.distractors}.",
                parameter="distractors",
            )
