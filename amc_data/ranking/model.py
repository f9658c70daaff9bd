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
- inter-attention: two modality weights, conditioned on `q'` and on the two attended vectors, sum
  to 1; `x^q` is their weighted combination of the unit-length `v^q` and `k^q`;
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
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import ConfigError, InputError, TrainingError

require("torch", "the ranking models")  # a one-line MissingDependencyError without torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from .batch import ImageBatch, QueryBatch, TrainBatch  # noqa: E402

log = logging.getLogger(__name__)

KINDS = ("amc", "visual", "keyword", "fusion", "cca")
ATTENTIONS = ("cosine", "dot")
# Embedding rows are drawn from N(0, EMBEDDING_STD^2): small, so that the first updates of an
# adaptive optimiser move them noticeably.
EMBEDDING_STD = 0.1
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What a model is made of; saved in every checkpoint so the model can be rebuilt."""

    kind: str = "amc"  # amc | visual | keyword | fusion | cca
    query_vocab_size: int  # query words, without the padding row
    keyword_vocab_size: int  # keyword words, without the padding row
    feature_dim: int  # D of the region features
    dim: int = 128  # the shared space (cca: at most this many canonical components)
    word_dim: int | None = None  # query word embeddings; None: same as `dim`
    intra: bool = True  # False: mean pooling inside each modality (AMC ablation)
    inter: bool = True  # False: fixed 0.5/0.5 modality weights (AMC ablation)
    dropout: float = 0.1  # on the pooled query and on each modality's pooled vector
    # The intra-attention's logits: "cosine" is a learned scale (starting at attention_scale)
    # times the cosine of guide and key; "dot" is their dot product over sqrt(dim), as in
    # checkpoints written before the option existed.
    attention: str = "cosine"
    attention_scale: float = 4.0
    cca_reg: float = 0.1  # cca: ridge added to each covariance, relative to its mean variance

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"Unknown model kind {self.kind!r}: choose one of {', '.join(KINDS)}."
            )
        if self.word_dim is None:
            object.__setattr__(self, "word_dim", self.dim)
        for name in ("query_vocab_size", "keyword_vocab_size", "feature_dim", "dim", "word_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Model option {name} must be a positive integer, got {value!r}.")
        for name in ("intra", "inter"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"Model option {name} must be true or false, got {value!r}.")
            if not value and self.kind != "amc":
                raise ConfigError(
                    f"{name}=False (--no-{name}) is an ablation of the amc model; the {self.kind} "
                    f"model has no {name}-attention to switch off. Drop the option or use amc."
                )
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"Model option dropout must be in [0, 1), got {self.dropout!r}.")
        if self.attention not in ATTENTIONS:
            raise ConfigError(
                f"Model option attention must be one of {', '.join(ATTENTIONS)}, got "
                f"{self.attention!r}."
            )
        if not _is_number(self.attention_scale) or self.attention_scale <= 0.0:
            raise ConfigError(
                f"Model option attention_scale must be a number > 0, got {self.attention_scale!r}."
            )
        if not _is_number(self.cca_reg) or self.cca_reg < 0.0:
            raise ConfigError(f"Model option cca_reg must be a number >= 0, got {self.cca_reg!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, for `config.json` and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """The inverse of `to_dict`; unknown or missing fields are a `ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}. "
                "Was the checkpoint written by a newer amc-data?"
            )
        required = ("query_vocab_size", "keyword_vocab_size", "feature_dim")
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"Model options {', '.join(missing)} are missing.")
        data = dict(data)
        # Checkpoints from before the option attended by scaled dot products.
        data.setdefault("attention", "dot")
        return cls(**data)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Attention:
    """What AMC looked at, for each query's candidate images."""

    scores: Tensor  # (B, M)
    region_weights: Tensor  # (B, M, R): 0 on padded regions
    keyword_weights: Tensor  # (B, M, K): 0 on padding; all 0 for an image without keywords
    modality_weights: Tensor  # (B, M, 2): [visual, keyword], summing to 1


def build_model(config: ModelConfig, word_vectors: Tensor | None = None) -> RankingModel:
    """The model `config` describes, its query word embeddings optionally set to `word_vectors`
    (shape `(query_vocab_size + 1, word_dim)`, row 0 the padding row, as `load_word_vectors`
    returns)."""
    if config.kind == "cca":
        if word_vectors is not None:
            raise ConfigError("The cca model uses bags of words, not word vectors: drop them.")
        return CCAModel(config)
    return AttentionModel(config, word_vectors)


class RankingModel(nn.Module):
    """The interface shared by every model: scores of queries against images, higher is better."""

    closed_form: bool = False  # True: fitted by `fit_closed_form`, not by gradient descent
    # score_pool works on this many (query, image, item) elements at a time, to bound memory.
    pool_chunk_elements: int = 1 << 24

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, query: QueryBatch, images: ImageBatch) -> Tensor:
        """Scores of each query's own candidates: query (B, L), images (B, M, ...) -> (B, M)."""
        self._check(query, images, pool=False)
        scored = self._score(self._encode_query(query), self._encode_images(images), pool=False)
        return scored[0]

    def score_pool(self, query: QueryBatch, images: ImageBatch) -> Tensor:
        """Scores of every query against every image: query (Q, L), images (N, ...) -> (Q, N).

        The images are projected once; queries are then scored in chunks that bound memory.
        """
        self._check(query, images, pool=True)
        encoded = self._encode_images(images)
        n, items = images.shape[0], images.regions.shape[-2] + images.keywords.shape[-1]
        chunk = max(1, self.pool_chunk_elements // max(1, n * (items + 2 * self.config.dim)))
        parts = []
        for start in range(0, len(query), chunk):
            rows = query.map(itemgetter(slice(start, start + chunk)))  # (chunk, L)
            parts.append(self._score(self._encode_query(rows), encoded, pool=True)[0])
        if not parts:
            return torch.zeros(0, n, device=images.regions.device)
        return torch.cat(parts)

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

    def _score(self, query: Any, images: Any, pool: bool) -> tuple[Any, ...]:
        raise NotImplementedError


class AttentionModel(RankingModel):
    """AMC, its two ablations, and the visual / keyword / fusion baselines."""

    def __init__(self, config: ModelConfig, word_vectors: Tensor | None = None) -> None:
        super().__init__(config)
        d, w = config.dim, int(config.word_dim or config.dim)
        self.use_visual = config.kind in ("amc", "visual", "fusion")
        self.use_keywords = config.kind in ("amc", "keyword", "fusion")
        self.attend = config.kind == "amc" and config.intra
        self.gated = config.kind == "amc" and config.inter

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
        self.query_shared = nn.Linear(w, d)  # q^m
        if self.use_visual:
            # Features from a CNN vary widely in scale; normalising each region first keeps the
            # attention logits in a range a softmax can learn from.
            self.region_norm = nn.LayerNorm(config.feature_dim)
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
            # intent), and a probe matched against each attended vector (how well each modality
            # answers this query for this image).
            self.gate_prior = nn.Linear(w, 2)
            self.gate_probe = nn.Linear(w, d)
        if self.attend and config.attention == "cosine":
            # Embeddings start small (norm about EMBEDDING_STD * sqrt(dim)), so a dot product
            # over sqrt(dim) starts near 0 and stays there: measured, the keyword attention
            # never left uniform. A cosine times a learned scale can reach any sharpness from
            # a start that is close to uniform but not flat.
            self.attention_log_scale = nn.Parameter(torch.tensor(math.log(config.attention_scale)))

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

    def _encode_query(self, query: QueryBatch) -> dict[str, Tensor]:
        words = self.words(query.tokens)  # (B, L, W)
        q = self.dropout(_masked_mean(words, query.mask))  # (B, W)
        out = {"shared": self.query_shared(q)}  # (B, d)
        if self.attend and self.use_visual:
            out["visual"] = self.query_visual(q)  # (B, d)
        if self.attend and self.use_keywords:
            out["keyword"] = self.query_keyword(q)  # (B, d)
        if self.gated:
            out["prior"] = self.gate_prior(q)  # (B, 2)
            out["probe"] = self.gate_probe(q)  # (B, d)
        return out

    def _encode_images(self, images: ImageBatch) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.use_visual:
            regions = self.region_norm(images.regions)  # (*S, R, D)
            out["region_value"] = self.region_value(regions)  # (*S, R, d)
            out["region_mask"] = images.region_mask  # (*S, R)
            if self.attend:
                out["region_key"] = self.region_key(regions)  # (*S, R, d)
            else:
                out["region_weight"] = _normalise(images.region_mask.float())  # (*S, R)
        if self.use_keywords:
            embedded = self.keywords(images.keywords)  # (*S, K, d)
            counts = images.keyword_counts.float() * images.keyword_mask  # (*S, K)
            out["keyword_value"] = embedded  # (*S, K, d)
            out["keyword_mask"] = images.keyword_mask  # (*S, K)
            if self.attend:
                out["keyword_key"] = embedded
                out["keyword_bias"] = torch.log(counts.clamp_min(1e-6))  # repeats as copies
            else:
                out["keyword_weight"] = _normalise(counts)  # (*S, K): the multiset's mean
        return out

    def _score(
        self, q: dict[str, Tensor], img: dict[str, Tensor], pool: bool
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Scores, the weights inside each modality, and the modality weights (used ones only).

        Pairs: q (B, .), img (B, M, .) -> (B, M, .). Pool: q (Q, .), img (N, .) -> (Q, N, .).
        Query-independent results (mean pooling, fixed weights) keep a leading 1 in pool mode
        and broadcast against the queries only where they meet them.
        """
        attended, weights, available = [], {}, []
        for name, use in (("region", self.use_visual), ("keyword", self.use_keywords)):
            if not use:
                continue
            value, mask = img[f"{name}_value"], img[f"{name}_mask"]  # (*S, T, d), (*S, T)
            if self.attend:
                guide = q["visual" if name == "region" else "keyword"]  # (B|Q, d)
                scale = getattr(self, "attention_log_scale", None)
                vec, weight = _attend(  # (B|Q, M|N, d), (B|Q, M|N, T)
                    guide,
                    img[f"{name}_key"],
                    value,
                    img.get(f"{name}_bias"),
                    mask,
                    pool,
                    None if scale is None else scale.exp(),
                )
            else:
                weight = img[f"{name}_weight"]  # (*S, T)
                vec = torch.einsum("...t,...td->...d", weight.to(value.dtype), value)  # (*S, d)
                if pool:
                    vec = vec.unsqueeze(0)  # (1, N, d)
            vec = self.dropout(vec)  # once per pooled vector: cheaper than per item
            attended.append(F.normalize(vec.float(), dim=-1, eps=1e-6))  # unit length, or 0
            weights[name] = weight
            available.append(mask.any(-1).unsqueeze(0) if pool else mask.any(-1))  # (B|1, M|N)
        avail = torch.stack(available, -1)  # (B|1, M|N, modalities)

        if self.gated:
            probe = q["probe"].float().unsqueeze(1)  # (B|Q, 1, d)
            content = torch.stack([_dot(probe, vec) for vec in attended], -1)  # (B|Q, M|N, 2)
            logits = q["prior"].float().unsqueeze(1) + content
        else:
            logits = torch.zeros(avail.shape, device=avail.device)  # fixed, equal weights
        modality = _masked_softmax(logits, avail)  # (B|Q|1, M|N, modalities)
        x = sum(modality[..., i : i + 1] * vec for i, vec in enumerate(attended))  # (., M|N, d)
        query_unit = F.normalize(q["shared"].float(), dim=-1, eps=1e-6).unsqueeze(1)  # (B|Q, 1, d)
        scores = _dot(query_unit, F.normalize(x, dim=-1, eps=1e-6))  # type: ignore[arg-type]
        return scores, weights, modality  # scores (B|Q, M|N)


class CCAModel(RankingModel):
    """Regularised linear CCA between a query's bag of words and an image's mean region feature
    concatenated with its bag of keywords; scores are cosines in the canonical space, each
    component weighted by its canonical correlation. Each bag and the pooled feature is scaled to
    unit length first, so that no block dominates the regularisation."""

    closed_form = True
    query_mean: Tensor  # (Vq,)
    query_projection: Tensor  # (Vq, k)
    image_mean: Tensor  # (D + Vk,)
    image_projection: Tensor  # (D + Vk, k)
    correlations: Tensor  # (k,)
    fitted: Tensor  # () bool

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        vq, p = config.query_vocab_size, config.feature_dim + config.keyword_vocab_size
        k = min(config.dim, vq, p)
        self.components = k
        self.register_buffer("query_mean", torch.zeros(vq))
        self.register_buffer("query_projection", torch.zeros(vq, k))
        self.register_buffer("image_mean", torch.zeros(p))
        self.register_buffer("image_projection", torch.zeros(p, k))
        self.register_buffer("correlations", torch.zeros(k))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit_closed_form(self, batches: Iterable[TrainBatch]) -> None:
        """Fit on the positive pair (index 0) of every batch: covariances are accumulated in
        float64, regularised by a ridge of `cca_reg` times their mean variance, and solved by an
        SVD of the whitened cross-covariance."""
        device = self.query_mean.device
        n = 0
        sums: list[Tensor] = []  # of x, y, x x^T, y y^T, x y^T, in float64
        for batch in batches:
            batch = batch.to(device)
            positives = batch.images.map(lambda t: t[:, 0])  # (B, ...): the positives
            x = self._query_bags(batch.query).double()  # (B, Vq)
            y = self._image_features(positives).double()  # (B, D + Vk)
            terms = [x.sum(0), y.sum(0), x.T @ x, y.T @ y, x.T @ y]
            if not sums:
                sums = terms
            else:
                for total, term in zip(sums, terms, strict=True):
                    total += term
            n += x.shape[0]
        if n < 2:
            raise TrainingError(f"cca needs at least 2 training pairs to fit, got {n}.")
        sx, sy, sxx, syy, sxy = sums
        mx, my = sx / n, sy / n
        cxx = sxx / n - torch.outer(mx, mx)
        cyy = syy / n - torch.outer(my, my)
        cxy = sxy / n - torch.outer(mx, my)
        wx, wy = _inverse_sqrt(cxx, self.config.cca_reg), _inverse_sqrt(cyy, self.config.cca_reg)
        u, s, vh = torch.linalg.svd(wx @ cxy @ wy, full_matrices=False)
        k = self.components
        s = s[:k].clamp(0.0, 1.0)
        self.query_mean.copy_(mx)
        self.image_mean.copy_(my)
        self.query_projection.copy_(wx @ u[:, :k] * s)
        self.image_projection.copy_(wy @ vh[:k].T * s)
        self.correlations.copy_(s)
        self.fitted.fill_(True)
        log.info("cca fitted on %d pairs; top canonical correlations %s", n, s[:5].tolist())

    def _query_bags(self, query: QueryBatch) -> Tensor:
        vq = self.config.query_vocab_size
        bags = torch.zeros(len(query), vq + 1, device=query.tokens.device)  # (B, Vq + 1)
        bags.scatter_add_(1, query.tokens, query.mask.float())
        return F.normalize(bags[:, 1:], dim=-1)  # (B, Vq): padding column dropped

    def _image_features(self, images: ImageBatch) -> Tensor:
        """Dense image vectors [mean region | keyword bag] (*S, D + Vk), for fitting."""
        pooled, counts = self._image_parts(images)
        size = self.config.keyword_vocab_size + 1
        bags = torch.zeros(*counts.shape[:-1], size, device=counts.device)  # (*S, Vk + 1)
        bags.scatter_add_(-1, images.keywords, counts)
        return torch.cat([pooled, bags[..., 1:]], -1)

    @staticmethod
    def _image_parts(images: ImageBatch) -> tuple[Tensor, Tensor]:
        mask = images.region_mask.float()  # (*S, R)
        pooled = torch.einsum("...r,...rd->...d", _normalise(mask), images.regions.float())
        counts = images.keyword_counts.float() * images.keyword_mask  # (*S, K)
        counts = counts / counts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return F.normalize(pooled, dim=-1), counts

    def _encode_query(self, query: QueryBatch) -> Tensor:
        self._require_fitted()
        with _float32(query.tokens):
            return (self._query_bags(query) - self.query_mean) @ self.query_projection  # (B, k)

    def _encode_images(self, images: ImageBatch) -> Tensor:
        self._require_fitted()
        d, projection = self.config.feature_dim, self.image_projection
        with _float32(images.regions):
            pooled, counts = self._image_parts(images)  # (*S, D), (*S, K)
            # The keyword bag's projection is a count-weighted sum of projection rows.
            rows = F.pad(projection[d:], (0, 0, 1, 0))  # (Vk + 1, k): row 0 for padding
            keywords = torch.einsum("...k,...kc->...c", counts, F.embedding(images.keywords, rows))
            return pooled @ projection[:d] + keywords - self.image_mean @ projection  # (*S, k)

    def _score(self, query: Tensor, images: Tensor, pool: bool) -> tuple[Tensor]:
        with _float32(query):
            q = F.normalize(query.float(), dim=-1, eps=1e-6)  # (B|Q, k)
            i = F.normalize(images.float(), dim=-1, eps=1e-6)  # (B, M, k) | (N, k)
            return (q @ i.T if pool else torch.einsum("bc,bmc->bm", q, i),)

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise TrainingError("The cca model is not fitted yet: call fit_closed_form first.")


def load_word_vectors(
    path: str | Path, vocabulary: list[str], dim: int, *, seed: int = 0
) -> Tensor:
    """Word vectors for `vocabulary` from a word2vec/GloVe text file ("word v1 ... v_dim" per
    line, optionally a first line "count dim"), as a `(len(vocabulary) + 1, dim)` float32 table
    whose row `i + 1` is word `i` and row 0 the padding row (zeros).

    A word found only with other capitals is taken from its lower-cased form. Words the file
    lacks get small random vectors (a tenth of the found vectors' spread; reproducible for
    `seed`). A line with too few values, a first line of the wrong dimension, a value that is not
    a number, or bytes that are not UTF-8 are an `InputError` naming the file and line.
    """
    path = Path(path)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"The word-vector dimension must be a positive integer, got {dim!r}.")
    wanted = {word: i for i, word in enumerate(vocabulary)}
    exact: dict[int, list[float]] = {}
    lowered: dict[int, list[float]] = {}
    first = True
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                try:
                    parts = raw.decode("utf-8").split()
                except UnicodeDecodeError as error:
                    raise InputError(
                        f"{path}, line {number}: not UTF-8 text ({error.reason}); word vectors "
                        "must be a UTF-8 text file."
                    ) from None
                if not parts:
                    continue
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    if int(parts[1]) != dim:
                        raise InputError(
                            f"{path}: the header line says {parts[1]}-dimensional vectors, "
                            f"expected {dim}: pass the file's dimension "
                            f"(`amc-data train --dim {parts[1]}`)."
                        )
                    continue
                # A few files hold tokens with spaces (the last `dim` fields are the values); the
                # first vector must be plain, which catches a file of another dimension early.
                if len(parts) < dim + 1 or (first and len(parts) != dim + 1):
                    raise InputError(
                        f"{path}, line {number}: {len(parts) - 1} fields after the word, expected "
                        f"{dim} numbers (a word2vec/GloVe text file of {dim}-dimensional vectors; "
                        "for another size pass it with `amc-data train --dim N`)."
                    )
                first = False
                word = " ".join(parts[:-dim])
                index, target = wanted.get(word), exact
                if index is None:
                    index, target = wanted.get(word.lower()), lowered
                if index is None or index in target:
                    continue
                try:
                    target[index] = [float(v) for v in parts[-dim:]]
                except ValueError:
                    raise InputError(
                        f"{path}, line {number}: a value of the vector of {word!r} is not a number."
                    ) from None
                if not all(abs(v) <= _FLOAT32_MAX for v in target[index]):  # NaN fails too
                    raise InputError(
                        f"{path}, line {number}: the vector of {word!r} holds NaN, an infinity or "
                        "a value beyond float32's range; fix or drop that line."
                    )
    except OSError as error:
        raise InputError(
            f"Cannot read the word vectors {path}: {error.strerror or error}."
        ) from None
    found = {**lowered, **exact}
    if vocabulary and not found:
        raise InputError(
            f"{path} holds none of the {len(vocabulary)} query words (e.g. {vocabulary[0]!r}): "
            "is it a word-vector file for this language?"
        )
    table = torch.zeros(len(vocabulary) + 1, dim)
    spread = EMBEDDING_STD
    if found:
        rows = torch.tensor(list(found)) + 1
        table[rows] = torch.tensor(list(found.values()), dtype=torch.float32)
        if len(found) > 1:
            spread = float(table[rows].std())
    missing = [i + 1 for i in range(len(vocabulary)) if i not in found]
    if missing:
        generator = torch.Generator().manual_seed(seed)
        table[missing] = torch.randn(len(missing), dim, generator=generator) * 0.1 * spread
    log.info("word vectors: %d of %d query words found in %s", len(found), len(vocabulary), path)
    return table


# Helpers ---------------------------------------------------------------------------------------


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` (..., T, W) over the items where `mask` (..., T); 0 where none is."""
    weights = _normalise(mask.to(values.dtype))
    return torch.einsum("...t,...tw->...w", weights, values)


def _normalise(weights: Tensor) -> Tensor:
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
        with _float32(a):
            return a[:, 0].float() @ b[0].float().T
    return (a.float() * b.float()).sum(-1)


def _float32(tensor: Tensor) -> torch.autocast:
    """A context in which matrix products stay float32 even inside autocast."""
    return torch.autocast(tensor.device.type, enabled=False)


def _inverse_sqrt(covariance: Tensor, reg: float) -> Tensor:
    """(C + reg * trace(C) / size * I) ^ -1/2: a ridge scaled to the covariance's mean variance,
    so `reg` means the same whatever the features' scale."""
    size = covariance.shape[0]
    scale = max(float(torch.trace(covariance)) / size, 1e-12)
    eye = torch.eye(size, dtype=covariance.dtype, device=covariance.device)
    values, vectors = torch.linalg.eigh(covariance + reg * scale * eye)
    floor = scale * 1e-6  # directions with (almost) no variance are not amplified without bound
    return vectors @ torch.diag(values.clamp_min(floor).rsqrt()) @ vectors.T
