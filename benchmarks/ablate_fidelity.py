"""Ablations of AMC's fidelity: ranking quality and where the attention goes, on two planted
worlds, for the package's models and for an independent reference AMC with one choice changed
at a time.

Worlds: `synth` (Clickture-style judged candidates; NDCG@10 over each test query's candidates)
with a seed the demo does not use, and the planted COCO world of `tests/support/planted_coco.py`
(captions against every test image; NDCG@10 and R@K), with the modality following the concept
(`--carrier concept`) or a cue word of each image's captions (`--carrier caption`). Attention:
for test queries whose concept the keywords carry (synth: textual intent; COCO: the image's
keywords carry it), the keyword attention's mass on the concept's keyword in their relevant
images; for those the pixels carry, the region attention's mass on the concept's regions; each
beside a uniform attention's mass.

    python benchmarks/ablate_fidelity.py                       # everything, both worlds
    python benchmarks/ablate_fidelity.py --only ref            # the reference ablations only
    python benchmarks/ablate_fidelity.py --world coco --epochs 6
    python benchmarks/ablate_fidelity.py --world coco --carrier caption --concepts 40 \
        --coco-images 800 0 200 200 --seed 2 --train-seeds 2 101 102 --only pkg \
        --runs "pkg amc" "pkg amc --no-inter"                  # the training seed's noise
    python benchmarks/ablate_fidelity.py --world prepared --prepared W1 --ceiling 0.536 \
        --only pkg --runs "pkg amc"           # a folder written elsewhere (a several-concept
                                              # synth): ranking and the gate by query intent

Results: a markdown table on stdout and JSON in bench-results/fidelity.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference_amc import RefConfig, fit  # noqa: E402
from support import planted_coco, planted_multi  # noqa: E402

import amc_data  # noqa: E402
from amc_data.ranking import model as model_module  # noqa: E402
from amc_data.ranking.data import EpochSampler  # noqa: E402
from amc_data.ranking.model import AttentionModel  # noqa: E402

AttentionModel._encode_query_original = AttentionModel._encode_query  # type: ignore[attr-defined]
from amc_data.evaluation.metrics import ndcg_at_k  # noqa: E402
from amc_data.prepare import load_prepared  # noqa: E402


@dataclass
class Probe:
    query_ids: np.ndarray  # (P,)
    img_ids: np.ndarray  # (P,)
    keyword: np.ndarray  # (P,) prepared keyword id + 1 of the concept (keyword probes)
    regions: np.ndarray  # (P, R) bool (region probes)
    concept: np.ndarray | None = None  # (P,) the concept probed (multi: per-concept masses)


@dataclass
class World:
    name: str
    prepared: object
    keyword_probe: Probe | None
    region_probe: Probe | None
    ceiling: float | None = None  # the best expected NDCG@10, from the truth
    # multi: sentid -> what the caption names ("both", "visual", "textual"), for the gate
    names_kind: dict | None = None


def synth_world(work: Path, seed: int, images: int, queries: int) -> World:
    from amc_data.prepare.synth import SynthConfig, generate_world

    out = work / f"synth-{seed}"
    amc_data.synth(out, seed=seed, images=images, queries=queries, force=True)
    truth = generate_world(SynthConfig(seed=seed, images=images, queries=queries))
    prepared = load_prepared(out)
    row_of = {int(i): r for r, i in enumerate(truth.img_ids)}
    word = {w: i + 1 for i, w in enumerate(prepared.vocabulary)}
    test = truth.queries[truth.queries["split"] == "test"]
    judged = prepared.judgments[prepared.judgments["label"] > 0]
    parts: dict[str, list] = {"visual": [], "textual": []}
    for qid, intent, concept in test[["query_id", "intent", "concept"]].itertuples(index=False):
        for img in judged.loc[judged["query_id"] == qid, "img_id"].tolist():
            parts[intent].append((qid, img, word[truth.names[concept]], truth.regions[row_of[img]]))
    return World(f"synth seed {seed}", prepared, _probe(parts["textual"]), _probe(parts["visual"]))


def coco_world(work: Path, seed: int, config: planted_coco.PlantedConfig) -> World:
    folder = work / f"coco-{config.carrier}-{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    truth, out = planted_coco.prepare_world(folder, dataclasses.replace(config, seed=seed))
    prepared = load_prepared(out)
    word = {w: i + 1 for i, w in enumerate(prepared.vocabulary)}
    parts: dict[str, list] = {"visual": [], "textual": []}
    for qid in prepared.split_queries("test")["query_id"].tolist():
        row = truth.captions[int(qid)]
        kind = "visual" if truth.visual(np.array([row]))[0] else "textual"
        name = truth.names[truth.concept[row]]
        parts[kind].append(
            (qid, int(truth.img_ids[row]), word.get(name, -1), truth.carrier_regions(row))
        )
    name = "coco" if config.carrier == "concept" else f"coco-{config.carrier}"
    return World(f"{name} seed {seed}", prepared, _probe(parts["textual"]), _probe(parts["visual"]))


def multi_world(work: Path, seed: int, config: planted_multi.MultiConfig) -> World:
    """The several-concepts world: one probe per (caption, named concept) pair."""
    folder = work / f"multi-{seed}-{config.per_image[0]}x{config.per_image[1]}"
    shutil.rmtree(folder, ignore_errors=True)
    truth, out = planted_multi.prepare_world(folder, dataclasses.replace(config, seed=seed))
    prepared = load_prepared(out)
    word = {w: i + 1 for i, w in enumerate(prepared.vocabulary)}
    parts: dict[str, list] = {"visual": [], "textual": []}
    kinds = {}
    for qid in prepared.split_queries("test")["query_id"].tolist():
        row, concepts = truth.captions[int(qid)]
        visual = [c for c in concepts if truth.is_visual(c)]
        kinds[int(qid)] = (
            "both"
            if visual and len(visual) < len(concepts)
            else ("visual" if visual else "textual")
        )
        for c in concepts:
            kind = "visual" if truth.is_visual(c) else "textual"
            cells = truth.cell_concept[row] == c
            parts[kind].append((qid, row, word.get(truth.names[c], -1), cells, c))
    ceiling = planted_multi.ceiling(truth)["ndcg@10"]
    name = f"multi{config.per_image[0]}x{config.per_image[1]} seed {seed}"
    return World(name, prepared, _probe(parts["textual"]), _probe(parts["visual"]), ceiling, kinds)


def prepared_world(folder: Path, ceiling: float | None) -> World:
    """A prepared folder written elsewhere (e.g. a several-concept synth world): ranking, and
    the gate by the test queries' intent where queries.parquet has one; no attention probes."""
    prepared = load_prepared(folder)
    queries = prepared.split_queries("test")
    kinds = None
    if "intent" in queries.columns:
        kinds = dict(zip(queries["query_id"].astype(int), queries["intent"], strict=True))
    return World(folder.name, prepared, None, None, ceiling, kinds)


def _probe(items: list) -> Probe:
    q, i, k, r, *c = zip(*items, strict=True)
    return Probe(np.array(q), np.array(i), np.array(k), np.stack(r), np.array(c[0]) if c else None)


# -- metrics ------------------------------------------------------------------------------------
def ranking(world: World, matrix: np.ndarray, queries: np.ndarray, images: np.ndarray) -> dict:
    """NDCG@10 (and R@K on COCO) of a (Q, N) score matrix of the test queries x test images."""
    prepared = world.prepared
    judged = prepared.judgments[prepared.judgments["query_id"].isin(queries)]
    qpos = {int(q): i for i, q in enumerate(queries)}
    ipos = {int(m): j for j, m in enumerate(images)}
    # COCO, and a synth world whose queries rank their whole split: every test image a candidate
    if prepared.info.get("source") == "coco" or prepared.info.get("candidates") == "split":
        labels = np.zeros(matrix.shape, dtype=np.int8)
        for q, m, lab in judged[["query_id", "img_id", "label"]].itertuples(index=False):
            labels[qpos[int(q)], ipos[int(m)]] = lab
        # The mean over queries, a block of queries at a time: a 5K test split is 125M pairs.
        total = 0.0
        for s in range(0, len(queries), 500):
            block = matrix[s : s + 500]
            total += float(ndcg_at_k(block, labels[s : s + 500].astype(np.int64), 10)) * len(block)
        out = {"ndcg@10": total / len(queries)}
        own = (matrix * (labels > 0)).sum(1)
        ranks = 1 + (matrix > own[:, None]).sum(1)
        for k in (1, 5, 10):
            out[f"r@{k}"] = float((ranks <= k).mean())
        return out
    rows = [qpos[int(q)] for q in judged["query_id"]]
    cols = [ipos[int(m)] for m in judged["img_id"]]
    scores = matrix[rows, cols]
    value = ndcg_at_k(
        scores, judged["label"].to_numpy(), 10, query_ids=judged["query_id"].to_numpy()
    )
    return {"ndcg@10": float(value)}


def masses(world: World, attend) -> dict:
    """Attention mass on the concept's keyword / regions, and a uniform attention's."""
    out: dict = {}
    if world.keyword_probe is None or world.region_probe is None:
        return out  # a prepared folder without its truth
    p = world.keyword_probe
    ids, counts, weights, _ = attend(p.query_ids, p.img_ids)
    hit = ids == p.keyword[:, None]
    if weights is not None:
        got = (weights * hit).sum(1)
        out["kw_mass"] = float(got.mean())
        if p.concept is not None:
            out.update(_per_concept("kw", got, p.concept))
    out["kw_uniform"] = float(((counts * hit).sum(1) / counts.sum(1).clip(1e-9)).mean())
    p = world.region_probe
    _, _, _, regions = attend(p.query_ids, p.img_ids)
    if regions is not None:
        got = (regions * p.regions).sum(1)
        out["reg_mass"] = float(got.mean())
        if p.concept is not None:
            out.update(_per_concept("reg", got, p.concept))
    out["reg_uniform"] = float(p.regions.mean())
    return out


def _per_concept(name: str, mass: np.ndarray, concept: np.ndarray) -> dict:
    """Each concept's median mass: the lowest, the share of concepts below 0.3, the median."""
    medians = np.array([np.median(mass[concept == c]) for c in np.unique(concept)])
    return {
        f"{name}_concept_min": float(medians.min()),
        f"{name}_concepts_below_0.3": float((medians < 0.3).mean()),
        f"{name}_concept_median": float(np.median(medians)),
    }


def gate_by_caption(world: World, model) -> dict:
    """The gate's visual weight on each test caption's own image, by what the caption names."""
    from amc_data.ranking.data import image_batch, query_batch

    kinds = world.names_kind or {}
    qids = np.array(sorted(kinds), dtype=np.int64)
    judgments = world.prepared.judgments
    relevant = judgments[judgments["label"] > 0].groupby("query_id")["img_id"].first()
    imgs = relevant.loc[qids].to_numpy(np.int64)
    weights = []
    with torch.no_grad():
        for s in range(0, len(qids), 256):
            batch = image_batch(world.prepared, imgs[s : s + 256]).map(lambda t: t.unsqueeze(1))
            got = model.explain(query_batch(world.prepared, qids[s : s + 256]), batch)
            weights.append(got.modality_weights[:, 0, 0].numpy())
    visual = np.concatenate(weights)
    labels = np.array([kinds[int(q)] for q in qids])
    return {f"gate_{k}": float(visual[labels == k].mean()) for k in ("both", "visual", "textual")}


def gate_oracle(world: World, model, queries: np.ndarray, images: np.ndarray) -> dict:
    """NDCG@10 of the single-concept test captions with the gate as learned and forced to the
    modality the caption names (all weight on it): what a gate that follows the caption could
    add on this world at most, with everything else as trained."""
    from amc_data.ranking.data import image_batch, query_batch

    kinds = np.array([(world.names_kind or {}).get(int(q), "both") for q in queries])
    pool = image_batch(world.prepared, images)
    out = {}
    original = model.gate_prior.forward
    scale = model.gate_log_scale.exp().item() if hasattr(model, "gate_log_scale") else 1.0
    for kind, logits in (("visual", (50.0, -50.0)), ("textual", (-50.0, 50.0))):
        chosen = queries[kinds == kind]
        forced = torch.tensor(logits) / scale
        rows = []
        for force in (False, True):
            if force:
                model.gate_prior.forward = lambda x, f=forced: f.to(x.dtype).expand(x.shape[0], 2)
            try:
                with torch.no_grad():
                    matrix = np.concatenate(
                        [
                            model.score_pool(
                                query_batch(world.prepared, chosen[s : s + 64]), pool
                            ).numpy()
                            for s in range(0, len(chosen), 64)
                        ]
                    )
            finally:
                model.gate_prior.forward = original
            rows.append(ranking(world, matrix, chosen, images)["ndcg@10"])
        out[f"{kind}_only_ndcg"], out[f"{kind}_only_forced_gate_ndcg"] = rows
        out[f"{kind}_only_share"] = float((kinds == kind).mean())
    return out


# -- the package's models -----------------------------------------------------------------------
def package_run(world: World, work: Path, name: str, options: dict) -> dict:
    from amc_data import TrainConfig
    from amc_data.ranking import training

    out = work / f"run-{world.name.replace(' ', '-')}-{name}-train-seed-{options['seed']}"
    options = dict(options)
    model_options = options.pop("model_options", {})
    loss_options = dict(options.pop("loss_options", {}))
    if "reduction" in loss_options:  # a TrainConfig option now, which the trainer passes
        options["pool_reduction"] = loss_options.pop("reduction")
    boost = options.pop("violating_params", None)
    word_batches = options.pop("word_batches", False)
    sampler_order = EpochSampler.__iter__
    if word_batches is True:  # the epoch's pairs ordered so that a batch's captions share a word
        EpochSampler.__iter__ = _word_batches  # type: ignore[method-assign]
    elif word_batches:  # that share of each batch composed by word, the rest uniform
        EpochSampler.__iter__ = _mixed_word_batches(
            float(word_batches), options.get("batch_size", 64)
        )
    betas = options.pop("betas", None)
    modality_drop = options.pop("modality_drop", 0.0)
    if modality_drop:  # the probe as measured: on the defaults of before session 9
        options.setdefault("pool_reduction", "all")
        options["modality_dropout"] = 0.0
    by_gate = options.pop("modality_drop_by_gate", False)
    schedule = options.pop("modality_drop_schedule", "flat")
    keep_rule = options.pop("modality_keep_rule", None)
    drop_modality = model_module._drop_modality
    if keep_rule:  # the package's dropout, with another rule for the kept modality
        model_module._drop_modality = _kept_by(keep_rule)
    score = AttentionModel._score
    if modality_drop:  # training only: some queries scored with one modality alone
        AttentionModel._score = _modality_dropout(modality_drop, by_gate, schedule)  # type: ignore[method-assign]
        _EPOCH["of"] = options.get("epochs", 8)
    soft_attention = options.pop("soft_attention", None)
    attend_modality = AttentionModel._attend_modality
    if soft_attention:  # training only: a share of the queries attend with a soft scale
        AttentionModel._attend_modality = _soft_attention(*soft_attention)  # type: ignore[method-assign]
    region_frozen = options.pop("region_scale_frozen", 0)
    region_switch = options.pop("region_scale_switch", None)
    init, attention_scale = AttentionModel.__init__, AttentionModel.attention_scale
    if region_frozen:  # training only: the region scale held at its start for the first epochs
        _region_scale_frozen(region_frozen)
    if region_switch:  # kept through the figures: the loaded model is rebuilt from the class
        _region_scale_switch(*region_switch)
    set_epoch = EpochSampler.set_epoch
    region_rows = options.pop("region_rows", None)
    region_terms = training._Run._region_terms
    if region_rows:  # the region terms' rows counted by more than the gate's visual weight
        training._Run._region_terms = _region_rows(*region_rows)
        _EPOCH["of"] = options.get("epochs", 8)
    hinge_fade = options.pop("region_mean_hinge_fade", None)
    if hinge_fade:  # the mean value's hinge strong at first, weaker by the end
        training._Run._region_terms = _region_mean_hinge_fading(*hinge_fade)
    best_cells = options.pop("region_best_cells", None)
    if best_cells:  # beside the mean value's hinge, the best-matching cell's
        training._Run._region_terms = _region_best_cells_hinge(*best_cells)
    word_cells = options.pop("region_word_cells", None)
    encode_images = AttentionModel._encode_images
    if word_cells:  # beside the mean value's hinge, each query word's best-matching cell's
        AttentionModel._encode_images = _images_kept(encode_images)  # type: ignore[method-assign]
        training._Run._region_terms = _region_word_cells_hinge(*word_cells)
    value_reading = model_module._value_reading
    if options.pop("region_match_values_only", False):  # the match teaches the values alone
        model_module._value_reading = _values_only_match(value_reading)
    mixture = options.pop("modality_mixture", None)
    if mixture:  # the modality mixture's gradient to the attended vectors floored, or warmed up
        AttentionModel._score = _with_modality_mixture(*mixture)  # type: ignore[method-assign]
        _EPOCH["of"] = options.get("epochs", 8)
    if keep_rule and keep_rule.startswith("early"):
        _EPOCH["of"] = options.get("epochs", 8)
    if modality_drop or region_frozen or region_switch or region_rows or mixture or keep_rule:
        _EPOCH["now"] = 0

        def seen_epoch(self, epoch):
            _EPOCH["now"] = int(epoch)
            set_epoch(self, epoch)

        EpochSampler.set_epoch = seen_epoch  # type: ignore[method-assign]
    region_entropy = options.pop("region_entropy", None)
    value_target = options.pop("value_target", None)
    keyword_target = options.pop("keyword_target_probe", None)
    run_loss, scored = training._Run._loss, training._scored
    if region_entropy:  # the entropy term on the region attention too
        training._scored, training._Run._loss = _with_region_entropy(*region_entropy)
    if value_target:  # the region attention drawn toward the cells whose values match q^m
        training._scored, training._Run._loss = _with_value_target(*value_target)
        options.update(region_target=0.0, region_mean_hinge=0.0)  # the probe's own terms only
    if keyword_target:  # the keyword attention drawn toward the keywords that match q^m
        training._scored, training._Run._loss = _with_keyword_target(*keyword_target)
    unimodal = options.pop("unimodal", None)
    routing_loss = training.gate_routing_loss
    if unimodal:  # each modality alone also ranks (through the routing term's reading)
        routing = options.get("gate_routing", 0.4)
        training.gate_routing_loss = _with_unimodal(routing_loss, unimodal, routing)
    gate_words = options.pop("gate_words", None)
    encode_query = AttentionModel._encode_query
    if gate_words:  # kept through the evaluation below: the loaded model is rebuilt from the class
        AttentionModel._encode_query = _gate_from_summed_words
    adamw = torch.optim.AdamW
    if betas:  # AdamW's moment decays (the package uses torch's defaults, 0.9 and 0.999)
        torch.optim.AdamW = functools.partial(adamw, betas=tuple(betas))
    build = training.model_config_for
    pool_loss = training.pool_hinge_loss
    step = training._Run._step
    if boost:  # the violating mean's gradient for these parameters only, the mean's for the rest
        training._Run._step = _boosted_step(boost)
    if loss_options:  # pool_hinge_loss options that TrainConfig does not carry
        training.pool_hinge_loss = functools.partial(pool_loss, **loss_options)
    if options.pop("per_query_over_every_query", False):
        training.pool_hinge_loss = _per_query_over_every_query
    if model_options:  # ModelConfig fields that TrainConfig does not carry

        def with_options(config, prepared):
            return dataclasses.replace(build(config, prepared), **model_options)

        training.model_config_for = with_options
    started = time.perf_counter()
    try:
        amc_data.train(world.prepared, out, TrainConfig(**options), force=True)
    finally:
        training.model_config_for = build
        training.pool_hinge_loss = pool_loss
        training._Run._step = step
        torch.optim.AdamW = adamw
        EpochSampler.__iter__ = sampler_order  # type: ignore[method-assign]
        AttentionModel._score = score  # type: ignore[method-assign]
        model_module._drop_modality = drop_modality
        AttentionModel._attend_modality = attend_modality  # type: ignore[method-assign]
        training.gate_routing_loss = routing_loss
        training._scored, training._Run._loss = scored, run_loss  # type: ignore[method-assign]
        training._Run._region_terms = region_terms  # type: ignore[method-assign]
        model_module._value_reading = value_reading
        AttentionModel._encode_images = encode_images  # type: ignore[method-assign]
        EpochSampler.set_epoch = set_epoch  # type: ignore[method-assign]
    seconds = time.perf_counter() - started
    try:  # the forced gate replaces the prior's layer, which the summed words bypass
        figures = _package_figures(world, out, {**options, "gate_oracle": not gate_words}, seconds)
        return {**figures, "folder": str(out)}
    finally:
        AttentionModel._encode_query = encode_query
        AttentionModel.__init__ = init  # type: ignore[method-assign]
        AttentionModel.attention_scale = attention_scale  # type: ignore[method-assign]


def _package_figures(world: World, out: Path, options: dict, seconds: float) -> dict:
    """A trained run's figures: ranking of the test split, attention masses, the gate."""
    from amc_data.ranking.data import image_batch, query_batch

    loaded = amc_data.load_model(out, world.prepared)
    model = loaded.model
    queries = np.sort(world.prepared.split_queries("test")["query_id"].to_numpy(np.int64))
    images = np.sort(world.prepared.split_images("test"))
    pool = image_batch(world.prepared, images)
    with torch.no_grad():  # a few queries at a time: a pool's attention is (Q, N, items, dim)
        matrix = np.concatenate(
            [
                model.score_pool(query_batch(world.prepared, queries[s : s + 64]), pool).numpy()
                for s in range(0, len(queries), 64)
            ]
        )
    result = {
        "seconds": seconds,
        "best_epoch": loaded.epoch,
        **ranking(world, matrix, queries, images),
    }

    def attend(qids, img_ids):
        imgs = image_batch(world.prepared, img_ids)
        ids = imgs.keywords.numpy()
        counts = imgs.keyword_counts.numpy() * imgs.keyword_mask.numpy()
        if options.get("model", "amc") != "amc":
            return ids, counts, None, None
        with torch.no_grad():
            grid = imgs.map(lambda t: t.unsqueeze(1))
            explained = model.explain(query_batch(world.prepared, qids), grid)
        result.setdefault("gate", []).append(explained.modality_weights[:, 0].mean(0).tolist())
        return (
            ids,
            counts,
            explained.keyword_weights[:, 0].numpy(),
            explained.region_weights[:, 0].numpy(),
        )

    result.update(masses(world, attend))
    if world.ceiling is not None:
        result["ceiling"] = world.ceiling
        result["share"] = result["ndcg@10"] / world.ceiling
        if options.get("model", "amc") == "amc":
            result.update(gate_by_caption(world, model))
            if getattr(model, "gated", False) and options["gate_oracle"]:
                result.update(gate_oracle(world, model, queries, images))
    return result


def _gate_from_summed_words(self, query):
    """AMC's query encoding with the gate's prior read from the sum of the words' own prior
    logits instead of from the mean word: a concept word's push is not divided by the caption's
    length (4-8 filler words in the multi world)."""
    encoded = AttentionModel.__dict__["_encode_query_original"](self, query)
    if encoded.modality_prior is None:
        return encoded
    words = self.words(query.tokens)  # (B, L, W)
    mask = query.mask.to(words.dtype).unsqueeze(-1)
    summed = (words * mask).sum(1)  # (B, W)
    prior = summed @ self.gate_prior.weight.T + self.gate_prior.bias
    return dataclasses.replace(encoded, modality_prior=prior)


ATTENTION_PARAMETERS = ("region_key.", "query_visual.", "query_keyword.", "attention_log_scale")


def _word_batches(self):
    """`EpochSampler.__iter__` (one process) with each epoch's pairs ordered by a word of their
    caption: each pair picks one word of its caption as the pool's draws by word do (weight one
    over the training images the word describes; words of one image never), per (seed, epoch,
    pair); the pairs are sorted by (a hash of the word and epoch, a hash of the pair), so that a
    batch is one or two runs of captions that share a word and each caption's pool holds dozens
    of images that carry that word's concept and differ in another. A benchmark of the idea
    (session 6), not a package option: it ignores ranks and lets no run resume."""
    from amc_data.ranking.data import _hash_below, _mix, _WordImages

    pairs = self.inner.dataset
    epoch = self.epoch
    index = pairs.__dict__.get("_bench_word_images")
    if index is None:
        index = _WordImages.of(
            pairs._tokens, pairs._pair_query, pairs._positive_positions, pairs._pool_rows.size
        )
        pairs.__dict__["_bench_word_images"] = index
    n = len(pairs)
    tokens = pairs._tokens[pairs._pair_query]  # (n, L) ids + 1
    weights = index.weights[tokens]  # (n, L); the pad's weight is 0
    cumulative = np.cumsum(weights, axis=1)
    total = cumulative[:, -1]
    bits = _hash_below(pairs.seed, np.full(n, epoch), np.arange(n), 0, 2, np.full(n, 2**32), 9)
    wanted = bits[:, 0] / 2**32 * total
    pick = (cumulative <= wanted[:, None]).sum(1).clip(max=tokens.shape[1] - 1)
    word = np.where(total > 0, tokens[np.arange(n), pick], -1 - np.arange(n))
    with np.errstate(over="ignore"):
        key = _mix(word.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(epoch + 1))
    order = np.lexsort((bits[:, 1], key))
    return ((epoch, int(i)) for i in order)


def _per_query_over_every_query(scores, own, positive, margin, hardest=False, reduction=""):
    """`pool_hinge_loss` with each query's hinge averaged over its own violating negatives, as
    `reduction="per-query"` does, then over every query of the batch (a query that violates
    nothing counts as 0)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    terms = (margin - scores[rows, own].unsqueeze(1) + scores).clamp(min=0) * ~positive
    violating = (terms > 0).sum(1)
    return (terms.sum(1) / violating.clamp(min=1)).sum() / max(violating.numel(), 1)


def _mixed_word_batches(share: float, batch_size: int):
    """`EpochSampler.__iter__` (one process) whose batches hold `share` of their pairs from a run
    of captions ordered by word (`_word_batches`' order restricted to a hashed share of the
    pairs) and the rest from the sampler's own uniform order: each batch keeps the uniform
    negatives that train every concept against the data and adds a cluster that shares a word
    (session 9's benchmark of session 6's untried mix; not a package option, no resume)."""
    from amc_data.ranking.data import _hash_below

    def order(self):
        n = len(self.inner.dataset)
        bits = _hash_below(
            self.inner.seed, np.full(n, self.epoch), np.arange(n), 0, 1, np.full(n, 2**32), 10
        )[:, 0]
        clustered = bits < share * 2**32
        by_word = [i for _, i in _word_batches(self) if clustered[i]]
        uniform = [i for i in self.inner if not clustered[i]]
        k = max(1, round(share * batch_size))
        out, a, b = [], 0, 0
        while a < len(by_word) or b < len(uniform):
            out += by_word[a : a + k] + uniform[b : b + batch_size - k]
            a, b = a + k, b + batch_size - k
        return ((self.epoch, i) for i in out)

    return order


_EPOCH = {"now": 0, "of": 8}


def _soft_attention(share: float, scale: float):
    """`AttentionModel._attend_modality` whose attention, in training, uses the cosine times
    `scale` instead of the learned scale for `share` of the queries (drawn per call)."""
    from amc_data.ranking.model import _attend

    original = AttentionModel._attend_modality

    def attend_modality(self, guide, items, pool, region=False):
        if not self.training or guide is None or items.key is None:
            return original(self, guide, items, pool, region)
        learned = self.attention_scale(region).expand(len(guide))
        soft = torch.rand(len(guide), device=guide.device) < share
        scales = torch.where(soft, torch.full_like(learned, scale), learned)[:, None, None]
        return _attend(guide, items.key, items.value, items.bias, items.mask, pool, scales)

    return attend_modality


def _region_scale_frozen(epochs: int) -> None:
    """In training, the region attention's scale held at its start for the first `epochs`
    epochs (no gradient reaches it), learned after."""
    scale_of = AttentionModel.attention_scale

    def attention_scale(self, region):
        scale = scale_of(self, region)
        if region and self.training and _EPOCH["now"] < epochs and scale is not None:
            return (scale * 0).detach() + self.config.attention_scale
        return scale

    AttentionModel.attention_scale = attention_scale  # type: ignore[method-assign]


def _region_scale_switch(epoch: int, rate: float) -> None:
    """The region attention's log scale gains a second part, 0 and still until `epoch`, then
    learned `rate` times as fast: soft while the concepts are learned, sharpening after."""
    init, scale_of = AttentionModel.__init__, AttentionModel.attention_scale

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if hasattr(self, "region_log_scale"):
            self.region_late_log_scale = torch.nn.Parameter(torch.zeros(()))

    def attention_scale(self, region):
        if not (region and hasattr(self, "region_late_log_scale")):
            return scale_of(self, region)
        late = self.region_late_log_scale
        if self.training and _EPOCH["now"] < epoch:
            late = late.detach()  # no gradient: the optimiser leaves it at 0
        return (self.region_log_scale * self.region_rate + late * rate).exp()

    AttentionModel.__init__ = __init__  # type: ignore[method-assign]
    AttentionModel.attention_scale = attention_scale  # type: ignore[method-assign]


def _with_attention_term(term, modality_name: str = "region"):
    """`training._scored` and `_Run._loss` whose step loss becomes `term(self, net, batch,
    inside, modality, loss)` (on pooled batches of a model with attention over
    `modality_name`, the regions or the keywords): the probes' way to try an attention term
    before the package has it."""
    from amc_data.ranking import training

    scored, run_loss = training._scored, training._Run._loss
    seen: dict = {}

    def scored_and_seen(*args, **kwargs):
        out = scored(*args, **kwargs)
        seen["inside"], seen["modality"] = out[1], out[2]
        return out

    def loss(self, net, batch):
        total = run_loss(self, net, batch)
        inside, modality = seen["inside"], seen["modality"]
        if modality_name not in inside or not batch.pooled:
            return total
        return term(self, net, batch, inside, modality, total)

    return scored_and_seen, loss


def _with_region_entropy(weight: float, floor: float):
    """`weight` times the region attention's entropy above `floor` nats on each query's
    positives, each counted by the gate's (detached) visual weight, as the keyword term is by
    the keyword weight."""
    from amc_data.ranking.loss import attention_entropy

    def term(self, net, batch, inside, modality, total):
        rows = batch.pool_positive * modality[..., 0].detach()
        return total + weight * attention_entropy(inside["region"], rows, floor=floor)

    return _with_attention_term(term)


def _with_value_target(weight: float, temperature: float, mean_pool: float = 0.0):
    """`weight` times the cross-entropy from a target to the region attention on each query's
    positives (counted by the gate's detached visual weight): the target is the softmax, at
    `temperature`, of the cosine between the query's shared vector q^m and each region's value
    (held fixed). A cell's logit then moves by (its weight - its target), not in proportion to
    the weight it already has. With `mean_pool`, plus that many times the pool hinge of the
    regions' mean value alone (every cell's value learns, whatever the attention)."""
    import torch.nn.functional as F

    from amc_data.ranking import training

    def term(self, net, batch, inside, modality, total):
        model = training._unwrap(net)
        if mean_pool:
            query = F.normalize(model._encode_query(batch.query).shared.float(), dim=-1)
            visual = model._encode_images(batch.images).visual
            weights = visual.mask.float() / visual.mask.float().sum(-1, keepdim=True).clamp_min(1)
            mean = F.normalize(torch.einsum("pr,prd->pd", weights, visual.value.float()), dim=-1)
            total = total + mean_pool * training.pool_hinge_loss(
                query @ mean.T,
                batch.pool_own,
                batch.pool_positive,
                self.config.margin,
                reduction=self.config.pool_reduction,
            )
        term = _probe_target(model, batch, inside, modality, "region", temperature)
        return total + weight * term

    return _with_attention_term(term)


def _with_keyword_target(weight: float, temperature: float):
    """`weight` times the cross-entropy from a target to the keyword attention on each query's
    positives (counted by the gate's detached keyword weight): the softmax, at `temperature`,
    of the cosine between q^m and each keyword's value (held fixed); the region target's
    counterpart for the keywords."""
    from amc_data.ranking import training

    def term(self, net, batch, inside, modality, total):
        model = training._unwrap(net)
        term = _probe_target(model, batch, inside, modality, "keyword", temperature)
        return total + weight * term

    return _with_attention_term(term, "keyword")


def _probe_target(model, batch, inside, modality, name: str, temperature: float):
    """The probes' target term on one modality's attention (`name`: "region" or "keyword"):
    the cross-entropy from the softmax, at `temperature`, of each item value's cosine with the
    query's q^m (its own forward, held fixed) to the attention on each query's positives,
    averaged with each counted by the gate's (detached) weight on the modality."""
    import torch.nn.functional as F

    with torch.no_grad():
        shared = F.normalize(model._encode_query(batch.query).shared.float(), dim=-1)
        encoded = model._encode_images(batch.images)
        items = encoded.visual if name == "region" else encoded.keywords
        value = F.normalize(items.value.float(), dim=-1)  # (P, T, d)
        cosine = torch.einsum("bd,ptd->bpt", shared, value)
        cosine = cosine.masked_fill(~items.mask.unsqueeze(0), float("-inf"))
        target = torch.softmax(cosine / temperature, -1).nan_to_num(0.0)  # (B, P, T)
    attention = inside[name].float()  # (B, P, T)
    cross = -(target * attention.clamp_min(1e-12).log()).sum(-1)  # (B, P)
    rows = batch.pool_positive * modality[..., list(inside).index(name)].detach()
    rows = rows.float().expand_as(cross)
    return (cross * rows).sum() / rows.sum().clamp_min(1e-12)


def _region_rows(rule: str, value: float):
    """`_Run._region_terms` whose rows count each query by more than the gate's (detached)
    visual weight w: `("floor", f)` max(w, f); `("ramp", e)` w + (1 - w) * max(0, 1 - epoch /
    e), every query counted fully at the first epoch and by the gate alone from epoch e on
    (before the gate has learned which modality a caption's concepts are in, every caption
    teaches the regions)."""
    from amc_data.ranking import training

    region_terms = training._Run._region_terms

    def counted(self, inside, modality, regions, batch, own, positive):
        side = list(inside).index("region")
        weight = modality[..., side].detach()
        if rule == "floor":
            weight = weight.clamp_min(value)
        else:
            weight = weight + (1 - weight) * max(0.0, 1 - _EPOCH["now"] / value)
        modality = modality.detach().clone()
        modality[..., side] = weight
        return region_terms(self, inside, modality, regions, batch, own, positive)

    return counted


def _region_mean_hinge_fading(start: float, end: float, share: float = 1.0):
    """`_Run._region_terms` with the mean value's hinge at `start` at the first step, falling
    linearly to `end` over that share of the run's steps (a caption's region query learns its
    look early, when dead concepts are decided; the regions are asked less to rank the
    textual-only captions late, when the gate learns to send them away)."""
    import dataclasses

    from amc_data.ranking import training

    region_terms = training._Run._region_terms

    def faded(self, inside, modality, regions, batch, own, positive):
        config = self.config
        weight = end + (start - end) * self._left_of(share)
        # the weight this step, held (the package's own fading off)
        self.config = dataclasses.replace(
            config, region_mean_hinge=weight, region_mean_hinge_end=1.0
        )
        try:
            return region_terms(self, inside, modality, regions, batch, own, positive)
        finally:
            self.config = config

    return faded


def _region_best_cells_hinge(
    weight: float,
    temperature: float,
    fade: float | None = None,
    top: int | None = None,
    spread: float | None = None,
):
    """`_Run._region_terms` plus `weight` times the hinge of the regions' best-matching values
    (a soft maximum over each image's cells of cos(q^m, the cell's value), log-mean-exp at
    `temperature`), each query counted as the mean value's hinge counts it: the mean value
    learns a concept's look through its share of the image (1-3 cells of 49), the best cell
    through the cells themselves, so a caption's query whose best cell is clutter shared by its
    negatives is pushed toward what only its images show. The weight falls as the mean value's
    hinge does; with `fade`, linearly to 0 over that share of the run instead. With `top`, the
    mean of the `top` best-matching cells instead of the soft maximum (a query naming two
    visual concepts is then pulled toward both rather than toward the one it matches best).
    With `spread`, each query counts the more the more its region attention on its own image is
    spread: by that attention's entropy over the log of its cell count, to the power `spread`
    (held fixed), so a query whose attention has found its cells (or split between two named
    concepts' few cells) is pulled less than one whose attention is still everywhere."""
    from amc_data.ranking import training

    region_terms = training._Run._region_terms

    def with_best(self, inside, modality, regions, batch, own, positive):
        total = region_terms(self, inside, modality, regions, batch, own, positive)
        visual = self._region_query_weights(inside, modality)
        rows = torch.arange(len(own), device=own.device)
        read = visual[rows, own]
        if spread is not None:
            attention = inside["region"][rows, own].detach().float()  # (B, R)
            cells = regions.mask.expand(len(own), -1, -1)[rows, own]
            entropy = -(attention * attention.clamp_min(1e-12).log()).sum(-1)
            norm = cells.sum(-1).clamp(min=2).float().log()
            read = read * (entropy / norm).clamp(0, 1) ** spread
        if top is None:
            best = _soft_best(regions.match, regions.mask, temperature)
        else:
            match = regions.match.masked_fill(~regions.mask, float("-inf"))
            values = match.topk(min(top, match.shape[-1]), dim=-1).values
            kept = torch.isfinite(values)
            best = values.where(kept, torch.zeros_like(values)).sum(-1) / kept.sum(-1).clamp(min=1)
            best = torch.where(regions.mask.any(-1), best, torch.zeros_like(best))
        if fade is None:  # the mean value's hinge's fading share
            share = self._mean_hinge_weight() / self.config.region_mean_hinge
        else:
            share = self._left_of(fade)
        return total + weight * share * self._hinge(batch, best, query_weights=read)

    return with_best


def _soft_best(match, mask, temperature: float):
    """A soft maximum of `match` over its last axis, the items `mask` keeps: log-mean-exp at
    `temperature` (the mean of the exponentials, so more items score no higher); 0 where no
    item is kept."""
    logits = match.masked_fill(~mask, float("-inf")) / temperature
    count = mask.sum(-1).clamp(min=1).float()
    best = temperature * (torch.logsumexp(logits, -1) - count.log())
    return torch.where(mask.any(-1), best, torch.zeros_like(best))


_KEPT: dict = {}  # the last training forward's model and region values (the word-cells probe)


def _images_kept(encode_images):
    """`AttentionModel._encode_images` that keeps, in training, the model and its regions'
    values and mask for `_region_word_cells_hinge`."""

    def encode(self, images):
        encoded = encode_images(self, images)
        if self.training and encoded.visual is not None:
            _KEPT.update(model=self, value=encoded.visual.value, mask=encoded.visual.mask)
        return encoded

    return encode


def _region_word_cells_hinge(weight: float, temperature: float = 0.05):
    """`_Run._region_terms` plus `weight` times the hinge of a late-interaction score: each
    query word's own vector in the shared space (the query's linear map of the word alone; the
    query's vector is their mean plus the bias) matched against each region's value, its best
    cell by a soft maximum (log-mean-exp at `temperature`), averaged over the query's words.
    A caption naming two visual concepts has a word for each, each pulled toward its own cells,
    where one maximum for the whole caption pulls it toward one of them; a concept's word is
    pulled toward its look whether or not the attention has found it. Counted and faded as the
    mean value's hinge is."""
    import torch.nn.functional as F

    from amc_data.ranking import training

    region_terms = training._Run._region_terms

    def with_words(self, inside, modality, regions, batch, own, positive):
        total = region_terms(self, inside, modality, regions, batch, own, positive)
        model, value, mask = _KEPT["model"], _KEPT["value"], _KEPT["mask"]
        words = F.normalize(model.query_shared(model.words(batch.query.tokens)).float(), dim=-1)
        cells = F.normalize(value.float(), dim=-1)  # pool (P, R, d) | pairs (B, 1 + t, R, d)
        if batch.pooled:
            match = torch.einsum("bld,prd->bplr", words, cells)
            cell_mask = mask[None, :, None, :]
        else:
            match = torch.einsum("bld,bmrd->bmlr", words, cells)
            cell_mask = mask[:, :, None, :]
        best = _soft_best(match, cell_mask, temperature)  # (B, M, L)
        word_mask = batch.query.mask[:, None, :].float()
        score = (best * word_mask).sum(-1) / word_mask.sum(-1).clamp(min=1)  # (B, M)
        visual = self._region_query_weights(inside, modality)
        read = visual[torch.arange(len(own), device=own.device), own]
        share = self._mean_hinge_weight() / self.config.region_mean_hinge
        return total + weight * share * self._hinge(batch, score, query_weights=read)

    return with_words


def _values_only_match(value_reading):
    """`model._value_reading` whose per-item match is computed with the query held fixed (the
    mean's match as before): a term on the match teaches the items' values, not the query."""
    from amc_data.ranking.model import ValueReading

    def reading(query_unit, items, pool):
        held = value_reading(query_unit.detach(), items, pool)
        full = value_reading(query_unit, items, pool)
        return ValueReading(held.match, full.mask, full.mean)

    return reading


def _with_modality_mixture(floor: float, sides: str = "region", fade: float = 0.0):
    """`AttentionModel._score` whose modality mixture x = w_v v + w_k k passes, in training, at
    least `floor` of the score's gradient to the attended vector of each modality in `sides`
    ("region", "both") while its forward value stays the gate's (where the gate reads the
    keywords for a caption, the regions are still asked for its concept as under fixed weights);
    with `fade`, the floor falls linearly to 0 over that share of the epochs. `sides="forward"`:
    the forward weights themselves blended toward 0.5 / 0.5 by the same fading share (fixed
    weights at first, the gate's own by then) where they meet the attended vectors, after
    modality dropout; `sides="blend"`: the same blend before modality dropout (which then draws
    the kept modality as it does for fixed weights, at random at first), the routing term
    still reading the gate's own weights."""
    import inspect
    import textwrap

    from amc_data.ranking import model as model_module

    source = textwrap.dedent(inspect.getsource(model_module.AttentionModel._score))
    line = "x = sum(modality[..., i : i + 1] * vec for i, vec in enumerate(attended))"
    assert line in source, "the package's modality mixture moved: update the probe"
    mixed = "_probe_mix(modality[..., i : i + 1], vec, i, self.training)"
    source = source.replace(line, f"x = sum({mixed} for i, vec in enumerate(attended))")
    own = "gate_weights = modality  # the gate's own, before modality dropout"
    assert own in source, "the package's gate weights moved: update the probe"
    source = source.replace(own, f"{own}\n    modality = _probe_blend(modality, self.training)")

    def blend(weights, training):
        if sides != "blend" or not training or not torch.is_grad_enabled():
            return weights
        left = max(0.0, 1 - _EPOCH["now"] / (fade * _EPOCH["of"]))
        return weights * (1 - left) + 0.5 * left

    def mix(weight, vec, side, training):
        if not training or not torch.is_grad_enabled() or sides == "blend":
            return weight * vec
        left = max(0.0, 1 - _EPOCH["now"] / (fade * _EPOCH["of"])) if fade else 1.0
        if sides == "forward":
            return (weight * (1 - left) + 0.5 * left) * vec
        if sides == "region" and side != 0:
            return weight * vec
        held, fixed = vec.detach(), weight.detach()
        passed = torch.where(fixed > 0, fixed.clamp_min(floor * left), fixed)  # dropout's 0 kept
        return weight * held + passed * (vec - held)

    namespace = dict(vars(model_module), _probe_mix=mix, _probe_blend=blend)
    exec(compile(source, model_module.__file__, "exec"), namespace)
    return namespace["_score"]


def _with_unimodal(routing_loss, weight: float, routing: float):
    """The gate routing term plus `weight` / `routing` (the trainer multiplies the term by
    `routing`) times each modality's hinge alone (each query's mean over its violating
    negatives), weighted per query by the gate's detached weights on its own image."""

    def loss(alone, gate, own, positive, margin, **options):
        rows = torch.arange(alone.shape[0], device=alone.device)
        own_alone = alone[rows, own].unsqueeze(1)  # (B, 1, 2)
        negative = (~positive).unsqueeze(-1)  # (B, P, 1)
        terms = (margin - own_alone + alone).clamp(min=0) * negative  # (B, P, 2)
        per_query = terms.sum(1) / (terms > 0).sum(1).clamp(min=1)  # (B, 2)
        term = (per_query * gate[rows, own].detach().float()).sum() / len(rows)
        return routing_loss(alone, gate, own, positive, margin, **options) + weight / routing * term

    return loss


def _modality_dropout(share: float, by_gate: bool = False, schedule: str = "flat"):
    """`AttentionModel._score` whose modality weights, in training, are replaced for `share` of
    the queries by all the weight on one modality (either, at random, where the image has it):
    each modality must then rank some queries alone, so a concept the other modality already
    tells apart is still asked of it (session 9's probe; not a package option)."""
    from amc_data.ranking import model as model_module

    softmax = model_module._masked_softmax

    def dropped(logits, mask):
        weights = softmax(logits, mask)
        if not torch.is_grad_enabled() or weights.shape[-1] != 2 or not dropped.training:
            return weights
        rows = dropped.rows
        weights = weights.expand(rows, *weights.shape[1:]) if weights.shape[0] == 1 else weights
        now, of = _EPOCH["now"], _EPOCH["of"]
        if schedule == "half":  # the first half of the epochs only
            p = share if now < of / 2 else 0.0
        elif schedule == "linear":  # from share at the first epoch to 0 at the last
            p = share * (1 - now / max(1, of - 1))
        else:
            p = share
        pick = torch.rand(rows) < p
        if by_gate == "argmax":  # the modality the gate weighs more (ties: at random)
            gate = weights[:, 0, :].detach().float()
            tie = (gate[:, 0] - gate[:, 1]).abs() < 1e-6
            side = torch.where(tie, torch.randint(0, 2, (rows,)), gate.argmax(-1))
        elif by_gate:  # the kept modality drawn by the gate's own (detached) weights
            side = torch.multinomial(weights[:, 0, :].detach().float(), 1)[:, 0]
        else:
            side = torch.randint(0, 2, (rows,))
        one = torch.nn.functional.one_hot(side, 2).float()[:, None, :]  # (Q, 1, 2)
        one = one.expand_as(weights)
        usable = pick[:, None] & (mask.expand_as(weights) & one.bool()).any(-1)  # (Q, N)
        return torch.where(usable[..., None], one, weights)

    def _score(self, q, img, pool):
        dropped.training = self.training
        dropped.rows = q.shared.shape[0]
        model_module._masked_softmax = dropped
        try:
            return original(self, q, img, pool)
        finally:
            model_module._masked_softmax = softmax

    original = AttentionModel._score
    return _score


def _kept_by(rule: str):
    """`model._drop_modality` keeping, for a dropped query, the modality chosen by `rule`
    (session 10's probes): "per query" one draw by the gate's weights for all of a query's
    images; "sharpened P" one per image by the weights raised to the power P; "sure M" the
    favoured modality where the weights differ by at least M, one drawn per query elsewhere;
    "floored F" one per image by the weights held within [F, 1 - F] (session 17: each modality
    kept for at least that share of a dropped query's images, whatever the gate says);
    "early F" one per image at random over the first F of the epochs, by the weights after. (Ties,
    as fixed weights are, come out as one draw per query or per image as each rule
    says.)"""

    def dropped(modality, available, share, queries, keep="drawn"):
        modality = modality.expand(queries, *modality.shape[1:])
        chosen = torch.rand(queries) < share
        weights = modality.detach().float()
        coin = torch.randint(0, 2, (queries,))[:, None]
        if rule == "per query":
            side = (torch.rand(queries)[:, None] < weights[..., 1]).long()
        elif rule.startswith("early"):
            early = _EPOCH["now"] < float(rule.split()[1]) * _EPOCH["of"]
            p = torch.full_like(weights[..., 1], 0.5) if early else weights[..., 1]
            side = (torch.rand(p.shape) < p).long()
        elif rule.startswith("floored"):
            floor = float(rule.split()[1])
            p = weights[..., 1].clamp(floor, 1 - floor)
            side = (torch.rand(p.shape) < p).long()
        elif rule.startswith("sharpened"):
            p = weights.clamp_min(1e-6) ** float(rule.split()[1])
            side = (torch.rand(p.shape[:-1]) < p[..., 1] / p.sum(-1)).long()
        else:  # "sure M"
            sure = (weights[..., 0] - weights[..., 1]).abs() >= float(rule.split()[1])
            side = torch.where(sure, weights.argmax(-1), coin)
        kept = torch.nn.functional.one_hot(side, 2).bool()
        usable = chosen[:, None] & (kept & available).any(-1)
        return torch.where(usable[..., None], kept.to(modality.dtype), modality)

    return dropped


def _boosted_step(which: str):
    """A training step whose loss is the mean over every negative cell, with the gradient of
    the chosen parameters multiplied by (negative cells / violating cells): the gradient the
    violating mean gives them (the two means differ only by that per-batch factor)."""
    from amc_data.ranking import training

    attention = which == "attention"

    def step(self, net, batch, optimizer, scheduler):
        batch = batch.to(self.device, non_blocking=True)
        if self.resident is not None:
            batch = self.resident.fill(batch)
        with training.precision_context(self.device, self.amp):
            scores = net(batch.query, batch.images, pool=True).float()
        loss = training.pool_hinge_loss(
            scores, batch.pool_own, batch.pool_positive, self.config.margin
        )
        with torch.no_grad():
            rows = torch.arange(scores.shape[0])
            terms = (self.config.margin - scores[rows, batch.pool_own][:, None] + scores).clamp(
                min=0
            )
            terms = terms * ~batch.pool_positive
            factor = (~batch.pool_positive).sum() / (terms > 0).sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for name, parameter in net.named_parameters():
            if parameter.grad is not None and name.startswith(ATTENTION_PARAMETERS) == attention:
                parameter.grad.mul_(factor)
        if self.config.clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.config.clip)
        optimizer.step()
        scheduler.step()
        return loss.detach()

    return step


# -- the reference ------------------------------------------------------------------------------
def reference_run(world: World, config: RefConfig) -> dict:
    prepared = world.prepared
    row_of = {int(i): r for r, i in enumerate(prepared.feature_ids)}

    def matrix_of(model, tables, split):
        queries = np.sort(prepared.split_queries(split)["query_id"].to_numpy(np.int64))
        images = np.sort(prepared.split_images(split))
        rows = np.array([row_of[int(i)] for i in images])
        with torch.no_grad():
            q = model.encode_query(tables.query(queries))
            s, *_ = model.pool(q, *tables.images(rows))
        return s.numpy(), queries, images

    def validate(model, tables):
        return ranking(world, *matrix_of(model, tables, "val"))["ndcg@10"]

    started = time.perf_counter()
    model, tables, history = fit(config, prepared, validate)
    result = {"seconds": time.perf_counter() - started, "val": history}
    result.update(ranking(world, *matrix_of(model, tables, "test")))

    def attend(qids, img_ids):
        rows = np.array([row_of[int(i)] for i in img_ids])
        ids, counts = tables.keyword_raw[rows], tables.keyword_counts[rows].numpy()
        if config.kind != "amc" or not config.intra:
            return ids, counts, None, None
        kw, reg = [], []
        with torch.no_grad():
            for s in range(0, len(rows), 256):
                q = model.encode_query(tables.query(qids[s : s + 256]))
                images = [t[:, None] for t in tables.images(rows[s : s + 256])]
                _, rw, kww, _ = model.score(q, *images)
                kw.append(kww[:, 0].numpy())
                reg.append(rw[:, 0].numpy())
        return ids, counts, np.concatenate(kw), np.concatenate(reg)

    result.update(masses(world, attend))
    return result


REFERENCE = {
    "ref amc (paper: t=8 sampled)": {},
    "ref visual": {"kind": "visual"},
    "ref keyword": {"kind": "keyword"},
    "ref fusion": {"kind": "fusion"},
    "ref amc batch negatives": {"negatives": "batch"},
    "ref amc hardest (VSE++)": {"negatives": "hardest"},
    "ref amc shared words": {"shared_words": True},
    "ref amc batch + shared": {"negatives": "batch", "shared_words": True},
    "ref amc key projection": {"key_projection": True},
    "ref amc temperature 0.25": {"temperature": 0.25},
    "ref amc init 0.5": {"init_std": 0.5},
    "ref amc dropout 0": {"dropout": 0.0},
    "ref amc weight decay 0": {"weight_decay": 0.0},
    "ref amc unit values": {"unit_values": True},
    "ref amc cosine attention x10": {"cosine_attention": 10.0},
    "ref amc batch + cosine x10": {"negatives": "batch", "cosine_attention": 10.0},
    "ref amc batch + cosine learned from 1": {
        "negatives": "batch",
        "cosine_attention": 1.0,
        "learn_scale": True,
    },
    "ref amc batch + cosine learned from 4": {
        "negatives": "batch",
        "cosine_attention": 4.0,
        "learn_scale": True,
    },
    "ref amc batch + temperature 0.125": {"negatives": "batch", "temperature": 0.125},
    "ref amc infonce batch": {"negatives": "batch", "loss": "infonce"},
    "ref amc infonce batch + cosine x10": {
        "negatives": "batch",
        "loss": "infonce",
        "cosine_attention": 10.0,
    },
    "ref amc infonce batch + cosine x10 + shared": {
        "negatives": "batch",
        "loss": "infonce",
        "cosine_attention": 10.0,
        "shared_words": True,
    },
    "ref amc batch + unit": {"negatives": "batch", "unit_values": True},
    "ref amc batch + shared + unit": {
        "negatives": "batch",
        "shared_words": True,
        "unit_values": True,
    },
}
# An entry names only what it changes from the package's defaults of its session: those it
# leaves unnamed train as today's defaults. Reproducing an entry of sessions 9-11 (the
# violating mean, the entropy term at 0.001): a copy of the entry with the two options of
# "pkg session 11 defaults" added; of sessions before 9, FIDELITY.md names their defaults.
# Session 17's probes ran on session 16's defaults: the package's gate warmup, built after them,
# off, so that only the probe acts.
S16 = {"gate_warmup": 0.0}
# The mean value's hinge at one weight throughout, as before session 19's fading default.
HINGE_HELD = {"region_mean_hinge_end": 1.0}

PACKAGE = {
    "pkg amc": {},
    # Session 12: a lower floor for the entropy term (textual concepts of the several-concept
    # synth worlds still below 0.3 of the mass).
    "pkg entropy floor 1.0: amc": {"attention_entropy_floor": 1.0},
    "pkg entropy floor 1.0: amc --no-inter": {"inter": False, "attention_entropy_floor": 1.0},
    # Session 12: the defaults of sessions 9-11, against today's (the blend, the term at 0.003).
    "pkg session 11 defaults: amc": {"pool_reduction": "violating", "attention_entropy": 0.001},
    "pkg session 11 defaults: amc --no-inter": {
        "inter": False,
        "pool_reduction": "violating",
        "attention_entropy": 0.001,
    },
    # Session 8: the keyword attention's entropy (train --attention-entropy, with its default
    # floor) named explicitly: the default since that session, so "pkg amc" trains it too.
    "pkg entropy 0.001: amc": {"attention_entropy": 0.001},
    "pkg entropy 0.001: amc --no-inter": {"inter": False, "attention_entropy": 0.001},
    "pkg entropy 0.001 violating: amc": {
        "attention_entropy": 0.001,
        "pool_reduction": "violating",
    },
    # Session 6: part of the pool drawn among images whose training captions share a word with
    # the batch's captions (the negatives that only a second concept tells apart).
    "pkg word pool 0.5: amc": {"pool_word_share": 0.5},
    "pkg word pool 0.5: amc --no-inter": {"inter": False, "pool_word_share": 0.5},
    "pkg word pool 0.25: amc": {"pool_word_share": 0.25},
    "pkg word pool 0.25: amc --no-inter": {"inter": False, "pool_word_share": 0.25},
    "pkg violating: amc pool 256": {"pool_negatives": 256, "pool_reduction": "violating"},
    "pkg violating: amc pool 256 --no-inter": {
        "inter": False,
        "pool_negatives": 256,
        "pool_reduction": "violating",
    },
    # Session 11: the pool's size with modality dropout and the drawn modality; the pool loss
    # averaged per query (the package's `pool_reduction="per-query"`), alone, without dropout,
    # with a stronger entropy term, half and half with the violating mean ("blend": the package's
    # `pool_reduction="mixed"`), and over every query ("all").
    "pkg pool 16: amc": {"pool_negatives": 16},
    "pkg pool 32: amc": {"pool_negatives": 32},
    "pkg pool 256 no dropout: amc": {"pool_negatives": 256, "modality_dropout": 0.0},
    "pkg no dropout: amc": {"modality_dropout": 0.0},
    "pkg per query violating: amc": {"pool_reduction": "per-query"},
    "pkg per query violating: amc --no-inter": {"inter": False, "pool_reduction": "per-query"},
    "pkg per query no dropout: amc": {"pool_reduction": "per-query", "modality_dropout": 0.0},
    "pkg per query entropy 0.01: amc": {"pool_reduction": "per-query", "attention_entropy": 0.01},
    "pkg per query entropy 0.01: amc --no-inter": {
        "inter": False,
        "pool_reduction": "per-query",
        "attention_entropy": 0.01,
    },
    "pkg per query blend: amc": {"pool_reduction": "mixed"},
    "pkg per query blend: amc --no-inter": {"inter": False, "pool_reduction": "mixed"},
    "pkg per query blend entropy 0.003: amc": {
        "pool_reduction": "mixed",
        "attention_entropy": 0.003,
    },
    "pkg per query blend entropy 0.003: amc --no-inter": {
        "inter": False,
        "pool_reduction": "mixed",
        "attention_entropy": 0.003,
    },
    "pkg per query all: amc": {"per_query_over_every_query": True},
    "pkg per query all: amc --no-inter": {"inter": False, "per_query_over_every_query": True},
    # Session 9: the entropy term ten times stronger with the new defaults (a probe).
    "pkg entropy 0.003: amc": {"attention_entropy": 0.003},  # session 10
    "pkg entropy 0.003: amc --no-inter": {"inter": False, "attention_entropy": 0.003},
    "pkg entropy 0.005: amc": {"attention_entropy": 0.005},  # session 12
    "pkg entropy 0.005: amc --no-inter": {"inter": False, "attention_entropy": 0.005},
    "pkg entropy 0.01: amc": {"attention_entropy": 0.01},
    "pkg entropy 0.01: amc --no-inter": {"inter": False, "attention_entropy": 0.01},
    # Session 13: the gate routing term (train --gate-routing; it needs the gate, so its
    # comparison is "pkg amc --no-inter").
    "pkg gate routing 0.4: amc": {"gate_routing": 0.4},
    "pkg gate routing 0: amc": {"gate_routing": 0.0},  # session 12's defaults
    "pkg gate routing 0.4: amc --no-intra": {"gate_routing": 0.4, "intra": False},
    # Session 14: the region attention's own scale (`region_attention_scale_rate`; 0, the
    # default, shares the keyword attention's).
    "pkg region rate 3: amc": {"model_options": {"region_attention_scale_rate": 3.0}},
    "pkg region rate 3: amc --no-inter": {
        "inter": False,
        "model_options": {"region_attention_scale_rate": 3.0},
    },
    "pkg region rate 1: amc": {"model_options": {"region_attention_scale_rate": 1.0}},
    "pkg region rate 1, from epoch 4 also 10: amc": {
        "region_scale_switch": (4, 10.0),
        "model_options": {"region_attention_scale_rate": 1.0},
    },
    "pkg region rate 3 entropy 0.003: amc": {
        "region_entropy": (0.003, 1.5),
        "model_options": {"region_attention_scale_rate": 3.0},
    },
    # Session 15: the region attention drawn toward the cells whose values match q^m, and the
    # regions' mean value's hinge (a probe first, then the package's `region_target` and
    # `region_mean_hinge`, on by default: "pkg amc"; the probe turns the package's off).
    "pkg region terms off: amc": {"region_target": 0.0, "region_mean_hinge": 0.0},
    "pkg value target 0.1 at 0.05: amc": {"value_target": (0.1, 0.05)},
    "pkg value target 0.1 at 0.05: amc --no-inter": {"inter": False, "value_target": (0.1, 0.05)},
    "pkg value target 0.03 at 0.05: amc": {"value_target": (0.03, 0.05)},
    "pkg value target 0.3 at 0.05: amc": {"value_target": (0.3, 0.05)},
    "pkg value target 0.1 at 0.1: amc": {"value_target": (0.1, 0.1)},
    "pkg value target 0.1 at 0.05, mean pool 0.3: amc": {"value_target": (0.1, 0.05, 0.3)},
    "pkg mean pool 0.3: amc": {"value_target": (0.0, 0.05, 0.3)},
    "pkg value target 0.1 at 0.05, mean pool 0.3: amc --no-inter": {
        "inter": False,
        "value_target": (0.1, 0.05, 0.3),
    },
    "pkg value target 0.1 at 0.05, mean pool 0.3: amc --no-intra": {
        "intra": False,
        "value_target": (0.1, 0.05, 0.3),
    },
    # Session 16: the region terms' strengths, for the visual concepts still below 0.3.
    "pkg region target 0.3: amc": {"region_target": 0.3},
    "pkg region target at 0.02: amc": {"region_target_temperature": 0.02},
    "pkg region mean hinge 0.5: amc": {"region_mean_hinge": 0.5},
    "pkg keyword target 0.1 at 0.05: amc": {"keyword_target_probe": (0.1, 0.05)},
    # The package's warmup of the region terms (session 16) off, and shorter.
    "pkg region terms warmup 0: amc": {"region_terms_warmup": 0.0},
    "pkg region terms warmup 0: amc --no-inter": {"inter": False, "region_terms_warmup": 0.0},
    "pkg region terms warmup 0.25: amc": {"region_terms_warmup": 0.25},
    "pkg region terms warmup 0.25: amc --no-inter": {"inter": False, "region_terms_warmup": 0.25},
    "pkg keyword target 0.05, warmup 0: amc": {"keyword_target": 0.05, "region_terms_warmup": 0.0},
    "pkg keyword target 0.05, warmup 0: amc --no-inter": {
        "inter": False,
        "keyword_target": 0.05,
        "region_terms_warmup": 0.0,
    },
    # Session 17: the main hinge's gradient to the regions floored (forward unchanged), or the
    # gate warmed up from fixed weights, for the visual concepts whose captions the gate sends
    # to the keywords. All on session 16's defaults (the package's gate warmup off).
    "pkg gradient floor 0.5: amc": {"modality_mixture": (0.5, "region"), **S16},
    "pkg gradient floor 0.25: amc": {"modality_mixture": (0.25, "region"), **S16},
    "pkg gradient floor 0.5 both: amc": {"modality_mixture": (0.5, "both"), **S16},
    "pkg gradient floor 0.5 fading 0.5: amc": {"modality_mixture": (0.5, "region", 0.5), **S16},
    # At random per image:
    "pkg keep sharpened 0: amc": {"modality_keep_rule": "sharpened 0", **S16},
    "pkg keep floored 0.25: amc": {"modality_keep_rule": "floored 0.25", **S16},
    "pkg keep early 0.5: amc": {"modality_keep_rule": "early 0.5", **S16},
    "pkg keep early 0.5: amc --no-inter": {"inter": False, "modality_keep_rule": "early 0.5"},
    "pkg keep floored 0.25: amc --no-inter": {"inter": False, "modality_keep_rule": "floored 0.25"},
    "pkg gate warmup 0.25: amc": {"modality_mixture": (0.0, "forward", 0.25), **S16},
    "pkg gate warmup 0.5: amc": {"modality_mixture": (0.0, "forward", 0.5), **S16},
    "pkg gate blend 0.25: amc": {"modality_mixture": (0.0, "blend", 0.25), **S16},
    "pkg gate blend 0.5: amc": {"modality_mixture": (0.0, "blend", 0.5), **S16},
    "pkg gate warmup off: amc": S16,  # the package's option at 0: session 16's defaults
    "pkg gate warmup 0.75: amc": {"gate_warmup": 0.75},
    "pkg gate warmup 1: amc": {"gate_warmup": 1.0},
    "pkg region terms warmup off, gate warmup 0.5: amc": {"region_terms_warmup": 0.0},
    # Session 18: a dead concept's caption matches other cells' values better than its own, so
    # the region target (a softmax of that match) points away from its cells: off, or softer.
    "pkg region target off: amc": {"region_target": 0.0},
    "pkg region target at 0.2: amc": {"region_target_temperature": 0.2},
    # The hinge between session 15's 0.3 and session 18's 0.5: fewer dead concepts against a gate
    # that parts less (0.17 at m2 / 2 with 0.5). These and session 19's gate routing entries were
    # measured with the hinge's weight the same throughout (`region_mean_hinge_end` 1, as then).
    "pkg region mean hinge 0.4: amc": {"region_mean_hinge": 0.4, **HINGE_HELD},
    "pkg region mean hinge 0.7: amc": {"region_mean_hinge": 0.7, **HINGE_HELD},
    # Session 19: the gate routing term stronger with the hinge at 0.5 (the gate parted by 0.17
    # at m2 / 2), and the hinge falling over the run (a patch of the region terms; "0.5 to 0.3"
    # is the package's `region_mean_hinge_end` 0.6 since, the same arithmetic).
    "pkg gate routing 0.6: amc": {"gate_routing": 0.6, **HINGE_HELD},
    "pkg gate routing 1: amc": {"gate_routing": 1.0, **HINGE_HELD},
    "pkg region mean hinge 0.5 to 0.3: amc": {"region_mean_hinge_fade": (0.5, 0.3)},
    "pkg region mean hinge 0.7 to 0.2: amc": {"region_mean_hinge_fade": (0.7, 0.2)},
    "pkg region mean hinge 0.7 to 0.3 by half: amc": {"region_mean_hinge_fade": (0.7, 0.3, 0.5)},
    "pkg region rows floor 0.5: amc": {"region_rows": ("floor", 0.5)},
    # Session 20: beside the mean value's hinge, the hinge of each image's best-matching cells
    # (a soft maximum of their match), fading with the mean value's or falling to 0; with the
    # query held fixed in the match (the values alone learn from it).
    "pkg region best cells 0.2 at 0.05: amc": {"region_best_cells": (0.2, 0.05)},
    "pkg region best cells 0.5 at 0.05: amc": {"region_best_cells": (0.5, 0.05)},
    "pkg region best cells 0.3 at 0.05: amc": {"region_best_cells": (0.3, 0.05)},
    "pkg region best cells 0.5 at 0.1: amc": {"region_best_cells": (0.5, 0.1)},
    "pkg region best cells 0.5 at 0.2: amc": {"region_best_cells": (0.5, 0.2)},
    "pkg region best cells 0.5 at 0.05, values only: amc": {
        "region_best_cells": (0.5, 0.05),
        "region_match_values_only": True,
    },
    "pkg region best cells 0.5 at 0.05 to 0: amc": {"region_best_cells": (0.5, 0.05, 1.0)},
    "pkg region best cells 0.5 at 0.05 to 0 by half: amc": {"region_best_cells": (0.5, 0.05, 0.5)},
    # Session 21: falling to 0 by three quarters, the best cells' mean, the soft maximum
    # counted by the attention's spread, and each query word's best cell (a late-interaction
    # hinge).
    "pkg region best cells 0.5 at 0.05 to 0 by three quarters: amc": {
        "region_best_cells": (0.5, 0.05, 0.75)
    },
    "pkg region best 2 cells 0.5: amc": {"region_best_cells": (0.5, 0.05, None, 2)},
    "pkg region word cells 0.3: amc": {"region_word_cells": (0.3,)},
    "pkg region word cells 0.5: amc": {"region_word_cells": (0.5,)},
    "pkg region word cells 1.0: amc": {"region_word_cells": (1.0,)},
    "pkg region word cells 2.0: amc": {"region_word_cells": (2.0,)},
    "pkg region best cells 0.5 by spread: amc": {"region_best_cells": (0.5, 0.05, None, None, 1.0)},
    "pkg region best cells 0.5 by spread squared: amc": {
        "region_best_cells": (0.5, 0.05, None, None, 2.0)
    },
    "pkg region rows ramp 4: amc": {"region_rows": ("ramp", 4)},
    "pkg region rows ramp 8: amc": {"region_rows": ("ramp", 8)},
    "pkg keyword target 0.1 at 0.05: amc --no-inter": {
        "inter": False,
        "keyword_target_probe": (0.1, 0.05),
    },
    "pkg keyword target 0.3 at 0.05: amc": {"keyword_target_probe": (0.3, 0.05)},
    "pkg region frozen 4 then rate 10: amc": {
        "region_scale_frozen": 4,
        "model_options": {"region_attention_scale_rate": 10.0},
    },
    # Probes of the same session on its first defaults (one shared scale), not kept: a quarter
    # of the training queries attending softly (scale 1); each modality's hinge alone beside
    # the routing term, weighted by the gate.
    "pkg soft quarter: amc": {
        "soft_attention": (0.25, 1.0),
        "model_options": {"region_attention_scale_rate": 0.0},
    },
    "pkg unimodal 0.5: amc": {
        "unimodal": 0.5,
        "model_options": {"region_attention_scale_rate": 0.0},
    },
    "pkg entropy 0.007: amc": {"attention_entropy": 0.007},  # session 13
    "pkg entropy 0.007: amc --no-inter": {"inter": False, "attention_entropy": 0.007},
    # Session 9: the defaults before it (the mean over every negative, no modality dropout).
    "pkg before: amc": {"pool_reduction": "all", "modality_dropout": 0.0},
    "pkg before: amc --no-inter": {
        "inter": False,
        "pool_reduction": "all",
        "modality_dropout": 0.0,
    },
    # Session 9: a share of the queries trained on one modality alone (a patched softmax; the
    # package's --modality-dropout since, 0 here so that only the patch drops).
    "pkg modality drop 0.3: amc": {"modality_drop": 0.3},
    "pkg modality drop 0.3: amc --no-inter": {"inter": False, "modality_drop": 0.3},
    "pkg modality drop 0.3 violating: amc": {"modality_drop": 0.3, "pool_reduction": "violating"},
    "pkg modality drop 0.3 violating: amc --no-inter": {
        "inter": False,
        "modality_drop": 0.3,
        "pool_reduction": "violating",
    },
    "pkg modality drop 0.3 by gate: amc": {"modality_drop": 0.3, "modality_drop_by_gate": True},
    "pkg modality drop 0.3 by gate: amc --no-inter": {
        "inter": False,
        "modality_drop": 0.3,
        "modality_drop_by_gate": True,
    },
    "pkg modality drop 0.2 argmax violating: amc": {
        "modality_drop": 0.2,
        "modality_drop_by_gate": "argmax",
        "pool_reduction": "violating",
    },
    "pkg modality drop 0.2 argmax violating: amc --no-inter": {
        "inter": False,
        "modality_drop": 0.2,
        "modality_drop_by_gate": "argmax",
        "pool_reduction": "violating",
    },
    # Session 10: the package's dropout (violating mean, 0.2) with the kept modality chosen
    # otherwise; the package's two rules are its --modality-dropout-keep drawn / favoured.
    "pkg keep favoured: amc": {"modality_dropout_keep": "favoured"},
    "pkg keep favoured: amc --no-inter": {"inter": False, "modality_dropout_keep": "favoured"},
    "pkg keep sharpened 1: amc": {"modality_keep_rule": "sharpened 1"},  # drawn, as probed
    "pkg keep per query: amc": {"modality_keep_rule": "per query"},
    "pkg keep per query: amc --no-inter": {"inter": False, "modality_keep_rule": "per query"},
    "pkg keep sharpened 4: amc": {"modality_keep_rule": "sharpened 4"},
    "pkg keep sharpened 4: amc --no-inter": {"inter": False, "modality_keep_rule": "sharpened 4"},
    "pkg keep sure 0.3: amc": {"modality_keep_rule": "sure 0.3"},
    "pkg keep sure 0.3: amc --no-inter": {"inter": False, "modality_keep_rule": "sure 0.3"},
    "pkg modality drop 0.3 half: amc": {"modality_drop": 0.3, "modality_drop_schedule": "half"},
    "pkg modality drop 0.3 half: amc --no-inter": {
        "inter": False,
        "modality_drop": 0.3,
        "modality_drop_schedule": "half",
    },
    "pkg modality drop 0.3 linear: amc": {
        "modality_drop": 0.3,
        "modality_drop_schedule": "linear",
    },
    "pkg modality drop 0.3 linear: amc --no-inter": {
        "inter": False,
        "modality_drop": 0.3,
        "modality_drop_schedule": "linear",
    },
    "pkg modality drop 0.2 violating: amc": {"modality_drop": 0.2, "pool_reduction": "violating"},
    "pkg modality drop 0.2 violating: amc --no-inter": {
        "inter": False,
        "modality_drop": 0.2,
        "pool_reduction": "violating",
    },
    "pkg modality drop 0.1 violating: amc": {"modality_drop": 0.1, "pool_reduction": "violating"},
    "pkg modality drop 0.1 violating: amc --no-inter": {
        "inter": False,
        "modality_drop": 0.1,
        "pool_reduction": "violating",
    },
    "pkg modality drop 0.1: amc": {"modality_drop": 0.1},
    "pkg modality drop 0.1: amc --no-inter": {"inter": False, "modality_drop": 0.1},
    # Session 9: half of each batch composed by word, half uniform.
    "pkg word half: amc": {"word_batches": 0.5},
    "pkg word half: amc --no-inter": {"inter": False, "word_batches": 0.5},
    "pkg word half violating: amc": {"word_batches": 0.5, "pool_reduction": "violating"},
    "pkg word half violating: amc --no-inter": {
        "inter": False,
        "word_batches": 0.5,
        "pool_reduction": "violating",
    },
    "pkg word quarter violating: amc": {"word_batches": 0.25, "pool_reduction": "violating"},
    "pkg word quarter violating: amc --no-inter": {
        "inter": False,
        "word_batches": 0.25,
        "pool_reduction": "violating",
    },
    "pkg word batches: amc": {"word_batches": True},
    "pkg word batches: amc --no-inter": {"inter": False, "word_batches": True},
    "pkg word batches violating: amc": {"word_batches": True, "pool_reduction": "violating"},
    "pkg word pool 1: amc": {"pool_word_share": 1.0},
    "pkg word pool 1: amc --no-inter": {"inter": False, "pool_word_share": 1.0},
    "pkg word pool 1 of 256: amc": {"pool_word_share": 1.0, "pool_negatives": 256},
    "pkg word pool 1 of 256: amc --no-inter": {
        "inter": False,
        "pool_word_share": 1.0,
        "pool_negatives": 256,
    },
    "pkg word pool 1 of 256 violating: amc": {
        "pool_word_share": 1.0,
        "pool_negatives": 256,
        "pool_reduction": "violating",
    },
    "pkg word pool 1 of 256 violating: amc --no-inter": {
        "inter": False,
        "pool_word_share": 1.0,
        "pool_negatives": 256,
        "pool_reduction": "violating",
    },
    "pkg word pool 0.5 violating: amc": {"pool_word_share": 0.5, "pool_reduction": "violating"},
    "pkg word pool 0.5 violating: amc --no-inter": {
        "inter": False,
        "pool_word_share": 0.5,
        "pool_reduction": "violating",
    },
    # Session 5: keep every concept's gradient without making the gate redundant.
    "pkg mix 0.1: amc": {"loss_options": {"violating_weight": 0.1}},
    "pkg mix 0.1: amc --no-inter": {"inter": False, "loss_options": {"violating_weight": 0.1}},
    "pkg mix 0.3: amc": {"loss_options": {"violating_weight": 0.3}},
    "pkg mix 0.3: amc --no-inter": {"inter": False, "loss_options": {"violating_weight": 0.3}},
    "pkg mix 1: amc": {"loss_options": {"violating_weight": 1.0}},
    "pkg mix 1: amc --no-inter": {"inter": False, "loss_options": {"violating_weight": 1.0}},
    "pkg attention violating: amc": {"violating_params": "attention"},
    "pkg attention violating: amc --no-inter": {"inter": False, "violating_params": "attention"},
    "pkg gate from summed words: amc": {"gate_words": True},
    "pkg violating: gate from summed words: amc": {
        "gate_words": True,
        "loss_options": {"reduction": "violating"},
    },
    "pkg adam beta2 0.99: amc": {"betas": (0.9, 0.99)},
    "pkg adam beta2 0.99: amc --no-inter": {"inter": False, "betas": (0.9, 0.99)},
    "pkg rest violating: amc": {"violating_params": "rest"},
    "pkg rest violating: amc --no-inter": {"inter": False, "violating_params": "rest"},
    # Session 4 (several concepts an image): candidates for the concepts left unlearned.
    "pkg amc pool loss over violating cells": {"loss_options": {"reduction": "violating"}},
    "pkg amc --hardest": {"hardest": True},
    "pkg violating: amc --no-inter": {"inter": False, "loss_options": {"reduction": "violating"}},
    "pkg violating: amc --no-intra": {"intra": False, "loss_options": {"reduction": "violating"}},
    "pkg violating: fusion": {"model": "fusion", "loss_options": {"reduction": "violating"}},
    "pkg violating: amc gate reading the attended vectors": {
        "model_options": {"gate_content": True},
        "loss_options": {"reduction": "violating"},
    },
    "pkg violating: amc attention scale learned 5x faster": {
        "model_options": {"attention_scale_rate": 5.0},
        "loss_options": {"reduction": "violating"},
    },
    "pkg violating: amc 16 epochs": {"epochs": 16, "loss_options": {"reduction": "violating"}},
    "pkg amc attention scale learned at the common pace": {
        "model_options": {"attention_scale_rate": 1.0}
    },
    "pkg amc pool 256": {"pool_negatives": 256},
    "pkg amc 16 epochs": {"epochs": 16},
    "pkg visual": {"model": "visual"},
    "pkg keyword": {"model": "keyword"},
    "pkg fusion": {"model": "fusion"},
    "pkg cca": {"model": "cca"},
    "pkg amc --no-intra": {"intra": False},
    "pkg amc --no-inter": {"inter": False},
    # The gate and the loss of session 2 (FIDELITY.md), against the defaults they replaced.
    "pkg amc --loss pairs": {"loss": "pairs"},
    "pkg amc --loss pairs --no-inter": {"loss": "pairs", "inter": False},
    "pkg amc --loss pairs --in-batch": {"loss": "pairs", "in_batch": True},
    "pkg amc gate as before (pairs)": {
        "loss": "pairs",
        "model_options": {"gate_scale": 0.0, "gate_content": True},
    },
    "pkg amc gate reading the attended vectors": {"model_options": {"gate_content": True}},
    "pkg amc unscaled gate": {"model_options": {"gate_scale": 0.0}},
    # Session 12: a gate that starts sharper, on the several-concept worlds (its weights there
    # barely follow what the caption names).
    "pkg amc gate scale 16": {"model_options": {"gate_scale": 16.0}},
    # The attention's scale (session 3): the default starts at 1 and learns 10x as fast as the
    # other weights; before, it started at 4 at the common pace.
    "pkg amc attention scale from 4 (before)": {
        "model_options": {"attention_scale": 4.0, "attention_scale_rate": 1.0}
    },
    "pkg amc attention scale from 5": {
        "model_options": {"attention_scale": 5.0, "attention_scale_rate": 1.0}
    },
    "pkg amc attention scale from 4 learned 3x faster": {
        "model_options": {"attention_scale": 4.0, "attention_scale_rate": 3.0}
    },
    "pkg amc attention scale from 2 learned 10x faster": {
        "model_options": {"attention_scale": 2.0, "attention_scale_rate": 10.0}
    },
    "pkg amc attention scale from 1 learned 5x faster": {
        "model_options": {"attention_scale_rate": 5.0}
    },
    "pkg amc attention scale from 1 learned 20x faster": {
        "model_options": {"attention_scale_rate": 20.0}
    },
    "pkg amc attention scale from 0.5 learned 10x faster": {
        "model_options": {"attention_scale": 0.5}
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--world", choices=("synth", "coco", "both", "multi", "prepared"), default="both"
    )
    parser.add_argument("--prepared", type=Path, help="--world prepared: the prepared folder")
    parser.add_argument("--ceiling", type=float, help="--world prepared: its best NDCG@10")
    parser.add_argument(
        "--per-image", type=int, nargs=2, default=(1, 1), help="multi: visual, textual concepts"
    )
    parser.add_argument("--multi-images", type=int, nargs=4, default=(2000, 0, 500, 1000))
    parser.add_argument("--only", choices=("ref", "pkg", "all"), default="all")
    parser.add_argument(
        "--runs", nargs="*", help="names of the runs to do (a name, or a part of several)"
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11, help="the worlds' seed")
    parser.add_argument(
        "--train-seeds",
        type=int,
        nargs="*",
        help="train every run once per seed (default: the world's seed), to see the noise",
    )
    parser.add_argument("--concepts", type=int, default=60)
    parser.add_argument("--coco-images", type=int, nargs=4, default=(1200, 0, 300, 300))
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--background", type=float, default=0.7)
    parser.add_argument("--faint", type=float, default=0.7)
    parser.add_argument("--distractors", type=int, nargs=2, default=(8, 16))
    parser.add_argument(
        "--carrier",
        choices=planted_coco.CARRIERS,
        default="concept",
        help="COCO world: what decides the modality that carries a concept",
    )
    parser.add_argument("--synth-images", type=int, default=2000)
    parser.add_argument("--synth-queries", type=int, default=600)
    parser.add_argument(
        "--paired",
        action="store_true",
        help="each package run's NDCG@10 against the world's first run of its train seed, "
        "paired by query (the difference and its randomization p, as test_fidelity computes)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="reference options KEY=VALUE for all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/amc-fidelity"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "fidelity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    base = {}
    for item in args.set:
        key, value = item.split("=", 1)
        base[key] = json.loads(value) if value[:1] in "0123456789-tf[" else value
    worlds = []
    if args.world in ("synth", "both"):
        worlds.append(synth_world(args.work, args.seed, args.synth_images, args.synth_queries))
    if args.world in ("coco", "both"):
        config = planted_coco.PlantedConfig(
            concepts=args.concepts,
            images=tuple(args.coco_images),
            regions=args.regions,
            distractors=tuple(args.distractors),
            background=args.background,
            faint=args.faint,
            carrier=args.carrier,
        )
        worlds.append(coco_world(args.work, args.seed, config))
    if args.world == "multi":
        multi = planted_multi.MultiConfig(
            per_image=tuple(args.per_image), images=tuple(args.multi_images)
        )
        worlds.append(multi_world(args.work, args.seed, multi))
    if args.world == "prepared":
        worlds.append(prepared_world(args.prepared, args.ceiling))
    results = []
    for world in worlds:
        runs = []
        if args.only in ("ref", "all"):
            runs += [(n, "ref", o) for n, o in REFERENCE.items()]
        if args.only in ("pkg", "all"):
            runs += [(n, "pkg", o) for n, o in PACKAGE.items()]
        names = {n for n, _, _ in runs}
        chosen = [
            (n, k, o)
            for n, k, o in runs
            if not args.runs or any(s == n or (s not in names and s in n) for s in args.runs)
        ]
        for name, kind, options in chosen:
            for seed in args.train_seeds or [args.seed]:
                if kind == "ref":
                    config = RefConfig(**{"epochs": args.epochs, "seed": seed, **base, **options})
                    figures = reference_run(world, config)
                else:
                    train = {"epochs": args.epochs, "seed": seed, **options}
                    figures = package_run(world, args.work, name.replace(" ", "_"), train)
                row = {"world": world.name, "run": name, "train_seed": seed, **figures}
                results.append(row)
                print(_line(row), flush=True)
        if args.paired:
            _paired(world, [r for r in results if r["world"] == world.name and "folder" in r])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


def _paired(world: World, rows: list[dict]) -> None:
    """Each run's NDCG@10 against the first run of its train seed, paired by test query, with
    `amc_data.evaluate`'s figures (the difference and p that test_fidelity asserts on)."""
    from amc_data.evaluation.significance import paired_by_query

    for seed in dict.fromkeys(r["train_seed"] for r in rows):
        mine = [r for r in rows if r["train_seed"] == seed]
        folders = [Path(r["folder"]) for r in mine]
        evaluation = amc_data.evaluate(
            folders, world.prepared, random_baseline=False, resamples=2000
        )
        by_folder = {run.name: run.ranking for run in evaluation.runs}
        first = by_folder[folders[0].name]
        for row, folder in zip(mine[1:], folders[1:], strict=True):
            other = by_folder[folder.name]
            test = paired_by_query(
                first.query_ids,
                first.ndcg_at(10),
                other.query_ids,
                other.ndcg_at(10),
                resamples=2000,
            )
            row[f"vs_{mine[0]['run']}"] = (test.difference, test.p_randomization)
            print(
                f"| {world.name} | {mine[0]['run']} minus {row['run']} (train seed {seed}) | "
                f"{test.difference:+.4f} | p {test.p_randomization:.4f} |",
                flush=True,
            )


def _line(row: dict) -> str:
    keys = ("ndcg@10", "r@1", "r@10", "kw_mass", "kw_uniform", "reg_mass", "reg_uniform")
    keys += ("share", "kw_concepts_below_0.3", "reg_concepts_below_0.3", "kw_concept_min")
    keys += ("reg_concept_min", "gate_both", "gate_visual", "gate_textual")
    keys += ("visual_only_ndcg", "visual_only_forced_gate_ndcg")
    keys += ("textual_only_ndcg", "textual_only_forced_gate_ndcg")
    cells = [f"{row[k]:.3f}" if k in row else "-" for k in keys]
    run = f"{row['run']} (train seed {row['train_seed']})"
    return f"| {row['world']} | {run} | " + " | ".join(cells) + f" | {row['seconds']:.0f}s |"


if __name__ == "__main__":
    main()
