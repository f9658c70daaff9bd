"""Ranking models: AMC (attention guided multi-modal correlation) and the paper's baselines.

Every model scores (query, image) pairs, where an image is a set of region features and a bag of
keywords (`amc_data.ranking.batch`). AMC follows the paper's framework:

- the query's words are embedded and mean-pooled into `q`, which yields four vectors: `s_q`
  (guides visual attention), `q W_ql` (guides keyword attention), `q^m` (the query's point in the
  shared space) and `q'` (guides the choice of modality);
- visual intra-attention: a softmax over the image's regions conditioned on `s_q` gives `v^q`;
- language intra-attention: a softmax over the image's keywords conditioned on `q W_ql` gives `k^q`
  (a keyword seen `c` times counts as `c` copies: `log c` is added to its logit);
- both softmaxes take a learned scale times the cosine of guide and key as logits (`attention`
  "cosine", the default; "dot" is the scaled dot product of older checkpoints);
- inter-attention: two modality weights that sum to 1, a softmax of logits times a learned
  scale (`gate_scale`), conditioned on `q'`: on the query alone by default, or also on the two
  attended vectors (`gate_content`, the paper's form); `x^q` is their weighted combination of
  the unit-length `v^q` and `k^q`;
- the score is `cos(q^m, x^q)`.

The baselines reuse the same parts: `visual` and `keyword` match the query against one modality,
mean-pooled (the paper's DSSM-Img and DSSM-Key roles); `fusion` mean-pools both and averages them
with fixed weights (the paper's MB); `cca` is a regularised linear CCA fitted in closed form (the
paper's RCCA role). `intra=False` and `inter=False` are AMC's two ablations.

Images' query-independent projections are computed once per image; only the attention itself is
per (query, image) pair. Scores and softmaxes are computed in float32 under autocast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from operator import itemgetter
from typing import Any

from .._optional import require
from ..checks import check_config, option, whole_number
from ..errors import ConfigError, InputError
from .registry import model_kind, model_rows

require("torch", "the ranking models")  # a one-line MissingDependencyError without torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from .batch import ImageBatch, QueryBatch, TrainBatch  # noqa: E402
from .config import DEFAULT_DIM  # noqa: E402

log = logging.getLogger(__name__)

ATTENTIONS = ("cosine", "dot")
# The registry's flag of the part each ablation switches off.
_PART_FLAGS = {"intra": "intra_attention", "inter": "modality_gate"}
# Embedding rows are drawn from N(0, EMBEDDING_STD^2): small, so that the first updates of an
# adaptive optimiser move them noticeably.
EMBEDDING_STD = 0.1


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What a model is made of; saved in every checkpoint so the model can be rebuilt."""

    kind: str = option("amc", "The model kind: a row of amc_data.ranking.registry.")
    query_vocab_size: int  # query words, without the padding row
    keyword_vocab_size: int  # keyword words, without the padding row
    feature_dim: int  # D of the region features
    dim: int = option(
        DEFAULT_DIM, "The shared space (cca: at most this many canonical components).", low=1
    )
    word_dim: int | None = option(None, "Query word embeddings; None: same as dim.", low=1)
    intra: bool = option(True, "False: mean pooling inside each modality (an ablation).")
    inter: bool = option(True, "False: fixed 0.5/0.5 modality weights (an ablation).")
    dropout: float = option(
        0.1, "On the pooled query and on each modality's pooled vector.", low=0, high=1, below=True
    )
    # The intra-attention's logits: "cosine" is a learned scale (starting at attention_scale)
    # times the cosine of guide and key; "dot" is their dot product over sqrt(dim), as in
    # checkpoints written before the option existed.
    attention: str = option("cosine", "The intra-attention's logits.", choices=ATTENTIONS)
    attention_scale: float = option(1.0, "The cosine attention's first scale.", low=0, above=True)
    # How fast that scale learns relative to the other weights: its logarithm is stored divided
    # by this and multiplied back, so an adaptive optimiser moves it this many times faster.
    # Measured (benchmarks/FIDELITY.md): a soft start (scale 1) that sharpens quickly ranks
    # better or as well on every planted world than a sharp start that learns slowly (scale 4,
    # rate 1, the default of checkpoints written before the option), and on average puts more
    # mass on the concept's keyword and regions. "Times faster" holds for Adam-type optimisers
    # (steps about lr whatever the gradient's size); the rate also multiplies the stored
    # parameter's gradient, which enters the gradient-norm clip (measured on the demo's data:
    # the clip does not fire there).
    attention_scale_rate: float = option(
        10.0, "How many times faster the attention scale learns.", low=0, above=True
    )
    # The region attention's own scale (from attention_scale too), learned this many times
    # faster than the other weights; 0: the regions share the keyword attention's scale (the
    # default, and what checkpoints written before the option did). Measured
    # (benchmarks/FIDELITY.md): one shared scale sharpens as fast as the keywords ask, which on
    # worlds with several concepts an image fixes the region attention on clutter before some
    # visual concepts are learned (their cells then get too little of the attention to pull it
    # back); an own scale learned 3x as fast stays soft longer and on average leaves fewer of
    # them unlearned and ranks a little better, but ends softer on the one-concept synth worlds
    # (their region mass 0.57-0.63 against 0.75-0.78), so it is not the default.
    region_attention_scale_rate: float = option(
        0.0, "How many times faster the region attention's own scale learns (0: shared).", low=0
    )
    # The modality gate's logits (prior plus content) are multiplied by a learned scale starting
    # at gate_scale; 0 means no scale, as in checkpoints written before the option.
    gate_scale: float = option(4.0, "The modality gate's first scale (0: none).", low=0)
    # True: the gate also matches a probe from the query against each attended vector (the
    # paper's inter-attention, and checkpoints written before the option); False: it reads the
    # query alone. Measured, reading the vectors lets a decoy that matches in the wrong
    # modality pull the weight to that modality (benchmarks/FIDELITY.md).
    gate_content: bool = option(False, "The modality gate also reads the attended vectors.")
    cca_reg: float = option(
        0.1, "cca: ridge added to each covariance, relative to its mean variance.", low=0
    )

    def __post_init__(self) -> None:
        row = model_kind(self.kind)
        if self.word_dim is None:
            object.__setattr__(self, "word_dim", self.dim)
        for name in ("query_vocab_size", "keyword_vocab_size", "feature_dim"):
            whole_number(name, getattr(self, name), low=1)
        check_config(self)
        # An ablation switches off a part the kind has; silently ignoring it on a kind without
        # that part would record a run that is not what was asked.
        for name, part, has_part in (
            ("intra", "intra-attention", row.intra_attention),
            ("inter", "modality gate", row.modality_gate),
        ):
            if not getattr(self, name) and not has_part:
                having = [r.name for r in model_rows() if getattr(r, _PART_FLAGS[name])]
                raise ConfigError(
                    f"{name} cannot be switched off for the {self.kind} model, which has no "
                    f"{part}: drop that ablation, or use a model with one "
                    f"({', '.join(having) or 'none registered'}).",
                    parameter=name,
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, for `config.json` and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """The inverse of `to_dict`, for today's checkpoint format; unknown or missing fields are
        a `ConfigError` (an older checkpoint is brought up to date by `migrations.migrate`, which
        `read_checkpoint` applies)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}. "
                "Was the checkpoint written by a newer amc-data?"
            )
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ConfigError(f"Model options {', '.join(missing)} are missing.")
        return cls(**data)


@dataclass(frozen=True)
class Attention:
    """What AMC looked at, for each query's candidate images."""

    scores: Tensor  # (B, M)
    region_weights: Tensor  # (B, M, R): 0 on padded regions
    keyword_weights: Tensor  # (B, M, K): 0 on padding; all 0 for an image without keywords
    modality_weights: Tensor  # (B, M, 2): [visual, keyword], summing to 1


@dataclass(frozen=True)
class GateReading:
    """What a training loss needs to teach the modality gate which modality to read, beside the
    scores: the gate's own weights (before modality dropout replaced any) and the score each
    modality would give alone (all the weight on it)."""

    gate: Tensor  # (B|Q, M|N, 2): [visual, keyword], as the gate weighs them
    alone: Tensor  # (B|Q, M|N, 2): cos(q^m, v^q) and cos(q^m, k^q); 0 where the image lacks it


@dataclass(frozen=True)
class ValueReading:
    """What the training losses on one modality's items (regions, or keywords) need beside the
    scores: how well each item's value alone, and the items' mean value, match the query's
    shared vector."""

    match: Tensor  # (B|Q, M|N, T): cos(q^m, each item's value); 0 on padding
    mask: Tensor  # (B|1, M|N, T) bool: real items
    mean: Tensor  # (B|Q, M|N): cos(q^m, the mean of the items' values); 0 without items


@dataclass(frozen=True)
class EncodedQuery:
    """The query embedding block's outputs (the paper's four vectors). A vector the model does
    not use (a baseline, an ablation) is None."""

    shared: Tensor  # q^m (B, d): the query's point in the shared space
    visual_guide: Tensor | None  # s_q (B, d): guides the visual intra-attention
    keyword_guide: Tensor | None  # q W_ql (B, d): guides the language intra-attention
    modality_prior: Tensor | None  # q', part one (B, 2): the query's own leaning to a modality
    modality_probe: Tensor | None  # q', part two (B, d): matched against each attended vector


@dataclass(frozen=True)
class EncodedModality:
    """One modality of a set of images, projected once per image: its items (regions, or
    keywords) and, for attention, their keys; for mean pooling, the fixed pooling weights."""

    value: Tensor  # (*S, T, d): what an item contributes when attended
    mask: Tensor  # (*S, T) bool: real items, not padding
    key: Tensor | None = None  # (*S, T, d): what the query's guide is matched against
    bias: Tensor | None = None  # (*S, T): added to the attention logits (keyword repeats)
    pooling: Tensor | None = None  # (*S, T): fixed weights, when there is no attention


@dataclass(frozen=True)
class EncodedImages:
    """Both modalities of a set of images; a modality the model does not read is None."""

    visual: EncodedModality | None  # the regions v
    keywords: EncodedModality | None  # the keyword set K


class RankingModel(nn.Module):
    """The interface shared by every model: scores of queries against images, higher is better."""

    closed_form: bool = False  # True: fitted by `fit_closed_form`, not by gradient descent
    # score_pool works on this many (query, image, item) elements at a time, to bound memory.
    pool_chunk_elements: int = 1 << 24

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        query: QueryBatch,
        images: ImageBatch,
        pool: bool = False,
        weights: bool = False,
        gate: bool = False,
        regions: bool = False,
        keywords: bool = False,
    ) -> Tensor | tuple[Any, ...]:
        """Scores of each query's own candidates: query (B, L), images (B, M, ...) -> (B, M);
        with `pool`, of every query against one pool, as `score_pool` (through `forward`, so
        that DistributedDataParallel sees the call). With `weights` (a model with attention):
        the scores, the weights inside each modality the model reads, by name ("region",
        "keyword"; (B, M, T), or (Q, N, T) in pool, in the chunks `score_pool` takes) and the
        modality weights over those it reads, in that order ((B, M, n), (Q, N, n)), for a
        training loss that reads the attention; with `gate` too (a model with a modality gate),
        a `GateReading` next; with `regions` (a model that attends to regions), the regions'
        `ValueReading` next; with `keywords` (a model that attends to keywords), the keywords'
        last."""
        if weights:
            if not model_kind(self.config.kind).intra_attention:
                raise ConfigError(f"The {self.config.kind} model has no attention weights.")
            if gate and not getattr(self, "gated", False):
                raise ConfigError(f"This {self.config.kind} model has no modality gate.")
            if regions and not (getattr(self, "use_visual", False) and self.attend):
                raise ConfigError(f"This {self.config.kind} model has no attention over regions.")
            if keywords and not (getattr(self, "use_keywords", False) and self.attend):
                raise ConfigError(f"This {self.config.kind} model has no attention over keywords.")
            readings = (gate, regions, keywords)
            if pool:
                scored = self._score_pool(query, images, True, *readings)
            else:
                self._check(query, images, pool=False)
                encoded = self._encode_query(query), self._encode_images(images)
                scored = self._score(*encoded, False, *readings)
            scores, inside, modality = scored[:3]
            return scores, inside, modality.expand(*scores.shape, modality.shape[-1]), *scored[3:]
        if pool:
            return self.score_pool(query, images)
        self._check(query, images, pool=False)
        scored = self._score(self._encode_query(query), self._encode_images(images), pool=False)
        return scored[0]

    def score_pool(self, query: QueryBatch, images: ImageBatch) -> Tensor:
        """Scores of every query against every image: query (Q, L), images (N, ...) -> (Q, N).

        The images are projected once; queries are then scored in chunks that bound memory.
        """
        return self._score_pool(query, images, weights=False)[0]

    def _score_pool(
        self,
        query: QueryBatch,
        images: ImageBatch,
        weights: bool = True,
        gate: bool = False,
        regions: bool = False,
        keywords: bool = False,
    ) -> tuple[Any, ...]:
        """`score_pool`'s scores first, with the weights `_score` gives beside them (an
        attention model's: inside (Q, N, T) by modality, modality (Q, N, n); with `gate`, its
        `GateReading`, with `regions` / `keywords` their `ValueReading`), the queries in chunks
        that bound memory (each chunk's weights spread over its queries, so that the chunks
        join); without `weights`, past one chunk, the scores only."""
        self._check(query, images, pool=True)
        encoded = self._encode_images(images)
        n, items = images.shape[0], images.regions.shape[-2] + images.keywords.shape[-1]
        per_query = max(1, n * (items + 2 * self.config.dim))  # elements one query needs
        if len(query) > 0 and len(query) * per_query <= self.pool_chunk_elements:
            # One chunk (a training batch's pool): no chunk size is computed from the shapes,
            # so torch.compile does not specialise on it and recompile for every pool size.
            return self._score(self._encode_query(query), encoded, True, gate, regions, keywords)
        chunk = max(1, self.pool_chunk_elements // per_query)
        scores: list[Tensor] = []
        kept: list[tuple[Any, ...]] = []  # with `weights`: each chunk's
        for start in range(0, len(query), chunk):
            rows = query.map(itemgetter(slice(start, start + chunk)))  # (chunk, L)
            scored = self._score(self._encode_query(rows), encoded, True, gate, regions, keywords)
            scores.append(scored[0])
            if weights and len(scored) >= 3:
                kept.append(scored[1:])
        device = images.regions.device
        joined = torch.cat(scores) if scores else torch.zeros(0, n, device=device)
        if not kept:  # no weights asked for, or no query
            return (joined, {}, torch.zeros(0, n, 0, device=device)) if weights else (joined,)

        def spread(chunks: list[Tensor]) -> Tensor:  # each chunk's (1 | chunk, N, ...) as (Q, ...)
            sized = zip(chunks, scores, strict=True)
            return torch.cat([t.expand(len(part), *t.shape[1:]) for t, part in sized])

        names = kept[0][0]
        inside = {name: spread([k[0][name] for k in kept]) for name in names}
        joined_weights: tuple[Any, ...] = (joined, inside, spread([k[1] for k in kept]))
        if gate:
            gates = [k[2] for k in kept]
            gated = GateReading(spread([r.gate for r in gates]), spread([r.alone for r in gates]))
            joined_weights = (*joined_weights, gated)
        place = 2 + gate  # each chunk's: inside, modality, [gate], [regions'], [keywords']
        for asked in (regions, keywords):
            if asked:
                readings = [k[place] for k in kept]
                match, mean = (
                    spread([r.match for r in readings]),
                    spread([r.mean for r in readings]),
                )
                joined_weights = (*joined_weights, ValueReading(match, readings[0].mask, mean))
                place += 1
        return joined_weights

    def explain(self, query: QueryBatch, images: ImageBatch) -> Attention:
        """The scores and the attention weights behind them, for images (B, M, ...)."""
        raise ConfigError(f"The {self.config.kind} model has no attention to explain.")

    def fit_closed_form(self, batches: Iterable[TrainBatch]) -> None:
        """Fit the model in closed form (cca only)."""
        raise ConfigError(
            f"The {self.config.kind} model is trained by gradient descent, not in closed form."
        )

    def _check(self, query: QueryBatch, images: ImageBatch, pool: bool) -> None:
        shape = images.shape
        if pool and len(shape) != 1:
            raise InputError(f"score_pool needs images of leading shape (N,), got {shape}.")
        if not pool and (len(shape) != 2 or shape[0] != len(query)):
            raise InputError(
                f"forward needs images of leading shape (B, M) with B = {len(query)} queries, "
                f"got {shape}; use score_pool to score every query against one pool of images."
            )
        if images.regions.shape[-1] != self.config.feature_dim:
            raise InputError(
                f"The images have {images.regions.shape[-1]}-dimensional features but the model "
                f"was built for {self.config.feature_dim}: use a model trained on this dataset."
            )

    # Subclasses: encode both sides, then score (pairs: (B, ...) x (B, M, ...); pool: (Q, ...) x
    # (N, ...)), returning the scores and, for attention models, the weights.
    def _encode_query(self, query: QueryBatch) -> Any:
        raise NotImplementedError

    def _encode_images(self, images: ImageBatch) -> Any:
        raise NotImplementedError

    def _score(
        self,
        query: Any,
        images: Any,
        pool: bool,
        gate: bool = False,
        regions: bool = False,
        keywords: bool = False,
    ) -> tuple[Any, ...]:
        raise NotImplementedError


class AttentionModel(RankingModel):
    """AMC, its two ablations, and the visual / keyword / fusion baselines: the parts used are
    those the kind's registry row names (regions, keywords, intra-attention, modality gate)."""

    def __init__(self, config: ModelConfig, word_vectors: Tensor | None = None) -> None:
        super().__init__(config)
        d, w = config.dim, int(config.word_dim or config.dim)
        row = model_kind(config.kind)  # what the kind reads and attends to
        self.use_visual = row.regions
        self.use_keywords = row.keywords
        self.attend = row.intra_attention and config.intra
        self.gated = row.modality_gate and config.inter

        self.words = nn.Embedding(config.query_vocab_size + 1, w, padding_idx=0)
        nn.init.normal_(self.words.weight, std=EMBEDDING_STD)
        if word_vectors is not None:
            expected = (config.query_vocab_size + 1, w)
            if tuple(word_vectors.shape) != expected:
                raise ConfigError(
                    f"The word vectors have shape {tuple(word_vectors.shape)}, the model needs "
                    f"{expected} (query words + a padding row, word_dim): set word_dim to the "
                    "vectors' dimension and load them for this dataset's query vocabulary."
                )
            with torch.no_grad():
                self.words.weight.copy_(word_vectors)
        with torch.no_grad():
            self.words.weight[0].zero_()
        self.dropout = nn.Dropout(config.dropout)
        # In training only: the share of queries scored with one modality alone and how each
        # keeps its modality (training options, `TrainConfig.modality_dropout` and
        # `modality_dropout_keep`, which the trainer sets; not part of the model).
        self.modality_dropout = 0.0
        self.modality_dropout_keep = "drawn"
        # In training only: how much of fixed 0.5 / 0.5 modality weights is blended into the
        # gate's (`TrainConfig.gate_warmup`, which the trainer sets each step).
        self.gate_blend = 0.0
        self.query_shared = nn.Linear(w, d)  # q^m
        if self.use_visual:
            # Features from a CNN vary widely in scale; normalising each region first keeps the
            # attention logits in a range a softmax can learn from.
            # No affine part: the next linear layers absorb any per-feature scale and shift,
            # and without parameters here no gradient flows back into the (B, R, D) regions,
            # which at 49 x 2,048 would cost as much as the projections themselves.
            self.region_norm = nn.LayerNorm(config.feature_dim, elementwise_affine=False)
            self.region_value = nn.Linear(config.feature_dim, d)
            if self.attend:
                self.region_key = nn.Linear(config.feature_dim, d)
                self.query_visual = nn.Linear(w, d)  # s_q
        if self.use_keywords:
            self.keywords = nn.Embedding(config.keyword_vocab_size + 1, d, padding_idx=0)
            nn.init.normal_(self.keywords.weight, std=EMBEDDING_STD)
            with torch.no_grad():
                self.keywords.weight[0].zero_()
            if self.attend:
                self.query_keyword = nn.Linear(w, d, bias=False)  # q W_ql
        if self.gated:
            # q' has two parts: a prior over the modalities read from the query alone (its
            # intent), and (gate_content) a probe matched against each attended vector (how well
            # each modality answers this query for this image).
            self.gate_prior = nn.Linear(w, 2)
            if config.gate_content:
                self.gate_probe = nn.Linear(w, d)
            if config.gate_scale > 0:
                # The gate's inputs are small at the start (the query's mean word embedding),
                # so its logits stay near 0 and the weights near 0.5/0.5: measured, 0.70/0.34
                # image weight for visual/textual intents after training. A learned scale lets
                # the weights follow the intent more sharply (0.81/0.19).
                self.gate_log_scale = nn.Parameter(torch.tensor(math.log(config.gate_scale)))
        if self.attend and config.attention == "cosine":
            # Embeddings start small (norm about EMBEDDING_STD * sqrt(dim)), so a dot product
            # over sqrt(dim) starts near 0 and stays there: measured, the keyword attention
            # never left uniform. A cosine times a learned scale can reach any sharpness: it
            # starts soft, while the embeddings are still random, and (learning faster than
            # the other weights) sharpens as far as the loss asks once they mean something.
            self.attention_rate = config.attention_scale_rate
            self.attention_log_scale = nn.Parameter(
                torch.tensor(math.log(config.attention_scale) / self.attention_rate)
            )
            if self.use_visual and config.region_attention_scale_rate > 0:
                self.region_rate = config.region_attention_scale_rate
                self.region_log_scale = nn.Parameter(
                    torch.tensor(math.log(config.attention_scale) / self.region_rate)
                )

    def explain(self, query: QueryBatch, images: ImageBatch) -> Attention:
        self._check(query, images, pool=False)
        scores, weights, modality = self._score(
            self._encode_query(query), self._encode_images(images), pool=False
        )
        # A modality the model does not use gets zero weights throughout.
        region = weights.get("region", torch.zeros_like(images.region_mask, dtype=scores.dtype))
        keyword = weights.get("keyword", torch.zeros_like(images.keyword_mask, dtype=scores.dtype))
        if not self.use_visual:
            modality = torch.cat([torch.zeros_like(modality), modality], -1)
        if not self.use_keywords:
            modality = torch.cat([modality, torch.zeros_like(modality)], -1)
        return Attention(scores, region, keyword, modality)

    def _encode_query(self, query: QueryBatch) -> EncodedQuery:
        """The query embedding block: mean-pooled words `q`, then its four vectors."""
        words = self.words(query.tokens)  # (B, L, W)
        q = self.dropout(_masked_mean(words, query.mask))  # (B, W)
        attend_visual = self.attend and self.use_visual
        attend_keywords = self.attend and self.use_keywords
        return EncodedQuery(
            shared=self.query_shared(q),  # q^m (B, d)
            visual_guide=self.query_visual(q) if attend_visual else None,  # s_q (B, d)
            keyword_guide=self.query_keyword(q) if attend_keywords else None,  # q W_ql (B, d)
            modality_prior=self.gate_prior(q) if self.gated else None,  # (B, 2)
            modality_probe=self.gate_probe(q) if hasattr(self, "gate_probe") else None,  # (B, d)
        )

    def _encode_images(self, images: ImageBatch) -> EncodedImages:
        """Each image's query-independent part, once per image (leading shape *S)."""
        visual = keywords = None
        if self.use_visual:
            regions = self.region_norm(images.regions)  # (*S, R, D)
            mask = images.region_mask  # (*S, R)
            visual = EncodedModality(
                value=self.region_value(regions),  # (*S, R, d)
                mask=mask,
                key=self.region_key(regions) if self.attend else None,  # (*S, R, d)
                pooling=None if self.attend else normalise_weights(mask.float()),  # (*S, R)
            )
        if self.use_keywords:
            embedded = self.keywords(images.keywords)  # (*S, K, d)
            counts = images.keyword_counts.float() * images.keyword_mask  # (*S, K)
            keywords = EncodedModality(
                value=embedded,
                mask=images.keyword_mask,  # (*S, K)
                key=embedded if self.attend else None,
                # A keyword seen c times counts as c copies of it: log c joins its logit.
                bias=torch.log(counts.clamp_min(1e-6)) if self.attend else None,
                pooling=None if self.attend else normalise_weights(counts),  # the multiset's mean
            )
        return EncodedImages(visual=visual, keywords=keywords)

    def attention_scale(self, region: bool) -> Tensor | None:
        """The cosine attention's scale for the regions (`region`) or the keywords; None for
        dot-product attention."""
        if region and hasattr(self, "region_log_scale"):
            return (self.region_log_scale * self.region_rate).exp()
        scale = getattr(self, "attention_log_scale", None)
        return None if scale is None else (scale * self.attention_rate).exp()

    def _attend_modality(
        self, guide: Tensor | None, items: EncodedModality, pool: bool, region: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Intra-attention (or fixed pooling) over one modality's items (`region`: the regions,
        whose attention may have its own scale): the attended vector (B|Q|1, M|N, d) and the
        weights over the items (B|Q|*S, M|N, T)."""
        if guide is not None and items.key is not None:
            scale = self.attention_scale(region)
            return _attend(guide, items.key, items.value, items.bias, items.mask, pool, scale)
        pooling = items.pooling
        weight = normalise_weights(items.mask.float()) if pooling is None else pooling  # (*S, T)
        vec = torch.einsum("...t,...td->...d", weight.to(items.value.dtype), items.value)
        return (vec.unsqueeze(0) if pool else vec), weight  # (*S, d), with a leading 1 in pool

    def _score(
        self,
        q: EncodedQuery,
        img: EncodedImages,
        pool: bool,
        gate: bool = False,
        regions: bool = False,
        keywords: bool = False,
    ) -> tuple[Any, ...]:
        """Scores, the weights inside each modality, and the modality weights (used ones only);
        with `gate`, a `GateReading` next; with `regions`, the regions' `ValueReading` next;
        with `keywords`, the keywords' last.

        Pairs: q (B, .), img (B, M, .) -> (B, M, .). Pool: q (Q, .), img (N, .) -> (Q, N, .).
        Query-independent results (mean pooling, fixed weights) keep a leading 1 in pool mode
        and broadcast against the queries only where they meet them.
        """
        attended, weights, available = [], {}, []
        modalities = (
            ("region", img.visual, q.visual_guide),
            ("keyword", img.keywords, q.keyword_guide),
        )
        for name, items, guide in modalities:
            if items is None:
                continue
            vec, weight = self._attend_modality(guide, items, pool, name == "region")  # v^q, k^q
            vec = self.dropout(vec)  # once per pooled vector: cheaper than per item
            attended.append(F.normalize(vec.float(), dim=-1, eps=1e-6))  # unit length, or 0
            weights[name] = weight
            present = items.mask.any(-1)  # (*S): the image has items of this modality
            available.append(present.unsqueeze(0) if pool else present)  # (B|1, M|N)
        avail = torch.stack(available, -1)  # (B|1, M|N, modalities)

        # Inter-attention: modality weights from q' (a prior from the query alone, and a probe
        # matched against each attended vector), or fixed equal weights.
        if q.modality_prior is not None:
            logits = q.modality_prior.float().unsqueeze(1)  # (B|Q, 1, 2)
            if q.modality_probe is not None:
                probe = q.modality_probe.float().unsqueeze(1)  # (B|Q, 1, d)
                content = [_dot(probe, vec) for vec in attended]
                logits = logits + torch.stack(content, -1)  # (B|Q, M|N, 2)
            gate_scale = getattr(self, "gate_log_scale", None)
            if gate_scale is not None:
                logits = logits * gate_scale.exp().float()
            logits = logits.expand(torch.broadcast_shapes(logits.shape, avail.shape))
        else:
            logits = torch.zeros(avail.shape, device=avail.device)
        modality = _masked_softmax(logits, avail)  # (B|Q|1, M|N, modalities)
        gate_weights = modality  # the gate's own, before modality dropout
        if self.training and self.modality_dropout > 0 and modality.shape[-1] == 2:
            modality = _drop_modality(
                modality, avail, self.modality_dropout, len(q.shared), self.modality_dropout_keep
            )
        if self.training and self.gate_blend > 0:
            fixed = _masked_softmax(torch.zeros_like(logits), avail)  # what fixed weights give
            modality = modality * (1 - self.gate_blend) + fixed * self.gate_blend
        x = sum(modality[..., i : i + 1] * vec for i, vec in enumerate(attended))  # x^q
        query_unit = F.normalize(q.shared.float(), dim=-1, eps=1e-6).unsqueeze(1)  # (B|Q, 1, d)
        scores = _dot(query_unit, F.normalize(x, dim=-1, eps=1e-6))  # type: ignore[arg-type]
        scored: tuple[Any, ...] = (scores, weights, modality)  # scores (B|Q, M|N)
        if gate:
            # Each modality's score alone: its attended vector is unit length (or 0 where the
            # image lacks the modality), so all the weight on it makes x^q that vector.
            alone = torch.stack([_dot(query_unit, vec) for vec in attended], -1)  # (B|Q, M|N, 2)
            scored = (*scored, GateReading(gate_weights.expand(alone.shape), alone))
        if regions and img.visual is not None:
            scored = (*scored, _value_reading(query_unit, img.visual, pool))
        if keywords and img.keywords is not None:
            scored = (*scored, _value_reading(query_unit, img.keywords, pool))
        return scored


# Helpers ---------------------------------------------------------------------------------------


def _value_reading(query_unit: Tensor, items: EncodedModality, pool: bool) -> ValueReading:
    """How well each item's value, and the items' mean value, match the unit query vectors
    (B|Q, 1, d): the values (B, M, T, d) of each query's candidates, or (N, T, d) of a pool."""
    value = items.value.float()
    unit = F.normalize(value, dim=-1, eps=1e-6)
    mean = F.normalize(_masked_mean(value, items.mask), dim=-1, eps=1e-6)  # (*S, d)
    query = query_unit[:, 0]  # (B|Q, d)
    with float32_products(query):
        if pool:
            match, mean_score = torch.einsum("qd,ntd->qnt", query, unit), query @ mean.T
            mask = items.mask.unsqueeze(0)  # (1, N, T)
        else:
            match = torch.einsum("bd,bmtd->bmt", query, unit)
            mean_score, mask = torch.einsum("bd,bmd->bm", query, mean), items.mask
    return ValueReading(match * mask, mask, mean_score)


def _drop_modality(
    modality: Tensor, available: Tensor, share: float, queries: int, keep: str = "drawn"
) -> Tensor:
    """`modality` (B|Q|1, M|N, 2) with, for `share` of the queries (drawn per call), all the
    weight on one modality for each image, where the image has it. `keep="drawn"`: that modality
    drawn for each image by the (detached) weights themselves, so a gate sure of a modality
    keeps it nearly always and an undecided one (fixed weights: 0.5 / 0.5) either as often;
    `"favoured"`: the one the weights favour (a tie: one drawn per query)."""
    modality = modality.expand(queries, *modality.shape[1:])
    device = modality.device
    dropped = torch.rand(queries, device=device) < share  # (Q,)
    weights = modality.detach()
    if keep == "drawn":
        side = (torch.rand(weights.shape[:-1], device=device) < weights[..., 1].float()).long()
    else:
        drawn = torch.randint(0, 2, (queries,), device=device)  # (Q,)
        tie = (weights[..., 0] - weights[..., 1]).abs() < 1e-6  # (Q, N)
        side = torch.where(tie, drawn[:, None], weights.argmax(-1))  # (Q, N)
    kept = F.one_hot(side, 2).bool()  # (Q, N, 2)
    usable = dropped[:, None] & (kept & available).any(-1)  # (Q, N): the image has it
    return torch.where(usable[..., None], kept.to(modality.dtype), modality)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` (..., T, W) over the items where `mask` (..., T); 0 where none is."""
    weights = normalise_weights(mask.to(values.dtype))
    return torch.einsum("...t,...tw->...w", weights, values)


def normalise_weights(weights: Tensor) -> Tensor:
    """Weights (..., T) scaled to sum to 1; rows of zeros stay zeros."""
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)


def _masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis where `mask` (broadcastable); a row with nothing unmasked gets
    all zeros, never NaN, and passes no gradient."""
    logits = logits.float().masked_fill(~mask, float("-inf"))
    anything = mask.any(-1, keepdim=True)
    logits = logits.masked_fill(~anything, 0.0)
    return torch.softmax(logits, -1) * anything


def _attend(
    guide: Tensor,
    key: Tensor,
    value: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    pool: bool,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Each query's softmax attention over each image's items: logits are `scale` times the
    cosine of guide and key, or (no `scale`) their dot product over sqrt(d).

    Pairs: guide (B, d), key/value (B, M, T, d), mask (B, M, T) -> (B, M, d), weights (B, M, T).
    Pool: guide (Q, d), key/value (N, T, d), mask (N, T) -> (Q, N, d), weights (Q, N, T).
    """
    pattern = "qd,ntd->qnt" if pool else "bd,bmtd->bmt"
    if scale is None:
        logits = torch.einsum(pattern, guide, key).float() / math.sqrt(guide.shape[-1])
    else:
        unit_guide, unit_key = F.normalize(guide, dim=-1), F.normalize(key, dim=-1)
        logits = torch.einsum(pattern, unit_guide, unit_key).float() * scale.float()
    if bias is not None:
        logits = logits + bias
    weights = _masked_softmax(logits, mask)
    pattern = "qnt,ntd->qnd" if pool else "bmt,bmtd->bmd"
    return torch.einsum(pattern, weights.to(value.dtype), value), weights


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Dot products over the last axis: a (X, 1, d) with b (1, Y, d) as one matrix product
    (X, Y); otherwise elementwise with broadcasting."""
    if a.shape[1] == 1 and b.shape[0] == 1:
        with float32_products(a):
            return a[:, 0].float() @ b[0].float().T
    return (a.float() * b.float()).sum(-1)


def float32_products(tensor: Tensor) -> torch.autocast:
    """A context in which matrix products stay float32 even inside autocast."""
    return torch.autocast(tensor.device.type, enabled=False)
