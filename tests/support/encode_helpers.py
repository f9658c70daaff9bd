"""Shared pieces of the encode tests: small corpora and checks against the plain reference."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from support import corpus, reference_encode


def small_clickture(
    data_dir: Path, n_dev: int = 400, n_lite: int = 400, seed: int = 0, **kwargs
) -> corpus.ClicktureCorpus:
    """A Clickture corpus in `<data_dir>/clickture`: the head of the dev list (the real one, or
    one of its shape), Lite lines with a folder part, image 0 present in Lite (not first) and
    absent from dev."""
    return corpus.make_clickture(
        data_dir / "clickture",
        corpus.dev_lines(n_dev),
        corpus.lite_lines(n_lite, seed=seed, prefix="lite/"),
        seed=seed,
        **kwargs,
    )


def small_coco(data_dir: Path, per_split: int = 150, seed: int = 0, **kwargs) -> corpus.CocoCorpus:
    counts = dict.fromkeys(corpus.SPLITS, per_split)
    return corpus.make_coco(data_dir / "coco", counts, seed=seed, **kwargs)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def vocab_words(out_dir: Path) -> list[str]:
    lines = (out_dir / "vocab.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "word_id\tword\tdf"
    return [line.split("\t")[1] for line in lines[1:]]


def assert_matches_reference(out_dir: Path, reference: dict) -> None:
    """Every original output equals the reference bit for bit: same bytes as `numpy.save`."""
    assert vocab_words(out_dir) == reference["vocabulary"]
    for name, expected in reference.items():
        if name == "vocabulary":
            continue
        actual = np.load(out_dir / name)
        assert actual.dtype == np.int64, name
        assert actual.shape == expected.shape, name
        assert np.array_equal(actual, expected), name
        assert (out_dir / name).read_bytes() == npy_bytes(expected), name


def reference_for(dataset: str, data_dir: Path, workdir: Path, **kwargs) -> dict:
    function = {
        "clickture": reference_encode.reference_clickture,
        "coco": reference_encode.reference_coco,
    }[dataset]
    result = function(data_dir / dataset, workdir, **kwargs)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def encode_record(out_dir: Path) -> dict:
    """The encode record of `out_dir`."""
    return json.loads((out_dir / "encode.json").read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
