"""`amc-data train`: fit a ranking model on a prepared folder, with real checkpoints.

One loop for every device: on the CPU, one GPU, or several processes under `torchrun`
(DistributedDataParallel; rank 0 alone writes). Each epoch: a hinge ranking loss, either over
one pool the batch shares (`loss="pool"`: the batch's positives and `pool_negatives` sampled
images, each projected once, every query against all of them; optionally only the hardest) or
over the `t` sampled negatives of each (query, positive) pair (`loss="pairs"`, the paper's;
optionally in-batch negatives too); AdamW with warm-up and cosine decay, gradient clipping; then
validation NDCG@10 on the `val` queries. Region features are read by the loader from the memmap,
or kept resident on the device (`features_on`) and gathered there.
`RUN/` holds `config.json`, `last.pt` (after every epoch), `best.pt` (best validation NDCG@10)
and `log.jsonl` (one line per epoch), kept whole whatever stops the run (`run_folder`).
`--resume` continues from `last.pt` with the options the run records and, on the CPU, reaches
the same weights as an uninterrupted run: the order of pairs, the negatives and dropout depend
only on the seed and the epoch, and the generators' states travel in the checkpoint. Interrupted
(Ctrl-C, SIGTERM), the `KeyboardInterrupt` carries a note saying how many epochs are saved and
how to continue. `init_from` starts a new run from another run's weights (fine-tuning, or more
epochs of a finished run) with a fresh optimiser and schedule; the run records where its weights
came from. `tensorboard` also writes each epoch's log entry as TensorBoard events.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..errors import CheckpointError, MissingDependencyError, TrainingError
from ..evaluation.metrics import ndcg_at_k
from ..prepare.format import PreparedDataset, load_prepared
from ..progress import progress_bar
from ..version import __version__
from . import distributed, run_folder
from . import loss as losses
from .batch import TrainBatch
from .build import build_model
from .checkpoint import check_fingerprints, read_checkpoint, save_checkpoint
from .config import (
    BEST,
    LAST,
    MODEL_OPTIONS,
    TrainConfig,
    attention_entropy_on,
    check_negatives,
    gate_routing_on,
    gate_warmup_on,
    keyword_target_on,
    modality_dropout_on,
    region_mean_hinge_on,
    region_target_on,
)
from .data import train_loader
from .loss import (
    attention_entropy,
    attention_target_loss,
    gate_routing_loss,
    hinge_ranking_loss,
    pool_hinge_loss,
)
from .model import AttentionModel, ModelConfig, RankingModel
from .resident import ResidentFeatures, features_fit
from .resume import model_to_start_from, open_run, options_to_resume
from .scoring import precision_context, score_split
from .word_vectors import load_word_vectors

log = logging.getLogger(__name__)

VALIDATION_METRIC = "ndcg@10"


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    epochs: int  # epochs completed
    best_epoch: int | None
    best_metric: float | None
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST


@dataclass
class _Position:
    """Where the loop stands: epochs completed, optimiser steps taken, the best validation value
    so far. Saved in every checkpoint; `--resume` starts from it."""

    epoch: int = 0
    step: int = 0
    best: float | None = None


def model_options_for(config: TrainConfig, prepared: PreparedDataset) -> dict[str, Any]:
    """The model options that the training options and the prepared data's vocabularies and
    features decide; the others keep `ModelConfig`'s defaults (or, resumed or started from
    another run, the checkpoint's). A model option left at None (`attention`, `gate_content`,
    `gate_scale`) decides nothing."""
    decided = {
        "kind": config.model,
        "query_vocab_size": len(prepared.query_vocabulary),
        "keyword_vocab_size": len(prepared.vocabulary),
        "feature_dim": int(prepared.features.shape[-1]),
        "dim": config.dim,
        "intra": config.intra,
        "inter": config.inter,
    }
    given = {name: getattr(config, name) for name in MODEL_OPTIONS}
    return {**decided, **{name: value for name, value in given.items() if value is not None}}


def model_config_for(config: TrainConfig, prepared: PreparedDataset) -> ModelConfig:
    """The model of a new run, from the options and the prepared data."""
    return ModelConfig(**model_options_for(config, prepared))


def train(
    data: str | os.PathLike[str] | PreparedDataset,
    out: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    given: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train `config.model` on the prepared folder `data`, writing the run into `out`.

    Without `config`: a new run takes the defaults, and a resumed one (`resume`) the options its
    `last.pt` records; in both, the options `given` replace those (a resumed run may change only
    how a session runs: `resume.RESUME_MAY_CHANGE`). With `config`, a resume checks that it is the
    run's (but for those session options)."""
    if config is not None and given is not None:
        raise TypeError("train: give config or given, not both")
    if config is None and resume:
        config = options_to_resume(Path(out), given or {})
    elif config is None:
        config = TrainConfig(**(given or {}))
    prepared = data if isinstance(data, PreparedDataset) else load_prepared(data)
    check_negatives(config, prepared)
    if config.tensorboard is not None:
        _summary_writer()  # a missing package stops the run before it starts
    processes = distributed.start(config.device)
    try:
        # Rank 0 alone writes, so it alone holds the folder (its lock, location and contents).
        held = run_folder.claim(Path(out), prepared.root, resume=resume, force=force)
        with held if processes.is_main else contextlib.nullcontext():
            run = _Run(prepared, Path(out), config, processes, progress)
            try:
                return run.run(resume, force)
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM at the CLI's edge
                if processes.is_main:
                    exc.add_note(run.interrupted())
                raise
    finally:
        distributed.stop(processes)


class _Run:
    """One training run. `run` reads top to bottom: the folder, the model, then (for a model
    trained by gradient descent) the data, the optimiser, the restore, the wrap, and the epochs,
    each trained, validated, counted and saved."""

    def __init__(
        self,
        prepared: PreparedDataset,
        out: Path,
        config: TrainConfig,
        processes: distributed.Processes,
        progress: bool,
    ) -> None:
        self.prepared, self.out, self.config = prepared, out, config
        self.record = config  # the options config.json and the checkpoints record
        self.processes, self.device = processes, processes.device
        self.progress = progress and processes.is_main
        self.amp = config.amp and self.device.type == "cuda"
        self.model_config = model_config_for(config, prepared)
        # What the run is trained on: the vocabularies and the features (resume refuses others).
        self.fingerprints = {
            **prepared.fingerprints,
            "features": run_folder.features_fingerprint(prepared.features),
        }
        self.log: list[dict[str, Any]] = []
        self.saved = 0  # the epochs last.pt holds
        self.steps_taken, self.total_steps = 0, 1  # optimiser steps: taken, and in the run
        self.resident: ResidentFeatures | None = None
        self.initial: dict[str, torch.Tensor] | None = None  # init_from's weights
        self.tensorboard: Any = None  # a SummaryWriter, on rank 0 with `tensorboard`

    def interrupted(self) -> str:
        """What an interruption leaves, and how to go on."""
        if (self.out / LAST).is_file():
            # An epoch is saved once last.pt is in place, though the interruption may land while
            # the rest of its files are written, before the loop counts it.
            self.saved = max(self.saved, _epoch_of(self.out / LAST) or 0)
        if self.saved == 0:
            return (
                f"No epoch had finished, so {self.out} holds no checkpoint; run the same command "
                "again to start over."
            )
        return (
            f"{self.out} holds {self.saved} of {self.config.epochs} epochs; continue with "
            f"amc-data train {self.prepared.root} --out {self.out} --resume (the run knows its "
            "options)."
        )

    # -- the run folder -----------------------------------------------------------------------

    def _open_folder(self, resume: bool, force: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from (or None, for a new run), once the folder is known to be
        ours to use (`run_folder`, `resume`); `config.json` then describes the run."""
        if resume:
            resumed = open_run(
                self.out,
                self.config,
                model_options_for(self.config, self.prepared),
                self.fingerprints,
                str(self.prepared.root),
                processes=self.processes.world_size,
            )
            self.record, self.model_config = resumed.train_config, resumed.model_config
            self.log, self.saved = resumed.log, resumed.checkpoint["epoch"]
            source = resumed.checkpoint["fingerprints"].get("init_from")
            if source is not None:  # where the run's first weights came from stays recorded
                self.fingerprints["init_from"] = source
            if self.processes.is_main:
                # Whatever an older amc-data or an interruption left, the records agree.
                run_folder.write_config(
                    self.out,
                    self.record,
                    self.model_config.to_dict(),
                    self.prepared,
                    self.fingerprints,
                )
                run_folder.settle(self.out, self.saved, self.log, _epoch_of)
            distributed.barrier(self.processes)
            return resumed.checkpoint
        # Rank 0 alone looks (it writes config.json: the others could see it already there).
        problem = run_folder.new_run_problem(self.out, force) if self.processes.is_main else None
        problem = distributed.broadcast(problem, self.processes)
        if problem is not None:
            raise TrainingError(problem)
        if self.config.init_from is not None:
            self._start_from(self.config.init_from)
        if self.processes.is_main:
            run_folder.start(
                self.out,
                force,
                self.record,
                self.model_config.to_dict(),
                self.prepared,
                self.fingerprints,
            )
        distributed.barrier(self.processes)
        return None

    def _start_from(self, source: str) -> None:
        """A new run's first weights: those of the run `source` (its best.pt) or of the
        checkpoint file `source`, for the model they were trained as, once this run's options
        and prepared data describe that model; the run records the file and a digest of its
        weights (`fingerprints["init_from"]`)."""
        path = Path(source)
        path = path / BEST if path.is_dir() else path
        if not path.is_file():
            raise TrainingError(
                f"init_from {source}: {path} does not exist. Give a run folder that holds a "
                "best.pt, or a checkpoint file."
            )
        checkpoint = read_checkpoint(path)
        decided = model_options_for(self.config, self.prepared)
        self.model_config = model_to_start_from(checkpoint, path, decided)
        check_fingerprints(checkpoint, self.fingerprints, str(path), str(self.prepared.root))
        self.initial = checkpoint["model"]
        self.fingerprints["init_from"] = f"{path.resolve()} {weights_digest(self.initial)}"

    # -- the loop -----------------------------------------------------------------------------

    def run(self, resume: bool, force: bool) -> TrainResult:
        checkpoint = self._open_folder(resume, force)
        model = self._build(fresh=checkpoint is None)
        if self.config.tensorboard is not None and self.processes.is_main:
            self.tensorboard = _summary_writer()(log_dir=self.config.tensorboard)
        try:
            if model.closed_form:
                return self._fit_closed_form(model)
            return self._descend(model, checkpoint)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _descend(self, model: RankingModel, checkpoint: dict[str, Any] | None) -> TrainResult:
        """The epochs of gradient descent, from the start or from where `checkpoint` left."""
        self.resident = self._resident_features()
        loader = self._loader()
        self.total_steps = self.config.epochs * len(loader)
        optimizer, scheduler = self._optimizer(model, total_steps=self.total_steps)
        at = self._restore(checkpoint, model, optimizer, scheduler)
        net = self._wrap(model)
        for epoch in range(at.epoch, self.config.epochs):
            loss, pairs, seconds = self._train_epoch(net, loader, optimizer, scheduler, epoch, at)
            metrics = self._validate(model)
            as_best = self._end_epoch(at, loss, pairs, seconds, metrics, scheduler)
            self._save(model, optimizer, scheduler, at, metrics, as_best)
            distributed.barrier(self.processes)
        return self._result()

    def _build(self, fresh: bool) -> RankingModel:
        """The model on the training device, initialised from the seed (and the word vectors,
        for a fresh run), or from `init_from`'s weights: a resumed one gets its weights from the
        checkpoint."""
        torch.manual_seed(self.config.seed)
        word_vectors = None
        if self.config.word_vectors and fresh:
            word_vectors = load_word_vectors(
                self.config.word_vectors, self.prepared.query_vocabulary, self.config.dim
            )
        model = build_model(self.model_config, word_vectors=word_vectors)
        if fresh and self.initial is not None:
            model.load_state_dict(self.initial)
        if isinstance(model, AttentionModel):  # a model that may weigh two modalities
            model.modality_dropout = modality_dropout_on(self.config)
            model.modality_dropout_keep = self.config.modality_dropout_keep
        return model.to(self.device)

    def _optimizer(
        self, model: RankingModel, total_steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW, and a learning rate that warms up then decays on a cosine over the whole run."""
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup_cosine(self.config.warmup, total_steps)
        )
        return optimizer, scheduler

    def _restore(
        self,
        checkpoint: dict[str, Any] | None,
        model: RankingModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> _Position:
        """Where the loop starts: at the beginning, or where `last.pt` left it. The random
        generators' states come back too, so the resumed epochs draw what the uninterrupted run
        drew."""
        if checkpoint is None:
            return _Position()
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng(checkpoint["rng"])
        return _Position(checkpoint["epoch"], checkpoint["step"], checkpoint["best_metric"])

    def _wrap(self, model: RankingModel) -> torch.nn.Module:
        """What the epochs run: the model itself, in DistributedDataParallel across processes,
        compiled when asked. Wrapped after the restore, so every process starts from rank 0's
        restored weights; validation and the checkpoints use the bare model."""
        net: torch.nn.Module = model
        if self.processes.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        if self.config.compile:
            # Padded lengths (keywords, query words) change from batch to batch: compile for
            # dynamic shapes once instead of recompiling for each new length.
            net = torch.compile(net, dynamic=True)  # type: ignore[assignment]
        return net

    def _end_epoch(
        self,
        at: _Position,
        loss: float,
        pairs: int,
        seconds: float,
        metrics: dict[str, float],
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> bool:
        """Count the epoch, keep the best validation value and add the epoch's log entry; True
        when this epoch's checkpoint is also `best.pt` (it improved, or nothing is measured)."""
        at.epoch += 1
        value = metrics.get(VALIDATION_METRIC)
        improved = value is not None and (at.best is None or value > at.best)
        if improved or (value is None and at.best is None):
            at.best = value
        entry = {
            "epoch": at.epoch,
            "step": at.step,
            "loss": loss,
            **metrics,
            "samples_per_s": pairs / seconds if seconds > 0 else None,
            "seconds": seconds,
            "lr": scheduler.get_last_lr()[0],
        }
        self.log.append(entry)
        if self.processes.is_main:
            log.info("epoch %d: %s", at.epoch, entry)
        return improved or value is None

    def _save(
        self,
        model: RankingModel,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        at: _Position,
        metrics: dict[str, float],
        as_best: bool,
    ) -> None:
        """Rank 0 writes `last.pt`, `best.pt` when `as_best`, and the log, in the order that
        keeps the run whole at any instant (`run_folder.commit_epoch`). A checkpoint holds all
        a resume needs: the weights, the optimiser and schedule, where the loop stands, the
        random generators, the options, the data it was trained on, the number of processes
        that trained it, and the log up to its epoch."""
        if not self.processes.is_main:
            self.saved = at.epoch
            return
        payload = {
            "amc_data_version": __version__,
            "train_config": self.record.to_dict(),
            "model_config": self.model_config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "epoch": at.epoch,
            "step": at.step,
            "best_metric": at.best,
            "metrics": metrics,
            "rng": _get_rng(),
            "fingerprints": dict(self.fingerprints),
            "processes": self.processes.world_size,
            "log": [dict(entry) for entry in self.log],
        }
        run_folder.commit_epoch(self.out, payload, as_best, self.log, save_checkpoint)
        self.saved = at.epoch
        if self.tensorboard is not None:  # after the commit: the log stays the record
            _write_events(self.tensorboard, self.log[-1])

    def _resident_features(self) -> ResidentFeatures | None:
        """The features on the training device, when `features_on` asks for it (or allows it
        and they fit)."""
        place = self.config.features_on
        if place == "device" or (place == "auto" and features_fit(self.prepared, self.device)):
            return ResidentFeatures(self.prepared, self.device)
        return None

    def _loader(self, whole: bool = False) -> DataLoader:
        """This rank's share of the training pairs (all of them with `whole`, for a closed-form
        fit, which reads each pair's positive)."""
        rank, world_size = (0, 1) if whole else (self.processes.rank, self.processes.world_size)
        pooled = self.config.loss == "pool" and not whole
        loader = train_loader(
            self.prepared,
            split="train",
            batch_size=self.config.batch_size,
            negatives=self.config.negatives,
            seed=self.config.seed,
            workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            rank=rank,
            world_size=world_size,
            max_keywords=self.config.max_keywords,
            pool_negatives=self.config.pool_negatives if pooled else None,
            gather_regions=self.resident is None or whole,
            pool_word_share=self.config.pool_word_share if pooled else 0.0,
        )
        if len(loader.dataset) == 0:  # type: ignore[arg-type]
            raise TrainingError(
                f"{self.prepared.root} has no training pairs (no train query with a judgment of "
                f"label > 0); prepare it again."
            )
        return loader

    def _train_epoch(
        self,
        net: torch.nn.Module,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        epoch: int,
        at: _Position,
    ) -> tuple[float, int, float]:
        """One pass over this rank's pairs, advancing `at.step`: the mean loss over all
        processes, the pairs all of them saw, and the seconds it took."""
        started = time.perf_counter()
        net.train()
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        total = torch.zeros((), device=self.device)
        bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        pairs, first_step = 0, at.step
        bar = progress_bar(
            total=len(loader),
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="step",
            enabled=self.progress,
        )
        with bar:
            for batch in loader:
                loss = self._step(net, batch, optimizer, scheduler)
                # Remember the first non-finite step on the device: no host sync per step.
                bad_step = torch.where(
                    (bad_step < 0) & ~torch.isfinite(loss),
                    torch.tensor(at.step, device=self.device),
                    bad_step,
                )
                total += torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
                pairs += len(batch.query)
                at.step += 1
                if self.progress and (at.step - first_step) % 10 == 0:
                    self._check_finite(bad_step, epoch)
                    rate = pairs / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(
                        loss=f"{total.item() / (at.step - first_step):.4f}",
                        pairs_per_s=f"{rate:,.0f}",
                    )
                bar.update(1)
        self._check_finite(bad_step, epoch)
        mean = distributed.mean_across(total / max(at.step - first_step, 1), self.processes)
        loss_value = float(mean.item())
        return loss_value, pairs * self.processes.world_size, time.perf_counter() - started

    def _step(
        self,
        net: torch.nn.Module,
        batch: TrainBatch,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> torch.Tensor:
        """One optimiser step on one batch; its loss, detached (still on the device)."""
        batch = batch.to(self.device, non_blocking=True)
        if self.resident is not None:
            batch = self.resident.fill(batch)  # regions gathered on the device
        self.steps_taken = int(scheduler.last_epoch)  # what the step's terms read of the run
        model = _unwrap(net)
        if isinstance(model, AttentionModel):
            model.gate_blend = self._left_of(gate_warmup_on(self.config))
        with precision_context(self.device, self.amp):
            loss = self._loss(net, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.config.clip)
        optimizer.step()
        scheduler.step()
        return loss.detach()

    def _loss(self, net: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
        """The batch's hinge loss: over its shared pool, or over each pair's own negatives; with
        `attention_entropy`, plus that many times the attention's entropy on the positives; with
        `gate_routing`, plus that many times the gate routing term; with `region_mean_hinge`,
        plus that many times the same hinge of the regions' mean value alone; with
        `region_target` / `keyword_target`, plus that many times the target term of the region /
        keyword attention on the positives."""
        entropy, routing = attention_entropy_on(self.config), gate_routing_on(self.config)
        target, mean_hinge = region_target_on(self.config), region_mean_hinge_on(self.config)
        keyword_target = keyword_target_on(self.config)
        scores, inside, modality, reading, regions, keywords = _scored(
            net,
            batch,
            pool=batch.pooled,
            weights=entropy or routing or target or mean_hinge or keyword_target,
            gate=routing,
            regions=target or mean_hinge,
            keywords=keyword_target,
        )
        loss = self._hinge(batch, scores, in_batch_net=net if self.config.in_batch else None)
        if batch.pooled:
            assert batch.pool_own is not None and batch.pool_positive is not None
            positive, own = batch.pool_positive, batch.pool_own  # (B, P), (B,)
        else:
            positive = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            positive[:, 0] = True  # each pair's positive comes first
            own = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        if reading is not None:
            loss = loss + self.config.gate_routing * gate_routing_loss(
                reading.alone, reading.gate, own, positive, self.config.margin
            )
        if regions is not None:
            loss = loss + self._region_terms(inside, modality, regions, batch, own, positive)
        if keywords is not None:
            # Each positive counts as much as the gate reads its keywords (held fixed).
            rows = positive * _gate_weight(inside, modality, "keyword")
            keyword_term = attention_target_loss(
                inside["keyword"],
                keywords.match,
                keywords.mask,
                rows,
                self.config.keyword_target_temperature,
            )
            loss = loss + self.config.keyword_target * keyword_term
        if not entropy or "keyword" not in inside:  # off, or a model that reads no keywords
            return loss
        # The keyword attention on each positive counts as much as the modality gate reads the
        # keywords for it (held fixed): it is sharpened as far as the score uses it.
        rows = positive * _gate_weight(inside, modality, "keyword")
        entropy_term = attention_entropy(
            inside["keyword"], rows, floor=self.config.attention_entropy_floor
        )
        return loss + self.config.attention_entropy * entropy_term

    def _region_terms(
        self,
        inside: dict[str, torch.Tensor],
        modality: torch.Tensor,
        regions: Any,
        batch: TrainBatch,
        own: torch.Tensor,
        positive: torch.Tensor,
    ) -> torch.Tensor:
        """`region_mean_hinge` (fading to `region_mean_hinge_end` of it over the run) times
        the hinge of the regions' mean value alone, plus
        `region_target` times the region target term on the positives. Each query (each
        positive) counts as much as the modality gate reads the regions for it (held fixed), as
        the entropy term's rows do for the keywords: the regions answer for the share of the
        score they carry, and are not asked to rank the queries the gate sends to the
        keywords (which taught them the keywords' concepts through the images that hold both,
        and the gate to follow the caption less)."""
        visual = self._region_query_weights(inside, modality)  # (B, P | M)
        total = torch.zeros((), device=visual.device)
        if region_mean_hinge_on(self.config):
            read = visual[torch.arange(len(own), device=own.device), own]  # (B,)
            hinge = self._hinge(batch, regions.mean, query_weights=read)
            total = total + self._mean_hinge_weight() * hinge
        if region_target_on(self.config):
            target = attention_target_loss(
                inside["region"],
                regions.match,
                regions.mask,
                positive * visual,
                self.config.region_target_temperature,
            )
            total = total + self.config.region_target * target
        return total

    def _region_query_weights(
        self, inside: dict[str, torch.Tensor], modality: torch.Tensor
    ) -> torch.Tensor:
        """How much each query counts in the region terms on each image: the gate's visual
        weight (held fixed), every query counted fully at the first step and the gate's weight
        taking over by `region_terms_warmup` of the run."""
        visual = _gate_weight(inside, modality, "region")
        left = self._left_of(self.config.region_terms_warmup)
        if left > 0:
            visual = visual + (1 - visual) * left
        return visual

    def _mean_hinge_weight(self) -> float:
        """The mean value's hinge weight at this step: `region_mean_hinge` at the first,
        falling linearly to `region_mean_hinge_end` of it by the end of the run."""
        start = self.config.region_mean_hinge
        end = start * self.config.region_mean_hinge_end
        return end + (start - end) * self._left_of(1.0)

    def _left_of(self, warmup: float) -> float:
        """What is left of a warmup over that share of the run at this step: 1 at the first
        step, falling linearly to 0 (0 throughout for no warmup). By optimiser step, from the
        scheduler's count, so a resumed run sees what the uninterrupted one did."""
        if warmup <= 0:
            return 0.0
        return max(0.0, 1.0 - self.steps_taken / (warmup * self.total_steps))

    def _hinge(
        self,
        batch: TrainBatch,
        scores: torch.Tensor,
        in_batch_net: torch.nn.Module | None = None,
        query_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The configured hinge of `scores`: over the batch's shared pool, or over each pair's
        own negatives (with `in_batch_net`, the batch's other positives too, scored by that
        model); with `query_weights`, each query's terms counted that many times. The model's
        own scores go through this module's `pool_hinge_loss` / `hinge_ranking_loss`, called
        once a step (what a patch or a profile of the step's ranking loss sees); other scores
        through the loss module's."""
        own_loss = query_weights is None
        pool_hinge = pool_hinge_loss if own_loss else losses.pool_hinge_loss
        pairs_hinge = hinge_ranking_loss if own_loss else losses.hinge_ranking_loss
        if batch.pooled:
            assert batch.pool_own is not None and batch.pool_positive is not None
            return pool_hinge(
                scores.float(),
                batch.pool_own,
                batch.pool_positive,
                self.config.margin,
                hardest=self.config.hardest,
                reduction=self.config.pool_reduction,
                query_weights=query_weights,
            )
        others = None
        if in_batch_net is not None:
            positives = batch.images.map(lambda t: t[:, 0])  # (B, ...)
            others = _unwrap(in_batch_net).score_pool(batch.query, positives).float()  # (B, B)
        return pairs_hinge(
            scores.float(),
            self.config.margin,
            others,
            _in_batch_negatives(batch),
            query_weights=query_weights,
        )

    def _check_finite(self, bad_step: torch.Tensor, epoch: int) -> None:
        bad = int(distributed.max_across(bad_step, self.processes).item())
        if bad >= 0:
            kept = (
                f"{self.out / LAST} holds the last good epoch"
                if (self.out / LAST).exists()
                else "no epoch had finished, so nothing was kept"
            )
            raise TrainingError(
                f"The loss became NaN or infinite at epoch {epoch + 1}, step {bad + 1}; training "
                f"stopped and {kept}. Lower --lr, keep --clip on, or check the features and "
                f"word vectors for extreme values."
            )

    def _validate(self, model: RankingModel) -> dict[str, float]:
        """NDCG@10 on the `val` queries, each process scoring its share."""
        queries = self.prepared.split_queries("val")["query_id"].to_numpy(np.int64)
        if len(queries) == 0:
            return {}
        mine = queries[self.processes.rank :: self.processes.world_size]
        frame = score_split(
            model,
            self.prepared,
            "val",
            device=self.device,
            amp=self.amp,
            query_ids=mine,
            max_keywords=self.config.max_keywords,
        )
        frame = pd.concat(distributed.gather(frame, self.processes), ignore_index=True)
        value = ndcg_at_k(
            frame["score"].to_numpy(),
            frame["label"].to_numpy(),
            10,
            query_ids=frame["query_id"].to_numpy(),
            gain=self.config.gain,
        )
        return {VALIDATION_METRIC: float(value)}

    def _fit_closed_form(self, model: RankingModel) -> TrainResult:
        started = time.perf_counter()
        # Every rank fits on all the pairs (one pass, cheap), so all hold the same model.
        loader = self._loader(whole=True)
        loader.sampler.set_epoch(0)  # type: ignore[attr-defined]
        bar = progress_bar(total=len(loader), desc="fitting", unit="batch", enabled=self.progress)
        with bar:
            model.fit_closed_form(_tick(bar, batch.to(self.device)) for batch in loader)
        metrics = self._validate(model)
        entry = {
            "epoch": 1,
            "step": 0,
            "loss": None,
            **metrics,
            "samples_per_s": None,
            "seconds": time.perf_counter() - started,
            "lr": None,
        }
        self.log = [entry]
        at = _Position(self.config.epochs, 0, metrics.get(VALIDATION_METRIC))
        self._save(model, None, None, at, metrics, as_best=True)
        return self._result()

    def _result(self) -> TrainResult:
        values = [(e.get(VALIDATION_METRIC), e["epoch"]) for e in self.log]
        scored = [(v, e) for v, e in values if v is not None]
        best_metric, best_epoch = (
            max(scored, key=lambda p: (p[0], -p[1])) if scored else (None, None)
        )
        return TrainResult(
            run_dir=self.out,
            epochs=len(self.log),
            best_epoch=best_epoch,
            best_metric=best_metric,
            log=list(self.log),
        )


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """`sha256:<hex>` over a state dict's names, dtypes, shapes and bytes: which weights a run
    started from, whatever file they are read from again."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


# The log entry's keys that describe training; the others are validation metrics.
_TRAINING_KEYS = ("loss", "lr", "samples_per_s", "seconds", "step")


def _summary_writer() -> Any:
    """TensorBoard's `SummaryWriter` class, or a `MissingDependencyError` naming the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError(
            f"The tensorboard option needs the tensorboard package, which could not be imported "
            f'({exc}). Install the tensorboard extra: pip install "amc-data[tensorboard]"; or '
            "train without it (log.jsonl holds the same numbers)."
        ) from None
    return SummaryWriter


def _write_events(writer: Any, entry: Mapping[str, Any]) -> None:
    """One epoch's log entry as scalars at step `epoch`: `train/<key>` and `val/<metric>`."""
    for key, value in entry.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        group = "train" if key in _TRAINING_KEYS else "val"
        writer.add_scalar(f"{group}/{key}", value, global_step=entry["epoch"])
    writer.flush()


def _epoch_of(path: Path) -> int | None:
    """The epoch of the checkpoint at `path` (None when it cannot be read)."""
    try:
        return int(read_checkpoint(path)["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def _tick(bar: Any, item: Any) -> Any:
    bar.update(1)
    return item


def _scored(
    net: torch.nn.Module,
    batch: TrainBatch,
    pool: bool,
    weights: bool,
    gate: bool = False,
    regions: bool = False,
    keywords: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, Any, Any, Any]:
    """The batch's scores ((B, P) over its pool, or (B, 1 + t)); with `weights`, the attention
    and modality weights beside them, as `forward(..., weights=True)` gives them; with `gate`,
    the gate's `GateReading` fourth, with `regions` / `keywords` their `ValueReading` fifth /
    sixth (otherwise None)."""
    if weights:
        asked = {"gate": gate, "regions": regions, "keywords": keywords}
        scored = list(net(batch.query, batch.images, pool=pool, weights=True, **asked))
        readings = [scored.pop(3) if wanted else None for wanted in asked.values()]
        return (*scored[:3], *readings)
    return net(batch.query, batch.images, pool=pool), {}, torch.empty(0), None, None, None


def _gate_weight(inside: dict[str, torch.Tensor], modality: torch.Tensor, name: str) -> Any:
    """The modality gate's weight on the modality `name` ("region" or "keyword") for each
    query's images, held fixed: how much a term on that modality's attention counts each."""
    return modality[..., list(inside).index(name)].detach()


def _in_batch_negatives(batch: Any) -> torch.Tensor | None:
    """`(B, B)`: True where row j's positive may serve as row i's negative (another query, and
    another image: the same query's other positives, or a COCO image's other captions, are not
    negatives)."""
    if batch.query_keys is None or batch.positive_keys is None:
        return None
    same_query = batch.query_keys[:, None] == batch.query_keys[None, :]
    same_image = batch.positive_keys[:, None] == batch.positive_keys[None, :]
    return ~(same_query | same_image)


def _unwrap(net: torch.nn.Module) -> Any:
    inner = getattr(net, "_orig_mod", net)
    return getattr(inner, "module", inner)


def _warmup_cosine(warmup: float, total_steps: int) -> Any:
    warm = max(int(warmup * total_steps), 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(total_steps - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _get_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
