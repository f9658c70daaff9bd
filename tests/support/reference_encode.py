"""A plain, independent reference of the authors' encoding, for parity and benchmarks.

Written from the description of the authors' scripts alone (scikit-learn's CountVectorizer with
min_df=6 and English stop words, fitted on Clickture-dev or COCO train+test, tokens in order with
repeats kept), the way their Python 2 scripts worked: unzip the archives
to disk, read one JSON file per image, fit scikit-learn's `CountVectorizer`, encode each document
with its `build_analyzer()` and `vocabulary_` into a plain list of `[img_id, word_id]` rows, then
`numpy.array(rows, dtype=int64)`. It imports nothing from amc_data on purpose: it is the yardstick
amc_data's encoder is measured against, bit for bit, and the "reference workflow" the benchmark
times. Nothing here is optimised, and nothing should be.

Conventions, stated because that description leaves them open:

- `max_img_id` is the largest image id among the pair rows, so the index has `max_img_id + 1`
  rows. An image with an empty keyword list (or no in-vocabulary token) that has the largest id
  in a list therefore does not lengthen the index. With no pair rows at all, the index is an
  empty `(0, 2)` array (the authors' `max` over an empty array would have crashed).
- Index walk: a "current image" of 0 and a start of 0; at each row whose image differs from the
  current one, the current image gets `[start, row - 1]`; after the last row, the current image
  gets `[start, N - 1]`. Other rows stay `[-1, -1]`; image 0 gets `[0, -1]` when it is absent
  and the first row belongs to another image.
- Archives: each is extracted with `zipfile` to a fresh folder under `workdir`. The folder that
  holds `keywords_<dev|lite>/` (or `dataset.json`) is the extraction folder itself, or else its
  only top-level folder, not counting `__MACOSX` and `.DS_Store` (an archive that wraps
  everything in one top folder). Extracted files are left in `workdir` for the caller to delete.
- List files: UTF-8, one line per image; surrounding whitespace is stripped and empty lines are
  skipped (a final newline is not an image).
- Output names are the authors' (`img_keyword_rec_...`, `img_keyword_ind_...`) with
  `sk_{min_df}` (the original `sk_6` at the default min_df).
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Collection, Iterable
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer

JUNK = ("__MACOSX", ".DS_Store")


def reference_clickture(
    dataset_dir: Path,
    workdir: Path,
    min_df: int = 6,
    stop_words: str | Collection[str] | None = "english",
) -> dict[str, np.ndarray | list[str]]:
    """The authors' Clickture encoding of `dataset_dir`'s two archives and two list files.

    Returns `{"vocabulary": [words in id order], "img_keyword_rec_clickture_dev_sk_6.npy": pairs,
    "img_keyword_ind_clickture_dev_sk_6_sparse.npy": index, ...lite likewise}`.
    """
    dataset_dir = Path(dataset_dir)
    roots = {
        part: _extract(dataset_dir / f"keywords_{part}.zip", workdir, f"keywords_{part}")
        for part in ("dev", "lite")
    }

    def documents(part: str):
        """(img_id, document) for each list line, read from the extracted files one by one."""
        for line in _read_list(dataset_dir / f"clickture-{part}.lst"):
            path = roots[part] / f"keywords_{part}" / f"{line}.json"
            yield int(line.split("/")[-1]), _document(path)

    # The vocabulary is fitted on the dev documents only, in list order.
    dev = list(documents("dev"))
    vectorizer = _vectorizer(min_df, stop_words)
    vectorizer.fit([document for _, document in dev])

    result: dict[str, np.ndarray | list[str]] = {"vocabulary": _vocabulary_words(vectorizer)}
    for part, items in (("dev", dev), ("lite", documents("lite"))):
        pairs, index = _encode(items, vectorizer)
        result[f"img_keyword_rec_clickture_{part}_sk_{min_df}.npy"] = pairs
        result[f"img_keyword_ind_clickture_{part}_sk_{min_df}_sparse.npy"] = index
    return result


def reference_coco(
    dataset_dir: Path,
    workdir: Path,
    min_df: int = 6,
    stop_words: str | Collection[str] | None = "english",
) -> dict[str, np.ndarray | list[str]]:
    """The authors' COCO encoding of `dataset_dir/keywords_coco.zip`.

    Documents are the images of `dataset.json` whose split is `train` or `test`, in file order;
    the vocabulary is fitted on them and encodes them; the image id is `imgid`.
    """
    root = _extract(Path(dataset_dir) / "keywords_coco.zip", workdir, "dataset.json")
    with open(root / "dataset.json", encoding="utf-8") as f:
        dataset = json.load(f)

    items = []
    for image in dataset["images"]:
        split = image["split"]
        if split not in ("train", "test"):
            continue
        stem = image["filename"].removesuffix(".jpg")
        items.append((image["imgid"], _document(root / f"keyword_{split}" / f"{stem}.json")))

    vectorizer = _vectorizer(min_df, stop_words)
    vectorizer.fit([document for _, document in items])
    pairs, index = _encode(items, vectorizer)
    return {
        "vocabulary": _vocabulary_words(vectorizer),
        f"img_keyword_rec_coco_sk_{min_df}.npy": pairs,
        f"img_keyword_ind_coco_sk_{min_df}.npy": index,
    }


def write_reference(result: dict[str, np.ndarray | list[str]], folder: Path) -> list[Path]:
    """Save each array with `numpy.save` under its original name, and `vocabulary.txt`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, value in result.items():
        if name == "vocabulary":
            path = folder / "vocabulary.txt"
            path.write_text("".join(f"{word}\n" for word in value), encoding="utf-8")
        else:
            path = folder / name
            np.save(path, value)
        written.append(path)
    return written


def index_from_pairs(pairs: np.ndarray) -> np.ndarray:
    """The `(max_img_id + 1) x 2` index: row i is `[first_row, last_row]` of image i's block."""
    return np.array(_walk(pairs[:, 0].tolist()), dtype=np.int64).reshape(-1, 2)


def _walk(img_ids: list[int]) -> list[list[int]]:
    """The index rows, by walking the pair rows' image ids as the original scripts did."""
    if not img_ids:
        return []
    index = [[-1, -1] for _ in range(max(img_ids) + 1)]
    current, start = 0, 0
    for i, img_id in enumerate(img_ids):
        if img_id != current:
            index[current] = [start, i - 1]
            current, start = img_id, i
    index[current] = [start, len(img_ids) - 1]
    return index


def _vectorizer(min_df: int, stop_words: str | Collection[str] | None) -> CountVectorizer:
    if stop_words == "none":
        stop_words = None
    elif stop_words is not None and not isinstance(stop_words, str):
        stop_words = list(stop_words)
    return CountVectorizer(min_df=min_df, stop_words=stop_words)


def _vocabulary_words(vectorizer: CountVectorizer) -> list[str]:
    by_id = sorted(vectorizer.vocabulary_.items(), key=lambda item: item[1])
    return [word for word, _ in by_id]


def _encode(
    items: Iterable[tuple[int, str]], vectorizer: CountVectorizer
) -> tuple[np.ndarray, np.ndarray]:
    """Pair rows `[img_id, word_id]` (every in-vocabulary token, in token order, repeats kept),
    and the index walked over them."""
    analyze = vectorizer.build_analyzer()
    vocabulary = vectorizer.vocabulary_
    rows = []
    for img_id, document in items:
        for token in analyze(document):
            if token in vocabulary:
                rows.append([img_id, int(vocabulary[token])])
    index = _walk([img_id for img_id, _ in rows])
    pairs = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return pairs, np.array(index, dtype=np.int64).reshape(-1, 2)


def _document(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        keywords = json.load(f)["tagging"]["keywords"]
    return " ".join(keywords)


def _read_list(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _extract(zip_path: Path, workdir: Path, marker: str) -> Path:
    """Unzip to a fresh folder under `workdir`; return the folder that holds `marker`."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix=f"{zip_path.stem}-", dir=workdir))
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(target)
    if (target / marker).exists():
        return target
    top = [entry for entry in target.iterdir() if entry.name not in JUNK]
    if len(top) == 1 and (top[0] / marker).exists():
        return top[0]
    raise FileNotFoundError(f"{zip_path}: no {marker} at the top or inside one top folder")
