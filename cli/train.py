"""`amc-data train`."""

from __future__ import annotations

from pathlib import Path

import click

from amc_data._optional import require
from amc_data.progress import progress_enabled

from .options import quiet_option

MODELS = ("amc", "visual", "keyword", "fusion", "cca")  # the library checks the value again


@click.command("train")
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: config.json, best.pt, last.pt, log.jsonl.")  # fmt: skip
@click.option("--model", type=click.Choice(MODELS), default="amc", show_default=True,
              help="AMC, or a baseline: visual, keyword, fusion (no attention), cca.")  # fmt: skip
@click.option("--no-intra", is_flag=True, help="Ablation: mean pooling inside each modality.")
@click.option("--no-inter", is_flag=True, help="Ablation: fixed 0.5/0.5 modality weights.")
@click.option("--epochs", type=int, default=None, help="Passes over the training pairs.")
@click.option("--batch-size", type=int, default=None, help="(query, positive) pairs per step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay.")
@click.option("--warmup", type=float, default=None, help="Fraction of steps warming the lr up.")
@click.option("--negatives", "-t", type=int, default=None, help="Sampled negatives per positive.")
@click.option("--margin", type=float, default=None, help="Hinge margin of the ranking loss.")
@click.option("--in-batch/--no-in-batch", default=None,
              help="Also use the batch's other positives as negatives.")  # fmt: skip
@click.option("--clip", type=float, default=None, help="Gradient norm cap (0: none).")
@click.option("--dim", type=int, default=None, help="Size of the shared space.")
@click.option("--max-keywords", type=int, default=None, help="Keywords kept per image.")
@click.option("--word-vectors", type=click.Path(dir_okay=False, exists=True), default=None,
              help="word2vec/GloVe text file to start the query word embeddings from.")  # fmt: skip
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="auto: CUDA when present.")  # fmt: skip
@click.option("--amp/--no-amp", default=None, help="bf16 autocast on CUDA (default on).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@click.option("--seed", type=int, default=None, help="Seed of every random choice.")
@click.option("--workers", type=int, default=None, help="Data-loader worker processes.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--force", is_flag=True, help="Replace the run already in --out.")
@quiet_option
def train_command(
    data: Path, out: Path, no_intra: bool, no_inter: bool, compile_: bool | None,
    resume: bool, force: bool, quiet: bool, **options: object,
) -> None:  # fmt: skip
    """Train AMC (or a baseline) on a prepared folder DATA (from `synth` or `prepare`).

    Under torchrun this is one process of a distributed run:
    `torchrun --nproc_per_node 4 -m amc_data train DATA --out RUN`.
    """
    require("torch")
    from amc_data.training import TrainConfig, train

    chosen = {k: v for k, v in options.items() if v is not None}
    if compile_:
        chosen["compile"] = True
    if no_intra:
        chosen["intra"] = False
    if no_inter:
        chosen["inter"] = False
    config = TrainConfig(**chosen)  # type: ignore[arg-type]
    result = train(data, out, config, resume=resume, force=force,
                   progress=progress_enabled(quiet))  # fmt: skip
    if quiet:
        return
    for entry in result.log:
        metric = entry.get("ndcg@10")
        shown = "n/a" if metric is None else f"{metric:.4f}"
        loss = entry.get("loss")
        click.echo(
            f"epoch {entry['epoch']:>3}  loss {'n/a' if loss is None else f'{loss:.4f}'}  "
            f"val ndcg@10 {shown}  {entry['seconds']:.1f} s"
        )
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    click.echo(f"Best val ndcg@10 {best} (epoch {result.best_epoch}); run in {result.run_dir}")


COMMANDS = [train_command]
