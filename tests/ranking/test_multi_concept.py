"""Several concepts an image: the pool loss that keeps teaching once most negatives are beaten
(the mean over the cells that still violate the margin, and the mean over each query's own
violators; the default is half of each), so that a concept the loss stopped needing early still
gets learned; with modality dropout, AMC near the ceiling of the planted several-concept world
(benchmarks/FIDELITY.md, sessions 4, 9, 11 and 12)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amc_data.ranking.loss import pool_hinge_loss  # noqa: E402


def _case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 11, generator=generator) * 0.3
    own = torch.tensor([0, 2, 2, 10, 5, 7])
    positive = torch.zeros(6, 11, dtype=torch.bool)
    positive[torch.arange(6), own] = True
    positive[1, 3] = True  # another positive of the same query: never a negative
    return scores, own, positive


def test_the_violating_reduction_is_the_mean_over_the_cells_that_still_violate() -> None:
    scores, own, positive = _case()
    terms = [
        max(0.0, 0.2 - float(scores[b, own[b]]) + float(scores[b, p]))
        for b, p in itertools.product(range(6), range(11))
        if not positive[b, p]
    ]
    violating = [t for t in terms if t > 0]
    assert 0 < len(violating) < len(terms)
    got = pool_hinge_loss(scores, own, positive, 0.2, reduction="violating")
    assert float(got) == pytest.approx(np.mean(violating))
    # The default is unchanged: the mean over every negative cell.
    assert float(pool_hinge_loss(scores, own, positive, 0.2)) == pytest.approx(np.mean(terms))


def test_a_few_violations_among_many_beaten_negatives_keep_their_full_weight() -> None:
    # One query, one negative still too close among 100 beaten ones: the mean over every cell
    # shrinks its gradient 100-fold, the violating mean does not.
    scores = torch.full((1, 102), -1.0)
    scores[0, 0], scores[0, 1] = 0.5, 0.45
    scores.requires_grad_(True)
    own, positive = torch.tensor([0]), torch.zeros(1, 102, dtype=torch.bool)
    positive[0, 0] = True
    loss = pool_hinge_loss(scores, own, positive, 0.2, reduction="violating")
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.15)
    assert scores.grad is not None
    assert float(scores.grad[0, 1]) == pytest.approx(1.0)
    every = scores.detach().requires_grad_(True)
    pool_hinge_loss(every, own, positive, 0.2).backward()
    assert every.grad is not None
    assert float(every.grad[0, 1]) == pytest.approx(1 / 101)


def test_nothing_violating_is_a_zero_loss_not_a_nan() -> None:
    scores = torch.tensor([[1.0, -1.0, -1.0]])
    positive = torch.tensor([[True, False, False]])
    loss = pool_hinge_loss(scores, torch.tensor([0]), positive, 0.2, reduction="violating")
    assert float(loss) == 0.0


def test_a_violating_weight_adds_that_share_of_the_violating_mean_to_the_mean() -> None:
    # The mix of session 5 (benchmarks/FIDELITY.md): the mean over every negative cell plus
    # `violating_weight` times the mean over those still within the margin.
    scores, own, positive = _case()
    every = float(pool_hinge_loss(scores, own, positive, 0.2))
    violating = float(pool_hinge_loss(scores, own, positive, 0.2, reduction="violating"))
    mixed = pool_hinge_loss(scores, own, positive, 0.2, violating_weight=0.3)
    assert float(mixed) == pytest.approx(every + 0.3 * violating)
    assert float(pool_hinge_loss(scores, own, positive, 0.2, violating_weight=0.0)) == every


def test_the_two_means_differ_by_one_factor_per_batch_so_only_the_step_size_differs() -> None:
    # Within a batch the violating mean is the mean over every cell times (negative cells /
    # violating cells): it weighs every parameter's gradient alike, which is why the benchmark
    # can give it to some parameters only by scaling their gradients (ablate_fidelity.py).
    scores, own, positive = _case()
    grads = []
    for reduction in ("all", "violating"):
        leaf = scores.clone().requires_grad_(True)
        pool_hinge_loss(leaf, own, positive, 0.2, reduction=reduction).backward()
        assert leaf.grad is not None
        grads.append(leaf.grad)
    terms = (0.2 - scores[torch.arange(6), own][:, None] + scores).clamp(min=0) * ~positive
    factor = float((~positive).sum()) / float((terms > 0).sum())
    assert factor > 1
    assert torch.allclose(grads[1], grads[0] * factor)


def _violating_by_query(scores, own, positive) -> list[list[float]]:
    """Each query's hinge terms above 0, computed one cell at a time."""
    rows = []
    for b in range(scores.shape[0]):
        terms = [
            max(0.0, 0.2 - float(scores[b, own[b]]) + float(scores[b, p]))
            for p in range(scores.shape[1])
            if not positive[b, p]
        ]
        rows.append([t for t in terms if t > 0])
    return rows


def test_the_per_query_reduction_averages_each_query_over_its_own_violators_then_the_queries() -> (
    None
):
    scores, own, positive = _case()
    per_query = [np.mean(row) for row in _violating_by_query(scores, own, positive) if row]
    assert 0 < len(per_query) < 6  # some queries have beaten every negative: they do not count
    got = pool_hinge_loss(scores, own, positive, 0.2, reduction="per-query")
    assert float(got) == pytest.approx(np.mean(per_query))
    cells = float(pool_hinge_loss(scores, own, positive, 0.2, reduction="violating"))
    assert float(got) != pytest.approx(cells)


def test_the_mixed_reduction_is_half_the_violating_mean_and_half_the_per_query_mean() -> None:
    scores, own, positive = _case()
    rows = _violating_by_query(scores, own, positive)
    cells = np.mean([t for row in rows for t in row])
    per_query = np.mean([np.mean(row) for row in rows if row])
    got = pool_hinge_loss(scores, own, positive, 0.2, reduction="mixed")
    assert float(got) == pytest.approx(0.5 * cells + 0.5 * per_query)
    assert cells != pytest.approx(per_query)  # the case tells the three means apart


def test_per_query_a_query_with_many_violators_weighs_as_much_as_one_with_one() -> None:
    # Query 0 has one negative too close, query 1 ten (as a query scored with one modality alone
    # has, against the images sharing that modality's concept): over the violating cells query 1
    # carries ten elevenths of the gradient, per query each carries half.
    scores = torch.full((2, 12), -1.0)
    scores[:, 0] = 0.5
    scores[0, 1] = 0.45
    scores[1, 1:11] = 0.45
    own, positive = torch.tensor([0, 0]), torch.zeros(2, 12, dtype=torch.bool)
    positive[:, 0] = True
    shares = {}
    for reduction in ("violating", "per-query"):
        leaf = scores.clone().requires_grad_(True)
        pool_hinge_loss(leaf, own, positive, 0.2, reduction=reduction).backward()
        assert leaf.grad is not None
        pushed = leaf.grad[:, 1:].sum(1)  # each query's gradient on its negatives
        shares[reduction] = (pushed / pushed.sum()).tolist()
    assert shares["violating"] == pytest.approx([1 / 11, 10 / 11])
    assert shares["per-query"] == pytest.approx([0.5, 0.5])
    beaten = torch.tensor([[1.0, -1.0, -1.0]])
    none = pool_hinge_loss(beaten, torch.tensor([0]), positive[:1, :3], 0.2, reduction="per-query")
    assert float(none) == 0.0


# -- trained on the several-concepts world (slow) -----------------------------------------------

RUNS = {
    "amc": {},
    "visual": {"model": "visual"},
    "keyword": {"model": "keyword"},
    "fusion": {"model": "fusion"},
    "cca": {"model": "cca"},
}
# Trainings on a shared 2-core machine: more than the suite's 300 s hang guard allows there.
TRAINING_TIMEOUT = 900


@pytest.fixture(scope="module")
def trained_multi(tmp_path_factory: pytest.TempPathFactory):
    """The several-concepts world (seed 1, the 1K protocol), every run trained on it with
    default options, their evaluation and the world's ceiling."""
    from support import planted_multi

    import amc_data
    from amc_data import TrainConfig
    from amc_data.prepare import load_prepared

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("multi")
    world, out = planted_multi.prepare_world(
        folder, planted_multi.MultiConfig(seed=1, images=(2000, 0, 250, 1000))
    )
    prepared = load_prepared(out)
    runs = []
    for name, options in RUNS.items():
        amc_data.train(prepared, folder / name, TrainConfig(seed=1, device="cpu", **options))
        runs.append(folder / name)
    concepts = planted_multi.write_concepts(world, folder / "concepts.parquet")
    evaluation = amc_data.evaluate(
        runs, prepared, random_baseline=False, resamples=2000, concepts=concepts
    )
    table = {run.name: run for run in evaluation.runs}
    return table, planted_multi.ceiling(world), prepared, folder


def _shares(trained_multi, name: str, **options: object) -> dict[str, float]:
    """Train run `name` on the world with `options` changed from the defaults; its share of the
    ceiling and the default AMC's."""
    import amc_data
    from amc_data import TrainConfig

    table, ceiling, prepared, folder = trained_multi
    amc_data.train(prepared, folder / name, TrainConfig(seed=1, device="cpu", **options))
    evaluation = amc_data.evaluate([folder / name], prepared, random_baseline=False)
    return {
        label: float(got.ranking.ndcg_at(10).mean()) / ceiling["ndcg@10"]
        for label, got in (("amc", table["amc"]), (name, evaluation.runs[0]))
    }


@pytest.mark.slow
@pytest.mark.timeout(TRAINING_TIMEOUT)
def test_amc_beats_every_baseline_and_nears_the_ceiling(trained_multi) -> None:
    from amc_data.evaluation.significance import paired_by_query

    table, ceiling, _, _ = trained_multi
    amc = table["amc"].ranking
    for name in ("visual", "keyword", "fusion", "cca"):
        other = table[name].ranking
        test = paired_by_query(
            amc.query_ids, amc.ndcg_at(10), other.query_ids, other.ndcg_at(10), resamples=2000
        )
        assert test.difference > 0 and test.p_randomization < 0.01, (name, test)
    # A share of what the truth allows, the bar (benchmarks/FIDELITY.md, sessions 9 to
    # 12): with the defaults 0.91-0.96 over the trainings of the benchmark's two worlds, 0.98 on
    # this one at this seed (it has twice their validation images); the defaults before session
    # 9 reached 0.82-0.87, those of sessions 9-11 0.86-0.93.
    share = float(amc.ndcg_at(10).mean()) / ceiling["ndcg@10"]
    assert share >= 0.9, share


@pytest.mark.slow
@pytest.mark.timeout(TRAINING_TIMEOUT)
def test_the_defaults_learn_what_the_mean_over_every_negative_left(trained_multi) -> None:
    # The defaults before session 9 of benchmarks/FIDELITY.md: the pool loss averaged over
    # every negative, every query scored with both modalities, the entropy term at 0.001, none
    # of the options added since (gate routing, the region terms, the keyword target, the
    # gate's warmup): 0.83 of the ceiling on this world at this seed, against 0.98 with the
    # defaults of sessions 9-15.
    # (With only the reduction and modality dropout as then and today's other options: 0.980
    # against 0.986 since session 16, whose attention terms learn most of what the reduction
    # did.) The margin asserted sits below every gap measured since session 9 (0.06-0.15).
    before = {"pool_reduction": "all", "modality_dropout": 0.0, "attention_entropy": 0.001}
    before |= {"gate_routing": 0.0, "region_target": 0.0, "region_mean_hinge": 0.0}
    share = _shares(trained_multi, "amc-before", **before, keyword_target=0.0, gate_warmup=0.0)
    assert share["amc"] >= share["amc-before"] + 0.03, share


@pytest.mark.slow
@pytest.mark.timeout(TRAINING_TIMEOUT)
def test_the_gate_follows_what_a_caption_names(trained_multi) -> None:
    # The gate's visual weight for the captions that name only their image's visual concept
    # against those naming only its textual one (a fifth of the captions): the bar is
    # 0.2 apart. Taught by the ranking loss alone the two stayed 0.02-0.03 apart on the
    # benchmark's worlds; with the gate routing term 0.26-0.32 over six (benchmarks/FIDELITY.md,
    # session 13).
    table, _, _, _ = trained_multi
    metrics = table["amc"].metrics
    visual, textual = (
        metrics["gate_visual_weight_visual_only"],
        metrics["gate_visual_weight_textual_only"],
    )
    assert visual >= textual + 0.2, metrics
    assert textual < metrics["gate_visual_weight_both"] < visual, metrics


@pytest.mark.slow
@pytest.mark.timeout(TRAINING_TIMEOUT)
def test_the_attention_finds_each_concept_where_it_is(trained_multi) -> None:
    # Each concept's median attention mass on its own cells (visual) or keyword (textual), over
    # the test captions naming it (`eval --concepts`). The ranking loss alone left some visual
    # concepts unlearned: on this world at this seed 5 of 100 under 0.3 and a median of 0.75,
    # on the benchmark's two worlds 5-22% under 0.3; with the region terms (the regions' mean
    # value's hinge and the target drawn from the values) 3 of 100 and a median of 0.94 here,
    # 0-6% on the benchmark's worlds (benchmarks/FIDELITY.md, session 15). The bounds sit
    # between the two.
    table, _, _, _ = trained_multi
    concepts = table["amc"].concepts
    for modality, group in concepts.groupby("modality"):
        assert (group["mass"] < 0.3).mean() <= 0.05, (modality, group.nsmallest(8, "mass"))
    visual = concepts[concepts["modality"] == "visual"]["mass"]
    assert visual.median() >= 0.85, visual.describe()
    # A caption here names at most one concept of each modality: each is measured alone.
    assert (concepts["pairs_alone"] == concepts["pairs"]).all()
    measured = concepts["pairs"] > 0
    assert np.allclose(
        concepts.loc[measured, "mass_alone"], concepts.loc[measured, "mass"], equal_nan=True
    )
