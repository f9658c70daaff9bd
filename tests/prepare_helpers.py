"""Small prepared datasets for the prepare tests: written through `write_prepared`, then broken
one way at a time by rewriting a single file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse

from amc_data.prepare.format import write_prepared
from amc_data.prepare.queries import fit_query_vocabulary

KEYWORDS = ["beach", "car", "dog", "red", "sea"]


def write_vocab_tsv(path: Path, words: list[str] = KEYWORDS) -> Path:
    lines = ["word_id\tword\tdf", *(f"{i}\t{w}\t{6 + i}" for i, w in enumerate(words))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small_parts(tmp: Path, n_images: int = 12, regions: int = 3, dim: int = 4,
                seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The arguments of `write_prepared` for a small, valid dataset: images split 6/3/3, two
    queries per image, each judged on its own image."""
    rng = np.random.default_rng(seed)
    img_ids = np.arange(100, 100 + n_images, dtype=np.int64)[rng.permutation(n_images)]
    splits = np.array(["train"] * (n_images // 2) + ["val"] * (n_images // 4)
                      + ["test"] * (n_images - n_images // 2 - n_images // 4))  # fmt: skip
    images = pd.DataFrame({"img_id": img_ids, "split": splits, "fold": np.int8(-1)})
    texts = ["a red car by the sea", "dog on the beach", "red dog", "the sea at night"]
    queries = pd.DataFrame(
        {
            "query_id": np.arange(2 * n_images, dtype=np.int64) + 1000,
            "query": [texts[i % len(texts)] for i in range(2 * n_images)],
            "split": np.repeat(splits, 2),
        }
    )
    judgments = pd.DataFrame(
        {"query_id": queries["query_id"], "img_id": np.repeat(img_ids, 2), "label": np.int32(1)}
    )
    counts = rng.integers(0, 3, size=(n_images, len(KEYWORDS))).astype(np.int32)
    vocab = write_vocab_tsv(tmp / "vocab-source.tsv")
    train = queries.loc[queries["split"] == "train", "query"]
    return {
        "source": "synth",
        "features": rng.standard_normal((n_images, regions, dim)).astype(np.float32),
        "feature_ids": img_ids,
        "keywords_csr": scipy.sparse.csr_matrix(counts),
        "vocab_tsv_path": vocab,
        "images": images,
        "queries": queries,
        "judgments": judgments,
        "query_vocabulary": fit_query_vocabulary(train, min_count=1),
        "options": {"seed": seed},
    }


def write_small(out: Path, tmp: Path, **overrides: Any) -> Path:
    parts = small_parts(tmp)
    parts.update(overrides)
    return write_prepared(out, **parts)


def rewrite_table(path: Path, edit) -> None:
    """Read a Parquet table into pandas, apply `edit(frame) -> frame`, write it back."""
    frame = edit(pq.read_table(path).to_pandas())
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
