"""The metrics against scikit-learn, scipy, brute-force loops and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import dcg_score, ndcg_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from amc_data.errors import ConfigError, InputError
from amc_data.evaluation.metrics import (
    CHALLENGE_SCALE,
    annotation_ranks,
    caption_ranking,
    ndcg_at_k,
    ranking_metrics,
    recall_at_k,
    retrieval_ranks,
    roc_auc,
    roc_curve,
)
from amc_data.evaluation.significance import (
    compare_to_baseline,
    paired_t_test,
    paired_test,
    randomization_test,
)

KS = (1, 3, 5, 10, 15, 20, 25, 40)


def _random_run(seed: int, queries: int = 40, ties: bool = False, labels=(0, 2, 3)):
    """Rows of a run: varying candidate counts (2..45), shuffled, ids not in order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 46, size=queries)
    query_ids = np.repeat(rng.permutation(10 * queries)[:queries] * 7 + 11, counts)
    scores = rng.normal(size=len(query_ids))
    if ties:
        scores = np.round(scores, 0)  # a handful of distinct values: many ties, across k
    label = rng.choice(labels, size=len(query_ids), p=None)
    order = rng.permutation(len(query_ids))
    return query_ids[order], scores[order], label[order]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_ndcg_and_dcg_match_scikit_learn_per_query(seed, ties):
    query_ids, scores, labels = _random_run(seed, ties=ties, labels=(0, 1, 2, 3, 4))
    result = ranking_metrics(query_ids, scores, labels, ks=KS)
    assert list(result.query_ids) == sorted(set(query_ids))
    for row, query in enumerate(result.query_ids):
        mine = query_ids == query
        gain = (2.0 ** labels[mine] - 1)[None]  # scikit-learn takes the gains as y_true
        score = scores[mine][None]
        assert result.candidates[row] == mine.sum()
        for column, k in enumerate(KS):  # k beyond the candidate count included
            assert result.ndcg[row, column] == pytest.approx(
                ndcg_score(gain, score, k=k), abs=1e-12
            )
            assert result.dcg[row, column] == pytest.approx(
                dcg_score(gain, score, k=k), rel=1e-12, abs=1e-12
            )
        assert result.challenge_dcg[row] == pytest.approx(dcg_score(gain, score, k=25), rel=1e-12)


def test_hand_computed_query():
    # Ranked: label 3 (gain 7), label 0, label 2 (gain 3).
    result = ranking_metrics([1, 1, 1], [0.9, 0.8, 0.1], [3, 0, 2], ks=(1, 2, 3))
    dcg3 = 7 + 0 / math.log2(3) + 3 / math.log2(4)
    ideal3 = 7 + 3 / math.log2(3)
    np.testing.assert_allclose(result.dcg[0], [7, 7, dcg3])
    np.testing.assert_allclose(result.ndcg[0], [1, 7 / ideal3, dcg3 / ideal3])


def test_tied_scores_average_over_orders():
    # Two tied candidates, gains 7 and 0: both orders averaged -> 3.5 at each rank.
    result = ranking_metrics([5, 5], [0.5, 0.5], [3, 0], ks=(1, 2))
    np.testing.assert_allclose(result.dcg[0], [3.5, 3.5 * (1 + 1 / math.log2(3))])
    np.testing.assert_allclose(result.ndcg[0, 0], 0.5)
    # How the rows are ordered in the input changes nothing.
    again = ranking_metrics([5, 5], [0.5, 0.5], [0, 3], ks=(1, 2))
    np.testing.assert_array_equal(result.dcg, again.dcg)


def test_queries_without_relevant_score_zero_and_are_counted():
    result = ranking_metrics([1, 1, 2, 2, 3], [0.1, 0.2, 0.3, 0.1, 0.5], [0, 0, 3, 0, 0], ks=(5,))
    assert result.no_relevant == 2
    np.testing.assert_array_equal(result.ndcg[:, 0], [0.0, 1.0, 0.0])
    summary = result.summary()
    assert summary["ndcg@5"] == pytest.approx(1 / 3)  # counted in the mean, as scikit-learn does
    assert summary["queries_without_relevant"] == 2
    assert summary["queries"] == 3 and summary["pairs"] == 5


def test_challenge_figure_is_about_one_for_25_excellent_results():
    result = ranking_metrics(np.zeros(30, int), -np.arange(30.0), [3] * 25 + [0] * 5)
    assert result.challenge == pytest.approx(1.0, abs=1e-3)
    assert result.summary()["dcg@25_challenge"] == result.challenge
    assert result.challenge == pytest.approx(CHALLENGE_SCALE * result.challenge_dcg.mean())


def test_summary_keys():
    query_ids, scores, labels = _random_run(3)
    summary = ranking_metrics(query_ids, scores, labels).summary()
    assert list(summary) == [
        "ndcg@5",
        "ndcg@10",
        "ndcg@15",
        "ndcg@20",
        "ndcg@25",
        "dcg@25_challenge",
        "auc",
        "queries",
        "pairs",
        "queries_without_relevant",
    ]


def test_any_query_id_type_gives_the_same_values():
    query_ids, scores, labels = _random_run(4, ties=True)
    small = ranking_metrics(query_ids, scores, labels)
    wide = ranking_metrics(query_ids * 10**9, scores, labels)  # the 64-bit sort path
    text = ranking_metrics(np.char.add("q", query_ids.astype(str)), scores, labels)
    narrow = ranking_metrics(query_ids.astype(np.int16) - 300, scores, labels)
    np.testing.assert_array_equal(small.ndcg, wide.ndcg)
    np.testing.assert_array_equal(small.ndcg, narrow.ndcg)
    by_text = dict(zip(text.query_ids, text.ndcg[:, 1], strict=True))
    for query, value in zip(small.query_ids, small.ndcg[:, 1], strict=True):
        assert by_text[f"q{query}"] == value


def test_ndcg_at_k_two_dimensional_with_mask_equals_rows():
    rng = np.random.default_rng(5)
    scores, labels = rng.normal(size=(7, 9)), rng.integers(0, 4, size=(7, 9))
    mask = rng.random((7, 9)) < 0.8
    mask[:, :2] = True
    rows = np.broadcast_to(np.arange(7)[:, None], (7, 9))
    expected = ranking_metrics(rows[mask], scores[mask], labels[mask], ks=(5,)).ndcg.mean()
    assert ndcg_at_k(scores, labels, 5, mask=mask) == pytest.approx(expected)
    assert ndcg_at_k(scores[mask], labels[mask], 5, query_ids=rows[mask]) == pytest.approx(expected)
    gains = 2.0**labels - 1
    assert ndcg_at_k(scores, labels, 5) == pytest.approx(ndcg_score(gains, scores, k=5))


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, np.nan], [1, 0], r"scores\[1\] is nan"),
        ([0.1, np.inf], [1, 0], r"scores\[1\] is inf"),
        ([0.1, 0.2], [1, -1], r"labels\[1\] is -1; labels must be 0 or more"),
        ([0.1, 0.2], [1, 0.5], r"labels\[1\] is 0.5"),
        ([0.1, 0.2], [1, 5000], r"labels\[1\] is 5000; the gain 2\*\*label - 1"),
        ([0.1, 0.2], [1], "lengths are 2, 2 and 1"),
        ([], [], "zero rows"),
    ],
)
def test_bad_inputs_raise_input_error(scores, labels, message):
    with pytest.raises(InputError, match=message):
        ranking_metrics(np.zeros(len(scores), int), scores, labels)


def test_bad_cut_offs_and_relevant_are_config_errors():
    with pytest.raises(ConfigError, match="cut-offs"):
        ranking_metrics([1], [0.5], [1], ks=(0,))
    with pytest.raises(ConfigError, match="relevant must be a finite number >= 1"):
        ranking_metrics([1], [0.5], [1], relevant=0)


# ROC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_and_auc_match_scikit_learn(ties):
    rng = np.random.default_rng(7)
    scores = rng.normal(size=2000)
    if ties:
        scores = np.round(scores, 1)
    relevant = rng.random(2000) < 0.3 + 0.2 * (scores > 0)
    curve = roc_curve(scores, relevant)
    fpr, tpr, thresholds = sk_roc_curve(relevant, scores)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds, thresholds)
    assert roc_auc(scores, relevant) == pytest.approx(roc_auc_score(relevant, scores), abs=1e-12)


def test_auc_of_a_run_uses_the_relevant_threshold():
    query_ids, scores, labels = _random_run(8, ties=True, labels=(0, 1, 2, 3))
    for relevant in (1, 2, 3):
        result = ranking_metrics(query_ids, scores, labels, relevant=relevant)
        assert result.auc == pytest.approx(roc_auc_score(labels >= relevant, scores), abs=1e-12)


def test_auc_hand_computed_and_undefined():
    # Positives 0.8, 0.4; negatives 0.6, 0.4: pairs won 1 + 1 + 0 + 0.5 (tie) of 4.
    assert roc_auc([0.8, 0.6, 0.4, 0.4], [True, False, True, False]) == pytest.approx(0.625)
    assert math.isnan(roc_auc([0.1, 0.2], [True, True]))
    assert math.isnan(ranking_metrics([1, 1], [0.1, 0.2], [0, 0]).auc)


# COCO caption ranking ----------------------------------------------------------------------


def _brute_force_ranks(sims: np.ndarray, caption_image: np.ndarray):
    """VSE++'s loops with a tie-break that puts false items first (ties count against)."""
    annotation = []
    for image in range(sims.shape[0]):
        is_true = caption_image == image
        order = np.lexsort((is_true, -sims[image]))  # by score, false before true on ties
        annotation.append(1 + np.flatnonzero(is_true[order])[0])
    retrieval = []
    for caption in range(sims.shape[1]):
        is_true = np.arange(sims.shape[0]) == caption_image[caption]
        order = np.lexsort((is_true, -sims[:, caption]))
        retrieval.append(1 + np.flatnonzero(is_true[order])[0])
    return np.array(annotation), np.array(retrieval)


@pytest.mark.parametrize("ties", [False, True])
def test_ranks_match_a_brute_force_loop(ties):
    rng = np.random.default_rng(9)
    caption_image = rng.permutation(np.repeat(np.arange(40), rng.integers(1, 7, size=40)))
    sims = rng.normal(size=(40, len(caption_image)))
    sims[caption_image, np.arange(len(caption_image))] += 1.0  # better than chance
    if ties:
        sims = np.round(sims, 0)
    expected_annotation, expected_retrieval = _brute_force_ranks(sims, caption_image)
    for chunk_bytes in (1, 10_000, 1 << 30):  # one row at a time, a few, all at once
        got = annotation_ranks(sims, caption_image, chunk_bytes=chunk_bytes)
        np.testing.assert_array_equal(got, expected_annotation)
        got = retrieval_ranks(sims, caption_image, chunk_bytes=chunk_bytes)
        np.testing.assert_array_equal(got, expected_retrieval)


def test_recall_median_and_mean_rank_as_vse_plus_plus():
    ranks = np.array([1, 2, 5, 6, 10, 11, 30, 1])
    result = recall_at_k(ranks)
    zero_based = ranks - 1  # VSE++ keeps 0-based ranks
    for k in (1, 5, 10):
        assert result.recall[k] == 100.0 * len(np.where(zero_based < k)[0]) / len(zero_based)
    assert result.medr == np.floor(np.median(zero_based)) + 1
    assert result.meanr == zero_based.mean() + 1
    assert result.summary() == {
        "r@1": 25.0,
        "r@5": 50.0,
        "r@10": 75.0,
        "medr": 5.0,
        "meanr": ranks.mean(),
    }


def test_constant_scores_get_the_worst_rank_not_the_best():
    result = caption_ranking(np.zeros((4, 8)), captions_per_image=2, fold_size=4)
    assert result.annotation.recall[1] == 0.0
    np.testing.assert_array_equal(result.annotation.ranks, 7)  # 6 false captions tie, then one
    np.testing.assert_array_equal(result.retrieval.ranks, 4)


def test_folds_average_the_per_fold_results():
    rng = np.random.default_rng(10)
    images, per_image, fold = 30, 3, 10
    sims = rng.normal(size=(images, images * per_image))
    sims[np.repeat(np.arange(images), per_image), np.arange(images * per_image)] += 1.5
    result = caption_ranking(sims, captions_per_image=per_image, fold_size=fold)
    assert (result.full_label, result.fold_label) == ("30", "10")
    assert len(result.folds) == 3
    per_fold = []
    for f in range(3):
        block = sims[f * fold : (f + 1) * fold, f * fold * per_image : (f + 1) * fold * per_image]
        alone = caption_ranking(block, captions_per_image=per_image, fold_size=fold)
        assert not alone.folds  # one fold: nothing to average
        per_fold.append(alone.summary())
    summary = result.summary()
    for key in ("i2t_r@1", "i2t_r@5", "i2t_r@10", "i2t_medr", "i2t_meanr", "t2i_r@1", "t2i_medr"):
        assert summary[f"{key}_10"] == pytest.approx(np.mean([s[f"{key}_10"] for s in per_fold]))
    full = _brute_force_ranks(sims, np.repeat(np.arange(images), per_image))
    np.testing.assert_array_equal(result.annotation.ranks, full[0])
    np.testing.assert_array_equal(result.retrieval.ranks, full[1])


def test_explicit_folds_and_caption_assignment():
    rng = np.random.default_rng(11)
    caption_image = rng.permutation(np.repeat(np.arange(20), 2))
    sims = rng.normal(size=(20, 40))
    folds = np.arange(20) % 2  # interleaved folds
    result = caption_ranking(sims, caption_image, image_folds=folds)
    images = np.flatnonzero(folds == 1)
    captions = np.flatnonzero(folds[caption_image] == 1)
    local = {image: i for i, image in enumerate(images)}
    sub = sims[np.ix_(images, captions)]
    expected = _brute_force_ranks(sub, np.array([local[i] for i in caption_image[captions]]))
    np.testing.assert_array_equal(result.folds[1][0].ranks, expected[0])
    np.testing.assert_array_equal(result.folds[1][1].ranks, expected[1])


def test_coco_protocol_labels():
    sims = np.random.default_rng(12).normal(size=(2000, 2000))
    summary = caption_ranking(
        sims, captions_per_image=1, fold_size=1000, chunk_bytes=1 << 20
    ).summary()
    assert "i2t_r@1_2k" in summary and "t2i_medr_1k" in summary and "i2t_meanr_1k" in summary


def test_caption_ranking_rejects_bad_shapes():
    with pytest.raises(InputError, match="not 5 per image"):
        caption_ranking(np.zeros((3, 14)))
    with pytest.raises(ConfigError, match="do not split into folds of 4"):
        caption_ranking(np.zeros((6, 6)), captions_per_image=1, fold_size=4)
    with pytest.raises(InputError, match="have no caption"):
        caption_ranking(np.zeros((3, 3)), np.array([0, 0, 1]))
    with pytest.raises(InputError, match="NaN or infinite"):
        caption_ranking(np.full((2, 2), np.nan), captions_per_image=1)


# Significance ------------------------------------------------------------------------------


def test_identical_runs_have_p_one():
    values = np.random.default_rng(13).random(50)
    test = paired_test(values, values.copy())
    assert (test.p_randomization, test.p_t, test.difference) == (1.0, 1.0, 0.0)


def test_clearly_different_runs_have_small_p():
    rng = np.random.default_rng(14)
    a = rng.random(200)
    test = paired_test(a + 0.05 + 0.01 * rng.normal(size=200), a, resamples=2000)
    assert test.p_randomization == pytest.approx(1 / 2001)  # nothing as extreme: the floor
    assert test.p_t < 1e-10
    assert test.difference == pytest.approx(0.05, abs=0.01)


def test_t_test_equals_scipy():
    rng = np.random.default_rng(15)
    a, b = rng.random(40), rng.random(40)
    assert paired_t_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)


def test_randomization_matches_exact_enumeration_and_is_seeded():
    rng = np.random.default_rng(16)
    a, b = rng.random(10), rng.random(10) + 0.15
    diff = a - b
    flips = np.array(list(itertools.product((1, -1), repeat=10)))
    exact = np.mean(np.abs(flips @ diff) >= abs(diff.sum()) - 1e-12)
    p = randomization_test(a, b, resamples=20_000, seed=3)
    assert p == pytest.approx(exact, abs=0.01)
    assert randomization_test(a, b, resamples=20_000, seed=3) == p
    assert randomization_test(b, a, resamples=20_000, seed=3) == p  # two-sided


def test_compare_to_baseline_matches_queries_by_id():
    query_ids, scores, labels = _random_run(17)
    order = np.random.default_rng(17).permutation(len(query_ids))
    fewer = query_ids != query_ids[0]  # one query missing from this run
    runs = {
        "base": ranking_metrics(query_ids, scores, labels),
        "better": ranking_metrics(query_ids, scores + 3 * labels, labels),
        "shuffled": ranking_metrics(query_ids[order], scores[order], labels[order]),
        "fewer": ranking_metrics(query_ids[fewer], scores[fewer], labels[fewer]),
    }
    tests = compare_to_baseline(runs, resamples=1000)
    assert set(tests) == {"better", "shuffled", "fewer"}
    assert tests["shuffled"].p_randomization == 1.0
    assert tests["fewer"].n == len(runs["base"].query_ids) - 1
    assert tests["fewer"].p_randomization == 1.0
    assert tests["better"].difference > 0 and tests["better"].p_t < 0.01
    with pytest.raises(ConfigError, match="baseline 'nope'"):
        compare_to_baseline(runs, baseline="nope")


def test_paired_by_query_matches_numeric_and_text_query_ids():
    from amc_data.evaluation.significance import paired_by_query

    numeric = np.array([3, 1, 2])
    text = np.array(["1", "2", "3"], dtype=object)
    test = paired_by_query(
        numeric, np.array([0.3, 0.1, 0.2]), text, np.array([0.1, 0.2, 0.3]), resamples=200
    )
    assert test.n == 3 and test.difference == pytest.approx(0.0)


@pytest.mark.parametrize("ties", [False, True])
def test_linear_gain_is_the_label_and_leaves_the_challenge_figure_alone(ties):
    query_ids, scores, labels = _random_run(3, ties=ties, labels=(0, 1, 2, 3))
    exp = ranking_metrics(query_ids, scores, labels, ks=KS)
    linear = ranking_metrics(query_ids, scores, labels, ks=KS, gain="linear")
    assert linear.gain == "linear" and exp.gain == "exp"
    for row, query in enumerate(linear.query_ids):
        mine = query_ids == query
        for column, k in enumerate(KS):
            assert linear.ndcg[row, column] == pytest.approx(
                ndcg_score(labels[mine][None].astype(float), scores[mine][None], k=k), abs=1e-12
            )
    np.testing.assert_allclose(linear.challenge_dcg, exp.challenge_dcg, rtol=1e-12)
    assert not np.allclose(linear.ndcg, exp.ndcg)  # graded labels: the gains differ
    with pytest.raises(ConfigError, match=r"^gain must be one of exp, linear"):
        ranking_metrics(query_ids, scores, labels, gain="log")


def test_caption_keys_name_the_protocol_stably_and_keep_the_old_size_keys():
    from amc_data.evaluation.metrics import caption_ranking

    rng = np.random.default_rng(0)
    sims = rng.normal(size=(10, 50))
    summary = caption_ranking(sims, fold_size=5).summary()
    for direction in ("i2t", "t2i"):
        for metric in ("r@1", "r@5", "r@10", "medr", "meanr"):
            for old, new in (("10", "pool"), ("5", "folds")):
                assert (
                    summary[f"{direction}_{metric}_{new}"] == summary[f"{direction}_{metric}_{old}"]
                )
    for protocol in ("pool", "folds"):
        six = [summary[f"{d}_r@{k}_{protocol}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
        assert summary[f"rsum_{protocol}"] == pytest.approx(sum(six))
