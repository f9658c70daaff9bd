"""`amc-data train`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from amc_data._optional import require
from amc_data.progress import progress_enabled
from amc_data.ranking.config import TrainConfig, check_used, layered_options
from amc_data.ranking.presets import PRESETS, preset_help
from amc_data.ranking.registry import model_help, model_kinds

from .options import config_option, quiet_option


class ModelChoice(click.Choice):
    """The registered model kinds, read when the command runs (not when it is defined), so a
    kind registered later is offered too."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return model_kinds()

    @choices.setter
    def choices(self, value: object) -> None:
        pass  # always the registry's


class ModelOption(click.Option):
    """`--model`, whose help lists the registered kinds, each with its summary."""

    @property
    def help(self) -> str:
        return model_help()

    @help.setter
    def help(self, value: object) -> None:
        pass  # always the registry's


def _train_option(name: str, *decls: str, **overrides: Any) -> Any:
    """The option of the TrainConfig field `name`, as TrainConfig declares it."""
    return config_option(TrainConfig, name, *decls, **overrides)


@click.command("train")
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder: config.json, best.pt, last.pt, log.jsonl.",
)
@_train_option("model", type=ModelChoice(), cls=ModelOption)
@_train_option("intra")
@_train_option("inter")
@_train_option("epochs")
@_train_option("batch_size")
@_train_option("lr")
@_train_option("weight_decay")
@_train_option("warmup")
@_train_option("loss")
@_train_option("negatives")
@_train_option("pool_negatives")
@_train_option("hardest")
@_train_option("pool_reduction")
@_train_option("pool_word_share")
@_train_option("margin")
@_train_option("attention_entropy")
@_train_option("attention_entropy_floor")
@_train_option("gate_routing")
@_train_option("region_target")
@_train_option("region_target_temperature")
@_train_option("keyword_target")
@_train_option("keyword_target_temperature")
@_train_option("region_mean_hinge")
@_train_option("region_mean_hinge_end")
@_train_option("region_terms_warmup")
@_train_option("gate_warmup")
@_train_option("modality_dropout")
@_train_option("modality_dropout_keep")
@_train_option("in_batch", show_default=False)
@_train_option("clip")
@_train_option("dim")
@_train_option("max_keywords")
@_train_option("word_vectors", type=click.Path(dir_okay=False, exists=True))
@_train_option("attention")
@_train_option("region_attention_scale_rate", show_default=False)
@_train_option("gate_content", show_default=False)
@_train_option("gate_scale", show_default=False)
@_train_option("init_from", type=click.Path(exists=True))
@_train_option("device")
@_train_option("features_on")
@_train_option("amp")
@_train_option("compile", show_default=False)
@_train_option("gain")
@_train_option("seed")
@_train_option("workers")
@_train_option("tensorboard", type=click.Path(file_okay=False))
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A TOML file of training options (keys as in config.json's train: epochs = 8); "
    "typed options win over it.",
)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help=preset_help())
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last.pt, with the options it records (give only "
    "--device, --workers, --compile, --features-on, --tensorboard to change them).",
)
@click.option("--force", is_flag=True, help="Replace the run already in --out.")
@quiet_option
def train_command(
    data: Path,
    out: Path,
    config_file: Path | None,
    preset: str | None,
    resume: bool,
    force: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Train AMC (or a baseline) on a prepared folder DATA (from `synth` or `prepare`).

    Each option is taken from, first found first: the command line, the --config file, the
    --preset, the defaults. An option the run would not use (--negatives with --loss pool) is
    refused. Under torchrun each process is one rank of a distributed run:
    `torchrun --nproc_per_node 4 -m amc_data train DATA --out RUN`.
    """
    context = click.get_current_context()
    typed = {
        name: value
        for name, value in options.items()
        if context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    values, sources = layered_options(typed, config_file, preset)
    config = None
    if not resume:  # checked before torch loads; a resumed run's options are in its last.pt
        config = TrainConfig(**values)
        check_used(config, sources)
    require("torch")
    from amc_data.ranking.training import train

    result = train(
        data,
        out,
        config,
        resume=resume,
        force=force,
        progress=progress_enabled(quiet),
        given=values if resume else None,
    )
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
