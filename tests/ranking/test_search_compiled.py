"""`search --compile`: the index search's kernel for a few queries compiled into one pass over
the index. Its scores are the eager kernel's to float32 rounding (both read the same stored
keys and values), for one query and for several, with images that lack keywords among them;
a compiler that fails leaves the eager kernel, with a warning; `auto` compiles from the size
the docs give."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import amc_data  # noqa: E402
from amc_data.ranking.kernel import DenseScorer  # noqa: E402
from amc_data.ranking.search_config import COMPILE_IMAGES  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

FAST = {"epochs": 1, "batch_size": 32, "dim": 16, "device": "cpu"}
# torch.compile's CPU code is C++, built by the compiler torch finds (CXX, or g++ and the like).
compiler = pytest.mark.skipif(
    not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++"))),
    reason="no C++ compiler for torch.compile on this machine",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compiled")
    data = root / "data"
    amc_data.synth(data, seed=8, images=300, queries=60, regions=4)
    train(data, root / "amc", TrainConfig(**FAST))
    return data, root / "amc"


def _texts(data: Path, count: int) -> list[str]:
    return amc_data.load_prepared(data).split_queries("test")["query"].tolist()[:count]


@compiler
def test_compiled_search_gives_the_eager_kernels_scores_and_ranking(
    world: tuple[Path, Path],
) -> None:
    data, run = world
    eager = amc_data.Searcher(run, data, split="all", compile="off")
    compiled = amc_data.Searcher(run, data, split="all", compile="on")
    texts = _texts(data, 3)
    for text in texts:  # one query at a time, as `search QUERY` and the search page score
        _, _, batch = eager.read_query(text)
        np.testing.assert_allclose(
            compiled.scores(batch), eager.scores(batch), rtol=1e-5, atol=1e-6
        )
    assert compiled.dense is not None and compiled.dense.one_pass is not None
    assert eager.dense is not None and eager.dense.one_pass is None
    # Several queries in one block (`search --queries` scores a few together).
    for a, b in zip(
        compiled.search_many(texts, top=300), eager.search_many(texts, top=300), strict=True
    ):
        got = {hit.img_id: hit.score for hit in a.hits}
        want = {hit.img_id: hit.score for hit in b.hits}
        assert got.keys() == want.keys()
        ids = sorted(want)
        np.testing.assert_allclose(
            [got[i] for i in ids], [want[i] for i in ids], rtol=1e-5, atol=1e-6
        )
        # The order agrees wherever two scores are apart by more than float32 rounding.
        ranked = [hit.img_id for hit in a.hits]
        for first, second in itertools.pairwise(ranked):
            assert want[first] >= want[second] - 1e-5


@compiler
def test_images_without_keywords_are_scored_as_the_eager_kernel_scores_them(
    world: tuple[Path, Path],
) -> None:
    """A block where some images have no keywords (their modality weighs nothing) and the
    keyword slots are ragged: the masks the compiled form must honour."""
    data, run = world
    searcher = amc_data.Searcher(run, data, split="all", compile="off")
    index = searcher.index
    assert index is not None and searcher.dense is not None
    block = index.block(slice(0, len(index)))
    keywords = block.keywords
    ids = keywords.ids.clone()
    ids[::3] = 0  # every third image: no keyword at all
    ids[1::3, ids.shape[1] // 2 :] = 0  # and another third: half of its slots empty
    mask = ids > 0
    block = dataclasses.replace(
        block,
        keywords=dataclasses.replace(
            keywords,
            ids=ids,
            mask=mask,
            present=mask.any(-1),
            bias=keywords.bias.masked_fill(~mask, float(np.log(1e-6))),
        ),
    )
    model = searcher.loaded.model
    eager = DenseScorer.of(model)
    compiled = DenseScorer.of(model)
    assert eager is not None and compiled is not None
    compiled.compile_one_pass()
    for text in _texts(data, 2):
        _, _, batch = searcher.read_query(text)
        queries = eager.queries(model._encode_query(batch))
        want = eager.score(queries, block)
        got = compiled.score(queries, block)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert compiled.one_pass is not None  # compiled, not fallen back


def test_a_compiler_that_fails_leaves_the_eager_kernel_with_a_warning(
    world: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data, run = world
    inductor = pytest.importorskip("torch._inductor.config")
    # No C++ compiler to be found, and nothing compiled earlier taken from torch's caches.
    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(Path("/nonexistent/c++"))))
    monkeypatch.setattr(inductor, "force_disable_caches", True)
    torch._dynamo.reset()
    eager = amc_data.Searcher(run, data, split="all", compile="off")
    compiled = amc_data.Searcher(run, data, split="all", compile="on")
    text = _texts(data, 1)[0]
    _, _, batch = eager.read_query(text)
    with caplog.at_level(logging.WARNING, logger="amc_data.ranking.kernel"):
        got = compiled.scores(batch)
    np.testing.assert_array_equal(got, eager.scores(batch))  # the eager kernel, to the bit
    assert compiled.dense is not None and compiled.dense.one_pass is None
    assert "compiling the one-pass search kernel failed" in caplog.text
    assert "eager kernel instead" in caplog.text
    torch._dynamo.reset()


def test_auto_compiles_from_the_documented_size_on_the_cpu_only(
    world: tuple[Path, Path],
) -> None:
    data, run = world
    auto = amc_data.Searcher(run, data, split="all")
    assert auto.config.compile == "auto"
    assert not auto.compiles(COMPILE_IMAGES - 1) and auto.compiles(COMPILE_IMAGES)
    assert amc_data.Searcher(run, data, compile="on").compiles(1)
    assert not amc_data.Searcher(run, data, compile="off").compiles(10 * COMPILE_IMAGES)
    # The world's 300 images: auto leaves the eager kernel.
    auto.search(_texts(data, 1)[0])
    assert auto.dense is not None and auto.dense.one_pass is None


def test_auto_compiles_a_searcher_not_a_single_query(
    world: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiling takes about as long as it saves on one query over a million images: `auto`
    compiles a `Searcher` (many queries: the search page) above the size, never `search()`'s
    single query (the search command's)."""
    import amc_data.ranking.search as search_module

    data, run = world
    monkeypatch.setattr(search_module, "COMPILE_IMAGES", 1)  # this small world counts as large
    compiled: list[DenseScorer] = []
    original = DenseScorer.compile_one_pass

    def recorded(self: DenseScorer) -> None:
        compiled.append(self)
        original(self)

    monkeypatch.setattr(DenseScorer, "compile_one_pass", recorded)
    text = _texts(data, 1)[0]
    amc_data.search(run, data, text, split="all")
    out = CliRunner().invoke(cli, ["search", str(run), text, "--data", str(data), "-q"])
    assert out.exit_code == 0, out.output
    assert compiled == []
    many = amc_data.Searcher(run, data, split="all")
    many.search(text)
    assert compiled == [many.dense]


def test_the_cli_takes_compile_and_refuses_a_value_it_does_not_know(
    world: tuple[Path, Path],
) -> None:
    data, run = world
    text = _texts(data, 1)[0]
    args = ["search", str(run), text, "--data", str(data), "--split", "all", "--json"]
    off = CliRunner().invoke(cli, [*args, "--compile", "off"])
    assert off.exit_code == 0, off.output
    bad = CliRunner().invoke(cli, [*args, "--compile", "sometimes"])
    assert bad.exit_code == 2
    assert "sometimes" in bad.output and "auto" in bad.output and "off" in bad.output
