"""The model a configuration describes, built by its kind's registry row."""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from .model import ModelConfig, RankingModel
from .registry import model_kind


def build_model(config: ModelConfig, word_vectors: Tensor | None = None) -> RankingModel:
    """The model `config` describes, its query word embeddings optionally set to `word_vectors`
    (shape `(query_vocab_size + 1, word_dim)`, row 0 the padding row, as `load_word_vectors`
    returns): its kind's builder, called as `builder(config, word_vectors)`."""
    row = model_kind(config.kind)
    model = row.load_builder()(config, word_vectors)
    if not isinstance(model, RankingModel):
        raise ConfigError(
            f"Model kind {row.name}: its builder {row.builder!r} returned a "
            f"{type(model).__name__}, not a RankingModel; return the model it builds."
        )
    if model.closed_form != row.closed_form:
        # Training chooses gradient descent or the closed-form fit by the model; the row says
        # the same in the documentation, so they must agree.
        raise ConfigError(
            f"Model kind {row.name}: its row says closed_form={row.closed_form}, its model "
            f"{type(model).__name__} says {model.closed_form}; make them agree."
        )
    return model
