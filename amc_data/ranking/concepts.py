"""Where a trained model looks, concept by concept: `model.explain` on each (query, relevant
image) pair of a concepts file (`amc_data.evaluation.concepts`), measuring the attention mass on
the regions or the keyword that carry each concept the query names, and the modality weights.

Torch is imported when a measurement runs, not when the module loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..evaluation.concepts import MEASURED_COLUMNS
from ..prepare.format import PreparedDataset
from .registry import model_kind

if TYPE_CHECKING:
    from .model import RankingModel

__all__ = ["attention_on_concepts"]

PAIRS_PER_BATCH = 256


def attention_on_concepts(
    model: RankingModel,
    prepared: PreparedDataset,
    pairs: pd.DataFrame,
    device: Any = "cpu",
    max_keywords: int = 64,
) -> pd.DataFrame:
    """For each row of `pairs` (`relevant_pairs`: query_id, img_id, concept, modality, regions,
    keyword), `mass`: the attention weight on the concept's own regions (visual) or on the
    keyword that names it (textual, NaN where the image's keywords as the model reads them,
    the first `max_keywords`, lack it); `chance`: the share of the image's regions or keywords
    those are; `visual_weight`: the modality weight of the pixels. A model without attention
    to explain gets NaN throughout."""
    out = pairs[["query_id", "img_id", "concept", "modality"]].copy()
    nan = np.full(len(out), np.nan)
    if pairs.empty or not model_kind(model.config.kind).explains:
        return out.assign(mass=nan, chance=nan.copy(), visual_weight=nan.copy())[
            list(MEASURED_COLUMNS)
        ]
    unique = pairs[["query_id", "img_id"]].drop_duplicates(ignore_index=True)
    index = {
        key: i
        for i, key in enumerate(
            zip(unique["query_id"].tolist(), unique["img_id"].tolist(), strict=True)
        )
    }
    weights = _explain(model, prepared, unique, device, max_keywords)
    vocabulary = {word: i + 1 for i, word in enumerate(prepared.vocabulary)}  # ids are 1-based
    mass, chance, visual = nan.copy(), nan.copy(), nan.copy()
    for k, row in enumerate(pairs.itertuples(index=False)):
        region, region_mask, keyword, keyword_ids, keyword_mask, modality = weights[
            index[(row.query_id, row.img_id)]
        ]
        visual[k] = modality[0]
        if row.modality == "visual":
            cells = np.array([r for r in row.regions if r < region_mask.size], dtype=np.int64)
            if cells.size and region_mask.any():
                mass[k] = float(region[cells].sum())
                chance[k] = cells.size / int(region_mask.sum())
        else:
            slots = (keyword_ids == vocabulary.get(str(row.keyword), -1)) & keyword_mask
            if slots.any():
                mass[k] = float(keyword[slots].sum())
                chance[k] = int(slots.sum()) / int(keyword_mask.sum())
    return out.assign(mass=mass, chance=chance, visual_weight=visual)[list(MEASURED_COLUMNS)]


def _explain(
    model: RankingModel,
    prepared: PreparedDataset,
    unique: pd.DataFrame,
    device: Any,
    max_keywords: int,
) -> list[tuple[np.ndarray, ...]]:
    """Per (query_id, img_id) row of `unique`: region weights, region mask, keyword weights,
    keyword ids, keyword mask and the modality weights, as numpy arrays."""
    import torch

    from .data import image_batch, query_batch

    model.eval()
    found: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(unique), PAIRS_PER_BATCH):
        part = unique.iloc[start : start + PAIRS_PER_BATCH]
        query = query_batch(prepared, part["query_id"].to_numpy()).to(device)
        images = image_batch(prepared, part["img_id"].to_numpy(), max_keywords)
        images = images.map(lambda t: t.unsqueeze(1)).to(device)  # (B, 1, ...)
        with torch.no_grad():
            attention = model.explain(query, images)
        arrays = [
            attention.region_weights[:, 0].float().cpu().numpy(),
            images.region_mask[:, 0].cpu().numpy(),
            attention.keyword_weights[:, 0].float().cpu().numpy(),
            images.keywords[:, 0].cpu().numpy(),
            images.keyword_mask[:, 0].cpu().numpy(),
            attention.modality_weights[:, 0].float().cpu().numpy(),
        ]
        found.extend(zip(*arrays, strict=True))
    return found
