"""The zero-shot CLIP ranker (`amc-data clip-scores`): each query's text through the text tower
of the open_clip model that `features --backbone open_clip:...` ran, and each candidate image's
pooled embedding written beside those features; the score is their cosine. The result is a
scores file (`query_id`, `img_id`, `score`, `label`) for `amc-data eval --scores`, a row beside
AMC's (whose `eval --out` writes the same columns).

Candidates are those `eval` ranks: a query's judged images (Clickture, synth), or every image of
the split (COCO), of which each query keeps its best `keep` and every judged one, as AMC's own
scores file does (NDCG@k is exact for k up to `keep`).

Importing this module loads neither torch, open_clip nor pandas; scoring does.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..checks import check_config, option
from ..errors import ConfigError, InputError
from ..files import atomic_write
from ..spec import PREPARED_SPLITS
from .clip import ClipSpec, create_clip, require_open_clip
from .deps import require_torch
from .outputs import OutputPaths

if TYPE_CHECKING:
    import pandas as pd

    from ..prepare.format import PreparedDataset

log = logging.getLogger(__name__)

_BLOCK_CELLS = 1 << 24  # scores of (query, image) cells held at once where queries rank a pool


@dataclass(frozen=True)
class ClipScoresConfig:
    """How `clip_scores` ranks; every option is checked here, once."""

    split: Literal["train", "val", "test"] = option(
        "test", "The split whose queries are ranked.", choices=PREPARED_SPLITS
    )
    template: str = option(
        "{}", "Text the text tower reads for a query; {} stands for the query's words."
    )
    keep: int = option(
        100,
        "Where a query ranks every image of the split (COCO): keep its best KEEP images and "
        "every judged one (NDCG@k exact for k <= KEEP); 0 keeps them all.",
        low=0,
    )
    batch_size: int = option(256, "Queries per batch through the text tower.", low=1)
    device: str = option("auto", "auto uses CUDA when present.")  # auto, cpu, cuda, cuda:N

    def __post_init__(self) -> None:
        check_config(self)
        if self.template.count("{}") != 1:
            raise ConfigError(
                f"template must hold {{}} exactly once (where the query goes), not "
                f"{self.template!r}.",
                parameter="template",
            )


@dataclass(frozen=True)
class ClipScoresResult:
    """What `clip_scores` wrote."""

    out: Path
    model: str  # open_clip:ARCH[:PRETRAINED]
    queries: int
    pairs: int


def clip_scores(
    data: str | os.PathLike[str],
    features: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: ClipScoresConfig | None = None,
) -> ClipScoresResult:
    """Score the queries of `config.split` of the prepared folder `data` against their
    candidates by the cosine of the query's text embedding and the image's pooled embedding
    from `features` (a features file written with an open_clip backbone: its report names the
    model, its `_pooled.npy` holds the embeddings), and write the scores file `out` (Parquet).

    Raises `InputError` when `features` was not written by an open_clip backbone or lacks a
    candidate image, `MissingDependencyError` without torch or open_clip."""
    from ..prepare.format import load_prepared  # pandas and pyarrow: only when scoring

    config = config or ClipScoresConfig()
    require_torch()
    report, embeddings, embedding_ids = _read_embeddings(Path(features))
    spec = ClipSpec.from_description(report["backbone"])
    prepared = load_prepared(data)
    query_ids = np.sort(prepared.split_queries(config.split)["query_id"].to_numpy(np.int64))
    if len(query_ids) == 0:
        raise InputError(f"{prepared.root} has no {config.split} queries to rank.")
    judged = prepared.judgments[prepared.judgments["query_id"].isin(query_ids)]
    judged = judged[["query_id", "img_id", "label"]].astype(
        {"query_id": "int64", "img_id": "int64"}
    )
    candidates = (
        np.sort(prepared.split_images(config.split))
        if _whole_split(prepared)
        else np.unique(judged["img_id"].to_numpy(np.int64))
    )
    rows = _rows_of(embedding_ids, candidates, Path(features))
    images = _unit(np.asarray(embeddings[rows], dtype=np.float32))  # (C, E), candidates' order
    texts = _query_texts(prepared, query_ids, config.template)
    model = create_clip(spec, int(report["backbone"].get("seed", 0)))
    text = _encode_texts(model, spec, texts, config)  # (Q, E) unit rows
    if _whole_split(prepared):
        frame = _pool_frame(query_ids, candidates, text, images, judged, config.keep)
    else:
        frame = _judged_frame(query_ids, candidates, text, images, judged)
    with atomic_write(out) as handle:
        frame.to_parquet(handle, index=False)
    name = str(report["backbone"].get("name"))
    log.info("wrote %s: %d pairs of %d queries, %s", out, len(frame), len(query_ids), name)
    return ClipScoresResult(Path(out), name, len(query_ids), len(frame))


def _read_embeddings(features: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The features report, the pooled embeddings (N, E) and their img_ids (N,)."""
    paths = OutputPaths.for_output(features)
    try:
        report = json.loads(paths.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{paths.report}: cannot read the report of {features} ({exc}). Give the .npy that "
            "`amc-data features --backbone open_clip:...` wrote; its report is beside it."
        ) from exc
    backbone = report.get("backbone") if isinstance(report, dict) else None
    if not isinstance(backbone, dict) or backbone.get("kind") != "open_clip":
        found = backbone.get("name") if isinstance(backbone, dict) else None
        raise InputError(
            f"{features} was extracted with {found or 'an unknown backbone'}, not an open_clip "
            "model: the zero-shot ranker needs the pooled CLIP embeddings. Run `amc-data "
            "features --backbone open_clip:ARCH[:PRETRAINED]` first."
        )
    pooled = report.get("pooled") or {}
    ids_path = features.with_name(str(report.get("ids", paths.ids.name)))
    pooled_path = features.with_name(str(pooled.get("file", paths.pooled.name)))
    try:
        embeddings = np.load(pooled_path, mmap_mode="r")
        ids = np.load(ids_path)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"Cannot read the pooled embeddings {pooled_path} or the ids {ids_path} beside "
            f"{features} ({exc}). Run the same `amc-data features` command again."
        ) from exc
    if embeddings.ndim != 2 or ids.shape != (embeddings.shape[0],):
        raise InputError(
            f"{pooled_path} is {embeddings.shape} and {ids_path} {ids.shape}; expected (N, E) "
            "and (N,). Run the same `amc-data features` command again."
        )
    return report, embeddings, ids.astype(np.int64)


def _whole_split(prepared: PreparedDataset) -> bool:
    """Whether each query is ranked over every image of its split (COCO), as `eval` decides."""
    mode = prepared.info.get("candidates")
    if mode is not None:
        return bool(mode == "split")
    return bool(prepared.info.get("source") == "coco")


def _rows_of(ids: np.ndarray, wanted: np.ndarray, features: Path) -> np.ndarray:
    """The embedding row of each wanted img_id; `InputError` naming those that have none."""
    order = np.argsort(ids, kind="stable")
    where = np.searchsorted(ids[order], wanted)
    clipped = np.minimum(where, len(ids) - 1)
    found = ids[order][clipped] == wanted
    if not found.all():
        missing = np.unique(wanted[~found])
        shown = ", ".join(str(i) for i in missing[:5])
        raise InputError(
            f"{len(missing)} candidate image(s) have no embedding in {features} (img_ids "
            f"{shown}{', ...' if len(missing) > 5 else ''}). Extract features of every image of "
            "the prepared folder, with the same --ids-from as for `prepare`."
        )
    return order[clipped]


def _query_texts(prepared: PreparedDataset, query_ids: np.ndarray, template: str) -> list[str]:
    text = prepared.queries.set_index("query_id")["query"]
    return [template.format(str(text.loc[int(q)])) for q in query_ids]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def _encode_texts(
    model: Any, spec: ClipSpec, texts: list[str], config: ClipScoresConfig
) -> np.ndarray:
    """(Q, E) float32 unit-length text embeddings, as `encode_text(..., normalize=True)`."""
    import torch

    from .backbone import DeviceSetup

    setup = DeviceSetup.resolve(config.device, "fp32")
    tokenizer = require_open_clip().get_tokenizer(spec.arch)
    model = model.to(setup.device)
    blocks = []
    with torch.inference_mode():
        for start in range(0, len(texts), config.batch_size):
            tokens = tokenizer(texts[start : start + config.batch_size]).to(setup.device)
            blocks.append(model.encode_text(tokens, normalize=True).float().cpu().numpy())
    return np.concatenate(blocks)


def _judged_frame(
    query_ids: np.ndarray,
    candidates: np.ndarray,
    text: np.ndarray,
    images: np.ndarray,
    judged: pd.DataFrame,
) -> pd.DataFrame:
    """Every judged pair, scored, sorted by query then image."""
    frame = judged.sort_values(["query_id", "img_id"], kind="stable").reset_index(drop=True)
    query_rows = np.searchsorted(query_ids, frame["query_id"].to_numpy(np.int64))
    image_rows = np.searchsorted(candidates, frame["img_id"].to_numpy(np.int64))
    scores = np.einsum("ij,ij->i", text[query_rows], images[image_rows])
    return frame.assign(score=scores.astype(np.float32))[["query_id", "img_id", "score", "label"]]


def _pool_frame(
    query_ids: np.ndarray,
    pool: np.ndarray,
    text: np.ndarray,
    images: np.ndarray,
    judged: pd.DataFrame,
    keep: int,
) -> pd.DataFrame:
    """Each query against every image of the pool, a block of queries at a time (never the
    whole matrix): its best `keep` images (all for 0) and its judged ones, sorted by query then
    image, unjudged ones labelled 0."""
    import pandas as pd

    inside = judged[judged["img_id"].isin(pool)]
    judged_query = np.searchsorted(query_ids, inside["query_id"].to_numpy(np.int64))
    judged_image = np.searchsorted(pool, inside["img_id"].to_numpy(np.int64))
    labels = dict(zip(zip(judged_query, judged_image, strict=True), inside["label"], strict=True))
    block = max(1, _BLOCK_CELLS // len(pool))
    frames = []
    for start in range(0, len(query_ids), block):
        scores = text[start : start + block] @ images.T  # (b, C)
        kept = np.zeros(scores.shape, dtype=bool)
        if keep and keep < len(pool):
            best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
            np.put_along_axis(kept, best, True, axis=1)
        else:
            kept[:] = True
        mine = (judged_query >= start) & (judged_query < start + len(scores))
        kept[judged_query[mine] - start, judged_image[mine]] = True
        q, i = np.nonzero(kept)  # row-major: by query, then image
        frames.append(
            pd.DataFrame(
                {
                    "query_id": query_ids[start + q],
                    "img_id": pool[i],
                    "score": scores[q, i].astype(np.float32),
                    "label": [labels.get((start + a, b), 0) for a, b in zip(q, i, strict=True)],
                }
            )
        )
    return pd.concat(frames, ignore_index=True).astype({"label": "int64"})
