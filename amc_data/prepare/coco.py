"""`prepare coco`: MSCOCO caption ranking on Karpathy's split, as a prepared dataset folder.

- Queries are the captions of Karpathy's `dataset.json` (found inside `keywords_coco.zip`, or
  the folder it unzips to, where `encode` finds it), the first `captions_per_image` (5) of each
  image; a caption's one judgment is its own image, label 1. `query_id` is Karpathy's `sentid`.
- Splits: train, val, test as the file says; restval goes to train (VSE++ and most papers do
  so), to val, or is dropped.
- Test images keep dataset.json's order and are cut into folds of 1,000 (`fold` 0..4 of
  images.parquet) for the 1K protocol; the folds are cut before any image is left out, so
  they stay the standard ones.
- Keywords are the rows of the `encode` output of coco (path and fingerprint recorded), copied
  into keywords.npz in feature order, with its vocab.tsv.
- Features come from the user's `.npy` files, matched to images by Karpathy `imgid` (or COCO
  id, `feature_id_kind="cocoid"`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse

from ..archive import open_archive
from ..checks import check_config, option
from ..datadir import dataset_dir
from ..encoding.inputs import input_files, parse_dataset_json
from ..errors import ConfigError, InputError
from ..spec import dataset_spec
from .common import (
    EXAMPLES,
    Missing,
    OnError,
    PrepareResult,
    Problems,
    encode_summary,
    encoded_keyword_rows,
    feature_geometry,
    feature_rows,
    force_option,
    min_query_count_option,
    missing_features,
    missing_option,
    on_error_option,
    open_features,
    shown,
    write_folder,
)
from .format import FILE_NAME, read_keyword_vocabulary
from .precomp import CAPTIONS_PER_IMAGE, PRECOMP_PARTS, PrecompPart, read_precomp, same_captions
from .queries import (
    QueryVocabulary,
    fit_query_vocabulary,
    vocabulary_report,
)
from .registry import FileInput, PrepareRecipe
from .writer import FeatureRows, check_output_folder

__all__ = ["DATASET", "CocoConfig", "prepare_coco"]

log = logging.getLogger(__name__)

KARPATHY_SPLITS = ("train", "restval", "val", "test")


@dataclass(frozen=True)
class CocoConfig:
    """How `prepare_coco` builds the dataset; the defaults are the usual protocol."""

    restval: Literal["train", "val", "drop"] = option(
        "train", "Where Karpathy's restval images go.", choices=("train", "val", "drop")
    )
    missing: Missing = missing_option()
    # malformed dataset.json entries
    on_error: OnError = on_error_option()
    captions_per_image: int = option(
        5, "Captions of each image that become queries (the COCO protocols use 5).", low=1
    )
    fold_size: int = option(1000, "Test images per fold (the 1K protocol).", low=1)
    min_query_count: int = min_query_count_option()
    feature_id_kind: Literal["imgid", "cocoid"] = option(
        "imgid",
        "What --feature-ids hold: Karpathy's imgid, or the COCO image id (cocoid).",
        choices=("imgid", "cocoid"),
    )
    precomp: str | None = option(
        None,
        "SCAN/VSE++ precomputed features: the coco_precomp folder ({train,dev,testall}_ims.npy, "
        "_caps.txt, _ids.txt), instead of --features/--feature-ids.",
    )
    # The command line's switch is the other way round: --copy-features turns linking off.
    link_features: bool = option(
        True, "Copy the features even when the file could be linked.", flag="--copy-features"
    )
    force: bool = force_option()

    def __post_init__(self) -> None:
        check_config(self)


# -- dataset.json ------------------------------------------------------------------------------
def _read_dataset_json(folder: Path, dataset_json: Path | None) -> tuple[list[Any], str]:
    """Karpathy's images list, and where it came from (for messages)."""
    if dataset_json is not None:
        where = str(dataset_json)
        try:
            data = Path(dataset_json).read_bytes()
        except OSError as exc:
            raise InputError(f"Cannot read {dataset_json}: {exc}.") from exc
    else:
        archive_path = input_files(dataset_spec("coco"), folder)[0]
        archive = open_archive(archive_path)
        try:
            # At the archive's root, or inside the one folder it was zipped with.
            names = ["dataset.json", *(f"{top}/dataset.json" for top in archive.top_folders())]
            name = next((n for n in names if n in archive), None)
            if name is None:
                raise InputError(
                    f"{archive_path} has no dataset.json (Karpathy's split file). Expected it "
                    "beside the keyword_<split>/ folders; fetch the archive again, or pass "
                    "--dataset-json."
                )
            member = archive.member(name)
            data = archive.read_member(member)  # type: ignore[arg-type]
        finally:
            archive.close()
        where = f"{archive_path} member {name!r}"
    images = parse_dataset_json(data, where)
    return images, where


@dataclass
class _Karpathy:
    imgid: list[int]
    cocoid: list[int]
    split: list[str]
    captions: list[list[tuple[int, str]]]  # (sentid, raw) of each image
    filename: list[str | None]  # the picture's file name (COCO_val2014_....jpg), if given


def _captions(sentences: list[Any], per: int) -> list[tuple[int, str]]:
    """(sentid, stripped raw text) of the first `per` sentences that have both."""
    captions = []
    for sentence in sentences[:per]:
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        sentid = sentence.get("sentid") if isinstance(sentence, dict) else None
        if isinstance(raw, str) and raw.strip() and type(sentid) is int:
            captions.append((sentid, raw.strip()))
    return captions


def _report_bad_images(
    bad: dict[str, list[str]], where: str, config: CocoConfig, problems: Problems
) -> None:
    """Report each kind of unusable image entry (stop, or record them: `on_error`)."""
    messages = {
        "entry": "lack an integer 'imgid' >= 0 or a 'sentences' list",
        "split": f"have a split other than {', '.join(KARPATHY_SPLITS)}",
        "imgid": "repeat the imgid of an earlier image",
        "captions": f"have fewer than {config.captions_per_image} captions with a non-empty "
        "'raw' text and an integer 'sentid' (the COCO protocols use 5 per image)",
        "sentid": "repeat a sentid of an earlier image",
    }
    for kind, examples in bad.items():
        problems.report(
            f"dataset.json: {kind}",
            len(examples),
            examples,
            f"{len(examples):,} images of {where} {messages[kind]}: "
            f"{shown(examples, len(examples))}.",
        )


def _parse_images(
    images: list[Any], where: str, config: CocoConfig, problems: Problems
) -> _Karpathy:
    parsed = _Karpathy([], [], [], [], [])
    bad: dict[str, list[str]] = {
        "entry": [],
        "split": [],
        "imgid": [],
        "captions": [],
        "sentid": [],
    }
    seen_img: set[int] = set()
    seen_sent: set[int] = set()
    for position, image in enumerate(images):
        record = image if isinstance(image, dict) else {}
        imgid, split, sentences = record.get("imgid"), record.get("split"), record.get("sentences")
        label = f"images[{position}]"
        if type(imgid) is not int or imgid < 0 or not isinstance(sentences, list):
            bad["entry"].append(label)
            continue
        if split not in KARPATHY_SPLITS:
            bad["split"].append(f"{label} (split {split!r})")
            continue
        if imgid in seen_img:
            bad["imgid"].append(f"{label} (imgid {imgid})")
            continue
        captions = _captions(sentences, config.captions_per_image)
        if len(captions) < config.captions_per_image:
            bad["captions"].append(f"{label} (imgid {imgid}: {len(captions)})")
            continue
        if any(sentid in seen_sent for sentid, _ in captions):
            bad["sentid"].append(f"{label} (imgid {imgid})")
            continue
        seen_img.add(imgid)
        seen_sent.update(sentid for sentid, _ in captions)
        cocoid = record.get("cocoid")
        parsed.imgid.append(imgid)
        parsed.cocoid.append(cocoid if type(cocoid) is int else -1)
        parsed.split.append(split)
        parsed.captions.append(captions)
        filename = record.get("filename")
        parsed.filename.append(filename if isinstance(filename, str) and filename else None)
    _report_bad_images(bad, where, config, problems)
    if not parsed.imgid:
        raise InputError(f"{where} lists no usable image.")
    return parsed


# -- keywords ----------------------------------------------------------------------------------
def _encode_record(encoded: Path, archive: Path | None) -> dict[str, Any]:
    """The encode output's summary, refusing one made from another copy of the archive."""
    summary = encode_summary(encoded, "coco")
    if archive is not None and archive.is_file():
        inputs = summary["fingerprint"].get("inputs", [])
        recorded = next((i for i in inputs if i.get("name") == archive.name), None)
        stat = archive.stat()
        if recorded and (recorded.get("size"), recorded.get("mtime_ns")) != (
            stat.st_size,
            stat.st_mtime_ns,
        ):
            raise InputError(
                f"{encoded} was encoded from another {archive.name} (size or time differ from "
                f"{archive}): its keyword rows may belong to other images. Run `amc-data encode "
                "coco` again, then prepare."
            )
    return summary


def _keyword_rows(
    encoded: Path,
    record: dict[str, Any],
    karpathy_split: np.ndarray,
    img_ids: np.ndarray,
    n_words: int,
) -> tuple[scipy.sparse.csr_matrix, int]:
    """The keyword rows of `img_ids` (in that order) from the per-split CSR matrices, and how
    many images have none (their split was absent from the archive, or encode skipped them)."""
    blocks = []
    order = []
    for split in KARPATHY_SPLITS:
        rows = np.flatnonzero(karpathy_split == split)
        if rows.size == 0:
            continue
        order.append(rows)
        encoded_count = record["counts"].get(split, {}).get("encoded", 0)
        if split in record["absent_splits"] or not encoded_count:
            log.warning(
                "the encode output has no keywords for the %d %s images (encode found none of "
                "their keyword_%s/ files; its warning named what that folder holds): they get "
                "empty keyword rows",
                rows.size,
                split,
                split,
            )
            blocks.append(scipy.sparse.csr_matrix((rows.size, n_words), dtype=np.int32))
            continue
        blocks.append(encoded_keyword_rows(encoded, "coco", split, img_ids[rows], n_words))
    stacked = scipy.sparse.vstack(blocks, format="csr").astype(np.int32)
    inverse = np.empty(img_ids.size, dtype=np.int64)
    inverse[np.concatenate(order)] = np.arange(img_ids.size)
    keywords = stacked[inverse]
    empty = int((np.diff(keywords.indptr) == 0).sum())
    return keywords, empty


# -- the steps of the command ------------------------------------------------------------------
def _splits_and_folds(
    karpathy_split: np.ndarray, config: CocoConfig, notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's split (restval placed as `config.restval` says, or "drop") and its 1K fold
    (-1 outside test): test images in file order, cut before anything is left out, so the
    folds stay the standard ones."""
    split = karpathy_split.copy()
    split[karpathy_split == "restval"] = config.restval
    fold = np.full(split.size, -1, dtype=np.int64)
    test = np.flatnonzero(split == "test")
    fold[test] = np.arange(test.size) // config.fold_size
    if test.size > 127 * config.fold_size:  # folds are stored as int8
        raise ConfigError(
            f"{test.size:,} test images make more than 127 folds of {config.fold_size}."
        )
    if test.size % config.fold_size:
        notes.append(
            f"{test.size:,} test images: the last fold holds {test.size % config.fold_size:,}, "
            f"not {config.fold_size:,}."
        )
    return split, fold


@dataclass(frozen=True)
class _Matched:
    """The user's feature rows matched to the images."""

    keep: np.ndarray  # (images,) bool: kept (not dropped, and with features)
    absent: np.ndarray  # the feature ids of the images left out for want of features
    rows: np.ndarray  # the user's feature rows that are kept, in the user's order
    img_ids: np.ndarray  # the img_id of each of those rows


def _match_features(
    karpathy: _Karpathy,
    keep: np.ndarray,
    user_ids: np.ndarray,
    config: CocoConfig,
    where: str,
    feature_ids: Path,
    notes: list[str],
) -> _Matched:
    """Match the user's feature ids (imgids, or cocoids with `feature_id_kind="cocoid"`) to the
    images `keep` selects; images without features stop the run or are left out (`missing`)."""
    img_ids = np.array(karpathy.imgid, dtype=np.int64)
    cocoids = np.array(karpathy.cocoid, dtype=np.int64)
    by_cocoid = config.feature_id_kind == "cocoid"
    if by_cocoid:
        if (cocoids[keep] < 0).any():
            raise InputError(
                f"{where}: some images have no integer 'cocoid'; match features by imgid."
            )
        kept_cocoids = pd.Index(cocoids[keep])
        if kept_cocoids.has_duplicates:
            cocoid = int(kept_cocoids[kept_cocoids.duplicated()][0])
            raise InputError(
                f"{where}: cocoid {cocoid} belongs to more than one image, so features cannot "
                "be matched by cocoid. Match them by imgid."
            )
        where_in = kept_cocoids.get_indexer(user_ids)
        user_img = np.where(where_in >= 0, img_ids[keep][where_in], -1)
    else:
        user_img = user_ids
    wanted = (cocoids if by_cocoid else img_ids)[keep]
    _check_id_kind(wanted, (img_ids if by_cocoid else cocoids)[keep], user_ids, config, feature_ids)
    have = missing_features(wanted, user_ids, config.missing, "images", feature_ids)
    keep = keep.copy()
    keep[np.flatnonzero(keep)[~have]] = False
    selected = np.flatnonzero(np.isin(user_img, img_ids[keep]))  # user rows, in the user's order
    extra_rows = user_ids.size - selected.size
    if extra_rows:
        notes.append(f"{extra_rows:,} feature rows belong to no kept image and were left out.")
    return _Matched(keep, wanted[~have], selected, user_img[selected])


def _check_id_kind(
    wanted: np.ndarray,
    other: np.ndarray,
    user_ids: np.ndarray,
    config: CocoConfig,
    feature_ids: Path,
) -> None:
    """Stop when most images lack features under `feature_id_kind` while the feature ids match
    more images as the other kind of id: the features are keyed by the other kind, and leaving
    the images out (`missing="skip"`) would drop most or all of them."""
    found = int(np.isin(wanted, user_ids).sum())
    if 2 * found >= wanted.size:
        return
    found_other = int(np.isin(other[other >= 0], user_ids).sum())  # -1: no cocoid
    if found_other <= found:
        return
    kind = config.feature_id_kind
    other_kind = "cocoid" if kind == "imgid" else "imgid"
    names = {"imgid": "Karpathy imgids", "cocoid": "COCO image ids (cocoid)"}
    raise InputError(
        f"{wanted.size - found:,} of {wanted.size:,} images have no row in {feature_ids} when "
        f"its ids are read as {names[kind]} (feature_id_kind={kind!r}), but {found_other:,} "
        f"images are found when they are read as {names[other_kind]}: the features are keyed "
        f"by {other_kind}. Pass --feature-id-kind {other_kind}."
    )


def _keywords(
    encoded: Path,
    record: dict[str, Any],
    karpathy: _Karpathy,
    karpathy_split: np.ndarray,
    out_ids: np.ndarray,
    notes: list[str],
) -> tuple[scipy.sparse.csr_matrix, Path, int]:
    """The keyword rows of the written images (`out_ids`, in that order), the vocabulary file
    they count the words of, and how many images have no keyword."""
    vocab_path = encoded / "vocab.tsv"
    n_words = len(read_keyword_vocabulary(vocab_path))
    img_ids = np.array(karpathy.imgid, dtype=np.int64)
    position = pd.Series(np.arange(img_ids.size), index=img_ids)
    rows_of_out = position.loc[out_ids].to_numpy()
    keywords, without_keywords = _keyword_rows(
        encoded, record, karpathy_split[rows_of_out], out_ids, n_words
    )
    if without_keywords:
        notes.append(
            f"{without_keywords:,} images have no keyword in the vocabulary (or none "
            "encoded); they get empty keyword rows."
        )
    return keywords, vocab_path, without_keywords


def _tables(
    karpathy: _Karpathy,
    karpathy_split: np.ndarray,
    split: np.ndarray,
    fold: np.ndarray,
    keep: np.ndarray,
    per: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The images, queries and judgments tables of the kept images: each caption is a query,
    judged relevant (label 1) on its own image only."""
    img_ids = np.array(karpathy.imgid, dtype=np.int64)
    kept_ids = img_ids[keep]
    images = pd.DataFrame(
        {
            "img_id": kept_ids,
            "split": split[keep],
            "fold": fold[keep].astype(np.int8),
            "source_id": np.array(karpathy.cocoid, dtype=np.int64)[keep],
            "karpathy_split": karpathy_split[keep],
            FILE_NAME: [karpathy.filename[i] for i in np.flatnonzero(keep)],
        }
    )
    captions = [karpathy.captions[i] for i in np.flatnonzero(keep)]
    queries = pd.DataFrame(
        {
            "query_id": np.array([s for c in captions for s, _ in c], dtype=np.int64),
            "query": [text for c in captions for _, text in c],
            "split": np.repeat(split[keep], per),
        }
    )
    judgments = pd.DataFrame(
        {
            "query_id": queries["query_id"],
            "img_id": np.repeat(kept_ids, per),
            "label": np.ones(len(queries), dtype=np.int32),
        }
    )
    return images, queries, judgments


def _query_vocabulary(queries: pd.DataFrame, where: str, config: CocoConfig) -> QueryVocabulary:
    """The query vocabulary of the training captions (there must be some)."""
    train_text = queries.loc[queries["split"] == "train", "query"]
    if train_text.empty:
        raise InputError(f"{where} leaves no training caption (restval={config.restval}).")
    return fit_query_vocabulary(train_text, config.min_query_count)


def _skipped(problems: Problems, absent: np.ndarray) -> dict[str, dict[str, Any]]:
    """What prepared.json records as left out: the problems, and the images without features."""
    skipped = dict(problems.recorded)
    if absent.size:
        skipped["images without features"] = {
            "count": int(absent.size),
            "examples": absent[:EXAMPLES].tolist(),
        }
    return skipped


def _details(fold: np.ndarray, config: CocoConfig, without_keywords: int) -> dict[str, Any]:
    """What prepared.json records of COCO: the folds, the captions per image."""
    return {
        "test_folds": int(fold.max()) + 1 if (fold >= 0).any() else 0,
        "fold_size": config.fold_size,
        "captions_per_image": config.captions_per_image,
        "images_without_keywords": without_keywords,
    }


# -- SCAN/VSE++ precomputed features ----------------------------------------------------------
@dataclass(frozen=True)
class _Precomp:
    """The precomp files matched to Karpathy's images."""

    parts: list[FeatureRows]  # one per file, its kept rows
    img_ids: np.ndarray  # the imgid of each output row, files in order
    keep: np.ndarray  # (images,) bool
    fold: np.ndarray  # (images,) the 1K folds, in testall's order
    absent: np.ndarray  # cocoids of images without a precomp row
    record: dict[str, Any]  # what prepared.json records of the folder


def _match_precomp(
    karpathy: _Karpathy, split: np.ndarray, config: CocoConfig, where: str, notes: list[str]
) -> _Precomp:
    """Each precomp row's image (by COCO id), checked against Karpathy's split and captions;
    the rows of the kept images, one `FeatureRows` per file."""
    folder = Path(config.precomp).expanduser().resolve()  # type: ignore[arg-type]
    parts = read_precomp(folder)
    cocoids = pd.Index(np.array(karpathy.cocoid, dtype=np.int64))
    if cocoids.has_duplicates or (cocoids < 0).any():
        raise InputError(
            f"{where}: some images have no integer 'cocoid', or share one; precomputed features "
            "are matched to images by cocoid."
        )
    rows_of = _precomp_rows(parts, cocoids, np.array(karpathy.split), folder, where)
    everywhere = np.concatenate(rows_of)
    wanted = np.array(karpathy.cocoid, dtype=np.int64)[split != "drop"]
    have_ids = np.concatenate([part.cocoids for part in parts])
    have = missing_features(wanted, have_ids, config.missing, "images", folder)
    absent = wanted[~have]
    keep = np.zeros(split.size, dtype=bool)
    keep[everywhere] = True
    keep &= split != "drop"
    fold = np.full(split.size, -1, dtype=np.int64)
    test_rows = rows_of[-1]
    fold[test_rows] = np.arange(test_rows.size) // config.fold_size
    selected = [np.flatnonzero(keep[index]) for index in rows_of]
    features = [
        feature_rows([part.array], [rows], part.path)
        for part, rows in zip(parts, selected, strict=True)
    ]
    imgid = np.array(karpathy.imgid, dtype=np.int64)
    img_ids = np.concatenate(
        [imgid[index[rows]] for index, rows in zip(rows_of, selected, strict=True)]
    )
    mismatched = _caption_mismatches(karpathy, parts, rows_of, config)
    if mismatched:
        notes.append(
            f"{len(mismatched):,} images have captions in the precomp files that differ from "
            f"{where}'s (COCO id {shown(mismatched, len(mismatched))}); the queries are "
            "dataset.json's."
        )
    record = {
        "folder": str(folder),
        "files": {
            part.name: {
                "features": str(part.path),
                "rows": int(part.array.shape[0]),
                "ids_per": part.ids_per,
                "split": dict(PRECOMP_PARTS)[part.name],
            }
            for part in parts
        },
        "caption_mismatches": {"count": len(mismatched), "cocoids": mismatched[:EXAMPLES]},
    }
    return _Precomp(features, img_ids, keep, fold, absent, record)


def _precomp_rows(
    parts: list[PrecompPart],
    cocoids: pd.Index,
    karpathy_split: np.ndarray,
    folder: Path,
    where: str,
) -> list[np.ndarray]:
    """The Karpathy image (its position in dataset.json) of each row of each precomp file;
    every id known, and in the Karpathy split its file stands for."""
    expected = {"train": ("train", "restval"), "dev": ("val",), "testall": ("test",)}
    rows_of: list[np.ndarray] = []
    for part in parts:
        index = cocoids.get_indexer(part.cocoids)
        unknown = part.cocoids[index < 0]
        if unknown.size:
            raise InputError(
                f"{folder / (part.name + '_ids.txt')}: {unknown.size:,} COCO ids are not in "
                f"{where}: {shown(unknown.tolist(), unknown.size)}. The ids must be COCO image "
                "ids (cocoid) of Karpathy's split."
            )
        other = ~np.isin(karpathy_split[index], expected[part.name])
        if other.any():
            raise InputError(
                f"{folder / (part.name + '_ids.txt')}: {int(other.sum()):,} images are in "
                f"Karpathy's {sorted(set(karpathy_split[index][other].tolist()))} split, not "
                f"{' or '.join(expected[part.name])} (COCO id "
                f"{shown(part.cocoids[other].tolist(), int(other.sum()))}): not SCAN's split."
            )
        rows_of.append(index)
    return rows_of


def _caption_mismatches(
    karpathy: _Karpathy, parts: list[PrecompPart], rows_of: list[np.ndarray], config: CocoConfig
) -> list[int]:
    """The COCO ids of the images whose precomp captions are not dataset.json's (compared as
    words, in any order; the first `captions_per_image` of each)."""
    per = min(config.captions_per_image, CAPTIONS_PER_IMAGE)
    mismatched = []
    for part, index in zip(parts, rows_of, strict=True):
        for row, image in enumerate(index.tolist()):
            ours = [text for _, text in karpathy.captions[image][:per]]
            if not same_captions(ours, part.captions[row][:per]):
                mismatched.append(int(part.cocoids[row]))
    if mismatched:
        log.warning(
            "%d images have other captions in the precomp files than in dataset.json: COCO id %s",
            len(mismatched),
            shown(mismatched, len(mismatched)),
        )
    return mismatched


# -- the command -------------------------------------------------------------------------------
def prepare_coco(
    features: str | os.PathLike[str] | None = None,
    feature_ids: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    encoded: str | os.PathLike[str] | None = None,
    dataset_json: str | os.PathLike[str] | None = None,
    config: CocoConfig | None = None,
) -> PrepareResult:
    """Prepare MSCOCO caption ranking from `<data_dir>/coco/` (its keywords_coco.zip and the
    encode output, default `<data_dir>/coco/encoded`) and the user's features, into `out`
    (default `<data_dir>/coco/prepared`).

    The features are `features` with their ids `feature_ids`, or SCAN/VSE++'s precomputed ones
    (`config.precomp`, their coco_precomp folder: see `amc_data.prepare.precomp`): `train`
    (with restval) the training split, `dev` the validation split, `testall` the test split
    in its order (its first 1,000 images, SCAN's `test`, are fold 0); their files are linked
    into the folder, not copied (one file each)."""
    config = config or CocoConfig()
    _check_feature_inputs(features, feature_ids, config)
    folder = dataset_dir(data_dir, "coco")
    out_dir = Path(out) if out is not None else folder / "prepared"
    check_output_folder(out_dir, config.force)  # before the long work, not after it
    encoded_dir = Path(encoded) if encoded is not None else folder / "encoded"
    problems = Problems(config.on_error)
    images_json, where = _read_dataset_json(folder, Path(dataset_json) if dataset_json else None)
    karpathy = _parse_images(images_json, where, config, problems)
    archive = None if dataset_json else input_files(dataset_spec("coco"), folder)[0]
    record = _encode_record(encoded_dir, archive)

    notes: list[str] = []
    karpathy_split = np.array(karpathy.split)
    split, fold = _splits_and_folds(karpathy_split, config, notes)
    source = _feature_source(features, feature_ids, karpathy, split, config, where, notes)
    keep, img_ids, absent = source.keep, source.img_ids, source.absent
    fold = source.fold if source.fold is not None else fold
    keywords, vocab_path, without_keywords = _keywords(
        encoded_dir, record, karpathy, karpathy_split, img_ids, notes
    )
    per = config.captions_per_image
    images, queries, judgments = _tables(karpathy, karpathy_split, split, fold, keep, per)
    query_vocabulary = _query_vocabulary(queries, where, config)
    vocabulary = vocabulary_report(query_vocabulary, queries, keywords.shape[0], without_keywords)
    result = write_folder(
        out_dir,
        "coco",
        features=source.rows,
        feature_ids=img_ids,
        keywords=keywords,
        vocab_path=vocab_path,
        images=images,
        queries=queries,
        judgments=judgments,
        query_vocabulary=query_vocabulary,
        options=_options(config, features, feature_ids, where, encoded_dir),
        force=config.force,
        link_features=config.link_features,
        encoded=record,
        details={
            **_details(fold, config, without_keywords),
            "vocabulary": vocabulary,
            **source.details,
        },
        skipped=_skipped(problems, absent),
        notes=notes,
        geometry=source.geometry,
    )
    return replace(result, vocabulary=vocabulary)


def _options(
    config: CocoConfig,
    features: str | os.PathLike[str] | None,
    feature_ids: str | os.PathLike[str] | None,
    where: str,
    encoded_dir: Path,
) -> dict[str, Any]:
    """What prepared.json records of the options and inputs."""
    return {
        **asdict(config),
        "features": None if features is None else str(Path(features).resolve()),
        "feature_ids": None if feature_ids is None else str(Path(feature_ids).resolve()),
        "dataset_json": where,
        "encoded": str(encoded_dir.resolve()),
    }


@dataclass(frozen=True)
class _FeatureSource:
    """The features of the kept images, from the user's file or the precomp folder."""

    rows: FeatureRows | list[FeatureRows]
    img_ids: np.ndarray  # of the feature rows, in order
    keep: np.ndarray  # (images,) bool
    absent: np.ndarray  # ids of the images without features
    fold: np.ndarray | None  # the folds, when the source decides them (testall's order)
    geometry: dict[str, int] | None
    details: dict[str, Any]  # what prepared.json records of the source, under "coco"


def _feature_source(
    features: str | os.PathLike[str] | None,
    feature_ids: str | os.PathLike[str] | None,
    karpathy: _Karpathy,
    split: np.ndarray,
    config: CocoConfig,
    where: str,
    notes: list[str],
) -> _FeatureSource:
    """The user's features matched to the images, or the precomp folder's."""
    if config.precomp is not None:
        precomp = _match_precomp(karpathy, split, config, where, notes)
        return _FeatureSource(
            precomp.parts,
            precomp.img_ids,
            precomp.keep,
            precomp.absent,
            precomp.fold,
            None,
            {"precomp": precomp.record},
        )
    assert features is not None and feature_ids is not None  # _check_feature_inputs
    array, user_ids, features_path = open_features(features, feature_ids)
    matched = _match_features(
        karpathy, split != "drop", user_ids, config, where, Path(feature_ids), notes
    )
    return _FeatureSource(
        feature_rows([array], [matched.rows], features_path),
        matched.img_ids,
        matched.keep,
        matched.absent,
        None,
        feature_geometry(features_path, array),
        {},
    )


def _check_feature_inputs(
    features: str | os.PathLike[str] | None,
    feature_ids: str | os.PathLike[str] | None,
    config: CocoConfig,
) -> None:
    """The features come from `features` and `feature_ids`, or from `config.precomp`."""
    given = features is not None or feature_ids is not None
    if config.precomp is not None and given:
        raise ConfigError(
            "precomp replaces features and feature_ids: pass either the precomputed folder or "
            "your own features, not both.",
            parameter="precomp",
        )
    if config.precomp is None and (features is None or feature_ids is None):
        missing = "features" if features is None else "feature_ids"
        raise ConfigError(
            f"{missing} is needed: pass the features and their ids (features, feature_ids), or "
            "a folder of SCAN/VSE++ precomputed features (precomp).",
            parameter=missing,
        )


DATASET = PrepareRecipe(
    name="coco",
    config=CocoConfig,
    prepare=prepare_coco,
    help="""MSCOCO caption ranking (Karpathy split): captions are the queries, each judged on its
    own image; test images in folds of 1,000.

    Reads Karpathy's dataset.json from <data-dir>/coco/keywords_coco.zip (as encode does), the
    keywords from the encode output, and your features (--features, --feature-ids), or
    SCAN/VSE++'s precomputed ones (--precomp DIR: train, dev and testall become train, val and
    test). A features file whose every row is used, in order, is hard-linked (else symbolically
    linked) into the folder, not copied.
    """,
    options=(
        "restval",
        "feature_id_kind",
        FileInput(
            "dataset_json",
            "Karpathy's dataset.json (default: the one inside keywords_coco.zip).",
        ),
        "captions_per_image",
        "fold_size",
        "precomp",
        "link_features",
    ),
)
