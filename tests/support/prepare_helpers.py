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

from amc_data.prepare.queries import fit_query_vocabulary
from amc_data.prepare.writer import write_prepared

KEYWORDS = ["beach", "car", "dog", "red", "sea"]


def write_vocab_tsv(path: Path, words: list[str] = KEYWORDS) -> Path:
    lines = ["word_id\tword\tdf", *(f"{i}\t{w}\t{6 + i}" for i, w in enumerate(words))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small_parts(
    tmp: Path, n_images: int = 12, regions: int = 3, dim: int = 4, seed: int = 0
) -> dict[str, Any]:
    """The arguments of `write_prepared` for a small, valid dataset: images split 6/3/3, two
    queries per image, each judged on its own image."""
    rng = np.random.default_rng(seed)
    img_ids = np.arange(100, 100 + n_images, dtype=np.int64)[rng.permutation(n_images)]
    splits = np.array(
        ["train"] * (n_images // 2)
        + ["val"] * (n_images // 4)
        + ["test"] * (n_images - n_images // 2 - n_images // 4)
    )
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


# -- generated inputs of `prepare coco` and `prepare clickture` --------------------------------
def encoded_coco(data_dir: Path, counts: dict[str, int] | None = None, seed: int = 0):
    """A keywords_coco.zip in `<data_dir>/coco` and its encode output (min_df 2)."""
    from support import corpus

    from amc_data import EncodeConfig, encode

    counts = counts or {"train": 30, "restval": 10, "val": 10, "test": 25}
    made = corpus.make_coco(data_dir / "coco", counts, seed=seed)
    encode("coco", data_dir=data_dir, config=EncodeConfig(jobs=1, min_df=2))
    return made


def save_features(
    folder: Path,
    name: str,
    ids: np.ndarray,
    regions: int = 3,
    dim: int = 4,
    seed: int = 0,
    dtype=np.float16,
) -> tuple[Path, Path]:
    """`<name>.npy` (features) and `<name>_ids.npy` in `folder`, rows in the order of `ids`."""
    rng = np.random.default_rng(seed)
    features = folder / f"{name}.npy"
    ids_path = folder / f"{name}_ids.npy"
    np.save(features, rng.standard_normal((len(ids), regions, dim)).astype(dtype))
    np.save(ids_path, np.asarray(ids, dtype=np.int64))
    return features, ids_path


CLICK_WORDS = ["red", "car", "dog", "beach", "sunset", "kitchen", "white", "sink", "cat", "tree"]


def write_id_map(path: Path, ids) -> Path:
    """An id map as the authors pickled it: {"img<N>": N}, protocol 2."""
    import pickle

    path.write_bytes(pickle.dumps({f"img{i}": int(i) for i in ids}, protocol=2))
    return path


def clickture_inputs(
    data_dir: Path, seed: int = 0, n_lite: int = 80, n_dev: int = 60, dev_queries: int = 12
) -> dict[str, Path]:
    """Everything `prepare clickture` reads, generated: keyword archives and lists (Lite ids
    0..n_lite-1 and dev ids 0..n_dev-1, overlapping as the real ones do), their encode output,
    the id maps, a click log, dev judgments and features for both parts."""
    from support import corpus

    from amc_data import EncodeConfig, encode

    folder = data_dir / "clickture"
    corpus.make_clickture(
        folder,
        corpus.lite_lines(n_dev, seed=seed + 1),
        corpus.lite_lines(n_lite, seed=seed + 2),
        seed=seed,
    )
    encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1, min_df=2))
    write_id_map(folder / "img_id_map.pkl", range(n_lite))
    write_id_map(folder / "img_id_map_dev.pkl", range(n_dev))
    rng = np.random.default_rng(seed)

    def query() -> str:
        return " ".join(rng.choice(CLICK_WORDS, size=rng.integers(1, 4), replace=False))

    click_lines = []
    for image in range(n_lite):
        for _ in range(rng.integers(1, 3)):
            click_lines.append(f"{query()}\timg{image}\t{rng.integers(1, 20)}")
    train_queries = {line.split("\t")[0] for line in click_lines}
    label_lines, made = [], 0
    while made < dev_queries:
        # "q3", not "3": one-character tokens are dropped, and the queries must stay apart as
        # the model reads them (and never be a train query)
        text = "dev " + query() + f" q{made}"
        if text in train_queries:
            continue
        images = rng.choice(n_dev, size=6, replace=False)
        grades = rng.choice(["Excellent", "Good", "Bad"], size=6)
        label_lines += [f"{text}\timg{i}\t{g}" for i, g in zip(images, grades, strict=True)]
        made += 1
    clicks = folder / "clicks.tsv"
    labels = folder / "dev_labels.tsv"
    clicks.write_text("\n".join(click_lines) + "\n", encoding="utf-8")
    labels.write_text("\n".join(label_lines) + "\n", encoding="utf-8")
    lite_f, lite_i = save_features(folder, "lite", rng.permutation(n_lite), seed=seed)
    dev_f, dev_i = save_features(folder, "dev", rng.permutation(n_dev), seed=seed + 1)
    return {
        "clicks": clicks,
        "dev_labels": labels,
        "features": lite_f,
        "feature_ids": lite_i,
        "dev_features": dev_f,
        "dev_feature_ids": dev_i,
    }
