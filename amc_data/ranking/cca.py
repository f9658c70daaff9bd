"""Ranking CCA, the paper's RCCA baseline: a regularised linear CCA fitted in closed form."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .._optional import require
from ..errors import ConfigError, TrainingError

require("torch", "the ranking models")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from .batch import ImageBatch, QueryBatch, TrainBatch  # noqa: E402
from .model import ModelConfig, RankingModel, float32_products, normalise_weights  # noqa: E402

log = logging.getLogger(__name__)


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
        pooled = torch.einsum("...r,...rd->...d", normalise_weights(mask), images.regions.float())
        counts = images.keyword_counts.float() * images.keyword_mask  # (*S, K)
        counts = counts / counts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return F.normalize(pooled, dim=-1), counts

    def _encode_query(self, query: QueryBatch) -> Tensor:
        self._require_fitted()
        with float32_products(query.tokens):
            return (self._query_bags(query) - self.query_mean) @ self.query_projection  # (B, k)

    def _encode_images(self, images: ImageBatch) -> Tensor:
        self._require_fitted()
        d, projection = self.config.feature_dim, self.image_projection
        with float32_products(images.regions):
            pooled, counts = self._image_parts(images)  # (*S, D), (*S, K)
            # The keyword bag's projection is a count-weighted sum of projection rows.
            rows = F.pad(projection[d:], (0, 0, 1, 0))  # (Vk + 1, k): row 0 for padding
            keywords = torch.einsum("...k,...kc->...c", counts, F.embedding(images.keywords, rows))
            return pooled @ projection[:d] + keywords - self.image_mean @ projection  # (*S, k)

    def _score(
        self,
        query: Tensor,
        images: Tensor,
        pool: bool,
        gate: bool = False,
        regions: bool = False,
        keywords: bool = False,
    ) -> tuple[Tensor]:  # no gate, no attention: no reading is ever asked of it
        with float32_products(query):
            q = F.normalize(query.float(), dim=-1, eps=1e-6)  # (B|Q, k)
            i = F.normalize(images.float(), dim=-1, eps=1e-6)  # (B, M, k) | (N, k)
            return (q @ i.T if pool else torch.einsum("bc,bmc->bm", q, i),)

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise TrainingError("The cca model is not fitted yet: call fit_closed_form first.")


def build_cca(config: ModelConfig, word_vectors: Tensor | None = None) -> CCAModel:
    """The cca kind's builder (its registry row names it)."""
    if word_vectors is not None:
        raise ConfigError(
            "The cca model uses bags of words, not word vectors: drop them.",
            parameter="word_vectors",
        )
    return CCAModel(config)


def _inverse_sqrt(covariance: Tensor, reg: float) -> Tensor:
    """(C + reg * trace(C) / size * I) ^ -1/2: a ridge scaled to the covariance's mean variance,
    so `reg` means the same whatever the features' scale."""
    size = covariance.shape[0]
    scale = max(float(torch.trace(covariance)) / size, 1e-12)
    eye = torch.eye(size, dtype=covariance.dtype, device=covariance.device)
    values, vectors = torch.linalg.eigh(covariance + reg * scale * eye)
    floor = scale * 1e-6  # directions with (almost) no variance are not amplified without bound
    return vectors @ torch.diag(values.clamp_min(floor).rsqrt()) @ vectors.T
