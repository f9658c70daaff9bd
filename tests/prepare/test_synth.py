"""`amc-data synth`: a prepared folder that `load_prepared` accepts, byte-identical for a seed,
whose keywords went through the real encoder, and whose planted structure is there: ranking each
query with the modality its intent names is right, the other modality ranks the decoys first, and
a fixed mix of the two falls in between."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

import amc_data
import amc_data.prepare.synth as synth_module
from amc_data.errors import ConfigError
from amc_data.prepare import load_prepared
from amc_data.prepare.queries import query_analyzer
from amc_data.prepare.synth import (
    CONCEPTS,
    DISTRACTORS,
    FILLERS,
    TEXTUAL_WORDS,
    VISUAL_WORDS,
    SynthConfig,
    generate_world,
    synth,
)

SMALL: dict[str, Any] = {"images": 480, "queries": 120}


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
    }


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synth folder with the default settings (made once for the module)."""
    return synth(tmp_path_factory.mktemp("synth") / "data").out


# -- the folder --------------------------------------------------------------------------------
def test_the_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, default_run):
    again = synth(tmp_path / "again").out
    assert _digests(default_run) == _digests(again)
    assert sorted(_digests(again)) == sorted(
        [
            "features.npy",
            "feature_ids.npy",
            "images.parquet",
            "judgments.parquet",
            "keywords.npz",
            "prepared.json",
            "queries.parquet",
            "query_vocab.tsv",
            "vocab.tsv",
        ]
    )
    other = synth(tmp_path / "other", seed=1).out
    differ = {k for k, v in _digests(other).items() if _digests(again)[k] != v}
    assert {"features.npy", "keywords.npz", "judgments.parquet", "prepared.json"} <= differ


# The default folder's data files as synth has always written them for seed 0 (the Parquet
# files and keywords.npz are left out: their bytes carry the writing library's version).
DEFAULT_DIGESTS = {
    "feature_ids.npy": "ce578f9d1e65cb71b414a1479da99008410c84c02f3254bd28e8e9574e910671",
    "features.npy": "d0daf01b0d9b1f8539bd5b41bf3f6e8a10a86223282efdfa4e8173a62190d2f4",
    "query_vocab.tsv": "13b9a14c53364ce27b41f8280f23962c3995d3d2e567caab3a9c575bd2e89abc",
    "vocab.tsv": "4488527a265ec4582b93fad74193ac07278fae7d72a63c6d002ed25ee4e77768",
}


def test_a_seed_gives_the_dataset_it_always_gave(default_run):
    digests = _digests(default_run)
    assert {name: digests[name] for name in DEFAULT_DIGESTS} == DEFAULT_DIGESTS
    info = json.loads((default_run / "prepared.json").read_text())
    # the folder holds the only name of its features file, as it does of a copy
    assert info["features"]["stored"] == "copy" and "source" not in info["features"]
    assert (default_run / "features.npy").stat().st_nlink == 1
    assert not list(default_run.parent.glob(".data.synth-*"))  # the work folder is gone


def test_the_world_is_the_same_at_any_chunk_size_in_memory_or_on_disk(tmp_path):
    """Features drawn a row at a time, or 7 rows at a time into a file, are those drawn in one
    piece, and so is everything drawn after them (tags, queries, judgments)."""
    config = SynthConfig(seed=4, **SMALL)
    whole = generate_world(config, chunk_rows=config.images)
    by_row = generate_world(config, chunk_rows=1)
    on_disk = generate_world(config, tmp_path / "features.npy", chunk_rows=7)
    assert isinstance(on_disk.features, np.memmap) and not on_disk.features.flags.writeable
    for world in (by_row, on_disk):
        assert world.features.dtype == np.float16
        assert np.array_equal(world.features, whole.features)
        assert world.keywords == whole.keywords
        assert world.queries.equals(whole.queries)
        assert world.judgments.equals(whole.judgments)
    assert np.array_equal(np.load(tmp_path / "features.npy"), whole.features)


def test_the_features_go_to_disk_without_the_tensor_ever_in_memory(tmp_path):
    """A world whose features are 79 MB of float16 (315 MB as float64, the precision they are
    drawn in) is drawn with less than the float16 tensor allocated at any moment: the rows go
    to the file a chunk at a time, so the memory does not grow with the images."""
    config = SynthConfig(seed=5, images=2400, queries=60, regions=8, dim=2048)
    size = config.images * config.regions * config.dim * 2
    tracemalloc.start()
    try:
        world = generate_world(config, tmp_path / "features.npy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size, f"peak {peak / 1e6:.0f} MB for {size / 1e6:.0f} MB of features"
    assert world.features.shape == (2400, 8, 2048)
    assert np.isfinite(world.features[-1]).all()


def test_without_hard_links_the_features_are_copied_to_the_same_bytes(
    tmp_path, default_run, monkeypatch
):
    """On a file system that makes no hard links (some network ones), the same folder."""
    monkeypatch.setattr(synth_module, "_can_hardlink", lambda folder: False)
    copied = synth(tmp_path / "copied").out
    assert _digests(copied) == _digests(default_run)


def test_load_prepared_accepts_it_with_the_recorded_counts_and_intents(default_run):
    data = load_prepared(default_run, check_features=True)
    assert data.info["source"] == "synth"
    assert "created" not in data.info  # the bytes depend on the settings alone
    assert data.features.shape == (2000, 8, 32)
    assert data.features.dtype == np.float16
    counts = data.info["counts"]
    assert counts["images"] == {"train": 1400, "val": 300, "test": 300}
    assert counts["queries"] == {"train": 360, "val": 120, "test": 120}
    assert set(data.queries.columns) == {"query_id", "query", "split", "intent"}
    for split in ("train", "val", "test"):
        intents = data.split_queries(split)["intent"].value_counts()
        assert intents["visual"] == intents["textual"]
    assert data.info["options"]["seed"] == 0
    assert len(data.info["synth"]["concepts"]) == 24
    # train queries: positives (label 1) among train images; val/test: 30 graded candidates
    judged = data.judgments.merge(data.queries, on="query_id")
    train = judged[judged["split"] == "train"]
    assert set(train["label"]) == {1}
    assert (train.groupby("query_id").size() == 8).all()
    held_out = judged[judged["split"] != "train"]
    assert set(held_out["label"]) == {0, 3}
    assert (held_out.groupby("query_id").size() == 30).all()
    assert (held_out[held_out["label"] == 3].groupby("query_id").size() == 8).all()


def test_keywords_went_through_the_encoder(tmp_path):
    """Each image's keyword row counts the analyzer's tokens of its tags that the encoder kept
    (min_df), with capitalised names folded and stop words dropped."""
    config = SynthConfig(seed=2, **SMALL)
    world = generate_world(config)
    data = load_prepared(synth(tmp_path / "s", config=config).out)
    analyzer = query_analyzer()
    document_frequency = Counter(
        word for tags in world.keywords for word in set(analyzer(" ".join(tags)))
    )
    expected_vocabulary = sorted(w for w, df in document_frequency.items() if df >= config.min_df)
    assert data.vocabulary == expected_vocabulary
    assert {"the", "and", "of"}.isdisjoint(data.vocabulary)
    index = {word: i for i, word in enumerate(data.vocabulary)}
    rows = data.rows(world.img_ids)
    for i in range(0, config.images, 7):
        row = data.keywords[rows[i]]
        found = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        tokens = Counter(t for t in analyzer(" ".join(world.keywords[i])) if t in index)
        assert found == {index[t]: c for t, c in tokens.items()}
    without = np.flatnonzero(world.named < 0)
    assert data.keywords[rows[without]].nnz == 0
    # every concept's name is a keyword the models can see
    assert set(world.names) <= set(data.vocabulary)


def test_the_vocabularies_keep_their_roles_apart():
    analyzer = query_analyzer()
    query_words = set(analyzer(" ".join(CONCEPTS + VISUAL_WORDS + TEXTUAL_WORDS + FILLERS)))
    assert query_words.isdisjoint(analyzer(" ".join(DISTRACTORS)))
    for words in (CONCEPTS, VISUAL_WORDS, TEXTUAL_WORDS, FILLERS):
        assert all(analyzer(word) == [word] for word in words)  # real words, no stop words


def test_queries_say_their_intent():
    world = generate_world(SynthConfig(**SMALL))
    analyzer = query_analyzer()
    for text, intent, concept in world.queries[["query", "intent", "concept"]].itertuples(
        index=False
    ):
        words = set(analyzer(text))
        assert world.names[concept] in words
        says_visual, says_textual = (
            bool(words & set(VISUAL_WORDS)),
            bool(words & set(TEXTUAL_WORDS)),
        )
        assert (says_visual, says_textual) == (intent == "visual", intent == "textual")


# -- the planted structure ---------------------------------------------------------------------
def _ndcg_at_10(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.lexsort((np.arange(scores.size), -scores))  # ties: judgment order
    gains = (2.0 ** labels[order][:10]) - 1
    ideal = (2.0 ** np.sort(labels)[::-1][:10]) - 1
    discounts = 1 / np.log2(np.arange(2, 12))
    return float((gains * discounts[: gains.size]).sum() / (ideal * discounts[: ideal.size]).sum())


@pytest.fixture(scope="module")
def oracle_scores(default_run) -> dict[str, dict[str, float]]:
    """Mean test NDCG@10 per intent of simple oracles that know each concept's look: visual
    (best region's cosine with the look), visual with mean pooling, keyword (the query's words
    among the image's keywords), and a fixed 50/50 mix of visual and keyword."""
    data = load_prepared(default_run)
    world = generate_world(SynthConfig())
    analyzer = query_analyzer()
    index = {word: i for i, word in enumerate(data.vocabulary)}
    features = np.asarray(data.features, dtype=np.float64)
    unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
    keywords = (data.keywords > 0).astype(np.float64).tocsc()
    test = data.judgments.merge(data.split_queries("test"), on="query_id")
    concept_of = dict(zip(world.queries["query_id"], world.queries["concept"], strict=True))
    results: dict[str, dict[str, list[float]]] = {}
    for (query_id, text, intent), group in test.groupby(["query_id", "query", "intent"]):
        rows = data.rows(group["img_id"].to_numpy())
        look = world.looks[concept_of[query_id]]
        visual = (unit[rows] @ look).max(axis=1)
        pooled = unit[rows].mean(axis=1) @ look
        words = [index[w] for w in analyzer(text) if w in index]
        keyword = np.asarray(keywords[rows][:, words].sum(axis=1)).ravel()
        mixed = 0.5 * visual / visual.max() + 0.5 * keyword / max(keyword.max(), 1)
        labels = group["label"].to_numpy()
        for name, scores in (
            ("visual", visual),
            ("visual_mean_pooled", pooled),
            ("keyword", keyword),
            ("fixed_mix", mixed),
        ):
            results.setdefault(name, {}).setdefault(intent, []).append(_ndcg_at_10(scores, labels))
    return {
        name: {intent: float(np.mean(v)) for intent, v in by_intent.items()}
        for name, by_intent in results.items()
    }


def test_the_modality_the_intent_names_ranks_well(oracle_scores):
    assert oracle_scores["visual"]["visual"] > 0.95
    assert oracle_scores["keyword"]["textual"] > 0.95


def test_the_other_modality_ranks_the_decoys_first(oracle_scores):
    assert oracle_scores["visual"]["textual"] < 0.3
    assert oracle_scores["keyword"]["visual"] < 0.3


def test_a_fixed_mix_of_both_modalities_loses_to_choosing_by_intent(oracle_scores):
    by_intent = (oracle_scores["visual"]["visual"] + oracle_scores["keyword"]["textual"]) / 2
    mixed = (oracle_scores["fixed_mix"]["visual"] + oracle_scores["fixed_mix"]["textual"]) / 2
    assert mixed < by_intent - 0.2


def test_mean_pooling_dilutes_a_concept_that_attention_finds(oracle_scores):
    # Even knowing the look exactly, the mean of the regions ranks worse than the best region.
    assert oracle_scores["visual_mean_pooled"]["visual"] < oracle_scores["visual"]["visual"] - 0.05


# -- settings and the command line -------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"images": 100}, "images must be >= 240"),
        ({"concepts": 1}, "concepts must be a whole number from 2 to 40, not 1"),
        ({"seed": -1}, "seed must be a whole number >= 0"),
        ({"regions": True}, "regions must be a whole number"),
        ({"background": 1.5}, "background must be a finite number from 0 to 1, not 1.5"),
        ({"candidates": 10}, "candidates must be >= 16"),
        ({"distractors": (5, 2)}, "distractors must be a range"),
    ],
)
def test_bad_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**settings)


def test_synth_is_a_public_function_even_after_its_module_is_imported():
    code = (
        "import amc_data.prepare.synth, amc_data, inspect; "
        "print(inspect.isfunction(amc_data.synth))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert amc_data.synth is synth


def test_cli_writes_refuses_to_overwrite_and_replaces_with_force(tmp_path):
    runner = CliRunner()
    out = tmp_path / "synth"
    args = ["synth", str(out), "--images", "480", "--queries", "60", "--seed", "3"]
    result = runner.invoke(cli, [*args, "--regions", "4", "--dim", "16"])
    assert result.exit_code == 0, result.output
    assert f"synth: prepared into {out}" in result.output
    data = load_prepared(out)
    assert data.features.shape == (480, 4, 16)
    assert data.info["options"]["seed"] == 3
    assert len(data.queries) == 60

    again = runner.invoke(cli, args)
    assert again.exit_code == 1
    assert "already holds a prepared dataset" in again.output and "--force" in again.output
    assert load_prepared(out).features.shape == (480, 4, 16)  # untouched

    forced = runner.invoke(cli, [*args, "--force", "--quiet"])
    assert forced.exit_code == 0 and forced.output == ""
    assert load_prepared(out).features.shape == (480, 8, 32)
    assert json.loads((out / "prepared.json").read_text())["options"]["regions"] == 8


def test_cli_reports_bad_settings_without_a_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "s"), "--images", "50"])
    assert result.exit_code == 2
    assert "images must be >= 240" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_a_disk_too_small_for_the_features_is_one_clear_error(tmp_path):
    """Writing past the room there is (here a file size limit, as a full disk refuses it) ends
    with one line that names the folder and the space the features need, and leaves nothing."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))\n"
        "from amc_data_cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    out = tmp_path / "s"
    result = subprocess.run(
        [sys.executable, "-c", code, "synth", str(out)], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert f"Cannot write the synthetic dataset {out}" in result.stderr
    assert "the features alone take 1 MiB" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".s.synth-*"))


# -- sizes checked before anything is allocated ---------------------------------------------------
def test_sizes_that_cannot_fit_in_memory_are_refused_before_allocating(tmp_path):
    """200 million images once died in numpy ('Unable to allocate 14.9 GiB ...') after the
    work had started; now the estimate is weighed against the memory there is, up front."""
    from amc_data.machine import available_memory

    config = SynthConfig(images=200_000_000)
    assert config.memory_estimate() > 100 * 2**30
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            synth(tmp_path / "huge", config=config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the world was drawn
    message = str(caught.value)
    assert caught.value.parameter == "images" and "\n" not in message
    assert message.startswith("images (200,000,000) x regions (8) need about ")
    assert f"{config.memory_estimate() / 2**30:,.1f} GiB of memory" in message
    if available_memory() is not None:
        assert "GiB available. Choose fewer images, regions or dimensions." in message
    assert not (tmp_path / "huge").exists() and not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"x dim \(1,000,000,000\) need about"):
        generate_world(SynthConfig(dim=10**9))  # one row of features past the memory
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "s"), "--images", "200000000"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: --images (200,000,000) x")
    assert "Traceback" not in result.output


def test_sizes_that_cannot_fit_on_the_disk_are_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))
    config = SynthConfig(images=480, regions=64, dim=64)  # 4 MB of features, 1 MB free
    with pytest.raises(
        ConfigError,
        match=r"^images \(480\) x regions \(64\) x dim \(64\) need "
        r"about 4 MiB of disk; .* has 1 MiB free\. Choose fewer images, regions or dimensions, "
        r"or an OUT on a disk with room\.$",
    ) as caught:
        synth(tmp_path / "s", config=config)
    assert caught.value.parameter == "images" and not list(tmp_path.iterdir())


def test_the_memory_estimate_covers_what_synth_takes():
    """The estimate is of the peak synth reaches: at least what the default takes and growing
    with the images and their regions (measured peaks: 167 MB for the default, 296 MB for 60,000
    images, 300 MB for 20,000 images of 64 regions, the libraries included)."""
    small = SynthConfig().memory_estimate()
    assert 160 << 20 < small < 256 << 20
    assert SynthConfig(images=60_000).memory_estimate() > 296 << 20
    assert SynthConfig(images=20_000, regions=64).memory_estimate() > 300 << 20
