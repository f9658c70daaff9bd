"""The model kinds `amc-data train --model` offers: one row per kind, saying what the model reads
and how it is fitted, its description for `--help` and the documentation, and where its builder
lives. The config checks, the CLI's choices and help, `build_model` and the documentation's model
table (docs/model.md) all read these rows, so a new baseline is one module (its model) and one row.

No torch here: the CLI lists and checks the kinds before torch loads. A builder is named by a
"module:callable" path and imported only when a model is built.

Other packages add kinds through the entry-point group `amc_data.models`: each entry point names
a `ModelKind` (or a callable returning one); they are loaded once, on the first look at the
kinds.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..checks import one_of
from ..errors import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "amc_data.models"


@dataclass(frozen=True)
class ModelKind:
    """One model kind: what it reads, how it learns, and how it is built.

    `builder` is "module:callable" (or the callable itself): called as `builder(config,
    word_vectors)` with the run's `ModelConfig` and the query word vectors (a tensor or None), it
    returns a `RankingModel`. The flags say what the model uses: `regions` (the image's region
    features), `keywords` (its keyword bag), `intra_attention` (query-guided attention inside a
    modality; `--no-intra` switches it off), `modality_gate` (query-dependent modality weights;
    `--no-inter` switches it off), `closed_form` (fitted by `fit_closed_form`, not by gradient
    descent). `summary` is a few words for `--help`; `description` the documentation's "what it
    is" (default: the summary).
    """

    name: str
    summary: str
    builder: str | Callable[..., Any]
    regions: bool = False
    keywords: bool = False
    intra_attention: bool = False
    modality_gate: bool = False
    closed_form: bool = False
    description: str = ""

    @property
    def explains(self) -> bool:
        """Whether the model has attention to show: weights inside a modality or between them."""
        return self.intra_attention or self.modality_gate

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or " " in self.name:
            raise ConfigError(f"A model kind's name must be one word, not {self.name!r}.")
        if not (self.regions or self.keywords):
            raise ConfigError(
                f"Model kind {self.name}: a model must read the regions, the keywords or both; "
                "set regions=True or keywords=True."
            )
        if self.modality_gate and not (self.regions and self.keywords):
            raise ConfigError(
                f"Model kind {self.name}: a modality gate weighs two modalities; set "
                "regions=True and keywords=True, or modality_gate=False."
            )
        for text in (self.summary, self.description):
            if "\n" in text or "|" in text:
                raise ConfigError(
                    f"Model kind {self.name}: its summary and description are one line each, "
                    "without '|' (they become a row of a table)."
                )

    @property
    def what_it_is(self) -> str:
        """The documentation's description of the kind."""
        return self.description or self.summary

    def load_builder(self) -> Callable[..., Any]:
        """The builder callable, importing its module if it is named by a path."""
        if callable(self.builder):
            return self.builder
        module, _, attribute = self.builder.partition(":")
        try:
            found = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ConfigError(
                f"Model kind {self.name}: its builder {self.builder!r} cannot be loaded "
                f"({error}); name it as 'package.module:callable'."
            ) from None
        if not callable(found):
            raise ConfigError(
                f"Model kind {self.name}: its builder {self.builder!r} is not callable."
            )
        return found


# The built-in kinds: AMC, then the paper's baselines.
BUILT_IN = (
    ModelKind(
        "amc",
        "query-guided attention over regions and keywords, query-dependent modality weights",
        "amc_data.ranking.model:AttentionModel",
        regions=True,
        keywords=True,
        intra_attention=True,
        modality_gate=True,
        description=(
            "query words embedded and mean-pooled into four vectors (`s_q`, `q W_ql`, `q^m`, "
            "`q'`); visual intra-attention over the regions conditioned on `s_q`; language "
            "intra-attention over the image's keywords conditioned on `q W_ql` (a keyword seen c "
            "times counts c times: `log c` is added to its logit); both attentions' logits are a "
            "learned scale times the cosine of guide and key, the scale starting soft (1) and "
            "learning 10 times as fast as the other weights (the `ModelConfig` fields "
            "`attention_scale` and `attention_scale_rate`; not training options; "
            "`--region-attention-scale-rate` gives the regions their own); two modality "
            "weights from `q'` (a softmax over a learned scale, from 4, times their logits; read "
            "from the query alone by default, or also from the attended vectors with "
            "`gate_content`, the paper's form), summing to 1; score `cos(q^m, x^q)`"
        ),
    ),
    ModelKind(
        "visual",
        "query vs mean-pooled regions",
        "amc_data.ranking.model:AttentionModel",
        regions=True,
        description="query vs mean-pooled regions (the paper's DSSM-Img role)",
    ),
    ModelKind(
        "keyword",
        "query vs mean-pooled keywords",
        "amc_data.ranking.model:AttentionModel",
        keywords=True,
        description="query vs mean-pooled keywords (DSSM-Key)",
    ),
    ModelKind(
        "fusion",
        "both modalities mean-pooled, fixed 0.5/0.5 weights",
        "amc_data.ranking.model:AttentionModel",
        regions=True,
        keywords=True,
        description="both modalities mean-pooled, fixed 0.5/0.5, no attention (MB)",
    ),
    ModelKind(
        "cca",
        "regularised linear CCA, fitted in closed form",
        "amc_data.ranking.cca:build_cca",
        regions=True,
        keywords=True,
        closed_form=True,
        description=(
            "regularised linear CCA, query bag of words vs [mean region feature, keyword bag], "
            "fitted in closed form; cosine in the canonical space (RCCA)"
        ),
    ),
)

_rows: dict[str, ModelKind] = {row.name: row for row in BUILT_IN}
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Add the kinds other packages declare in `amc_data.models`, once. A plugin that fails to
    load is logged and left out, so that it cannot break the built-in kinds."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = point.load()
            row = found() if callable(found) and not isinstance(found, ModelKind) else found
            if not isinstance(row, ModelKind):
                raise ConfigError(f"it gives a {type(row).__name__}, not a ModelKind")
            register(row)
        except Exception as error:  # a broken plugin must not stop amc-data
            log.warning("model kind %s (%s) not loaded: %s", point.name, point.value, error)


def model_rows() -> tuple[ModelKind, ...]:
    """Every registered kind, built-in ones first, in registration order."""
    _load_entry_points()
    return tuple(_rows.values())


def model_kinds() -> tuple[str, ...]:
    """The names of every registered kind (the `--model` choices)."""
    return tuple(row.name for row in model_rows())


def model_kind(name: str, parameter: str = "kind") -> ModelKind:
    """The row of the kind `name`; a `ConfigError` naming `parameter` lists the kinds."""
    one_of(parameter, name, model_kinds())
    return _rows[name]


def register(row: ModelKind) -> None:
    """Add a model kind; its name must be new."""
    _load_entry_points()
    if row.name in _rows:
        raise ConfigError(
            f"Model kind {row.name} is registered already; choose another name, or unregister "
            "it first."
        )
    _rows[row.name] = row


def unregister(name: str) -> None:
    """Remove a model kind added by `register` (built-in kinds stay)."""
    if any(row.name == name for row in BUILT_IN):
        raise ConfigError(f"Model kind {name} is built in; it cannot be unregistered.")
    _rows.pop(name, None)


@contextmanager
def registered(row: ModelKind) -> Iterator[ModelKind]:
    """`register(row)` for the duration of a `with` block (tests, experiments)."""
    register(row)
    try:
        yield row
    finally:
        unregister(row.name)


def model_help() -> str:
    """The `--model` help: every kind with its summary."""
    return "; ".join(f"{row.name}: {row.summary}" for row in model_rows()) + "."


def model_table() -> str:
    """The documentation's model table (markdown), one row per kind."""

    columns = ["`--model`", "regions", "keywords", "intra-attention", "modality gate", "fitted"]
    columns.append("what it is")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in model_rows():
        uses = (row.regions, row.keywords, row.intra_attention, row.modality_gate)
        cells = [
            f"`{row.name}`",
            *("yes" if used else "no" for used in uses),
            "closed form" if row.closed_form else "gradient descent",
            row.what_it_is,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
