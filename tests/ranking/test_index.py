"""The search index: scores from it are the model's (float16 within a stated tolerance, the
top-k the same wherever scores are apart by more than it), it is rebuilt or refused when the
run or the folder changes, it belongs to the run folder, and batch search writes TREC runs."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import amc_data  # noqa: E402
from amc_data.errors import InputError  # noqa: E402
from amc_data.ranking.index import index_folder, open_index  # noqa: E402
from amc_data.ranking.run_folder import foreign_entries  # noqa: E402
from amc_data.ranking.scoring import score_matrix  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

FAST = {"epochs": 1, "batch_size": 32, "dim": 16, "device": "cpu"}
# float16 keys and values: a score moves by at most this much (measured: about 1e-4 here).
FLOAT16_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("index")
    data = root / "data"
    amc_data.synth(data, seed=5, images=300, queries=60)
    train(data, root / "amc", TrainConfig(**FAST))
    return data, root / "amc"


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.mark.parametrize("kind", ["amc", "fusion", "cca"])
def test_index_scores_are_the_models_and_the_top_k_agrees(
    world: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    data, amc = world
    run = amc if kind == "amc" else tmp_path / kind
    if kind != "amc":
        train(data, run, TrainConfig(**FAST, model=kind))
    prepared = amc_data.load_prepared(data)
    searcher = amc_data.Searcher(run, prepared, split="all")
    queries = prepared.split_queries("test")["query_id"].to_numpy()[:8]
    texts = prepared.split_queries("test")["query"].tolist()[:8]
    expected = score_matrix(
        amc_data.load_model(run, prepared).model, prepared, queries, searcher.img_ids
    )
    results = searcher.search_many(texts, top=20)
    for _row, text, result in zip(expected, texts, results, strict=True):
        _, _, batch = searcher.read_query(text)
        got = searcher.scores(batch)
        np.testing.assert_allclose(got, searcher.scores(batch), rtol=0)  # deterministic
        exact = amc_data.Searcher(run, prepared, split="all", exact=True).scores(batch)
        assert np.abs(got - exact).max() <= FLOAT16_TOLERANCE
        # Wherever the exact scores are apart by more than the tolerance, the order agrees.
        ids = [hit.img_id for hit in result.hits]
        positions = np.searchsorted(searcher.img_ids, ids)
        for a, b in itertools.pairwise(positions):
            assert exact[a] >= exact[b] - 2 * FLOAT16_TOLERANCE
        best = np.sort(exact)[::-1][19]
        missing = set(np.flatnonzero(exact > best + 2 * FLOAT16_TOLERANCE)) - set(positions)
        assert not missing
    assert len(expected) == len(results)


def test_a_float32_index_gives_the_full_scans_scores(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    data, amc = world
    run = _copy_run(amc, tmp_path)
    prepared = amc_data.load_prepared(data)
    result = CliRunner().invoke(
        cli, ["index", str(run), "--data", str(data), "--dtype", "float32", "-q"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "index-test" / "manifest.json").read_text())
    assert manifest["dtype"] == "float32"
    text = prepared.split_queries("test")["query"].iloc[0]
    indexed = amc_data.Searcher(run, prepared)
    _, _, batch = indexed.read_query(text)
    exact = amc_data.Searcher(run, prepared, exact=True).scores(batch)
    np.testing.assert_allclose(indexed.scores(batch), exact, rtol=1e-5, atol=1e-6)


def test_a_stale_index_is_rebuilt_or_refused(world: tuple[Path, Path], tmp_path: Path) -> None:
    data, amc = world
    run = _copy_run(amc, tmp_path)
    prepared = amc_data.load_prepared(data)
    searcher = amc_data.Searcher(run, prepared)
    assert searcher.index is not None  # built on first use
    folder = index_folder(run, "test")
    built = (folder / "manifest.json").read_text()
    model, ids = searcher.loaded.model, searcher.img_ids
    # Unchanged: used as it is.
    open_index(run, prepared, "test", ids, model, build=False)
    # Another checkpoint: refused without build, rebuilt with it.
    train(data, run, TrainConfig(**{**FAST, "seed": 9}), force=True)
    assert not folder.exists()  # train --force removed it with the run
    searcher = amc_data.Searcher(run, prepared)
    assert searcher.index is not None
    assert (folder / "manifest.json").read_text() != built
    saved = json.loads((folder / "manifest.json").read_text())
    saved["checkpoint"] = "sha256:0"
    (folder / "manifest.json").write_text(json.dumps(saved))
    with pytest.raises(InputError, match=r"not usable \(checkpoint"):
        open_index(run, prepared, "test", ids, searcher.loaded.model, build=False)
    open_index(run, prepared, "test", ids, searcher.loaded.model)  # rebuilt
    # Other features in the folder: refused, then rebuilt.
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    features = np.load(copy / "features.npy", mmap_mode="r+")
    features[0] += 1
    features.flush()
    del features
    moved = amc_data.load_prepared(copy)
    with pytest.raises(InputError, match="features fingerprint"):
        open_index(run, moved, "test", ids, searcher.loaded.model, build=False)
    open_index(run, moved, "test", ids, searcher.loaded.model)
    assert (
        json.loads((folder / "manifest.json").read_text())["fingerprints"]["features"]
        != (saved["fingerprints"]["features"])
    )


def test_searchers_of_one_index_share_its_memory_map_and_a_rebuilt_index_gets_its_own(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    """The pages of an index's memory map are touched once per process, not once per
    searcher (a shortlist's scattered rows are slow to read on a fresh map); the map never
    outlives the index it was made of."""
    data, amc = world
    run = _copy_run(amc, tmp_path)
    prepared = amc_data.load_prepared(data)
    first, second = amc_data.Searcher(run, prepared), amc_data.Searcher(run, prepared)
    assert first.index is not None and second.index is not None
    assert first.index.arrays["region_key"] is second.index.arrays["region_key"]
    text = prepared.split_queries("test")["query"].iloc[0]
    before = first.search(text, top=5)
    train(data, run, TrainConfig(**{**FAST, "seed": 4}), force=True)  # another checkpoint
    rebuilt = amc_data.Searcher(run, prepared)
    assert rebuilt.index is not None
    assert rebuilt.index.arrays["region_key"] is not first.index.arrays["region_key"]
    _, _, batch = rebuilt.read_query(text)
    exact = amc_data.Searcher(run, prepared, exact=True).scores(batch)
    assert np.abs(rebuilt.scores(batch) - exact).max() <= FLOAT16_TOLERANCE  # the new weights'
    assert [h.score for h in rebuilt.search(text, top=5).hits] != [h.score for h in before.hits]


def test_an_index_belongs_to_the_run_folder(world: tuple[Path, Path], tmp_path: Path) -> None:
    data, amc = world
    run = _copy_run(amc, tmp_path)
    assert amc_data.Searcher(run, data, split="all").index is not None
    assert (run / "index-all" / "manifest.json").is_file()
    assert foreign_entries(run) == []
    (run / "index-all" / "notes.txt").write_text("mine")
    assert foreign_entries(run) == ["index-all"]


def test_batch_search_writes_a_trec_run_sorted_with_ties_by_img_id(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    data, amc = world
    prepared = amc_data.load_prepared(data)
    texts = prepared.split_queries("test")["query"].tolist()[:3]
    queries = tmp_path / "queries.tsv"
    queries.write_text(f"a1\t{texts[0]}\n\nb2\t{texts[1]}\nzzyzx qwerty\n{texts[2]}\n")
    out = tmp_path / "run.trec"
    result = CliRunner().invoke(
        cli,
        [
            "search",
            str(amc),
            "--data",
            str(data),
            "--queries",
            str(queries),
            "--trec",
            str(out),
            "--top",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Query 4 skipped" in result.output
    lines = [line.split() for line in out.read_text().splitlines()]
    assert {line[0] for line in lines} == {"a1", "b2", "5"}
    for qid in ("a1", "b2", "5"):
        rows = [line for line in lines if line[0] == qid]
        assert [int(r[3]) for r in rows] == list(range(1, 8))
        assert all(r[1] == "Q0" and r[5] == amc.name and len(r) == 6 for r in rows)
        keys = [(-float(r[4]), int(r[2])) for r in rows]
        assert keys == sorted(keys)
    searcher = amc_data.Searcher(amc, data)
    one = searcher.search(texts[1], top=7)
    assert [int(r[2]) for r in lines if r[0] == "b2"] == [h.img_id for h in one.hits]


def test_the_shortlist_at_every_image_is_the_exact_search(world: tuple[Path, Path]) -> None:
    pytest.importorskip("faiss")
    data, amc = world
    prepared = amc_data.load_prepared(data)
    text = prepared.split_queries("test")["query"].iloc[0]
    full = amc_data.Searcher(amc, prepared, split="all").search(text, top=10)
    for kind in ("flat", "hnsw"):
        short = amc_data.Searcher(
            amc, prepared, split="all", shortlist=len(prepared.images), shortlist_index=kind
        ).search(text, top=10)
        assert [h.img_id for h in short.hits] == [h.img_id for h in full.hits]


def test_an_index_that_cannot_be_written_is_one_clear_error(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    """A run folder the user may not write to (another user's, a read-only mount): the index
    cannot be built there, and the error says so in one line with what to do instead."""
    from amc_data.errors import OutputFolderError

    data, amc = world
    text = amc_data.load_prepared(data).split_queries("test")["query"].iloc[0]
    run = _copy_run(amc, tmp_path)
    run.chmod(0o555)
    try:
        probe = run / "probe"
        try:
            probe.mkdir()
        except PermissionError:
            pass
        else:  # the superuser writes anywhere
            probe.rmdir()
            pytest.skip("this user can write to a read-only folder")
        with pytest.raises(OutputFolderError, match=r"--exact.*writable") as caught:
            amc_data.Searcher(run, data, split="all").search(text)
        assert "\n" not in str(caught.value) and str(run) in str(caught.value)
        result = CliRunner().invoke(cli, ["search", str(run), "--data", str(data), text])
        assert result.exit_code == 1 and "--exact" in result.output
        assert "Traceback" not in result.output
        exact = CliRunner().invoke(cli, ["search", str(run), "--data", str(data), "--exact", text])
        assert exact.exit_code == 0, exact.output
    finally:
        run.chmod(0o755)


# measured here: IVF 0.91-0.93 (with 32 lists probed: 0.31-0.34, padded with -1); HNSW 1.0
# (with efSearch 256: 0.92-0.93)
@pytest.mark.parametrize(("kind", "share"), [("ivf", 0.85), ("hnsw", 0.98)])
def test_an_approximate_shortlist_searches_as_widely_as_k_asks(kind: str, share: float) -> None:
    """A shortlist of K images from IVF or HNSW holds K real candidates, nearly all of the
    exact inner product's best K."""
    pytest.importorskip("faiss")
    from types import SimpleNamespace

    from amc_data.ranking.index import Shortlist

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((20_000, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries = embeddings[:5] + 0.1 * rng.standard_normal((5, 16)).astype(np.float32)
    index = SimpleNamespace(arrays={"shortlist": embeddings})
    k = 2_000
    exact = Shortlist(index, "flat").search(queries, k)  # type: ignore[arg-type]
    approximate = Shortlist(index, kind).search(queries, k)  # type: ignore[arg-type]
    assert (approximate >= 0).all()
    for found, best in zip(approximate, exact, strict=True):
        assert len(set(found.tolist()) & set(best.tolist())) >= share * k


def test_a_shortlist_shared_out_among_threads_is_the_shortlist_of_one() -> None:
    """`search --threads N` shares a batch's first stage out among N threads, one FAISS thread
    each: the same candidates, in the queries' order."""
    pytest.importorskip("faiss")
    from types import SimpleNamespace

    from amc_data.ranking.index import Shortlist

    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((5_000, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    shortlist = Shortlist(SimpleNamespace(arrays={"shortlist": embeddings}), "flat")  # type: ignore[arg-type]
    one = shortlist.search(queries, 50)
    for workers in (2, 3, 10):
        np.testing.assert_array_equal(shortlist.search(queries, 50, workers), one)
    np.testing.assert_array_equal(shortlist.search(queries[:1], 50, 2), one[:1])


def test_a_shortlist_scored_by_threads_side_by_side_gives_the_same_scores(
    world: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shortlist's rows are scored in blocks the threads share: the blocks depend on the
    rows only, so the ranking and every score are the same to the bit whatever the threads."""
    pytest.importorskip("faiss")
    import amc_data.ranking.search as search_module

    monkeypatch.setattr(search_module, "SHARED_BLOCK_ROWS", 16)  # 8 blocks of 200 rows
    data, amc = world
    prepared = amc_data.load_prepared(data)
    texts = prepared.split_queries("test")["query"].tolist()[:4]
    one = amc_data.Searcher(amc, prepared, split="all", shortlist=200, threads=1)
    many = amc_data.Searcher(amc, prepared, split="all", shortlist=200, threads=3)
    for a, b in zip(one.search_many(texts, top=50), many.search_many(texts, top=50), strict=True):
        assert [(h.img_id, h.score) for h in a.hits] == [(h.img_id, h.score) for h in b.hits]
