"""The ranking models: shapes, masks, gradients, the closed-form CCA, learning a query-dependent
modality choice, configuration and word-vector loading."""

from __future__ import annotations

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch")

from amc_data.errors import ConfigError, InputError, TrainingError  # noqa: E402
from amc_data.ranking.batch import ImageBatch, QueryBatch, TrainBatch  # noqa: E402
from amc_data.ranking.build import build_model  # noqa: E402
from amc_data.ranking.config import MODELS as KINDS  # noqa: E402
from amc_data.ranking.model import Attention, ModelConfig, RankingModel  # noqa: E402
from amc_data.ranking.word_vectors import load_word_vectors  # noqa: E402

VQ, VK, D = 20, 30, 12

# (kind, ablation options): every model the CLI can build.
VARIANTS = [
    ("amc", {}),
    ("amc", {"intra": False}),
    ("amc", {"inter": False}),
    ("visual", {}),
    ("keyword", {}),
    ("fusion", {}),
    ("cca", {}),
]
SGD_VARIANTS = [v for v in VARIANTS if v[0] != "cca"]
IDS = [kind + "".join(f"-no-{k}" for k in extra) for kind, extra in VARIANTS]


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster than two that wait for a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_images(*shape: int, regions: int = 5, keywords: int = 6, seed: int = 0) -> ImageBatch:
    g = torch.Generator().manual_seed(seed)
    region_mask = torch.rand(*shape, regions, generator=g) > 0.3
    region_mask[..., 0] = True
    keyword_mask = torch.rand(*shape, keywords, generator=g) > 0.3
    keyword_mask[..., :1] = True
    ids = torch.randint(1, VK + 1, (*shape, keywords), generator=g) * keyword_mask
    counts = torch.randint(1, 4, (*shape, keywords), generator=g).float() * keyword_mask
    return ImageBatch(
        regions=torch.randn(*shape, regions, D, generator=g),
        region_mask=region_mask,
        keywords=ids,
        keyword_counts=counts,
        keyword_mask=keyword_mask,
    )


def make_queries(count: int, length: int = 4, seed: int = 1) -> QueryBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(count, length, generator=g) > 0.3
    mask[:, 0] = True
    return QueryBatch(torch.randint(1, VQ + 1, (count, length), generator=g) * mask, mask)


def model_for(kind: str, extra: dict, **options) -> RankingModel:
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind, query_vocab_size=VQ, keyword_vocab_size=VK, feature_dim=D, dim=16, **extra
    )
    model = build_model(dataclasses.replace(config, **options))
    if model.closed_form:
        model.fit_closed_form([TrainBatch(make_queries(64, seed=5), make_images(64, 2, seed=6))])
    return model.eval()


def expand(images: ImageBatch, count: int) -> ImageBatch:
    """A pool (N, ...) as every query's own candidates (count, N, ...)."""
    return images.map(lambda t: t.unsqueeze(0).expand(count, *t.shape))


def replace_images(images: ImageBatch, **changes) -> ImageBatch:
    return dataclasses.replace(images, **changes)


@pytest.mark.parametrize(("kind", "extra"), VARIANTS, ids=IDS)
def test_forward_score_pool_and_explain_shapes(kind, extra):
    model = model_for(kind, extra)
    query, images = make_queries(3), make_images(3, 4)
    assert model(query, images).shape == (3, 4)
    assert model.score_pool(make_queries(5), make_images(7)).shape == (5, 7)
    if kind == "cca":
        with pytest.raises(ConfigError, match="no attention"):
            model.explain(query, images)
        return
    attention = model.explain(query, images)
    assert isinstance(attention, Attention)
    assert attention.scores.shape == (3, 4)
    assert attention.region_weights.shape == (3, 4, 5)
    assert attention.keyword_weights.shape == (3, 4, 6)
    assert attention.modality_weights.shape == (3, 4, 2)
    torch.testing.assert_close(attention.scores, model(query, images))


@pytest.mark.parametrize(("kind", "extra"), VARIANTS, ids=IDS)
def test_score_pool_agrees_with_forward(kind, extra):
    model = model_for(kind, extra)
    query, pool = make_queries(6), make_images(9)
    expected = model(query, expand(pool, 6))  # (Q, N) through the pairs path
    torch.testing.assert_close(model.score_pool(query, pool), expected)
    model.pool_chunk_elements = 1  # one query at a time: chunking changes nothing
    torch.testing.assert_close(model.score_pool(query, pool), expected)


def test_score_pool_projects_each_image_once():
    model = model_for("amc", {})
    model.pool_chunk_elements = 1  # queries scored one at a time
    rows = []
    for layer in (model.region_key, model.region_value, model.keywords):
        layer.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1]))
    model.score_pool(make_queries(5), make_images(7))
    assert rows == [(7, 5), (7, 5), (7,)]  # (N, R) regions twice (key, value), (N,) keyword lists


def test_state_dict_round_trip_keeps_scores():
    model = model_for("amc", {})
    copy = build_model(model.config)
    copy.load_state_dict(model.state_dict())
    query, images = make_queries(3), make_images(3, 4)
    torch.testing.assert_close(copy.eval()(query, images), model(query, images))


@pytest.mark.parametrize(("kind", "extra"), VARIANTS, ids=IDS)
def test_padded_regions_and_keywords_change_nothing(kind, extra):
    model = model_for(kind, extra)
    query, images = make_queries(3), make_images(3, 4)
    before = model(query, images)
    noise = torch.randn_like(images.regions) * 100
    regions = torch.where(images.region_mask.unsqueeze(-1), images.regions, noise)
    keywords = torch.where(
        images.keyword_mask, images.keywords, torch.randint_like(images.keywords, 1, VK + 1)
    )
    counts = torch.where(
        images.keyword_mask, images.keyword_counts, torch.full_like(images.keyword_counts, 7.0)
    )
    after = model(
        query, replace_images(images, regions=regions, keywords=keywords, keyword_counts=counts)
    )
    torch.testing.assert_close(after, before)
    if kind != "cca":
        attention = model.explain(query, images)
        assert (attention.region_weights[~images.region_mask] == 0).all()
        assert (attention.keyword_weights[~images.keyword_mask] == 0).all()


@pytest.mark.parametrize(("kind", "extra"), SGD_VARIANTS, ids=IDS[:-1])
def test_image_without_keywords_is_finite_with_finite_gradients(kind, extra):
    model = model_for(kind, extra).train()
    query, images = make_queries(2), make_images(2, 3)
    empty = torch.zeros_like(images.keyword_mask)
    images = replace_images(
        images,
        keywords=torch.zeros_like(images.keywords),
        keyword_counts=torch.zeros_like(images.keyword_counts),
        keyword_mask=empty,
    )
    scores = model(query, images)
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name
    attention = model.eval().explain(query, images)
    assert (attention.keyword_weights == 0).all()
    if kind != "keyword":  # the image itself is all that is left to look at
        torch.testing.assert_close(attention.modality_weights[..., 0], torch.ones(2, 3))
    else:  # nothing at all to match: a neutral score, not NaN
        torch.testing.assert_close(scores, torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_image_with_nothing_scores_zero_without_nan():
    model = model_for("amc", {})
    images = make_images(1, 2)
    images = ImageBatch(
        regions=images.regions,
        region_mask=torch.zeros_like(images.region_mask),
        keywords=torch.zeros_like(images.keywords),
        keyword_counts=torch.zeros_like(images.keyword_counts),
        keyword_mask=torch.zeros_like(images.keyword_mask),
    )
    attention = model.explain(make_queries(1), images)
    torch.testing.assert_close(attention.scores, torch.zeros(1, 2))
    for weights in (
        attention.region_weights,
        attention.keyword_weights,
        attention.modality_weights,
    ):
        assert (weights == 0).all()


def test_zero_width_keyword_tensors_work():
    model = model_for("amc", {})
    images = make_images(2, 3, keywords=0)
    assert torch.isfinite(model(make_queries(2), images)).all()
    assert torch.isfinite(model.score_pool(make_queries(2), make_images(4, keywords=0))).all()


@pytest.mark.parametrize(("kind", "extra"), SGD_VARIANTS, ids=IDS[:-1])
def test_every_parameter_receives_a_gradient(kind, extra):
    model = model_for(kind, extra).train()
    scores = model(make_queries(4), make_images(4, 3))
    (scores[:, 0] - scores[:, 1:].mean(1)).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_modality_weights_sum_to_one_and_keyword_repeats_count():
    model = model_for("amc", {})
    attention = model.explain(make_queries(3), make_images(3, 4))
    torch.testing.assert_close(attention.modality_weights.sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(attention.region_weights.sum(-1), torch.ones(3, 4))

    # Two distinct keywords: seen 3 times, the first gets 3 times the weight it gets seen once.
    images = make_images(1, 1, keywords=2)
    images = replace_images(
        images,
        keywords=torch.tensor([[[4, 9]]]),
        keyword_mask=torch.ones(1, 1, 2, dtype=torch.bool),
        keyword_counts=torch.tensor([[[1.0, 1.0]]]),
    )
    query = make_queries(1)
    once = model.explain(query, images).keyword_weights[0, 0]
    thrice = model.explain(
        query, replace_images(images, keyword_counts=torch.tensor([[[3.0, 1.0]]]))
    ).keyword_weights[0, 0]
    torch.testing.assert_close(thrice[0] / thrice[1], 3 * once[0] / once[1])


def test_ablations_use_fixed_or_mean_weights():
    images, query = make_images(2, 3), make_queries(2)
    fixed = model_for("amc", {"inter": False}).explain(query, images).modality_weights
    torch.testing.assert_close(fixed, torch.full((2, 3, 2), 0.5))
    mean = model_for("amc", {"intra": False}).explain(query, images).region_weights
    expected = images.region_mask.float() / images.region_mask.sum(-1, keepdim=True)
    torch.testing.assert_close(mean, expected)
    visual = model_for("visual", {}).explain(query, images).modality_weights
    torch.testing.assert_close(visual, torch.tensor([1.0, 0.0]).expand(2, 3, 2))


def test_the_gate_reads_the_query_alone_unless_told_to_read_the_content():
    query = make_queries(1).map(lambda t: t.expand(3, *t.shape[1:]))
    images = make_images(3, 4, seed=3)  # every image has regions and keywords
    weights = model_for("amc", {}).explain(query, images).modality_weights
    # One query, four different images: the same modality weights, from the query alone.
    torch.testing.assert_close(weights, weights[:, :1].expand_as(weights))
    assert not torch.allclose(weights[0, 0], torch.full((2,), 0.5))  # scaled, not flat
    content = model_for("amc", {"gate_content": True}).explain(query, images).modality_weights
    assert not torch.allclose(content, content[:, :1].expand_as(content))


def test_attention_scale_rate_starts_at_the_same_scale_and_learns_that_many_times_faster():
    query, images = make_queries(4), make_images(4, 3)
    moved, first = {}, {}
    for rate in (1.0, 10.0):
        extra = {"attention_scale": 2.0, "attention_scale_rate": rate, "dropout": 0.0}
        model = model_for("amc", extra).train()
        log_scale = model.attention_log_scale
        start = float(log_scale.detach() * rate)
        assert start == pytest.approx(math.log(2.0))  # the same sharpness at the start
        scores = model(query, images)
        first[rate] = scores.detach()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        scores.sum().backward()
        optimizer.step()
        moved[rate] = float(log_scale.detach() * rate) - start
    # The same weights score the same: the forward pass reads the scale, not the stored value.
    torch.testing.assert_close(first[10.0], first[1.0])
    # Adam's first step moves every weight by about lr: the scale's log, stored divided by the
    # rate, moves `rate` times as far.
    assert moved[1.0] != 0
    assert moved[10.0] == pytest.approx(10 * moved[1.0], rel=1e-3)


def test_the_region_attention_has_its_own_scale_learned_at_its_own_rate():
    query, images = make_queries(4), make_images(4, 3)
    extra = {"attention_scale": 2.0, "attention_scale_rate": 10.0, "dropout": 0.0}
    model = model_for("amc", {**extra, "region_attention_scale_rate": 1.0}).train()
    region, keyword = model.region_log_scale, model.attention_log_scale
    assert float(region.detach()) == pytest.approx(math.log(2.0))  # both start at 2
    assert float(keyword.detach() * 10) == pytest.approx(math.log(2.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(query, images).sum().backward()
    optimizer.step()
    region_moved = float(region.detach()) - math.log(2.0)
    keyword_moved = float(keyword.detach() * 10) - math.log(2.0)
    # Adam's first step moves each stored value by about lr: the region's log scale at the
    # common pace, the keyword's (stored divided by its rate) ten times as far.
    assert region_moved != 0
    assert abs(keyword_moved) == pytest.approx(10 * abs(region_moved), rel=1e-3)
    # Each attention reads its own scale: a sharper region scale sharpens the region weights
    # and leaves the keyword weights as they were.
    model.eval()
    before = model.explain(query, images)
    with torch.no_grad():
        region.add_(2.0)
    after = model.explain(query, images)
    torch.testing.assert_close(after.keyword_weights, before.keyword_weights)
    assert after.region_weights.amax(-1).mean() > before.region_weights.amax(-1).mean()


def test_a_region_scale_rate_of_0_shares_the_keyword_attention_s_scale():
    shared = model_for("amc", {"region_attention_scale_rate": 0.0, "attention_scale": 3.0})
    assert not hasattr(shared, "region_log_scale")
    own = model_for("amc", {"attention_scale": 3.0})
    # The same weights and the same scale at the start: the same scores and weights.
    own_state = {k: v for k, v in own.state_dict().items() if k != "region_log_scale"}
    shared.load_state_dict(own_state)
    query, images = make_queries(4), make_images(4, 3)
    explained = shared.explain(query, images), own.explain(query, images)
    for part in dataclasses.fields(Attention):
        torch.testing.assert_close(*(getattr(one, part.name) for one in explained))
    with torch.no_grad():
        shared.attention_log_scale.add_(0.5)  # the one scale moves both attentions
    moved = shared.explain(query, images)
    assert not torch.allclose(moved.region_weights, own.explain(query, images).region_weights)
    assert not torch.allclose(moved.keyword_weights, own.explain(query, images).keyword_weights)


@pytest.mark.parametrize(("kind", "extra"), SGD_VARIANTS[:3], ids=IDS[:3])
def test_bf16_autocast_gives_float32_scores_close_to_float32(kind, extra):
    model = model_for(kind, extra)
    query, images = make_queries(3), make_images(3, 4)
    exact = model(query, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(query, images)
        pool = model.score_pool(query, make_images(5))
    assert scores.dtype == pool.dtype == torch.float32
    torch.testing.assert_close(scores, exact, atol=0.03, rtol=0)


def test_wrong_shapes_are_input_errors():
    model = model_for("amc", {})
    with pytest.raises(InputError, match="leading shape \\(B, M\\)"):
        model(make_queries(3), make_images(2, 4))
    with pytest.raises(InputError, match="score_pool"):
        model.score_pool(make_queries(3), make_images(3, 4))
    images = make_images(3, 4)
    with pytest.raises(InputError, match="13-dimensional features"):
        model(make_queries(3), replace_images(images, regions=torch.randn(3, 4, 5, D + 1)))


# CCA ---------------------------------------------------------------------------------------------


def planted_pairs(count: int, seed: int) -> tuple[QueryBatch, ImageBatch]:
    """Query word w (of VQ) shows as feature direction w % D and keyword w % VK + 1."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(0, VQ, (count,), generator=g)
    regions = 0.3 * torch.randn(count, 3, D, generator=g)
    regions[torch.arange(count), 0, words % D] += 2.0
    noise = torch.randint(1, VK + 1, (count, 3), generator=g)
    keywords = torch.cat([(words % VK + 1).unsqueeze(1), noise], 1)
    query = QueryBatch(
        torch.stack([words + 1, torch.zeros_like(words)], 1), torch.tensor([[True, False]] * count)
    )
    images = ImageBatch(
        regions=regions,
        region_mask=torch.ones(count, 3, dtype=torch.bool),
        keywords=keywords,
        keyword_counts=torch.ones(count, 4),
        keyword_mask=torch.ones(count, 4, dtype=torch.bool),
    )
    return query, images


def test_cca_fits_in_closed_form_and_ranks_a_planted_correspondence():
    config = ModelConfig(
        kind="cca", query_vocab_size=VQ, keyword_vocab_size=VK, feature_dim=D, dim=32
    )
    model = build_model(config)
    assert model.closed_form and not list(model.parameters())
    with pytest.raises(TrainingError, match="not fitted"):
        model.score_pool(*planted_pairs(4, seed=0))
    query, images = planted_pairs(400, seed=0)
    batches = [
        TrainBatch(
            QueryBatch(query.tokens[i : i + 50], query.mask[i : i + 50]),
            expand_pairs(images, slice(i, i + 50)),
        )
        for i in range(0, 400, 50)
    ]
    model.fit_closed_form(batches)
    assert 0.7 < model.correlations[0] <= 1.0

    test_query, test_images = planted_pairs(100, seed=1)
    scores = model.eval().score_pool(test_query, test_images)  # (100, 100)
    same_word = test_query.tokens[:, :1] == test_query.tokens[:, 0]  # (100, 100)
    best = scores.argmax(1)
    hit_rate = same_word[torch.arange(100), best].float().mean()
    assert hit_rate > 0.9  # chance: about 1 / VQ

    copy = build_model(config)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.eval().score_pool(test_query, test_images), scores)


def expand_pairs(images: ImageBatch, rows: slice) -> ImageBatch:
    """Rows of (N, ...) images as (B, 2, ...) candidates: the positive, then any negative."""
    return images.map(lambda t: torch.stack([t[rows], t[rows].roll(1, 0)], 1))


def test_cca_refuses_what_it_cannot_do():
    config = ModelConfig(kind="cca", query_vocab_size=VQ, keyword_vocab_size=VK, feature_dim=D)
    with pytest.raises(ConfigError, match="word vectors"):
        build_model(config, torch.zeros(VQ + 1, 128))
    with pytest.raises(TrainingError, match="at least 2"):
        build_model(config).fit_closed_form([])
    with pytest.raises(ConfigError, match="gradient descent"):
        model_for("amc", {}).fit_closed_form([])


# Learning -----------------------------------------------------------------------------------------


def train_on_intent_toy(kind: str, steps: int = 100) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Each image shows one concept (a region among clutter) and is tagged with another (a
    keyword among filler). A query names a concept and, by its second word, an intent: "show me"
    (relevant: the images that show it) or "tagged" (the images tagged with it). A concept's word
    is the same for both intents, so only a query-dependent modality choice ranks well.

    Returns the test queries' precision@10 over the whole pool, each test query's mean visual
    weight over 50 images (AMC only), and which test queries have visual intent.
    """
    g = torch.Generator().manual_seed(0)
    concepts, count, regions, dim = 6, 600, 4, 16
    prototypes = 3 * torch.randn(concepts, dim, generator=g)
    shown = torch.randint(0, concepts, (count,), generator=g)
    tagged = torch.randint(0, concepts, (count,), generator=g)
    features = torch.randn(count, regions, dim, generator=g)
    features[torch.arange(count), 0] += prototypes[shown]
    filler = torch.randint(concepts + 1, concepts + 11, (count, 3), generator=g)
    pool = ImageBatch(
        regions=features,
        region_mask=torch.ones(count, regions, dtype=torch.bool),
        keywords=torch.cat([(tagged + 1).unsqueeze(1), filler], 1),
        keyword_counts=torch.ones(count, 4),
        keyword_mask=torch.ones(count, 4, dtype=torch.bool),
    )

    def pick(rows: torch.Tensor) -> ImageBatch:
        return pool.map(lambda t: t[rows])

    def queries(n: int, seed: int) -> tuple[QueryBatch, torch.Tensor, torch.Tensor]:
        r = torch.Generator().manual_seed(seed)
        concept = torch.randint(0, concepts, (n,), generator=r)
        visual = torch.rand(n, generator=r) < 0.5
        intent_word = torch.where(visual, concepts + 1, concepts + 2)  # "show me" / "tagged"
        tokens = torch.stack([concept + 1, intent_word], 1)
        relevant = torch.where(
            visual.unsqueeze(1), shown == concept.unsqueeze(1), tagged == concept.unsqueeze(1)
        )
        return QueryBatch(tokens, torch.ones_like(tokens, dtype=torch.bool)), visual, relevant

    config = ModelConfig(
        kind=kind,
        query_vocab_size=concepts + 2,
        keyword_vocab_size=concepts + 10,
        feature_dim=dim,
        dim=32,
    )
    torch.manual_seed(0)
    model = build_model(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_query, _, relevant = queries(256, seed=1)
    for _ in range(steps):
        rows = torch.randint(0, 256, (32,), generator=g)
        positives = torch.multinomial(relevant[rows].float(), 1, generator=g)  # (32, 1)
        negatives = torch.multinomial((~relevant[rows]).float(), 4, generator=g)  # (32, 4)
        query = QueryBatch(train_query.tokens[rows], train_query.mask[rows])
        scores = model.train()(query, pick(torch.cat([positives, negatives], 1)))  # (32, 5)
        loss = torch.relu(0.2 - scores[:, :1] + scores[:, 1:]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    test_query, visual, relevant = queries(64, seed=2)
    model.eval()
    with torch.no_grad():
        top = model.score_pool(test_query, pool).topk(10).indices  # (64, 10)
        attention = model.explain(test_query, pick(torch.arange(50).expand(64, 50)))
    precision = relevant.gather(1, top).float().mean().item()
    return precision, attention.modality_weights[..., 0].mean(1), visual


def test_amc_learns_to_choose_the_modality_the_query_asks_for():
    precision, visual_weight, visual = train_on_intent_toy("amc")
    assert precision > 0.9  # chance: 1 / 6
    assert visual_weight[visual].mean() > visual_weight[~visual].mean() + 0.3
    fusion_precision, fusion_weight, _ = train_on_intent_toy("fusion")
    assert (fusion_weight == 0.5).all()
    assert precision > fusion_precision + 0.1  # fixed weights cannot follow the intent


# Configuration ------------------------------------------------------------------------------------


def test_config_round_trips_and_defaults():
    config = ModelConfig(query_vocab_size=5, keyword_vocab_size=6, feature_dim=7)
    assert config.kind == "amc" and config.word_dim == config.dim
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert set(KINDS) == {"amc", "visual", "keyword", "fusion", "cca"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "dssm"}, "kind must be one of amc, visual, keyword, fusion, cca, not 'dssm'"),
        ({"dim": 0}, "dim must be a whole number >= 1, not 0"),
        ({"feature_dim": True}, "feature_dim must be a whole number >= 1, not True"),
        ({"query_vocab_size": 2.5}, "query_vocab_size must be a whole number >= 1, not 2.5"),
        ({"dropout": 1.0}, "dropout must be a finite number >= 0 and < 1, not 1.0"),
        ({"dropout": math.nan}, "dropout must be a finite number >= 0 and < 1, not nan"),
        ({"cca_reg": -0.1}, "cca_reg must be a finite number >= 0"),
        ({"intra": "no"}, "intra must be True or False, not 'no'"),
        ({"gate_content": 1}, "gate_content must be True or False, not 1"),
        ({"gate_scale": -1.0}, "gate_scale must be a finite number >= 0"),
        ({"attention_scale_rate": 0.0}, "attention_scale_rate must be a finite number > 0"),
        ({"attention_scale_rate": math.inf}, "attention_scale_rate must be a finite number > 0"),
        ({"kind": "fusion", "inter": False}, "inter cannot be switched off for the fusion model"),
        ({"kind": "visual", "intra": False}, "intra cannot be switched off for the visual model"),
    ],
)
def test_config_validation(options, message):
    base = {"query_vocab_size": 5, "keyword_vocab_size": 6, "feature_dim": 7}
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**base, **options})


def test_config_from_dict_refuses_unknown_and_missing_fields():
    data = ModelConfig(query_vocab_size=5, keyword_vocab_size=6, feature_dim=7).to_dict()
    with pytest.raises(ConfigError, match="Unknown model option\\(s\\) colour"):
        ModelConfig.from_dict({**data, "colour": "red"})
    del data["feature_dim"]
    with pytest.raises(ConfigError, match="feature_dim are missing"):
        ModelConfig.from_dict(data)


# Word vectors -------------------------------------------------------------------------------------


def test_load_word_vectors(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("3 2\ncar 1.0 2.0\nRed 3.0 4.0\nred 5.0 6.0\nboat 0.5 -0.5\n", encoding="utf-8")
    table = load_word_vectors(path, ["red", "car", "sky"], 2)
    assert table.shape == (4, 2) and table.dtype == torch.float32
    torch.testing.assert_close(table[0], torch.zeros(2))  # padding
    torch.testing.assert_close(table[1], torch.tensor([5.0, 6.0]))  # the exact form wins
    torch.testing.assert_close(table[2], torch.tensor([1.0, 2.0]))
    assert 0 < table[3].norm() < 1  # missing: small and random, reproducible
    torch.testing.assert_close(load_word_vectors(path, ["red", "car", "sky"], 2), table)

    (tmp_path / "upper.txt").write_text("RED 1 1\n", encoding="utf-8")
    torch.testing.assert_close(
        load_word_vectors(tmp_path / "upper.txt", ["red"], 2)[1], torch.ones(2)
    )

    config = ModelConfig(query_vocab_size=3, keyword_vocab_size=4, feature_dim=5, word_dim=2)
    model = build_model(config, table)
    torch.testing.assert_close(model.words.weight.detach(), table)
    with pytest.raises(ConfigError, match="set word_dim"):
        build_model(dataclasses.replace(config, word_dim=3), table)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"car 1.0 2.0\nred 1.0\n", "line 2: 1 fields after the word, expected 2"),
        (b"car 1.0 2.0 3.0\n", "line 1: 3 fields after the word, expected 2"),
        (b"car 1.0 2.0\nred 1.0 x\n", "line 2: a value of the vector of 'red' is not a number"),
        (b"10 3\ncar 1 2 3\n", "header line says 3-dimensional"),
        (b"car 1.0 2.0\nred\xff 1 2\n", "line 2: not UTF-8"),
        (b"boat 1.0 2.0\n", "holds none of the 2 query words"),
    ],
)
def test_load_word_vectors_refuses_a_malformed_file(tmp_path, content, message):
    path = tmp_path / "vectors.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        load_word_vectors(path, ["car", "red"], 2)
    assert str(path) in str(caught.value)


def test_load_word_vectors_missing_file(tmp_path):
    with pytest.raises(InputError, match="Cannot read the word vectors"):
        load_word_vectors(tmp_path / "absent.txt", ["car"], 2)
