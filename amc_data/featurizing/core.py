"""`extract_features`: grid features of a folder of images or a base64 TSV, written chunk by chunk
into a memory-mapped `.npy` that a later run resumes.

Planning (names, keys, ids) happens first and needs no torch; the images are then read and
decoded by `workers` processes, batch by batch in input order, run through the backbone on the
chosen device, pooled to a G x G grid and written at their rows. After each batch the file is
flushed and a progress record says how far it got, so an interrupted run (a crash, Ctrl-C, a bad
image in fail mode, `max_batches`) resumes at the next batch and ends with the same bytes as a
run that was never interrupted.

Under torchrun each rank extracts its shard of the images (`shards`) into the same partial file,
with its own progress record, so a rank stopped mid-way resumes its shard alone; rank 0 plans,
prepares and finishes the output, and the bytes are those of a single-process run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..checks import check_config, option
from ..errors import ConfigError, InputError
from ..machine import cpu_count
from ..progress import progress_bar
from ..version import __version__
from .deps import require_pillow, require_torch
from .outputs import (
    OutputPaths,
    PartialOutput,
    Progress,
    close_gaps,
    discard,
    finish,
    load_progress,
    open_partial,
    output_lock,
    read_report,
    save_progress,
)
from .shards import Group, Ranks, device_for, ranks_from_env, shard_bounds
from .sources import (
    ID_SOURCES,
    CenterCrop,
    IdSource,
    ImageReader,
    OnError,
    Plan,
    SkippedImage,
    plan_inputs,
)

log = logging.getLogger(__name__)

REPORT_VERSION = 1
DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "bf16", "fp32")
WEIGHTS = ("default", "none")  # torchvision's pretrained weights, or random ones
ON_ERROR = ("fail", "skip")


@dataclass(frozen=True)
class FeatureConfig:
    """How `extract_features` runs; the defaults give ResNet-50 7 x 7 grid features (2048-d)
    of 224 x 224 centre crops, in float16. Every option is checked here, once, whoever builds
    the config; the CLI builds its flags from these declarations."""

    backbone: str = option(  # unused when model_file is given
        "resnet50",
        "torchvision model whose convolutional trunk extracts the features, or an open_clip "
        "model, open_clip:ARCH[:PRETRAINED], whose vision tower's patch tokens do.",
    )
    model_file: Path | None = option(  # option() is a dataclasses.field()
        None,
        "Backbone file instead: TorchScript (torch.jit.save) or an exported program "
        "(torch.export.save, .pt2) mapping (B, 3, H, W) ImageNet-normalised images to "
        "(B, D, h, w).",
    )
    weights: Literal["default", "none"] = option(
        "default",
        "torchvision's pretrained weights (from its cache), or random ones.",
        choices=WEIGHTS,
    )
    grid: int = option(7, "Pool the feature map to GRID x GRID cells (R = GRID^2).", low=1)
    image_size: int = option(224, "Side of the centre crop the backbone sees.", low=1)
    resize: int | None = option(  # None: image_size / 0.875 (256 for 224)
        None, "Shorter side before cropping [default: image size / 0.875, 256 for 224].", low=1
    )
    batch_size: int = option(32, "Images per batch through the backbone.", low=1)
    workers: int | None = option(  # None: min(8, cores)
        None, "Decoding processes [default: min(8, cores)]; 0 decodes in this process.", low=0
    )
    device: str = option("auto", "auto uses CUDA when present.")  # auto, cpu, cuda, cuda:N
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "auto: bf16 autocast on a GPU that has it, else fp32.", choices=PRECISIONS
    )
    dtype: Literal["float16", "float32"] = option(
        "float16", "Type of the written features.", choices=DTYPES
    )
    id_source: IdSource = option(  # option() is a dataclasses.field()
        "name", "Where each image's img_id comes from.", choices=ID_SOURCES
    )
    id_file: Path | None = None  # the mapping file for id_source other than name
    tsv_columns: tuple[int, int] = (0, 1)  # 0-based columns of the key and the base64 image
    on_error: OnError = option(  # option() is a dataclasses.field()
        "fail",
        "An image without id or that does not decode: stop, or leave it out and record it.",
        choices=ON_ERROR,
    )
    resume: bool = option(
        True,
        "Continue an interrupted run at this --out (same inputs and options), or start again.",
        flag="--resume/--no-resume",
    )
    force: bool = option(False, "Extract again even if --out is up to date.")
    max_batches: int | None = option(
        None, "Stop after this many batches; run again to continue.", low=1
    )
    seed: int = 0  # for random weights (--weights none)
    progress: bool = False

    def __post_init__(self) -> None:
        check_config(self)
        if self.resize is not None and self.resize < self.image_size:
            raise ConfigError(
                f"resize ({self.resize}) must be at least image_size ({self.image_size}): the "
                "shorter side is scaled to resize, then the centre image_size square is cut.",
                parameter="resize",
            )
        if (self.id_source == "name") != (self.id_file is None):
            raise ConfigError(
                "id_file is needed exactly when id_source is not 'name' (found id_source "
                f"{self.id_source!r} and id_file {self.id_file!r}).",
                parameter="id_file",
            )
        columns = self.tsv_columns
        if len(columns) != 2 or min(columns) < 0 or columns[0] == columns[1]:
            raise ConfigError(
                f"tsv_columns must be two different columns >= 0, not {columns!r}.",
                parameter="tsv_columns",
            )
        for name in ("model_file", "id_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def resize_to(self) -> int:
        """The shorter side before cropping (ImageNet's 256 for a 224 crop)."""
        return self.resize if self.resize is not None else round(self.image_size / 0.875)

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers is not None else min(8, cpu_count())


@dataclass(frozen=True)
class FeatureResult:
    """What `extract_features` did."""

    features: Path
    ids: Path
    report: Path
    shape: tuple[int, ...]  # (N, G*G, D) of the finished file; rows written so far otherwise
    complete: bool  # False when max_batches stopped the run early (a later run resumes)
    up_to_date: bool  # the output already matched these inputs and options: nothing was done
    resumed_from: int = 0  # inputs already done by an earlier run when this one started
    skipped: list[SkippedImage] = field(default_factory=list)
    backbone: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    precision: str = ""
    seconds: float = 0.0
    images_per_second: float = 0.0  # of the images this run extracted


def extract_features(
    images: str | Path,
    out: str | Path,
    *,
    ids: str | Path | None = None,
    config: FeatureConfig | None = None,
) -> FeatureResult:
    """Extract `(N, G*G, D)` grid features of `images` (a folder, or a TSV of `key<TAB>base64`)
    into the `.npy` file `out`, with the img_id of each row in `ids` (default `feature_ids.npy`
    beside `features.npy`, else `<stem>_ids.npy`) and a report `<stem>.json`.

    A run interrupted for any reason resumes where it stopped when run again with the same
    inputs and options (byte-identical result); different ones are refused unless
    `config.resume` is False. Raises `InputError` for unreadable inputs (naming the file or TSV
    line), `ConfigError` for bad options, `MissingDependencyError` without torch or Pillow.

    Called in every process of a torchrun job (`RANK`, `WORLD_SIZE` set), each process extracts
    its shard of the images (on GPU `LOCAL_RANK` for device `auto` or `cuda`) and every process
    returns the same result; a process whose peer failed raises `shards.OtherRankFailed`.
    """
    config = config or FeatureConfig()
    require_torch()
    require_pillow()
    started = time.perf_counter()
    paths = OutputPaths.for_output(out, ids)
    group = Group(ranks_from_env())
    try:
        run = _set_up(images, paths, config, group, started)
        with contextlib.ExitStack() as held:
            # Rank 0 holds the output's lock for the whole run, the other ranks under it.
            state = group.on_main(lambda: _prepare(run, held))
            if isinstance(state, FeatureResult):
                return state
            return _extract_shards(run, group, state)
    finally:
        group.close()


def _set_up(
    images: str | Path, paths: OutputPaths, config: FeatureConfig, group: Group, started: float
) -> _Run:
    """Plan the inputs (rank 0 lists them, every rank gets the same plan) and load the backbone
    (rank 0 first: a bad model file is reported once)."""
    from .backbone import DeviceSetup, load_backbone

    ranks = group.ranks
    plan = group.on_main(
        lambda: plan_inputs(
            images,
            id_source=config.id_source,
            id_file=config.id_file,
            tsv_columns=config.tsv_columns,
            on_error=config.on_error,
        )
    )
    loaded: list[Any] = []

    def load() -> None:
        setup = DeviceSetup.resolve(device_for(config.device, ranks), config.precision)
        extractor, backbone = load_backbone(
            name=config.backbone,
            model_file=config.model_file,
            weights=config.weights,
            seed=config.seed,
            setup=setup,
            grid=config.grid,
        )
        loaded.append((setup, extractor, backbone))

    group.on_main(load)
    group.all_succeed(lambda: None if loaded else load())
    setup, extractor, backbone = loaded[0]
    crop = extractor.crop(config.image_size, config.resize)
    return _Run(
        config=config,
        paths=paths,
        plan=plan,
        extractor=extractor,
        backbone=backbone,
        device=str(setup.device),
        precision=setup.precision,
        crop=crop,
        fingerprint=_fingerprint(plan, backbone, config, crop, setup.device.type, setup.precision),
        shape=(len(plan), config.grid**2, extractor.feature_dim(crop.size)),
        started=started,
        ranks=ranks,
    )


def _prepare(run: _Run, held: contextlib.ExitStack) -> FeatureResult | list[Progress]:
    """Rank 0, under the output's lock: the finished result when the output is up to date,
    else every shard's progress to continue from (the partial file ready for them)."""
    config, paths = run.config, run.paths
    held.enter_context(output_lock(paths))
    done = None if config.force else read_report(paths)
    # Up to date: the same options, names and ids, and every input file as it was when the
    # finished run planned (size, mtime, ctime: an image replaced under its name is seen).
    if (
        done is not None
        and done.get("fingerprint") == run.fingerprint
        and done.get("inputs_stamp") == run.plan.stamp
    ):
        log.info("%s is up to date with its inputs and options; nothing to do", paths.features)
        skipped = [SkippedImage(**item) for item in done.get("skipped", [])]
        return run.result(tuple(done["shape"]), complete=True, up_to_date=True, skipped=skipped)
    shards, fresh = _start(paths, config, run, run.ranks)
    open_partial(paths, shards[0], fresh=fresh).close()  # created, or checked against the record
    return shards


def _extract_shards(run: _Run, group: Group, shards: list[Progress]) -> FeatureResult:
    """Every rank extracts its shard; rank 0 then finishes the output once all are done."""
    ranks, paths, plan = run.ranks, run.paths, run.plan
    mine = shards[ranks.rank]
    shard = f"shard {ranks.rank} of {ranks.world_size}: " if ranks.distributed else ""
    if mine.done:
        log.info("%s%s: done by an earlier run", shard, paths.features)
    elif mine.next_input > mine.start:
        log.info(
            "%sresuming %s at input %d (%d rows written)",
            shard,
            paths.features,
            mine.next_input,
            mine.rows,
        )

    def extract() -> Progress:
        with open_partial(paths, mine, fresh=False) as partial:
            return _extract(run, partial, mine)

    ended = group.all_succeed(extract)
    resumed_from = sum(p.next_input - p.start for p in shards)
    done = sum(e.next_input for e in ended) - sum(p.next_input for p in shards)
    if not all(p.done for p in ended):
        mine = ended[ranks.rank]
        if not mine.done:
            log.info("stopped at input %d of %d; run again to resume", mine.next_input, len(plan))
        rows = sum(p.rows for p in ended)
        skipped = [*plan.skipped, *(s for p in ended for s in p.skipped)]
        return run.result(
            (rows, *run.shape[1:]),
            complete=False,
            resumed_from=resumed_from,
            done=done,
            skipped=skipped,
        )
    return group.on_main(lambda: _finish(run, ended, resumed_from, done))


@dataclass(frozen=True)
class _Run:
    """One extraction's settled facts, handed between the steps of `extract_features`."""

    config: FeatureConfig
    paths: OutputPaths
    plan: Plan
    extractor: Any  # backbone.GridExtractor or clip.ClipExtractor (a torch module's wrapper)
    backbone: dict[str, Any]
    device: str
    precision: str
    crop: CenterCrop  # the images' geometry, the backbone's own for an open_clip model
    fingerprint: str
    shape: tuple[int, int, int]  # of the partial file: (planned images, R, D)
    started: float
    ranks: Ranks

    def result(
        self,
        shape: tuple[int, ...],
        *,
        complete: bool,
        up_to_date: bool = False,
        resumed_from: int = 0,
        done: int = 0,
        skipped: list[SkippedImage] | None = None,
    ) -> FeatureResult:
        """`done`: the inputs this run handled (on every rank)."""
        seconds = time.perf_counter() - self.started
        return FeatureResult(
            features=self.paths.features,
            ids=self.paths.ids,
            report=self.paths.report,
            shape=shape,
            complete=complete,
            up_to_date=up_to_date,
            resumed_from=resumed_from,
            skipped=list(skipped or []),
            backbone=self.backbone,
            device=self.device,
            precision=self.precision,
            seconds=seconds,
            images_per_second=done / seconds if seconds > 0 else 0.0,
        )


def _extract(run: _Run, partial: PartialOutput, progress: Progress) -> Progress:
    """Decode, extract and write batch after batch of the shard from `progress.next_input` on,
    recording progress after each; returns the progress at the shard's end (or at
    `max_batches`)."""
    from .loader import image_batches

    config, plan = run.config, run.plan
    reader = ImageReader(plan, run.crop)
    stop = progress.stop
    batches = [
        list(range(start, min(start + config.batch_size, stop)))
        for start in range(progress.next_input, stop, config.batch_size)
    ][: config.max_batches]
    if not batches:  # a shard finished by an earlier run
        return progress
    loader = image_batches(
        reader, batches, workers=config.worker_count, pin_memory=run.device.startswith("cuda")
    )
    bar = progress_bar(
        total=stop - progress.start,
        initial=progress.next_input - progress.start,
        desc="features",
        unit="img",
        enabled=config.progress and run.ranks.is_main,
    )
    iterator = iter(loader)
    try:
        for planned, batch in zip(batches, iterator, strict=True):
            progress = _write_batch(run, partial, progress, batch)
            progress = replace(progress, next_input=planned[-1] + 1)
            partial.flush()  # rows reach the disk before the record says they are there
            save_progress(run.paths, progress)
            bar.update(len(planned))
    finally:
        bar.close()
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:  # stop the decoding workers now, even on an error
            shutdown()
    return progress


def _finish(run: _Run, shards: list[Progress], resumed_from: int, done: int) -> FeatureResult:
    """Close the gaps between the shards' rows, write ids and report, cut the features to the
    rows written, rename all into place."""
    config, plan, paths = run.config, run.plan, run.paths
    decoding_skips = [item for shard in shards for item in shard.skipped]  # in plan order
    extents = [(shard.start, shard.rows) for shard in shards]
    rows = close_gaps(paths.partial, extents)
    pooled_dim = shards[0].pooled_dim
    if pooled_dim:
        close_gaps(paths.pooled_partial, extents)
    if rows == 0:
        discard(paths)
        first = decoding_skips[0]
        raise InputError(
            f"None of the {len(plan)} images of {plan.root} could be decoded (the first: "
            f"{first.source}: {first.reason}). Nothing was written."
        )
    decoded_skips = np.array([s.img_id for s in decoding_skips], dtype=np.int64)
    row_ids = plan.img_ids[~np.isin(plan.img_ids, decoded_skips)]
    shape = (rows, *run.shape[1:])
    result = run.result(
        shape,
        complete=True,
        resumed_from=resumed_from,
        done=done,
        skipped=[*plan.skipped, *decoding_skips],
    )
    report = {
        "version": REPORT_VERSION,
        "fingerprint": run.fingerprint,
        "inputs_stamp": plan.stamp,
        "shape": list(shape),
        "dtype": config.dtype,
        "ids": paths.ids.name,
        "input": {
            "path": str(plan.root),
            "kind": plan.kind,
            "found": len(plan) + len(plan.skipped),
            "id_source": config.id_source,
            "id_file": None if config.id_file is None else str(config.id_file),
            "tsv_columns": list(config.tsv_columns) if plan.kind == "tsv" else None,
        },
        "backbone": run.backbone,
        "grid": config.grid,
        "image_size": run.crop.size,
        "resize": run.crop.resize,
        "pooled": _pooled_entry(paths, rows, pooled_dim),
        "device": run.device,
        "precision": run.precision,
        "skipped": [asdict(item) for item in result.skipped],
        "processes": run.ranks.world_size,  # under torchrun; the features do not depend on it
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 2),
        "versions": _versions(),
    }
    finish(paths, shape, np.dtype(config.dtype), row_ids, report, pooled_dim)
    log.info("wrote %s %s (%.1f images/s)", paths.features, shape, result.images_per_second)
    return result


def _start(
    paths: OutputPaths, config: FeatureConfig, run: _Run, ranks: Ranks
) -> tuple[list[Progress], bool]:
    """Every shard's progress to continue from, and whether the partial file must be created
    afresh. An interrupted run is continued only with the same inputs, options and number of
    processes (its shards are cut for that number)."""
    fingerprint, shape = run.fingerprint, run.shape
    pooled_dim = int(run.extractor.pooled_dim)
    found = (
        [load_progress(paths, path) for path in paths.progress_records()] if config.resume else []
    )
    previous = [p for p in found if p is not None]
    for record in previous:
        if record.fingerprint != fingerprint:
            raise ConfigError(
                f"{paths.partial} holds an interrupted run ({record.rows} rows written) made with "
                "other inputs or options (images, ids, backbone, grid, image size, dtype, device "
                "type or precision differ). Run the same command as before to resume it, or pass "
                "--no-resume to discard it and start again."
            )
    if previous:
        counts = sorted({p.world_size for p in previous})
        layouts = {p.bounds for p in previous}
        if counts != [ranks.world_size] or len(layouts) != 1:
            raise ConfigError(
                f"{paths.partial} holds an interrupted run of "
                f"{' and '.join(map(str, counts))} process(es), cut into shards for that number, "
                f"but this run has {ranks.world_size}. Run it again with "
                f"{counts[0]} process(es) (torchrun --nproc_per_node and --nnodes) to resume it, "
                "or pass --no-resume to discard it and start again."
            )
        by_rank = {p.rank: p for p in previous}
        (bounds,) = layouts
        shards = [
            by_rank.get(rank) or _fresh(fingerprint, shape, config, rank, bounds, pooled_dim)
            for rank in range(ranks.world_size)
        ]
        return shards, False
    discard(paths)
    bounds = tuple(shard_bounds(shape[0], config.batch_size, ranks.world_size))
    fresh = [
        _fresh(fingerprint, shape, config, r, bounds, pooled_dim) for r in range(ranks.world_size)
    ]
    return fresh, True


def _fresh(
    fingerprint: str,
    shape: tuple[int, int, int],
    config: FeatureConfig,
    rank: int,
    bounds: tuple[int, ...],
    pooled_dim: int,
) -> Progress:
    """A shard not started yet."""
    return Progress(
        fingerprint=fingerprint,
        shape=shape,
        dtype=config.dtype,
        next_input=bounds[rank],
        rank=rank,
        world_size=len(bounds) - 1,
        bounds=bounds,
        pooled_dim=pooled_dim,
    )


def _write_batch(run: _Run, partial: PartialOutput, progress: Progress, batch: Any) -> Progress:
    """Run one decoded batch through the backbone and write its rows; handle its bad images."""
    config, plan = run.config, run.plan
    if batch.errors and config.on_error == "fail":
        index, reason = batch.errors[0]
        raise InputError(
            f"{plan.describe(index)} cannot be decoded as an image ({reason}). Replace or remove "
            f"it and run the same command again (the {progress.rows} rows already written"
            f"{' by this process' if run.ranks.distributed else ''} are kept; the run resumes at "
            "this batch), or pass --on-error skip to leave it out and record it in the report."
        )
    skipped = list(progress.skipped)
    for index, reason in batch.errors:
        log.warning("skipped %s: %s", plan.describe(index), reason)
        skipped.append(SkippedImage(plan.describe(index), int(plan.img_ids[index]), reason))
    rows = progress.rows
    if batch.indices:
        regions, pooled = run.extractor.extract(batch.pixels)
        with np.errstate(over="ignore"):  # values past float16's range are reported just below
            features = regions.numpy().astype(config.dtype)  # (k, G*G, D)
            embeddings = None if pooled is None else pooled.numpy().astype(config.dtype)
        finite = np.isfinite(features).reshape(len(features), -1).all(axis=1)  # (k,)
        if embeddings is not None:
            finite &= np.isfinite(embeddings).all(axis=1)
        if not finite.all():
            first = batch.indices[int(np.flatnonzero(~finite)[0])]
            hint = " (past float16's range, 65504: pass --dtype float32)"
            raise InputError(
                f"The backbone {run.extractor.name} gave NaN or Inf features for "
                f"{plan.describe(first)}{hint if config.dtype == 'float16' else ''}."
            )
        # A shard's rows follow its first row.
        partial.write(progress.start + rows, features, embeddings)
        rows += len(features)
    return replace(progress, rows=rows, skipped=skipped)


def _fingerprint(
    plan: Plan,
    backbone: dict[str, Any],
    config: FeatureConfig,
    crop: CenterCrop,
    device_type: str,
    precision: str,
) -> str:
    """sha256 of everything that decides the output's bytes: the images and their ids, the
    network, and the options. Batch size and workers are left out: a resumed run may change
    them (a different batch size may change the last bits of some values, nothing more)."""
    # A model file is known by its content, not by where it lies.
    moved = ("name",) if "sha256" in backbone else ()
    network = {k: v for k, v in backbone.items() if k not in moved}
    content = {
        "plan": plan.digest(),
        "kind": plan.kind,
        "image_column": plan.image_column if plan.kind == "tsv" else None,
        "backbone": network,
        "grid": config.grid,
        "image_size": crop.size,
        "resize": crop.resize,
        "dtype": config.dtype,
        "device_type": device_type,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _pooled_entry(paths: OutputPaths, rows: int, pooled_dim: int) -> dict[str, Any] | None:
    """The report's record of the pooled embeddings beside the features, if there are any."""
    if not pooled_dim:
        return None
    return {"file": paths.pooled.name, "shape": [rows, pooled_dim]}


def _versions() -> dict[str, str]:
    versions = {"amc-data": __version__}
    for name in ("torch", "torchvision", "open-clip-torch", "pillow", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
