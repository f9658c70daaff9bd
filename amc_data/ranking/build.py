"""The model a configuration describes: AMC and its attention baselines, or CCA."""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from .cca import CCAModel
from .model import AttentionModel, ModelConfig, RankingModel


def build_model(config: ModelConfig, word_vectors: Tensor | None = None) -> RankingModel:
    """The model `config` describes, its query word embeddings optionally set to `word_vectors`
    (shape `(query_vocab_size + 1, word_dim)`, row 0 the padding row, as `load_word_vectors`
    returns)."""
    if config.kind == "cca":
        if word_vectors is not None:
            raise ConfigError("The cca model uses bags of words, not word vectors: drop them.")
        return CCAModel(config)
    return AttentionModel(config, word_vectors)
