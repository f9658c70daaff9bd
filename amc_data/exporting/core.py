"""`export`: a prepared folder written as a Hugging Face dataset or as webdataset shards, into
a staging folder beside DIR that is renamed into place once complete."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write_bytes
from ..prepare.format import PreparedDataset, load_prepared
from ..progress import progress_bar
from ..version import __version__
from .card import dataset_card
from .config import ExportConfig
from .folder import RECORD_NAME, claim_output, swap_in, write_record
from .hf import ConfigFiles, write_hf
from .tables import SplitRows, split_rows
from .wds import write_wds

__all__ = ["ExportResult", "export"]

log = logging.getLogger(__name__)

_VOCABULARIES = ("vocab.tsv", "query_vocab.tsv")


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the folder, its format, its files (relative paths, the record
    `export.json` included) and their bytes, and the rows per split."""

    out: Path
    to: str
    files: tuple[str, ...]
    bytes: int
    counts: dict[str, dict[str, int]]


_HF_LAYOUT = """
One config per table; each split's rows in Parquet shards under the config's folder:

- `images` (the default): `img_id`, `split`, `fold` (COCO test fold 0-4, else -1), any
  source columns, `keywords` (the image's keywords, in vocabulary order) and `keyword_counts`
  (the count of each).
- `features`: `img_id`, `features` (regions x dimensions, an `Array2D`). Row *i* is the image
  of row *i* of `images` in the same split.
- `queries`: `query_id`, `query` (the text), `split`, and `intent` where the source has one.
- `judgments`: `query_id`, `img_id`, `label`; a judgment's split is its query's.

`vocabulary/vocab.tsv` is the keyword vocabulary (word ids the AMC models use) and
`vocabulary/query_vocab.tsv` the query words fitted on the train queries; `export.json` lists
every file of the export.
"""

_HF_LOADING = """
from datasets import load_dataset

# DIR: this folder, or the dataset's repository id once uploaded
images = load_dataset(DIR, "images")        # a DatasetDict: train, val, test
features = load_dataset(DIR, "features").with_format("numpy")
queries = load_dataset(DIR, "queries")
judgments = load_dataset(DIR, "judgments")
assert images["train"][0]["img_id"] == features["train"][0]["img_id"]
"""

_WDS_LAYOUT = """
Each split's images in tar shards `images-<split>-NNNNNN.tar`, one sample per image (key: the
`img_id`): `<img_id>.features.npy` (regions x dimensions), `<img_id>.keywords.json`
(`{"keywords": [...], "keyword_counts": [...]}`, vocabulary order) and `<img_id>.json`
(`img_id`, `split`, `fold`, any source columns). `queries.parquet` holds `query_id`, `query`,
`split` (and `intent` where the source has one); `judgments.parquet` holds `query_id`,
`img_id`, `label` and `split` (the query's).

`vocabulary/vocab.tsv` is the keyword vocabulary and `vocabulary/query_vocab.tsv` the query
words fitted on the train queries; `export.json` lists every file of the export, the shards of
each split among them.
"""

_WDS_LOADING = """
import glob, io, json
import numpy as np
import webdataset as wds

shards = sorted(glob.glob(f"{DIR}/images-train-*.tar"))
for sample in wds.WebDataset(shards, shardshuffle=False):
    features = np.load(io.BytesIO(sample["features.npy"]))   # (regions, dimensions)
    keywords = json.loads(sample["keywords.json"])["keywords"]
    image = json.loads(sample["json"])                          # img_id, split, fold
"""


def _hf_card_yaml(configs: dict[str, ConfigFiles]) -> tuple[list[Any], list[Any]]:
    """The card's `configs` and `dataset_info` (configs without rows left out)."""
    listed, info = [], []
    for name, files in configs.items():
        if not files.shards:
            continue
        entry: dict[str, Any] = {"config_name": name}
        if name == "images":
            entry["default"] = True
        entry["data_files"] = [
            {"split": split, "path": f"{name}/{split}-*.parquet"} for split in files.shards
        ]
        listed.append(entry)
        splits = [
            {"name": split, "num_bytes": files.bytes[split], "num_examples": n}
            for split, n in files.rows.items()
        ]
        info.append({"config_name": name, "features": files.features, "splits": splits})
    return listed, info


def _write(
    staging: Path,
    config: ExportConfig,
    rows: list[SplitRows],
    dataset: PreparedDataset,
    progress: bool,
) -> str:
    """Write the chosen format into `staging`; return the dataset card."""
    total = int(dataset.feature_ids.size)
    with progress_bar(
        total=total, desc=f"export {config.to}", unit="image", enabled=progress
    ) as bar:
        if config.to == "hf":
            configs = write_hf(staging, dataset, rows, config.shard_bytes, bar.update)
            listed, info = _hf_card_yaml(configs)
            return dataset_card(
                dataset.info, configs=listed, info=info, layout=_HF_LAYOUT, loading=_HF_LOADING
            )
        shards = write_wds(staging, dataset, rows, config.shard_bytes, bar.update)
        # The Hub's webdataset reader opens the shards too (`load_dataset(DIR, "images")`).
        listed = [
            {
                "config_name": "images",
                "default": True,
                "data_files": [
                    {"split": split, "path": f"images-{split}-*.tar"}
                    for split, names in shards.items()
                    if names
                ],
            }
        ]
        return dataset_card(
            dataset.info, configs=listed, info=[], layout=_WDS_LAYOUT, loading=_WDS_LOADING
        )


def export(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: ExportConfig | None = None,
    progress: bool = False,
    **options: Any,
) -> ExportResult:
    """Write the prepared folder `data` to the folder `out` as a Hugging Face dataset
    (`to="hf"`: Parquet shards and a dataset card that `datasets.load_dataset(out, "images")`
    opens) or as webdataset tar shards (`to="wds"`).

    `options` are `ExportConfig`'s fields (`to`, `shard_mb`, `force`), or pass `config`. The
    folder is built beside `out` and renamed into place once complete; a non-empty `out` is
    refused unless it holds an earlier export and `force` is set, and a folder holding files no
    export wrote is always refused (none is ever deleted). `progress` draws a bar on stderr.
    """
    if config is not None and options:
        raise ConfigError(
            f"config: pass either config or options ({', '.join(options)}), not both.",
            parameter="config",
        )
    config = config or ExportConfig(**options)
    dataset = load_prepared(data)
    out_dir = Path(out).expanduser().resolve()
    with claim_output(out_dir, dataset.root, config.force) as staging:
        rows = list(split_rows(dataset))
        card = _write(staging, config, rows, dataset, progress)
        for name in _VOCABULARIES:
            (staging / "vocabulary").mkdir(exist_ok=True)
            shutil.copyfile(dataset.root / name, staging / "vocabulary" / name)
        atomic_write_bytes(staging / "README.md", card.encode("utf-8"))
        files = sorted(
            p.relative_to(staging).as_posix()
            for p in staging.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        write_record(staging, _record(dataset, config, files))
        size = sum((staging / name).stat().st_size for name in [*files, RECORD_NAME])
        swap_in(staging, out_dir, config.force)
    counts = dataset.info["counts"]
    log.info("exported %s to %s (%s, %d files)", dataset.root, out_dir, config.to, len(files))
    return ExportResult(
        out_dir,
        config.to,
        (*files, RECORD_NAME),
        size,
        {k: counts[k] for k in counts if k != "features"},
    )


def _record(dataset: PreparedDataset, config: ExportConfig, files: list[str]) -> dict[str, Any]:
    info = dataset.info
    return {
        "to": config.to,
        "data": str(dataset.root),
        "prepared": {
            key: info.get(key)
            for key in ("source", "created", "amc_data", "counts", "fingerprints")
        },
        "options": {"to": config.to, "shard_mb": config.shard_mb},
        "amc_data": __version__,
        "outputs": files,
    }
