"""Pool negatives drawn by caption word (`pool_word_share`): a share of a pool batch's draws
taken among the training images whose training captions share a word with the batch's captions.
Off, the pool is the one drawn before the option existed; on, it is as reproducible, it resumes
exactly, and each such draw does share a word with the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from support.interrupted import resumes_to_the_whole_run  # noqa: E402

from amc_data import load_prepared, synth  # noqa: E402
from amc_data.errors import ConfigError  # noqa: E402
from amc_data.ranking.checkpoint import read_checkpoint  # noqa: E402
from amc_data.ranking.config import TrainConfig  # noqa: E402
from amc_data.ranking.data import TrainingPairs, train_loader  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402

# The pool drawn for items 0, 7, ..., 217 at epoch 2 (seed 3, 40 draws) of the synth world below
# by amc-data before `pool_word_share` existed: its sorted feature rows.
POOL_BEFORE = [
    23, 28, 29, 31, 33, 50, 57, 59, 67, 70, 74, 82, 84, 86, 102, 103, 114, 120, 126, 130, 131, 156,
    158, 164, 168, 181, 183, 189, 203, 205, 207, 208, 210, 211, 216, 217, 224, 225, 231, 242, 249,
    255, 257, 262, 271, 276, 279, 292, 295, 307, 318, 320, 328, 336, 339, 343, 349, 352, 386, 388,
    389, 391, 393, 394, 398,
]  # fmt: skip
INDICES = np.arange(0, 7 * 32, 7)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("word-pool") / "data"
    synth(out, seed=5, images=400, queries=120)
    return out


def _pairs(data: Path, share: float, seed: int = 3) -> TrainingPairs:
    return TrainingPairs(
        load_prepared(data), negatives=0, pool_negatives=40, seed=seed, pool_word_share=share
    )


def test_off_the_pool_is_the_one_drawn_before_the_option(data: Path) -> None:
    rows, _ = _pairs(data, 0.0).pool_rows(2, INDICES)
    assert rows.tolist() == POOL_BEFORE


def test_on_the_uniform_draws_are_the_first_of_the_pool_before_and_the_rest_go_by_word(
    data: Path,
) -> None:
    before = _pairs(data, 0.0).pool_draws(2, INDICES)
    pairs = _pairs(data, 0.5)
    draws = pairs.pool_draws(2, INDICES)
    assert pairs.pool_word_draws == 20 and draws.size == 40
    assert np.array_equal(draws[:20], before[:20])
    assert not np.array_equal(draws[20:], before[20:])


def test_the_draws_by_word_are_reproducible_per_seed_epoch_and_batch(data: Path) -> None:
    pairs = _pairs(data, 0.5)
    again = _pairs(data, 0.5)  # another instance (a loader worker, a resumed run)
    draws = pairs.pool_draws(2, INDICES)
    assert np.array_equal(draws, again.pool_draws(2, INDICES))
    assert not np.array_equal(draws[20:], pairs.pool_draws(3, INDICES)[20:])
    assert not np.array_equal(draws[20:], _pairs(data, 0.5, seed=4).pool_draws(2, INDICES)[20:])
    other = INDICES + 1  # same first item's stream, other captions
    assert not np.array_equal(draws[20:], pairs.pool_draws(2, other)[20:])


def test_every_draw_by_word_is_an_image_whose_training_captions_share_a_word_with_the_batch(
    data: Path,
) -> None:
    prepared = load_prepared(data)
    pairs = _pairs(data, 1.0)
    judged = prepared.judgments[prepared.judgments["label"] > 0]
    train_queries = prepared.split_queries("train")["query_id"]
    judged = judged[judged["query_id"].isin(train_queries)]
    words_of = dict(
        zip(
            train_queries,
            (set(t.tolist()) for t in prepared.query_token_ids(train_queries.to_numpy())),
            strict=True,
        )
    )
    images_of_word: dict[int, set[int]] = {}
    for query, image in zip(judged["query_id"], judged["img_id"], strict=True):
        for word in words_of[query]:
            images_of_word.setdefault(word, set()).add(int(image))
    pool_ids = np.sort(prepared.split_images("train"))
    for epoch in range(3):
        batch = INDICES + epoch
        batch_words = set().union(*(words_of[q] for q in pairs.query_ids[batch]))
        # Words whose captions describe one image are never drawn (that image is their own).
        drawable = {w for w in batch_words if len(images_of_word.get(w, ())) >= 2}
        shared = set().union(*(images_of_word[w] for w in drawable))
        drawn = pool_ids[pairs.pool_draws(epoch, batch)]
        assert drawn.size == 40 and set(drawn.tolist()) <= shared
        # The pool's rows are those images: positions in the train split, read as feature rows.
        rows, _ = pairs.pool_rows(epoch, batch)
        assert set(prepared.rows(drawn).tolist()) <= set(rows.tolist())


def test_a_word_every_caption_holds_is_drawn_less_than_a_rare_one(data: Path) -> None:
    pairs = _pairs(data, 1.0)
    index = pairs._word_images
    assert index is not None
    images = np.diff(index.indptr)
    # Indexed by word id + 1, as the batch's tokens hold them.
    common = int(images.argmax())
    rare = int(np.flatnonzero(images >= 2)[images[images >= 2].argmin()])
    assert images[common] >= 10 * images[rare]  # so the rare word takes >= 10/11 of the draws
    bits = np.arange(0, 2**32, 2**22, dtype=np.uint64)  # 1,024 evenly spread draws
    drawn = index.draw(np.array([common, rare]), bits, bits[::-1].copy())
    rare_images = set(index.positions[index.indptr[rare] : index.indptr[rare + 1]].tolist())
    assert np.isin(drawn, list(rare_images)).mean() > 0.88


def test_the_loader_passes_the_share_and_a_loader_of_pairs_refuses_it(data: Path) -> None:
    loader = train_loader(data, batch_size=16, pool_negatives=40, seed=3, pool_word_share=0.25)
    assert loader.dataset.pool_word_draws == 10  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"pool_word_share 0\.25 draws part of a pool batch"):
        train_loader(data, batch_size=16, seed=3, pool_word_share=0.25)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "half", True])
def test_a_bad_share_is_a_config_error_naming_it(data: Path, value: object) -> None:
    with pytest.raises(ConfigError, match="pool_word_share"):
        TrainConfig(pool_word_share=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pool_word_share"):
        _pairs(data, value)  # type: ignore[arg-type]


def test_the_share_goes_with_the_pool_loss_only() -> None:
    with pytest.raises(ConfigError, match=r"pool_word_share 0\.5 goes with loss pool"):
        TrainConfig(loss="pairs", pool_word_share=0.5)


def test_the_cli_flag_sets_it_and_refuses_a_bad_value(data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert "--pool-word-share" in result.output
    result = CliRunner().invoke(
        cli, ["train", str(data), "--out", str(tmp_path / "run"), "--pool-word-share", "2"]
    )
    assert result.exit_code == 2 and "--pool-word-share" in result.output


FAST = {"epochs": 3, "batch_size": 32, "dim": 16, "device": "cpu", "pool_word_share": 0.5}


def test_a_run_with_draws_by_word_resumes_to_the_uninterrupted_weights(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = resumes_to_the_whole_run(
        data, tmp_path, TrainConfig(**FAST), monkeypatch, "pool_hinge_loss", epochs=3
    )
    # And the draws by word are part of what was trained: without them the weights differ.
    train(data, tmp_path / "off", TrainConfig(**{**FAST, "pool_word_share": 0.0}))
    off = read_checkpoint(tmp_path / "off" / "last.pt")["model"]
    assert not all(torch.equal(whole[k], off[k]) for k in whole)
