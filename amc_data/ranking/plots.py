"""The pictures `eval --plot DIR` draws: the ROC curves of the runs (as the paper's figure) and,
for a few queries, what AMC attended to. matplotlib with its headless backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from .._optional import require
from ..evaluation.metrics import roc_curve
from ..files import atomic_write, atomic_write_json

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset
    from .model import RankingModel

DPI = 110


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "eval's pictures")
    matplotlib.use("Agg")  # headless: no display is needed or used
    return require("matplotlib.pyplot", "eval's pictures")


class RocRun(Protocol):
    """What `plot_roc` reads of a run (`runs.RunEvaluation` has it)."""

    name: str
    kind: str  # "random" is drawn dotted
    metrics: dict[str, float]  # its "auc" goes into the legend
    roc_sample: tuple[np.ndarray, np.ndarray]  # scores, relevance


def plot_roc(runs: Sequence[RocRun], path: Path, relevant: int = 1) -> Path:
    """`roc.png`: one ROC curve per run (AUC in the legend) and the random diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=DPI)
    for run in runs:
        curve = roc_curve(*run.roc_sample)
        style = {"linestyle": ":", "color": "grey"} if run.kind == "random" else {}
        ax.plot(curve.fpr, curve.tpr, label=f"{run.name} (AUC {run.metrics['auc']:.3f})", **style)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.6, linestyle="--", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f"ROC over (query, image) pairs, relevant = label ≥ {relevant}", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return path


def example_queries(prepared: PreparedDataset, split: str, count: int) -> np.ndarray:
    """A few queries to picture: the first of each intent in turn (synth), else the first."""
    queries = prepared.split_queries(split).sort_values("query_id")
    if "intent" in queries:
        groups = [g["query_id"].to_numpy() for _, g in queries.groupby("intent", sort=True)]
        picked = [ids[i] for i in range(count) for ids in groups if i < len(ids)]
        return np.asarray(picked[:count], dtype=np.int64)
    return queries["query_id"].to_numpy(np.int64)[:count]


def plot_attention(
    model: RankingModel,
    prepared: PreparedDataset,
    scores: pd.DataFrame,
    split: str,
    out_dir: Path,
    count: int,
    device: Any = "cpu",
) -> list[Path]:
    """`attention-<query_id>.png` for `count` queries, each with its top-ranked image, and
    `attention.json` with the same numbers."""
    import torch

    from .data import image_batch, query_batch

    plt = _pyplot()
    texts = prepared.queries.set_index("query_id")["query"]
    paths, records = [], []
    for query_id in example_queries(prepared, split, count):
        ranked = scores[scores["query_id"] == query_id].sort_values("score", ascending=False)
        if ranked.empty:
            continue
        img_id, label = int(ranked["img_id"].iloc[0]), int(ranked["label"].iloc[0])
        query = query_batch(prepared, np.array([query_id])).to(device)
        images = image_batch(prepared, np.array([img_id]))
        grid = images.map(lambda t: t.unsqueeze(0)).to(device)  # (1, 1, ...)
        with torch.no_grad():
            attention = model.explain(query, grid)
        regions = attention.region_weights[0, 0].float().cpu().numpy()
        region_mask = grid.region_mask[0, 0].cpu().numpy()
        keyword_weights = attention.keyword_weights[0, 0].float().cpu().numpy()
        keyword_mask = grid.keyword_mask[0, 0].cpu().numpy()
        keyword_ids = grid.keywords[0, 0].cpu().numpy()
        words = [prepared.vocabulary[i - 1] for i in keyword_ids[keyword_mask]]
        modality = attention.modality_weights[0, 0].float().cpu().numpy()
        record = {
            "query_id": int(query_id),
            "query": str(texts.get(query_id, "")),
            "img_id": img_id,
            "label": label,
            "score": float(attention.scores[0, 0]),
            "modality": {"visual": float(modality[0]), "keyword": float(modality[1])},
            "regions": regions[region_mask].round(6).tolist(),
            "keywords": dict(
                zip(words, keyword_weights[keyword_mask].round(6).tolist(), strict=True)
            ),
        }
        records.append(record)
        paths.append(_draw(plt, record, out_dir / f"attention-{query_id}.png"))
    atomic_write_json(out_dir / "attention.json", records)
    return paths


def _draw(plt: Any, record: dict[str, Any], path: Path) -> Path:
    fig = plt.figure(figsize=(8.4, 3.4), dpi=DPI)
    title = f"query {record['query_id']}: “{record['query']}” → image {record['img_id']}"
    fig.suptitle(f"{title} (label {record['label']}, score {record['score']:.3f})", fontsize=9)
    spec = fig.add_gridspec(1, 3, width_ratios=[0.8, 1.4, 1.2])

    bars = fig.add_subplot(spec[0])
    weights = [record["modality"]["visual"], record["modality"]["keyword"]]
    bars.bar(["image", "keywords"], weights, color=["#4C72B0", "#DD8452"])
    bars.set_ylim(0, 1)
    bars.set_title("modality weights", fontsize=8)
    for x, w in enumerate(weights):
        bars.text(x, w + 0.02, f"{w:.2f}", ha="center", fontsize=8)

    words = fig.add_subplot(spec[1])
    words.axis("off")
    words.set_title("keywords (attention)", fontsize=8)
    ranked = sorted(record["keywords"].items(), key=lambda kv: -kv[1])[:12]
    top = ranked[0][1] if ranked else 0.0
    for row, (word, weight) in enumerate(ranked):
        strong = weight == top and top > 0
        words.text(
            0.02,
            0.95 - row * 0.08,
            f"{word}  {weight:.2f}",
            fontsize=8,
            fontweight="bold" if strong else "normal",
            color="#C44E52" if strong else "black",
            transform=words.transAxes,
        )
    if not ranked:
        words.text(0.02, 0.9, "(no keywords)", fontsize=8, transform=words.transAxes)

    heat = fig.add_subplot(spec[2])
    regions = np.asarray(record["regions"], dtype=float)
    side = math.isqrt(len(regions))
    shape = (side, side) if side * side == len(regions) and side > 1 else (1, max(len(regions), 1))
    image = regions.reshape(shape) if len(regions) else np.zeros(shape)
    shown = heat.imshow(image, cmap="viridis", vmin=0, vmax=max(float(image.max()), 1e-6))
    heat.set_title(f"visual attention over {len(regions)} regions", fontsize=8)
    heat.set_xticks([])
    heat.set_yticks([])
    fig.colorbar(shown, ax=heat, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path, plt)
