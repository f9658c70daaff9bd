"""The search index of a trained run over a prepared folder: every image's query-independent
part, computed once from the run's weights and memory-mapped when read.

`RUN/index-<split>/` (for a checkpoint file `NAME.pt`: `NAME-index-<split>/` beside it) holds:

- `manifest.json`: the format, the split, the image count, the checkpoint's sha256, the
  prepared folder's fingerprints (its vocabularies', as prepared.json records them, and the
  features' fingerprint the run folder computes for resume), a digest of the split's img_ids,
  and the arrays' names, dtypes and shapes;
- `img_ids.npy` (ascending) and, per modality the model reads, what the dense scoring path
  needs (`kernel.DenseScorer`): the regions' unit keys and values (`region_key.npy`,
  `region_value.npy`, float16 by default: 2 x R x d x 2 bytes an image), the keyword ids and
  counts (`keyword_ids.npy`, `keyword_counts.npy`: the keywords' embeddings are gathered from
  the model at query time), or a fixed-weight mean (`*_pooled.npy`) where the model does not
  attend; for other models (cca) the model's own encoding (`encoded.npy`);
- `shortlist.npy`: a query-independent embedding of each image (float32) for the two-stage
  search's first stage (see `shortlist_embedding`).

An index is written into a staging folder and renamed into place, so a folder of that name is
always a whole index. One whose manifest does not match the run and the folder now (another
checkpoint, features, vocabularies, split or format) is stale: `open_index` rebuilds it (saying
so) or, with `build=False`, refuses it. `train --force` removes it with the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, MissingDependencyError, OutputFolderError
from ..files import atomic_write_json
from ..progress import progress_bar
from .config import BEST
from .data import image_batch
from .kernel import DenseImages, DenseModality, DenseScorer, in_order
from .run_folder import features_fingerprint

log = logging.getLogger(__name__)

INDEX_FORMAT = "amc-data-index/1"
MANIFEST = "manifest.json"
BUILD_BLOCK = 2048  # images encoded and written at a time
READ_BLOCK = 8192  # images scored at a time by default
# The shortlist's approximate first stages: IVF probes at least this many lists, and lists
# holding about IVF_COVER x K images; HNSW keeps at least HNSW_EF candidates.
IVF_PROBES = 32
IVF_COVER = 4
HNSW_EF = 256
DTYPES = ("float16", "float32")


def index_folder(run: str | os.PathLike[str], split: str) -> Path:
    """Where the index of `run` (a run folder or a checkpoint file) over `split` lives."""
    path = Path(run)
    if path.is_dir():
        return path / f"index-{split}"
    return path.parent / f"{path.stem}-index-{split}"


def checkpoint_path(run: str | os.PathLike[str]) -> Path:
    path = Path(run)
    return path / BEST if path.is_dir() else path


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def expected_identity(run: str | os.PathLike[str], prepared: Any, img_ids: np.ndarray) -> dict:
    """What an index of `run` over `img_ids` of `prepared` must record to be used."""
    return {
        "format": INDEX_FORMAT,
        "checkpoint": file_digest(checkpoint_path(run)),
        "fingerprints": {
            **{k: str(v) for k, v in sorted(prepared.fingerprints.items())},
            "features": features_fingerprint(prepared.features),
        },
        "img_ids": "sha256:" + hashlib.sha256(img_ids.astype("<i8").tobytes()).hexdigest(),
    }


def stale_reasons(manifest: dict, expected: dict) -> list[str]:
    """What differs between an index's manifest and what it must record (none: usable)."""
    reasons = []
    for key, what in (
        ("format", "format"),
        ("checkpoint", "checkpoint (the run was trained again)"),
        ("img_ids", "images of the split"),
    ):
        if manifest.get(key) != expected[key]:
            reasons.append(what)
    saved = manifest.get("fingerprints", {})
    for name, value in expected["fingerprints"].items():
        if saved.get(name) != value:
            reasons.append(f"{name} fingerprint")
    return reasons


@dataclass
class ImageIndex:
    """An opened index: its arrays memory-mapped, and how to turn a block of them into what
    the scoring path reads."""

    folder: Path
    manifest: dict[str, Any]
    img_ids: np.ndarray
    arrays: dict[str, np.ndarray]
    model: Any

    def __len__(self) -> int:
        return int(self.img_ids.size)

    @property
    def dense(self) -> bool:
        return "encoded" not in self.arrays

    def block(self, rows: slice | np.ndarray, device: torch.device | str = "cpu") -> Any:
        """Rows `rows` of the index (a slice, or ascending positions) as the scoring path reads
        them: `DenseImages` for the attention family, the model's encoding otherwise."""

        def read(name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
            # The memory map itself for a slice of rows (no copy; float16 stays float16 until
            # the scoring path converts a few images at a time), a copy for chosen rows.
            rows_of = self.arrays[name][rows]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only: never written to
                tensor = torch.from_numpy(rows_of)
            return (tensor if dtype is None else tensor.to(dtype)).to(device)

        if not self.dense:
            return read("encoded", torch.float32)
        return DenseImages(self._visual(read), self._keywords(read))

    def _visual(self, read: Any) -> DenseModality | None:
        if "region_key" in self.arrays:
            key = read("region_key")
            present = torch.ones(key.shape[0], dtype=torch.bool, device=key.device)
            return DenseModality(present=present, key=key, value=read("region_value"))
        if "region_pooled" in self.arrays:
            pooled = read("region_pooled", torch.float32)
            present = torch.ones(pooled.shape[0], dtype=torch.bool, device=pooled.device)
            return DenseModality(present=present, pooled=pooled)
        return None

    def _keywords(self, read: Any) -> DenseModality | None:
        if "keyword_ids" in self.arrays:
            ids = read("keyword_ids").long()
            counts = read("keyword_counts", torch.float32)
            mask = ids > 0
            counts = counts * mask
            return DenseModality(
                present=mask.any(-1),
                ids=ids,  # looked up in the model's table by the scoring path
                mask=None if bool(mask.all()) else mask,
                bias=torch.log(counts.clamp_min(1e-6)),
            )
        if "keyword_pooled" in self.arrays:
            pooled = read("keyword_pooled", torch.float32)
            present = read("keyword_present", torch.bool)
            return DenseModality(present=present, pooled=pooled)
        return None


def open_index(
    run: str | os.PathLike[str],
    prepared: Any,
    split: str,
    img_ids: np.ndarray,
    model: Any,
    *,
    max_keywords: int = 64,
    build: bool = True,
    dtype: str = "float16",
    progress: bool = False,
) -> ImageIndex:
    """The index of `run` over `img_ids` (the split `split` of `prepared`, ascending), built
    when missing, and rebuilt (saying why) when stale; with `build=False` a missing or stale
    index is an `InputError` saying how to build it."""
    folder = index_folder(run, split)
    expected = expected_identity(run, prepared, img_ids)
    manifest_path = folder / MANIFEST
    reasons = ["missing"]
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest, reasons = {}, ["unreadable manifest"]
        else:
            reasons = stale_reasons(manifest, expected)
    if reasons:
        if not build:
            raise InputError(
                f"The search index {folder} is not usable ({', '.join(reasons)}): build it with "
                f"`amc-data index {run} --data {prepared.root} --split {split}`."
            )
        log.info("building the search index %s (%s)", folder, ", ".join(reasons))
        build_index(run, prepared, split, img_ids, model, expected, max_keywords, dtype, progress)
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    arrays = dict(_mapped(folder, manifest))
    ids = np.asarray(arrays.pop("img_ids"))
    return ImageIndex(folder, manifest, ids, arrays, model)


# Memory maps of the indexes opened in this process, by folder and manifest (a rebuilt index
# has another manifest), the most recent last. Why: the first touch of each page of a map costs
# a page fault even when the file is in memory, and a shortlist touches tens of thousands of
# scattered rows a query (measured over a million images: 15,000 rows copied in 267 ms on a
# fresh map, 46 ms on a touched one); searchers of the same index (the search page's, a
# benchmark's) share one map, touched once.
_MAPS: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
_MAPS_KEPT = 4
_MAPS_LOCK = threading.Lock()


def _mapped(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    key = (str(folder.resolve()), json.dumps(manifest, sort_keys=True))
    with _MAPS_LOCK:
        if key not in _MAPS:
            _MAPS[key] = {
                name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in manifest["arrays"]
            }
            while len(_MAPS) > _MAPS_KEPT:
                _MAPS.popitem(last=False)
        _MAPS.move_to_end(key)
        return _MAPS[key]


# long: one pass over the images, writing each array a block at a time
def build_index(
    run: str | os.PathLike[str],
    prepared: Any,
    split: str,
    img_ids: np.ndarray,
    model: Any,
    identity: dict[str, Any],
    max_keywords: int = 64,
    dtype: str = "float16",
    progress: bool = False,
) -> Path:
    """Write the index of `run` over `img_ids` (see the module's docstring), a block of
    `BUILD_BLOCK` images at a time (memory bounded by the block), into a staging folder renamed
    over any older index."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    folder = index_folder(run, split)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise OutputFolderError(
            f"Cannot write the search index of {run} in {folder.parent} ({exc.strerror or exc}):"
            " search it without an index (--exact), or copy the run folder somewhere writable"
            " and search the copy."
        ) from exc
    started = time.perf_counter()
    dense = DenseScorer.of(model.eval())
    files: dict[str, Any] = {}

    def array(name: str, shape: tuple[int, ...], kind: Any) -> np.ndarray:
        if name not in files:
            files[name] = np.lib.format.open_memmap(
                staging / f"{name}.npy", mode="w+", dtype=kind, shape=(len(img_ids), *shape)
            )
        return files[name]

    width = _keyword_width(prepared, img_ids, max_keywords)
    try:
        array("img_ids", (), np.int64)[:] = img_ids
        bar = progress_bar(total=len(img_ids), desc="indexing", unit="image", enabled=progress)
        with bar, torch.no_grad():
            for lo in range(0, len(img_ids), BUILD_BLOCK):
                ids = img_ids[lo : lo + BUILD_BLOCK]
                rows = slice(lo, lo + len(ids))
                batch = image_batch(prepared, ids, max_keywords)
                encoded = model._encode_images(batch)
                if dense is None:
                    if not isinstance(encoded, torch.Tensor):
                        raise InputError(
                            f"The {model.config.kind} model's images cannot be indexed; search "
                            "it with --exact."
                        )
                    values = encoded.float().numpy()
                    array("encoded", values.shape[1:], np.float32)[rows] = values
                    unit = F.normalize(encoded.float(), dim=-1, eps=1e-6).numpy()
                    array("shortlist", unit.shape[1:], np.float32)[rows] = unit
                else:
                    _write_dense(dense.images(encoded), batch, rows, width, dtype, array)
                    embedding = shortlist_embedding(dense.images(encoded)).numpy()
                    array("shortlist", embedding.shape[1:], np.float32)[rows] = embedding
                bar.update(len(ids))
        for mapped in files.values():
            mapped.flush()
        manifest = {
            **identity,
            "split": split,
            "images": len(img_ids),
            "dtype": dtype,
            "max_keywords": int(max_keywords),
            "kind": model.config.kind,
            "arrays": {
                name: {"dtype": str(m.dtype), "shape": list(m.shape)} for name, m in files.items()
            },
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        files.clear()
        atomic_write_json(staging / MANIFEST, manifest)
        _replace_folder(staging, folder)
    except BaseException:
        files.clear()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write_dense(
    images: DenseImages, batch: Any, rows: slice, width: int, dtype: str, array: Any
) -> None:
    visual, keywords = images.visual, images.keywords
    if visual is not None:
        if visual.key is not None:
            if visual.mask is not None:
                raise InputError("An image has padded regions; the index needs every region.")
            for name, tensor in (("region_key", visual.key), ("region_value", visual.value)):
                values = tensor.float().numpy()  # type: ignore[union-attr]
                array(name, values.shape[1:], dtype)[rows] = values
        else:
            values = visual.pooled.float().numpy()  # type: ignore[union-attr]
            array("region_pooled", values.shape[1:], np.float32)[rows] = values
    if keywords is not None:
        if keywords.key is not None:
            ids = np.zeros((rows.stop - rows.start, width), dtype=np.int32)
            counts = np.zeros_like(ids, dtype=np.float32)
            got = batch.keywords.shape[1]
            ids[:, :got] = batch.keywords.numpy()
            counts[:, :got] = batch.keyword_counts.numpy()
            array("keyword_ids", (width,), np.int32)[rows] = ids
            array("keyword_counts", (width,), np.float32)[rows] = counts
        else:
            values = keywords.pooled.float().numpy()  # type: ignore[union-attr]
            array("keyword_pooled", values.shape[1:], np.float32)[rows] = values
            array("keyword_present", (), np.bool_)[rows] = keywords.present.numpy()


def shortlist_embedding(images: DenseImages) -> torch.Tensor:
    """Each image's query-independent embedding for the shortlist (N, d per modality): per
    modality, the unit vector the model would attend to with uniform attention (the mean of
    its values: a keyword seen c times counted c times), or its fixed-weight mean, side by
    side. A query's vector (`shortlist_query`) is its unit q^m times each modality's prior
    weight, so the inner product is the model's score with the attention flattened."""
    parts = []
    for items in (images.visual, images.keywords):
        if items is None:
            continue
        if items.pooled is not None:
            mean = items.pooled.float()
        else:
            assert items.value is not None
            weight = torch.ones(items.value.shape[:2], dtype=torch.float32)
            if items.mask is not None:
                weight = weight * items.mask
            if items.bias is not None:
                weight = weight * items.bias.exp()  # the counts
            weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)
            mean = torch.einsum("nt,ntd->nd", weight, items.value.float())
        parts.append(F.normalize(mean, dim=-1, eps=1e-6))
    return torch.cat(parts, -1)


def _keyword_width(prepared: Any, img_ids: np.ndarray, max_keywords: int) -> int:
    rows = prepared.rows(img_ids)
    indptr = prepared.keywords.indptr
    lengths = indptr[rows + 1] - indptr[rows]
    return max(1, min(max_keywords, int(lengths.max(initial=0))))


def _replace_folder(staging: Path, folder: Path) -> None:
    """`staging` renamed to `folder`; an older `folder` is moved aside first and then deleted,
    so `folder` is at every instant missing, the old index or the new one."""
    old = folder.parent / f".{folder.name}.{os.getpid()}.old.tmp"
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


class Shortlist:
    """The first stage of the two-stage search: a FAISS inner-product index over the index's
    `shortlist` embeddings (built in memory when first asked for). "flat" is exact inner
    product; "ivf" (4 sqrt(N) lists) and "hnsw" (32 links) are approximate, and search as
    widely as K asks: IVF probes lists holding about `IVF_COVER` x K images (at least 32),
    HNSW keeps at least K candidates (efSearch). (With a fixed 32 lists or efSearch 256, a
    shortlist of K = 30,000 over a million images came back with at most a few thousand
    candidates: Recall@10 0.12 and 0.28, measured.)"""

    def __init__(self, index: ImageIndex, kind: str = "flat") -> None:
        try:
            import faiss
        except ImportError as exc:
            raise MissingDependencyError(
                f"faiss is needed for the two-stage search (--shortlist) but could not be "
                f'imported ({exc}). Install the search extra: pip install "amc-data[search]", '
                "or search without --shortlist."
            ) from exc

        embeddings = np.ascontiguousarray(index.arrays["shortlist"], dtype=np.float32)
        n, dim = embeddings.shape
        searcher: Any
        if kind == "ivf" and n >= 1000:
            lists = int(4 * np.sqrt(n))
            quantizer = faiss.IndexFlatIP(dim)
            searcher = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = embeddings[np.random.default_rng(0).permutation(n)[: 64 * lists]]
            searcher.train(sample)
        elif kind == "hnsw":
            searcher = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        else:
            searcher = faiss.IndexFlatIP(dim)
        searcher.add(embeddings)
        self.faiss, self.kind, self.size = searcher, kind, n
        self.lists = int(getattr(searcher, "nlist", 0))  # 0: not an IVF index
        self._quantizer = locals().get("quantizer")  # kept alive with the IVF index

    def query_vectors(self, model: Any, dense: DenseScorer | None, encoded: Any) -> np.ndarray:
        """Each query's vector (Q, dim) for the shortlist's inner product (see
        `shortlist_embedding`): the unit q^m times each modality's prior weight."""
        if dense is None:  # the model's own encoding: its score is the cosine
            return F.normalize(encoded.float(), dim=-1, eps=1e-6).numpy()
        shared = encoded.shared
        modalities = int(model.use_visual) + int(model.use_keywords)
        if modalities == 1:
            return shared.numpy()
        if encoded.prior is not None:
            logits = encoded.prior
            if dense.gate_scale is not None:
                logits = logits * dense.gate_scale
            weights = torch.softmax(logits, -1)
        else:
            weights = torch.full((shared.shape[0], 2), 0.5)
        parts = [shared * weights[:, i : i + 1] for i in range(2)]
        return torch.cat(parts, -1).numpy().astype(np.float32)

    def search(self, vectors: np.ndarray, k: int, workers: int = 1) -> np.ndarray:
        """The rows (Q, k) of the best `k` images of each query (-1 pads past the index's end).
        With `workers` above 1 the queries are shared out among that many threads, each
        searching with one FAISS thread, as the scoring threads do (FAISS's own threads wait
        for each other, which a second busy process stalls: measured over a million images,
        one query 155 ms with two FAISS threads beside another job, 62 ms with one)."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if workers <= 1:
            return self._search(vectors, k)

        def one_thread(chunk: np.ndarray) -> np.ndarray:
            threads = faiss.omp_get_max_threads()  # this thread's setting
            faiss.omp_set_num_threads(1)
            try:
                return self._search(vectors[chunk], k)
            finally:
                faiss.omp_set_num_threads(threads)

        chunks = np.array_split(np.arange(len(vectors)), min(workers, max(1, len(vectors))))
        return np.concatenate(list(in_order(one_thread, chunks, len(chunks))))

    def _search(self, vectors: np.ndarray, k: int) -> np.ndarray:
        import faiss

        params: Any = None
        if self.lists:
            per_list = self.size / self.lists
            params = faiss.SearchParametersIVF()
            params.nprobe = min(self.lists, max(IVF_PROBES, math.ceil(IVF_COVER * k / per_list)))
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in stubs
            params.efSearch = max(HNSW_EF, k)
        return self.faiss.search(vectors, k, params=params)[1]
