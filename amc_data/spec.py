"""The datasets amc-data knows, in one place: their splits, the splits the vocabulary is fitted
on, the archives and list files an encode reads, where each split's keyword files sit inside
its archive, and the authors' output file names.

Every stage reads these facts from here (`encoding`, `dataset`, the CLI); the bundled manifests
name the same datasets and files (a test holds the two together).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "DATASETS",
    "FORMATS",
    "PREPARED_SPLITS",
    "DatasetSpec",
    "OriginalOutput",
    "dataset_spec",
]

#: The splits of a prepared folder (what `train`, `eval` and `search` read), in this order.
PREPARED_SPLITS = ("train", "val", "test")

#: What `encode` can write beside `vocab.tsv` and the encode record.
FORMATS = ("original", "csr", "parquet")


@dataclass(frozen=True)
class OriginalOutput:
    """One pair of the authors' output files and the splits whose documents it holds."""

    stem: str  # "clickture_dev", "coco"
    index_suffix: str  # "_sparse" for Clickture, "" for COCO, as the scripts named them
    splits: tuple[str, ...]

    def pairs_name(self, min_df: int) -> str:
        """The pair matrix, `img_keyword_rec_<stem>_sk_<min_df>.npy`."""
        return f"img_keyword_rec_{self.stem}_sk_{min_df}.npy"

    def index_name(self, min_df: int) -> str:
        """The authors' index, `img_keyword_ind_<stem>_sk_<min_df><suffix>.npy`."""
        return f"img_keyword_ind_{self.stem}_sk_{min_df}{self.index_suffix}.npy"


@dataclass(frozen=True)
class DatasetSpec:
    """What an encode of one dataset reads and writes.

    `split_archive[i]` is the stem of the archive (`<stem>.zip`, or the folder `<stem>/` it
    unzips to) holding the keyword files of `splits[i]`; inside it they sit in
    `<member_prefix><split>/`. `split_list[i]` is the list file naming that split's images, or
    None where the images come from `dataset.json` inside the archive (COCO).
    """

    name: str
    splits: tuple[str, ...]
    fit_splits: tuple[str, ...]  # the vocabulary's documents (also the COCO original outputs)
    split_archive: tuple[str, ...]
    split_list: tuple[str | None, ...]
    member_prefix: str  # "keywords_" (Clickture) or "keyword_" (COCO), as the scripts name it
    originals: tuple[OriginalOutput, ...]

    @property
    def archives(self) -> tuple[str, ...]:
        """Archive stems, each once, in split order."""
        return tuple(dict.fromkeys(self.split_archive))

    @property
    def lists(self) -> tuple[str, ...]:
        """List file names, in split order."""
        return tuple(name for name in self.split_list if name is not None)

    def archive_of(self, split: str) -> str:
        """The stem of the archive holding `split`'s keyword files."""
        return self.split_archive[self.splits.index(split)]

    def list_of(self, split: str) -> str | None:
        """The list file naming `split`'s images (None: `dataset.json` does)."""
        return self.split_list[self.splits.index(split)]

    def member_folder(self, split: str) -> str:
        """The folder of `split`'s keyword files inside its archive, as the scripts name it."""
        return f"{self.member_prefix}{split}"

    def csr_name(self, split: str) -> str:
        """The CSR matrix file of `split`."""
        return f"{self.name}_{split}_csr.npz"

    def check_split(self, split: str) -> None:
        """ConfigError unless `split` is one of this dataset's splits."""
        if split not in self.splits:
            raise ConfigError(
                f"{self.name} has no split {split!r}; its splits are {', '.join(self.splits)}."
            )


DATASETS: dict[str, DatasetSpec] = {
    "clickture": DatasetSpec(
        name="clickture",
        splits=("dev", "lite"),
        fit_splits=("dev",),
        split_archive=("keywords_dev", "keywords_lite"),
        split_list=("clickture-dev.lst", "clickture-lite.lst"),
        member_prefix="keywords_",
        originals=(
            OriginalOutput("clickture_dev", "_sparse", ("dev",)),
            OriginalOutput("clickture_lite", "_sparse", ("lite",)),
        ),
    ),
    "coco": DatasetSpec(
        name="coco",
        splits=("train", "restval", "val", "test"),
        fit_splits=("train", "test"),
        split_archive=("keywords_coco",) * 4,
        split_list=(None,) * 4,
        member_prefix="keyword_",
        originals=(OriginalOutput("coco", "", ("train", "test")),),
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; ConfigError naming the known datasets otherwise."""
    spec = DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}.")
    return spec
