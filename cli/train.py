"""`amc-data train`."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from amc_data._optional import require
from amc_data.progress import progress_enabled
from amc_data.ranking.config import DEVICES, FEATURE_PLACES, LOSSES, MODELS, TrainConfig

from .options import quiet_option

DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _option(name: str, help_text: str, **kwargs: Any) -> Any:
    """`--name` with TrainConfig's default shown; the value is checked there, once."""
    flag = "--" + name.replace("_", "-")
    return click.option(
        flag, name, default=DEFAULTS[name], show_default=True, help=help_text, **kwargs
    )


@click.command("train")
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder: config.json, best.pt, last.pt, log.jsonl.",
)
@_option(
    "model",
    "AMC, or a baseline: visual, keyword, fusion (no attention), cca.",
    type=click.Choice(MODELS),
)
@click.option("--no-intra", is_flag=True, help="Ablation: mean pooling inside each modality.")
@click.option("--no-inter", is_flag=True, help="Ablation: fixed 0.5/0.5 modality weights.")
@_option("epochs", "Passes over the training pairs.", type=int)
@_option("batch_size", "(query, positive) pairs per step.", type=int)
@_option("lr", "Peak learning rate (AdamW).", type=float)
@_option("weight_decay", "AdamW weight decay.", type=float)
@_option("warmup", "Fraction of the steps warming the learning rate up.", type=float)
@_option(
    "loss",
    "pool: the batch's queries share one pool of negatives; pairs: each pair its own "
    "(the paper's t).",
    type=click.Choice(LOSSES),
)
@_option(
    "negatives", "With --loss pairs: sampled negatives per positive (the paper's t).", type=int
)
@_option("pool_negatives", "With --loss pool: sampled images added to the batch's pool.", type=int)
@click.option(
    "--hardest/--no-hardest",
    default=DEFAULTS["hardest"],
    show_default=True,
    help="With --loss pool: each query's hardest negative only (VSE++'s max violation).",
)
@_option("margin", "Hinge margin of the ranking loss.", type=float)
@click.option(
    "--in-batch",
    is_flag=True,
    help="With --loss pairs: also use the batch's other positives as negatives.",
)
@_option("clip", "Gradient norm cap (0: none).", type=float)
@_option("dim", "Size of the shared space.", type=int)
@_option("max_keywords", "Keywords kept per image (the most frequent).", type=int)
@_option(
    "word_vectors",
    "word2vec/GloVe text file to start the query word embeddings from.",
    type=click.Path(dir_okay=False, exists=True),
)
@_option("device", "auto: CUDA when torch sees a GPU.", type=click.Choice(DEVICES))
@_option(
    "features_on",
    "host: the loader reads the features file; device: all features "
    "resident on the device; auto: device on a GPU with room.",
    type=click.Choice(FEATURE_PLACES),
)
@click.option(
    "--amp/--no-amp",
    default=DEFAULTS["amp"],
    show_default=True,
    help="bf16 autocast on CUDA (no effect on the CPU).",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@_option("seed", "Seed of every random choice.", type=int)
@_option("workers", "Data-loader worker processes (0: load in the training process).", type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--force", is_flag=True, help="Replace the run already in --out.")
@quiet_option
def train_command(
    data: Path,
    out: Path,
    no_intra: bool,
    no_inter: bool,
    compile_: bool,
    resume: bool,
    force: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Train AMC (or a baseline) on a prepared folder DATA (from `synth` or `prepare`).

    Under torchrun each process is one rank of a distributed run:
    `torchrun --nproc_per_node 4 -m amc_data train DATA --out RUN`.
    """
    config = TrainConfig(intra=not no_intra, inter=not no_inter, compile=compile_, **options)
    require("torch")
    from amc_data.ranking.training import train

    result = train(data, out, config, resume=resume, force=force, progress=progress_enabled(quiet))
    if quiet or os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    for entry in result.log:
        metric, loss = entry.get("ndcg@10"), entry.get("loss")
        click.echo(
            f"epoch {entry['epoch']:>3}  loss {'n/a' if loss is None else f'{loss:.4f}'}  "
            f"val ndcg@10 {'n/a' if metric is None else f'{metric:.4f}'}  "
            f"{entry['seconds']:.1f} s"
        )
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    click.echo(f"Best val ndcg@10 {best} (epoch {result.best_epoch}); run in {result.run_dir}")


COMMANDS = [train_command]
