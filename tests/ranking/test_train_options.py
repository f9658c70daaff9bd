"""The options of `amc-data train` without torch: what a resume may change, and the bounds a
user can understand, checked before torch loads."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.errors import ConfigError, TrainingError
from amc_data.ranking.config import TrainConfig, option_flag
from amc_data.ranking.resume import RESUME_MAY_CHANGE, check_resume


def _other_value(field: dataclasses.Field, default: Any) -> Any:
    """A valid value other than the default, by the field's type."""
    if field.name == "model":
        return "visual"
    if field.name == "device":
        return "cpu"
    if field.name == "loss":
        return "pool" if default != "pool" else "pairs"
    if field.name == "word_vectors":
        return "vectors.txt"
    if field.name == "attention":
        return "dot"
    if field.name == "gate_content":
        return True
    if field.name == "gate_scale":
        return 2.0
    if field.name == "region_attention_scale_rate":
        return 3.0
    if field.name == "init_from":
        return "another-run"
    if field.name == "region_mean_hinge_end":  # a share: 1 is its highest
        return 1.0
    if field.name == "gain":
        return "linear"
    if field.name == "pool_reduction":
        return "all" if default != "all" else "violating"
    if field.name == "modality_dropout_keep":
        return "favoured" if default != "favoured" else "drawn"
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default + 0.5
    raise AssertionError(f"add a changed value for the new option {field.name} to this test")


OPTIONS = [f for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_MAY_CHANGE]


@pytest.mark.parametrize("field", OPTIONS, ids=[f.name for f in OPTIONS])
def test_resume_refuses_every_option_that_changes_the_run_naming_both_values(
    field: dataclasses.Field,
) -> None:
    pairs = field.name in ("in_batch", "negatives")  # options of the per-pair loss
    saved = TrainConfig(loss="pairs") if pairs else TrainConfig()
    if field.name == "attention_entropy_floor":  # it bounds the term: a run with the term
        saved = TrainConfig(attention_entropy=0.001)
    value = _other_value(field, getattr(saved, field.name))
    current = dataclasses.replace(saved, **{field.name: value})
    with pytest.raises(TrainingError) as caught:
        check_resume(saved.to_dict(), current, "RUN")
    message = str(caught.value)
    assert option_flag(field.name) in message
    assert f"{getattr(saved, field.name)!r} in the run, {value!r} now" in message
    assert "\n" not in message


def test_resume_names_every_differing_option_at_once() -> None:
    saved = TrainConfig()
    current = dataclasses.replace(saved, lr=0.01, margin=0.5, clip=0.0)
    with pytest.raises(TrainingError, match=r"--lr .*--margin .*--clip"):
        check_resume(saved.to_dict(), current, "RUN")


def test_device_workers_and_compile_may_change_and_the_record_keeps_the_run_s() -> None:
    saved = TrainConfig(device="cpu", workers=0)
    current = dataclasses.replace(saved, device="auto", workers=2, compile=True)
    assert check_resume(saved.to_dict(), current, "RUN") == saved
    assert {
        "device",
        "workers",
        "compile",
        "features_on",
        "tensorboard",
    } == RESUME_MAY_CHANGE  # amp changes the numbers


def test_an_option_missing_from_an_older_record_counts_as_its_default() -> None:
    saved = TrainConfig().to_dict()
    del saved["clip"], saved["in_batch"]
    assert check_resume(saved, TrainConfig(), "RUN") == TrainConfig()
    with pytest.raises(TrainingError, match=r"--clip is 1.0 in the run, 2.0 now"):
        check_resume(saved, TrainConfig(clip=2.0), "RUN")


def test_a_switch_of_the_other_loss_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"^in_batch goes with loss pairs") as caught:
        TrainConfig(in_batch=True)
    assert caught.value.parameter == "in_batch"
    with pytest.raises(ConfigError, match=r"^hardest goes with loss pool") as caught:
        TrainConfig(loss="pairs", hardest=True)
    assert caught.value.parameter == "hardest"
    assert TrainConfig(loss="pairs", in_batch=True).in_batch
    result = CliRunner().invoke(cli, ["train", "nowhere", "--out", "x", "--in-batch"])
    assert result.exit_code != 0 and "--in-batch goes with loss pairs" in result.output


# (options, the option refused, words naming what would use it)
UNUSED = [
    ({"negatives": 4}, "negatives", "loss pairs"),
    ({"loss": "pairs", "pool_negatives": 16}, "pool_negatives", "loss pool"),
    ({"model": "visual", "intra": False}, "intra", "or use a model with one (amc)"),
    ({"model": "keyword", "inter": False}, "inter", "no modality gate: drop that ablation"),
    ({"model": "fusion", "attention": "dot"}, "attention", "intra-attention (amc), intra on"),
    ({"intra": False, "attention": "cosine"}, "attention", "intra on"),
    ({"model": "visual", "gate_content": True}, "gate_content", "a modality gate (amc)"),
    ({"inter": False, "gate_scale": 1.0}, "gate_scale", "a modality gate (amc), inter on"),
    ({"inter": False, "gate_routing": 0.1}, "gate_routing", "a modality gate (amc), inter on"),
    (
        {"model": "visual", "region_attention_scale_rate": 3.0},
        "region_attention_scale_rate",
        "intra-attention over regions (amc), intra on, cosine attention",
    ),
    (
        {"intra": False, "region_attention_scale_rate": 3.0},
        "region_attention_scale_rate",
        "intra on",
    ),
    (
        {"attention": "dot", "region_attention_scale_rate": 3.0},
        "region_attention_scale_rate",
        "cosine attention",
    ),
    ({"model": "keyword", "region_target": 0.5}, "region_target", "over regions (amc)"),
    ({"intra": False, "region_target": 0.5}, "region_target", "intra on"),
    ({"model": "fusion", "region_mean_hinge": 0.7}, "region_mean_hinge", "over regions (amc)"),
    ({"intra": False, "region_mean_hinge": 0.7}, "region_mean_hinge", "intra on"),
    (
        {"region_target": 0.0, "region_target_temperature": 0.5},
        "region_target_temperature",
        "region_target above 0",
    ),
    (
        {"region_target": 0.0, "region_mean_hinge": 0.0, "region_terms_warmup": 0.2},
        "region_terms_warmup",
        "region_target or region_mean_hinge above 0",
    ),
    (
        {"region_mean_hinge": 0.0, "region_mean_hinge_end": 1.0},
        "region_mean_hinge_end",
        "region_mean_hinge above 0",
    ),
    ({"model": "visual", "keyword_target": 0.5}, "keyword_target", "over keywords (amc)"),
    ({"intra": False, "keyword_target": 0.5}, "keyword_target", "intra on"),
    (
        {"keyword_target": 0.0, "keyword_target_temperature": 0.5},
        "keyword_target_temperature",
        "keyword_target above 0",
    ),
    ({"model": "cca", "word_vectors": "v.txt"}, "word_vectors", "gradient descent"),
    ({"init_from": "run", "word_vectors": "v.txt"}, "word_vectors", "no init_from"),
    ({"model": "cca", "init_from": "run"}, "init_from", "gradient descent"),
    ({"model": "fusion", "attention_entropy": 0.1}, "attention_entropy", "intra-attention"),
    ({"intra": False, "attention_entropy": 0.1}, "attention_entropy", "intra on"),
    (
        {"attention_entropy": 0.0, "attention_entropy_floor": 1.0},
        "attention_entropy_floor",
        "attention_entropy above 0",
    ),
]


@pytest.mark.parametrize(("options", "refused", "needs"), UNUSED, ids=[u[1] for u in UNUSED])
def test_an_option_the_run_would_not_use_is_refused_naming_what_would_use_it(
    options: dict[str, Any], refused: str, needs: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**options)
    message = str(caught.value)
    assert caught.value.parameter == refused and message.startswith(refused)
    assert needs in message and "\n" not in message


def test_options_the_run_uses_and_session_options_are_accepted() -> None:
    TrainConfig(loss="pairs", negatives=4, in_batch=True)
    TrainConfig(pool_negatives=16, hardest=True)
    TrainConfig(attention="dot", gate_content=True, gate_scale=0.0, word_vectors="v.txt")
    TrainConfig(model="visual", init_from="run", dim=16)
    TrainConfig(model="cca", device="cpu", amp=True)  # amp on the CPU: how a session runs
    TrainConfig(attention_entropy=0.1)
    TrainConfig(loss="pairs", attention_entropy=0.1)
    TrainConfig(attention_entropy=0.1, attention_entropy_floor=0.0)


def _seen_by_train(args: list[str]) -> tuple[Any, list[Any]]:
    """Run `amc-data train ARGS` with training replaced by a stub: its result, and the
    configs training received."""
    import amc_data.ranking.training as training

    seen: list[Any] = []

    def stop(data, out, config, **kwargs):
        seen.append(config)
        raise ConfigError("stop here")

    original, training.train = training.train, stop
    try:
        return CliRunner().invoke(cli, ["train", *args]), seen
    finally:
        training.train = original


def test_the_cli_refuses_a_typed_option_the_run_would_not_use_even_at_its_default() -> None:
    result, seen = _seen_by_train(["data", "--out", "run", "--negatives", "8"])
    assert result.exit_code == 2 and not seen
    assert "--negatives 8 goes with loss pairs" in result.output
    result, seen = _seen_by_train(["data", "--out", "run", "--loss", "pairs", "--no-hardest"])
    assert result.exit_code == 2 and not seen  # a no-op switch of the pool loss is still given
    assert "--hardest goes with loss pool" in result.output
    result, seen = _seen_by_train(["data", "--out", "run", "--loss", "pairs", "--negatives", "8"])
    assert "stop here" in result.output and seen == [TrainConfig(loss="pairs")]


def test_the_paper_preset_is_the_paper_objective_and_inter_attention() -> None:
    result, seen = _seen_by_train(["data", "--out", "run", "--preset", "paper"])
    assert "stop here" in result.output
    assert seen == [
        TrainConfig(
            loss="pairs",
            negatives=8,
            margin=0.2,
            attention="dot",
            gate_content=True,
            gate_scale=0,
            attention_entropy=0.0,
            modality_dropout=0.0,
            gate_routing=0.0,
            gate_warmup=0.0,
            region_target=0.0,
            region_mean_hinge=0.0,
            keyword_target=0.0,
        )
    ]
    # Typed options win over the preset; its options a run does not use are left out (a
    # baseline without a gate still trains with the paper's objective).
    result, seen = _seen_by_train(
        ["data", "--out", "run", "--preset", "paper", "--model", "visual", "--margin", "0.5"]
    )
    assert seen == [TrainConfig(model="visual", loss="pairs", negatives=8, margin=0.5)]
    result, seen = _seen_by_train(["data", "--out", "run", "--preset", "paper", "--loss", "pool"])
    assert seen[0].loss == "pool" and seen[0].attention == "dot"


def test_a_preset_that_does_not_exist_is_refused_listing_the_presets() -> None:
    from amc_data.ranking.config import train_config

    with pytest.raises(ConfigError, match=r"^preset must be one of paper, not 'papr'"):
        train_config(preset="papr")
    result, seen = _seen_by_train(["data", "--out", "run", "--preset", "papr"])
    assert result.exit_code == 2 and "paper" in result.output and not seen


def test_a_run_recorded_before_the_pool_loss_resumes_as_the_per_pair_run_it_was() -> None:
    saved = TrainConfig(loss="pairs").to_dict()
    for added in ("loss", "pool_negatives", "hardest", "features_on"):
        del saved[added]
    assert TrainConfig().loss == "pool"  # today's default is not what such a run did
    with pytest.raises(TrainingError, match=r"--loss is 'pairs' in the run, 'pool' now"):
        check_resume(saved, TrainConfig(), "RUN")
    assert check_resume(saved, TrainConfig(loss="pairs"), "RUN") == TrainConfig(loss="pairs")


@pytest.mark.parametrize("saved", [None, "amc", {"dim": "big"}, {"colour": "red"}])
def test_a_record_that_is_not_valid_options_is_one_line_error(saved: Any) -> None:
    with pytest.raises(TrainingError, match=r"cannot be resumed") as caught:
        check_resume(saved, TrainConfig(), "RUN")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("dim", 1_000_000, "^dim must be a whole number from 1 to 8,192, not 1000000. Larger"),
        ("seed", 2**64, "^seed must be a whole number from 0 to 9,223,372,036,854,775,807"),
        ("seed", -1, "^seed must be"),
        ("negatives", 100_000, "^negatives .* 1 to 10,000"),
        ("batch_size", 70_000, "^batch_size .* 1 to 65,536"),
        ("epochs", 0, r"^epochs must be a whole number from 1 to 10,000, not 0\.$"),
        ("epochs", 10**6, "^epochs"),
        ("max_keywords", 5000, "^max_keywords .* 1 to 4,096"),
        ("attention_entropy", -1, "^attention_entropy "),
        ("attention_entropy_floor", -1, "^attention_entropy_floor "),
        ("region_attention_scale_rate", -1, "^region_attention_scale_rate "),
        ("region_target", -1, "^region_target must be a finite number >= 0"),
        ("region_target_temperature", 0, "^region_target_temperature must be a finite number > 0"),
        ("region_mean_hinge", -0.1, "^region_mean_hinge "),
    ],
)
def test_options_beyond_their_bounds_are_one_line_config_errors(
    option: str, value: int, words: str
) -> None:
    from amc_data.errors import ConfigError

    with pytest.raises(ConfigError, match=words) as caught:
        TrainConfig(**{option: value})
    assert caught.value.parameter == option


def test_the_cli_refuses_an_option_beyond_its_bound_without_torch(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from amc_data_cli.main import main\n"
        f"main(['train', {str(tmp_path)!r}, '--out', {str(tmp_path / 'run')!r}, "
        "'--seed', '18446744073709551616'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--seed" in out.stderr
    assert "0<=x<=9223372036854775807" in out.stderr
    assert "Traceback" not in out.stderr


def test_every_training_option_is_a_train_flag_built_from_its_declaration() -> None:
    from amc_data_cli.train import train_command

    from amc_data.checks import declared

    params = {p.name: p for p in train_command.params}
    for field in dataclasses.fields(TrainConfig):
        rule = declared(field)
        assert rule is not None, f"TrainConfig.{field.name} is not declared with checks.option"
        param = params[field.name]
        assert param.default == field.default, field.name
        flags = [*param.opts, *param.secondary_opts]
        assert all(flag in flags for flag in option_flag(field.name).split("/")), field.name
        if field.name != "model":  # the registry's kinds, each with its summary
            assert param.help == rule.help, field.name
    # The ablations and switches keep their spelling.
    assert params["intra"].opts == ["--no-intra"] and params["inter"].opts == ["--no-inter"]
    assert params["amp"].secondary_opts == ["--no-amp"]
    assert params["hardest"].secondary_opts == ["--no-hardest"]


def test_the_cli_passes_its_flags_to_the_config_as_before(tmp_path) -> None:
    import amc_data_cli.train as train_module

    seen = []

    def stop(data, out, config, **kwargs):
        seen.append(config)
        raise ConfigError("stop here")

    import amc_data.ranking.training as training

    original = training.train
    training.train = stop
    try:
        args = ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--no-intra", "--no-inter"]
        args += ["--no-amp", "--compile", "--loss", "pairs", "--in-batch", "--epochs", "3"]
        result = CliRunner().invoke(cli, args)
    finally:
        training.train = original
    assert result.exit_code != 0 and "stop here" in result.output
    assert seen == [
        TrainConfig(
            intra=False, inter=False, amp=False, compile=True, loss="pairs", in_batch=True, epochs=3
        )
    ]
    assert train_module.train_command.name == "train"
