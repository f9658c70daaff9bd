"""The options of `amc-data train`, in a module without torch so the CLI can show their defaults
and check them before torch loads. What a resumed run may change is `resume`'s rule.

Where a run's options come from, first found first: the options given (typed on the command
line, or passed to `train_config`), then the `--config` file, then the `--preset`, then the
defaults declared here. An option that the run would not use (`USED_WHEN`: `negatives` under the
pool loss, `--no-intra` for a model without intra-attention, ...) is refused when it was given,
naming the option that would use it: silently ignoring it would record a run that is not what
was asked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..checks import check_config, declared, default_of, one_of, option
from ..errors import ConfigError
from ..evaluation.protocol import GAINS
from .registry import BUILT_IN, model_kind, model_kinds, model_rows

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
# How the pool loss averages its hinge terms: over the negatives still within the margin, each
# query's over its own such negatives and then over the queries, half of each, or over all.
POOL_REDUCTIONS = ("violating", "per-query", "mixed", "all")
MODALITY_KEEPS = ("drawn", "favoured")
# Where training reads region features: "host", gathered by the loader from the memory-mapped
# file; "device", the whole file resident on the training device, gathered there; "auto",
# the device when it is a GPU with room for the features.
FEATURE_PLACES = ("auto", "host", "device")
# The intra-attention's logits (`ModelConfig.attention`): "cosine", a learned scale times the
# cosine of guide and key; "dot", their dot product over sqrt(dim) (the paper's form).
ATTENTIONS = ("cosine", "dot")
# The training options that are `ModelConfig` fields of the same name, passed on when set.
MODEL_OPTIONS = ("attention", "region_attention_scale_rate", "gate_content", "gate_scale")
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
    # "violating": the pool loss's mean over the negatives still within the margin. Once one
    # concept tells a caption's image from most of the pool, the mean over every negative
    # ("all") dilutes the few that need its second concept about a hundredfold, and that
    # concept is never learned; averaging over the violating ones learns it (several-concept
    # worlds 0.75-0.83 -> 0.90-0.94 of the ceiling). Alone it also lets fixed modality weights
    # rank as well as the gate on the one-concept synth worlds; with modality_dropout they no
    # longer can (benchmarks/FIDELITY.md, sessions 4 and 9). But a query scored with one
    # modality alone cannot beat the many images that share that modality's concept, and its
    # many cells then outweigh the queries that can still learn: averaging each query over its
    # own violators first ("per-query") learns nearly every concept of the several-concept
    # worlds and costs the one-concept ones 0.01-0.03; "mixed", half of each mean, keeps the
    # one-concept worlds and most of the gain (benchmarks/FIDELITY.md, sessions 11 and 12).
    pool_reduction: str = option(
        "mixed",
        "With --loss pool: average the hinge over the negatives still within the margin "
        "(violating), over each query's such negatives and then over the queries (per-query), "
        "half of each (mixed), or over every negative (all).",
        choices=POOL_REDUCTIONS,
    )
    # With several concepts a caption, one concept soon tells its image from nearly every
    # uniformly drawn image, and the few negatives that need the second concept are rare in the
    # pool. Drawing part of the pool among images whose training captions share a word with the
    # batch's captions puts more of them there (read from the prepared data alone: the query
    # words and the training judgments). But the pool is shared by the batch, so each caption
    # gains only a few: on the several-concept world it ranks as well as as many uniform draws,
    # and it narrows the gate's margin on synth, so it is off by default (benchmarks/FIDELITY.md,
    # session 6).
    pool_word_share: float = option(
        0.0,
        "With --loss pool: the share of pool_negatives drawn among training images whose "
        "training captions share a word with the batch's captions (rarer words drawn more "
        "often); the rest are drawn uniformly.",
        low=0,
        high=1,
    )
    margin: float = option(0.2, "Hinge margin of the ranking loss.", low=0)
    # The ranking loss reads the attended vectors normalised, so once an image's concept keyword
    # leads its keyword attention (a mean 0.38 of it on the several-concept synth world, each
    # of ~14 fillers 0.04) the loss gains little from a sharper attention and does not ask for
    # one: there the median concept kept 0.24-0.28 of the mass. This adds that many times the
    # mean entropy (nats, above attention_entropy_floor) of the keyword attention over each
    # query's positive images, each weighted by the gate's keyword weight for it (held fixed),
    # to the loss. Measured (benchmarks/FIDELITY.md, session 8): at 0.001 with the floor every
    # textual concept of that world keeps at least 0.3 of the mass, and every world of the
    # fidelity suite keeps its ranking and its bars (the gate's margin on the one-concept synth
    # worlds within 0.007 of the term's absence); 2-3x the weight without a floor locks a
    # concept onto another keyword. 0.003 since the "mixed" pool loss, whose per-query half
    # spreads the keyword attention (synth: mean mass 0.51 at 0.001, 0.56 at 0.003; sessions 11
    # and 12). 0 is the ranking loss alone, bit for bit.
    attention_entropy: float = option(
        0.003,
        "Weight of the keyword attention's mean entropy over each query's positive images "
        "(weighted by the gate's keyword weight), added to the loss (0: none).",
        low=0,
    )
    # The entropy term pulls each row toward one item, and the further it pulls the more a
    # concept whose attention points at another keyword early is locked there (2-3x the weight
    # above), and the more fixed modality weights gain from the cleaner vectors (--no-inter on
    # the one-concept synth worlds). A row sharper than this many nats adds nothing: 1.5 nats
    # is about two thirds of the mass on one of 14 keywords, an image's typical count.
    attention_entropy_floor: float = option(
        1.5,
        "With --attention-entropy: each row counts only its entropy above this many nats.",
        low=0,
    )
    # The gate learns only from the ranking loss, through the negatives still within the margin;
    # for a caption naming one concept of an image that holds two (one shown, one named among
    # its keywords) those are mostly images carrying the same concept, which neither modality
    # tells apart, so the gate's weights stayed the same whichever modality the caption asked
    # for (0.55 / 0.53 visual for captions naming a visual / a textual concept). This adds that
    # many times a divergence pulling the gate, for each query, toward the modality that
    # alone ranks its image better than it does for the batch's other queries (each modality's
    # hinge alone, its mean over the batch taken off: without that every query was drawn to the
    # keywords, which rank better early, and the regions starved). At 0.4 the weights for
    # captions naming a visual / a textual concept part (0.68-0.72 / 0.40-0.42 over six
    # trainings), those worlds rank within training noise of before (mean 0.935 of the ceiling
    # against 0.939; several-concept synth 0.948 against 0.939), and every one-concept world
    # keeps its ranking and the gate's margin over fixed weights (benchmarks/FIDELITY.md,
    # session 13). 0 is the ranking loss alone, bit for bit.
    gate_routing: float = option(
        0.4,
        "Weight of a term teaching the modality gate, for each training query, the modality "
        "that alone ranks its image better than for the batch's other queries (0: none).",
        low=0,
    )
    # The gate decides early: on the several-concept COCO-shaped worlds it sent the captions of
    # a few visual concepts to the keywords before the regions had learned them (visual weight
    # 0.09-0.15 against about 0.5), and the ranking loss then asked the regions for them at that
    # weight, so 5% of them stayed unlearned where fixed weights left none. Training starts from
    # fixed 0.5 / 0.5 weights, the gate's taking over linearly (the gate still learns from the
    # first step through the routing term): 1-3% left, every one-concept world as before
    # (benchmarks/FIDELITY.md, session 17).
    gate_warmup: float = option(
        0.5,
        "Share of training over which the modality weights fade from fixed 0.5 / 0.5 to the "
        "gate's (0: the gate's from the first step).",
        low=0,
        high=1,
    )
    # On worlds where an image holds a concept in each modality, the ranking loss moves a region's
    # attention logit in proportion to the weight it already has: a concept whose cells the
    # attention left early (the other modality already told its images apart) got almost no
    # gradient to come back, and 11-22% of the visual concepts kept under 0.3 of the mass on
    # their own cells. Told where the cells are, the same model finds every one within an epoch
    # (benchmarks/attention_oracle.py), so the loss, not the architecture, was short. Two terms
    # ask what the ranking loss does not: the regions' mean value alone must rank (every
    # region's value learns what it shows, whatever the attention), and the attention is drawn
    # toward the regions whose values match the query (a target held fixed, so a region's logit
    # moves by its weight less its target, not in proportion to its weight). Each query counts
    # as much as the gate reads the regions for it: asked to rank the queries the gate sends to
    # the keywords, the regions learned the keywords' concepts through the images holding both,
    # and the gate followed the caption less. Together, at 0.3 and 0.1: the several-concept
    # COCO-shaped worlds rank at 0.94-1.00 of their ceiling (0.90-0.95 before) with 0-9% of the
    # visual concepts under 0.3 (11-22%), the gate still parts by 0.28-0.46 for captions naming
    # one modality's concept, and every one-concept world ranks as well or better with a region
    # attention of 0.94-0.98 on the concept's regions (0.67-0.84) (benchmarks/FIDELITY.md,
    # session 15). 0 for both is the ranking loss alone, bit for bit. The hinge at 0.5 since
    # session 18: the visual concepts still left were those whose captions' region query never
    # came to match their look (its cosine with their cells under its best other cell's), so the
    # target drew the attention away from them; the stronger hinge, which asks the values for
    # every concept through the mean, left 1 of 600 over six trainings of those worlds (9 at
    # 0.3), every other world as before; the gate parts a little less (by 0.17-0.48 over six
    # trainings, 0.30-0.42 at 0.3).
    region_target: float = option(
        0.1,
        "Weight of a term drawing the region attention on each positive image toward the "
        "regions whose values match the query (a softmax of their cosines with the query "
        "vector at --region-target-temperature, held fixed), weighted by the gate's visual "
        "weight (0: none).",
        low=0,
    )
    region_target_temperature: float = option(
        0.05,
        "With --region-target: the temperature of the target's softmax over the cosines.",
        low=0,
        above=True,
    )
    region_mean_hinge: float = option(
        0.5,
        "Weight of the ranking loss of the regions' mean value alone, beside the model's own "
        "(every region's value learns, wherever the attention looks) (0: none).",
        low=0,
    )
    # The hinge's strength was a trade: at 0.5 it left 1 of 600 visual concepts of the
    # several-concept COCO-shaped worlds unlearned (9 at 0.3), but the gate parted less for
    # captions naming one modality's concept (by 0.17 at one training of six, 0.30 or more at
    # 0.3): asked hard to rank every caption, the regions learned to rank some textual-only ones
    # through the images holding a pair of concepts, and the gate read them more for those.
    # Which concepts stay unlearned is decided early, which way the gate parts late, so the
    # hinge falls linearly over the run from its weight to this share of it: 0.5 to 0.3 parts
    # the gate by 0.28-0.46 at all six trainings with the same one concept unlearned, every
    # other world within training noise (benchmarks/FIDELITY.md, session 19).
    region_mean_hinge_end: float = option(
        0.6,
        "Share of --region-mean-hinge left by the end of the run: the hinge's weight falls "
        "linearly over the run from --region-mean-hinge to that share of it (1: the same "
        "throughout).",
        low=0,
        high=1,
    )
    # Counted by the gate's visual weight from the first step, the region terms left a few
    # visual concepts of the several-concept COCO-shaped worlds unlearned (2-9%): the gate had
    # sent their captions to the keywords early (visual weight 0.09-0.15 against about 0.5 for
    # the learned ones), so nothing asked the regions for them again. Every query counted fully
    # at the first step, the gate's weight taking over linearly: by half of training 0-5% were
    # left, but the regions were asked early to rank captions whose images do not show the
    # concept, and on the caption-cued COCO world the gate's margin over fixed weights fell to a
    # third; by a quarter, that margin keeps (benchmarks/FIDELITY.md, session 16).
    region_terms_warmup: float = option(
        0.25,
        "Share of training over which the region terms' weight on each query fades from 1 "
        "to the gate's visual weight (0: the gate's weight from the first step).",
        low=0,
        high=1,
    )
    # The keywords' counterpart of the region target: on worlds where an image is labelled with
    # several concepts and a query names one or two of them, the keyword attention spread over
    # the image's concept keywords and fillers alike (median mass on a named concept's keyword
    # about 0.37 on the several-concept synth worlds, up to 4 of their 24 textual concepts under
    # 0.3). Drawn toward the keywords whose values match the query, each positive counted by
    # the gate's keyword weight, none is under 0.3 and those worlds rank higher. It sharpens the
    # keyword attention everywhere, which helps fixed modality weights as much as the gate: at
    # 0.1 the gate's margin on the caption-cued COCO world fell to 0.03, at 0.3 the attention
    # polarised and ranking fell (benchmarks/FIDELITY.md, session 16). 0 is the ranking loss
    # alone, bit for bit.
    keyword_target: float = option(
        0.05,
        "Weight of a term drawing the keyword attention on each positive image toward the "
        "keywords whose values match the query (a softmax of their cosines with the query "
        "vector at --keyword-target-temperature, held fixed), weighted by the gate's keyword "
        "weight (0: none).",
        low=0,
    )
    keyword_target_temperature: float = option(
        0.05,
        "With --keyword-target: the temperature of the target's softmax over the cosines.",
        low=0,
        above=True,
    )
    # With the pool loss, a query whose image one modality already tells apart from the pool
    # stops asking anything of the other: on worlds where an image holds a concept in each
    # modality, a fifth of the region concepts were never learned; and fixed modality weights
    # learned to make the modality a query does not ask for say nothing (attending to an item
    # every image has), standing in for the gate. Scoring some queries with one modality alone
    # asks each to rank by itself, and leaves fixed weights no modality to hide (measured in
    # benchmarks/FIDELITY.md, sessions 9 and 10). Which modality: drawn for each image by the
    # gate's own weights. The same coin for every image of a query instead asked a modality to
    # rank whole queries whose concept only the other carries; the favoured one always kept a
    # caption's other concept from ever being asked where the gate is undecided (several
    # concepts a caption).
    modality_dropout: float = option(
        0.2,
        "The share of training queries (drawn per step) scored with one modality alone, for each "
        "image the one drawn by the modality gate's weights (see --modality-dropout-keep).",
        low=0,
        high=1,
    )
    modality_dropout_keep: str = option(
        "drawn",
        "With --modality-dropout: the modality a dropped query keeps for each image, drawn by "
        "the gate's weights (drawn) or the one they favour (favoured; a tie, as fixed weights "
        "are: one drawn per query).",
        choices=MODALITY_KEEPS,
    )
    in_batch: bool = option(
        False, "With --loss pairs: also use the batch's other positives as negatives."
    )
    clip: float = option(1.0, "Gradient norm cap (0: none).", low=0)
    max_keywords: int = option(64, "Keywords kept per image (the most frequent).", low=1, high=4096)
    gain: str = option(
        "exp",
        "NDCG gain of validation's choice of the best epoch: exp (2^label - 1, the paper's) "
        "or linear (the label, trec_eval's).",
        choices=GAINS,
    )
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
    # Model options that are `ModelConfig` fields; None leaves the model's own value (its
    # default for a new run, the checkpoint's for a resumed one), which is what a run recorded
    # before these options existed did.
    attention: str | None = option(
        None,
        "The intra-attention's logits: cosine (a learned scale times the cosine; the model's "
        "default) or dot (the dot product over sqrt(dim), the paper's).",
        choices=ATTENTIONS,
    )
    region_attention_scale_rate: float | None = option(
        None,
        "The region attention gets its own learned scale, learning this many times faster than "
        "the other weights (3 measured; default 0: it shares the keyword attention's).",
        low=0,
    )
    gate_content: bool | None = option(
        None,
        "The modality gate also reads the attended vectors (the paper's inter-attention); "
        "default: the query alone.",
        flag="--gate-content/--gate-query",
    )
    gate_scale: float | None = option(
        None, "The modality gate's first learned scale (0: none, the paper's; default 4).", low=0
    )
    init_from: str | None = option(
        None,
        "A run (its best.pt) or a checkpoint file whose weights the model starts from: a new "
        "run, with its own optimiser and schedule (fine-tuning, or more epochs of a finished run).",
    )
    tensorboard: str | None = option(
        None, "Also write each epoch's log.jsonl entry as TensorBoard events into this folder."
    )

    def __post_init__(self) -> None:
        check_config(self)
        one_of("model", self.model, model_kinds())
        # From Python, an option differs from its default only when it was given.
        check_used(self, {name: None for name in USED_WHEN if _differs_from_default(self, name)})

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


@dataclass(frozen=True)
class UsedWhen:
    """When a run uses an option: `holds(options)` (options read as attributes) is True; `needs`
    names the options that would use it, in words (a callable for words read from the registry,
    which may grow); `why` adds a reason."""

    holds: Callable[[Any], bool]
    needs: str | Callable[[], str]
    by: tuple[str, ...]  # the options `holds` reads, named in the refusal
    why: str = ""
    # The refusal in other words, from the option's name and the options (an ablation).
    refusal: Callable[[str, Any], str] | None = None

    def needs_words(self) -> str:
        return self.needs() if callable(self.needs) else self.needs


def _kinds_with(part: str, words: str, switch: str | None = None) -> UsedWhen:
    """Used by a model whose registry row has `part` (and, with `switch`, that part on)."""

    def holds(options: Any) -> bool:
        has = getattr(model_kind(options.model, "model"), part)
        return bool(has and (switch is None or getattr(options, switch)))

    def needs() -> str:
        kinds = ", ".join(row.name for row in model_rows() if getattr(row, part))
        on = f", {switch} on" if switch else ""
        return f"a model with {words} ({kinds or 'none registered'}){on}"

    return UsedWhen(holds, needs, ("model", switch) if switch else ("model",))


def _ablation(part: str, words: str) -> UsedWhen:
    """An ablation switches off a part the model kind has (`part`, a registry flag)."""
    rule = _kinds_with(part, words)

    def refusal(name: str, options: Any) -> str:
        having = ", ".join(row.name for row in model_rows() if getattr(row, part))
        return (
            f"{name} cannot be switched off for the {options.model} model, which has no "
            f"{words}: drop that ablation, or use a model with one ({having or 'none registered'})."
        )

    return dataclasses.replace(rule, refusal=refusal)


def _gradient_descent(options: Any) -> bool:
    return not model_kind(options.model, "model").closed_form


# The options that only some runs use, and when; the others every run uses (`amp` has no effect
# on the CPU, but it is how a session runs, not a choice of what to compute, so it is not here).
USED_WHEN: dict[str, UsedWhen] = {
    "negatives": UsedWhen(
        lambda o: o.loss == "pairs",
        "loss pairs",
        ("loss",),
        "the pool loss draws pool_negatives for the whole batch instead",
    ),
    "in_batch": UsedWhen(
        lambda o: o.loss == "pairs",
        "loss pairs",
        ("loss",),
        "the pool loss already scores every query against all of the batch's positives",
    ),
    "pool_negatives": UsedWhen(
        lambda o: o.loss == "pool",
        "loss pool",
        ("loss",),
        "the pairs loss draws negatives for each pair instead",
    ),
    "pool_word_share": UsedWhen(
        lambda o: o.loss == "pool",
        "loss pool",
        ("loss",),
        "it draws part of the shared pool; the pairs loss draws negatives for each pair",
    ),
    "hardest": UsedWhen(
        lambda o: o.loss == "pool",
        "loss pool",
        ("loss",),
        "each query's hardest negative in the shared pool",
    ),
    "pool_reduction": UsedWhen(
        lambda o: o.loss == "pool" and not o.hardest,
        "loss pool without hardest",
        ("loss", "hardest"),
        "the pairs loss averages over each pair's negatives, and hardest keeps one negative",
    ),
    "attention_entropy": _kinds_with("intra_attention", "intra-attention", switch="intra"),
    "attention_entropy_floor": UsedWhen(
        lambda o: attention_entropy_on(o),
        "attention_entropy above 0 (with a model with intra-attention, intra on)",
        ("attention_entropy", "model", "intra"),
        "it bounds the attention entropy term",
    ),
    "gate_routing": _kinds_with("modality_gate", "a modality gate", switch="inter"),
    "region_target": UsedWhen(
        lambda o: _attention_over(o, "regions"),
        lambda: _attention_over_words("regions"),
        ("model", "intra"),
        "it draws the attention over the regions",
    ),
    "region_target_temperature": UsedWhen(
        lambda o: region_target_on(o),
        "region_target above 0 (with a model with intra-attention over regions, intra on)",
        ("region_target", "model", "intra"),
        "it shapes the region target term",
    ),
    "region_mean_hinge": UsedWhen(
        lambda o: _attention_over(o, "regions"),
        lambda: _attention_over_words("regions"),
        ("model", "intra"),
        "without attention over the regions their mean value is what the model ranks with",
    ),
    "region_mean_hinge_end": UsedWhen(
        lambda o: region_mean_hinge_on(o),
        "region_mean_hinge above 0 (with a model with intra-attention over regions, intra on)",
        ("region_mean_hinge", "model", "intra"),
        "it fades the mean value's hinge",
    ),
    "keyword_target": UsedWhen(
        lambda o: _attention_over(o, "keywords"),
        lambda: _attention_over_words("keywords"),
        ("model", "intra"),
        "it draws the attention over the keywords",
    ),
    "keyword_target_temperature": UsedWhen(
        lambda o: keyword_target_on(o),
        "keyword_target above 0 (with a model with intra-attention over keywords, intra on)",
        ("keyword_target", "model", "intra"),
        "it shapes the keyword target term",
    ),
    "region_terms_warmup": UsedWhen(
        lambda o: region_target_on(o) or region_mean_hinge_on(o),
        "region_target or region_mean_hinge above 0 (with a model with intra-attention over "
        "regions, intra on)",
        ("region_target", "region_mean_hinge", "model", "intra"),
        "it counts the queries of the region terms",
    ),
    "gate_warmup": _kinds_with("modality_gate", "a modality gate", switch="inter"),
    "modality_dropout": UsedWhen(
        lambda o: _both_modalities(o),
        lambda: (
            "a model trained by gradient descent that reads regions and keywords "
            f"({', '.join(r.name for r in model_rows() if _reads_both(r))})"
        ),
        ("model",),
        "it scores queries with one of two modalities alone",
    ),
    "modality_dropout_keep": UsedWhen(
        lambda o: modality_dropout_on(o) > 0,
        "modality_dropout above 0 (with a model that reads regions and keywords)",
        ("modality_dropout", "model"),
        "it picks the modality that modality dropout keeps",
    ),
    "intra": _ablation("intra_attention", "intra-attention"),
    "inter": _ablation("modality_gate", "modality gate"),
    "attention": _kinds_with("intra_attention", "intra-attention", switch="intra"),
    "region_attention_scale_rate": UsedWhen(
        lambda o: _attention_over(o, "regions") and o.attention != "dot",
        lambda: _attention_over_words("regions") + ", cosine attention",
        ("model", "intra", "attention"),
        "only the cosine attention over the regions has a scale",
    ),
    "gate_content": _kinds_with("modality_gate", "a modality gate", switch="inter"),
    "gate_scale": _kinds_with("modality_gate", "a modality gate", switch="inter"),
    "word_vectors": UsedWhen(
        lambda o: _gradient_descent(o) and o.init_from is None,
        "a new model trained by gradient descent (no init_from, not a closed-form kind)",
        ("model", "init_from"),
        "they only start a new model's query word embeddings",
    ),
    "init_from": UsedWhen(
        _gradient_descent,
        "a model trained by gradient descent (not a closed-form kind)",
        ("model",),
        "a closed-form fit starts from no weights",
    ),
}


def _attends_to(row: Any, items: str) -> bool:
    """Whether a model table row attends over its `items` ("regions" or "keywords")."""
    return bool(getattr(row, items) and row.intra_attention)


def _attention_over(options: Any, items: str) -> bool:
    return _attends_to(model_kind(options.model, "model"), items) and bool(options.intra)


def _attention_over_words(items: str) -> str:
    rows = ", ".join(r.name for r in model_rows() if _attends_to(r, items))
    return f"a model with intra-attention over {items} ({rows}), intra on"


def _reads_both(row: Any) -> bool:
    return bool(row.regions and row.keywords and not row.closed_form)


def _both_modalities(options: Any) -> bool:
    return _reads_both(model_kind(options.model, "model"))


def modality_dropout_on(options: Any) -> float:
    """The share of training queries a run scores with one modality alone (0 where the model
    does not read both)."""
    return float(options.modality_dropout) if _both_modalities(options) else 0.0


def attention_entropy_on(options: Any) -> bool:
    """Whether a run adds the attention entropy term: a weight above 0, for a model that
    attends."""
    return bool(options.attention_entropy > 0 and USED_WHEN["attention_entropy"].holds(options))


def region_target_on(options: Any) -> bool:
    """Whether a run adds the region target term: a weight above 0, for a model that attends to
    regions."""
    return bool(options.region_target > 0 and USED_WHEN["region_target"].holds(options))


def region_mean_hinge_on(options: Any) -> bool:
    """Whether a run adds the regions' mean value's ranking loss: a weight above 0, for a model
    that attends to regions."""
    return bool(options.region_mean_hinge > 0 and USED_WHEN["region_mean_hinge"].holds(options))


def keyword_target_on(options: Any) -> bool:
    """Whether a run adds the keyword target term: a weight above 0, for a model that attends
    to keywords."""
    return bool(options.keyword_target > 0 and USED_WHEN["keyword_target"].holds(options))


def gate_routing_on(options: Any) -> bool:
    """Whether a run adds the gate routing term: a weight above 0, for a model with a gate."""
    return bool(options.gate_routing > 0 and USED_WHEN["gate_routing"].holds(options))


def gate_warmup_on(options: Any) -> float:
    """The share of the run over which a run's modality weights fade from fixed to the gate's:
    0 for a model without a gate."""
    return float(options.gate_warmup) if USED_WHEN["gate_warmup"].holds(options) else 0.0


def _differs_from_default(config: Any, name: str) -> bool:
    return bool(getattr(config, name) != default_of(TrainConfig, name))


def unused_options(options: Mapping[str, Any]) -> list[str]:
    """The options among `options` (a TrainConfig's fields, the others at their defaults) that
    the run they describe would not use. `options` need not make a valid TrainConfig yet."""
    defaults = {f.name: default_of(TrainConfig, f.name) for f in dataclasses.fields(TrainConfig)}
    view = SimpleNamespace(**{**defaults, **options})
    one_of("model", view.model, model_kinds())
    return [name for name in options if name in USED_WHEN and not USED_WHEN[name].holds(view)]


def check_used(config: TrainConfig, given: Mapping[str, str | None]) -> None:
    """Refuse an option in `given` that the run `config` would not use (a `ConfigError` naming
    it, and the options that would use it). `given` maps each option given to where it came from
    (`--config run.toml`; None: said nowhere)."""
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        rule = USED_WHEN.get(name)
        if name not in given or rule is None or rule.holds(config):
            continue
        if rule.refusal is not None:
            raise ConfigError(rule.refusal(name, config), parameter=name)
        value = getattr(config, name)
        # A switch is named by its flag alone (`--no-intra`, `--hardest`), a value shown.
        shown = "" if isinstance(value, bool) else f" {value!r}"
        where = f" (from {given[name]})" if given[name] else ""
        now = ", ".join(f"{by} {getattr(config, by)!r}" for by in rule.by)
        why = f" ({rule.why})" if rule.why else ""
        raise ConfigError(
            f"{name}{shown}{where} goes with {rule.needs_words()}{why}; this run has {now}, "
            f"which would ignore it. Drop it, or choose {rule.needs_words()}.",
            parameter=name,
        )


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options a `--config` file sets: a TOML table whose keys are `TrainConfig`'s fields
    (as `config.json` records them under "train"). An unknown key, or a table or list where one
    value belongs, is a `ConfigError` naming the file and the key; the values are checked by
    `TrainConfig`."""
    file = Path(path)

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"config_file {file}: {problem}", parameter="config_file")

    try:
        with file.open("rb") as handle:
            values = tomllib.load(handle)
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise refuse(f"is not valid TOML ({exc}); write one option a line: epochs = 8.") from None
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key, value in values.items():
        if key not in known:
            raise refuse(
                f"unknown key {key!r}. The keys are the training options, spelled as in "
                f"Python: {', '.join(known)}."
            )
        if isinstance(value, dict | list):
            raise refuse(
                f"{key} is a TOML {'table' if isinstance(value, dict) else 'list'}; give it one "
                f"value, such as {key} = {_toml_value(default_of(TrainConfig, key))}."
            )
    return values


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return '"..."' if value is None else repr(value)


def train_config(
    given: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """The options of a run: `given` first, then the options of `config_file`, then those of
    `preset` (`presets.PRESETS`), then the defaults. An option given, or set by the file, that
    the run would not use is refused; a preset's options that the run does not use are left out
    (the paper preset's gate settings on a baseline without a gate)."""
    values, sources = layered_options(given or {}, config_file, preset)
    config = TrainConfig(**values)
    check_used(config, sources)
    return config


def layered_options(
    given: Mapping[str, Any],
    config_file: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    given_from: str | None = None,
) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The options `given`, the `config_file`'s and the `preset`'s, each option taken from the
    first that sets it, and where each came from (`given_from` names the given ones). A preset's
    options that the run would not use are dropped."""
    from .presets import preset_options

    file_values = read_config_file(config_file) if config_file is not None else {}
    preset_values = preset_options(preset) if preset is not None else {}
    values = {**preset_values, **file_values, **given}
    unused = set(unused_options(values))
    sources: dict[str, str | None] = {}
    for name in list(values):
        if name in given:
            sources[name] = given_from
        elif name in file_values:
            sources[name] = f"the config file {config_file}"
        elif name in unused:
            log.info("preset %s: %s is left out (this run does not use it)", preset, name)
            del values[name]
        else:
            sources[name] = f"the preset {preset}"
    return values, sources


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
