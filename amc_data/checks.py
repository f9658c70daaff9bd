"""Value checks for every configuration object, and the one way a config field declares itself
as an option.

A config (a frozen dataclass: `TrainConfig`, `EncodeConfig`, ...) declares each user-facing field
with `option(default, help, low=..., high=..., choices=...)`; its `__post_init__` calls
`check_config(self)`, which checks every declared field by its type, range and choices, and the
CLI builds the field's flag from the same declaration (`amc_data_cli.options.config_option`). So
a default, a bound or a help text is written once, and the library and the CLI never disagree.

Errors name the parameter as Python knows it (`epochs must be ...`); the CLI maps the name to its
flag once, where it prints the error.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """How a config field is checked and shown: its help, bounds and choices.

    `low`/`high` are inclusive bounds (None: unbounded); `above` makes `low` exclusive (> low)
    and `below` makes `high` exclusive. `why` is added to a bound's error (e.g. why the bound
    exists). `flag` is the CLI flag when it is not `--<name-with-dashes>` (e.g. `--no-intra`).
    """

    help: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False
    choices: tuple[str, ...] | None = None
    why: str = ""
    flag: str | None = None


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    below: bool = False,
    choices: Iterable[str] | None = None,
    why: str = "",
    flag: str | None = None,
) -> Any:
    """A dataclass field with `default`, declared as a checked option (see `Option`)."""
    declared = Option(
        help=help,
        low=low,
        high=high,
        above=above,
        below=below,
        choices=tuple(choices) if choices is not None else None,
        why=why,
        flag=flag,
    )
    return dataclasses.field(default=default, metadata={"option": declared})


def declared(field: dataclasses.Field[Any]) -> Option | None:
    """The `Option` a config field declares, or None."""
    found = field.metadata.get("option")
    return found if isinstance(found, Option) else None


def _range_words(low: float | None, high: float | None, above: bool, below: bool) -> str:
    def number(value: float) -> str:
        return f"{value:,}" if isinstance(value, int) else f"{value:g}"

    if low is not None and high is not None and not above and not below:
        return f"from {number(low)} to {number(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if above else '>='} {number(low)}")
    if high is not None:
        parts.append(f"{'<' if below else '<='} {number(high)}")
    return " and ".join(parts)


def _fail(name: str, expected: str, value: Any, why: str = "") -> ConfigError:
    return ConfigError(f"{name} must be {expected}, not {value!r}.{why}", parameter=name)


def whole_number(
    name: str, value: Any, low: int | None = None, high: int | None = None, why: str = ""
) -> int:
    """`value` if it is a whole number (not a bool) within [low, high]; else a `ConfigError`
    naming `name`."""
    bounds = _range_words(low, high, False, False)
    expected = f"a whole number {bounds}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(name, expected, value, f" {why}" if why else "")
    whole = int(value)
    if (low is not None and whole < low) or (high is not None and whole > high):
        raise _fail(name, expected, value, f" {why}" if why else "")
    return whole


def real_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    why: str = "",
) -> float:
    """`value` if it is a finite number (int or float, not a bool) within the bounds (`above`:
    strictly greater than `low`; `below`: strictly less than `high`); else a `ConfigError`."""
    bounds = _range_words(low, high, above, below)
    expected = f"a finite number {bounds}".rstrip()
    suffix = f" {why}" if why else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(name, expected, value, suffix)
    real = float(value)
    too_low = low is not None and (real <= low if above else real < low)
    too_high = high is not None and (real >= high if below else real > high)
    if too_low or too_high:
        raise _fail(name, expected, value, suffix)
    return real


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """`value` if it is one of `choices`; else a `ConfigError` listing them."""
    allowed = tuple(choices)
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}.", parameter=name
        )
    return value


def flag_value(name: str, value: Any) -> bool:
    """`value` if it is a bool; else a `ConfigError`."""
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value)
    return value


def field_kind(config_type: type, field: dataclasses.Field[Any]) -> tuple[type, bool]:
    """The base type of a config field (`int`, `float`, `bool`, `str`, ...) and whether it may be
    None, read from its annotation. `Literal[...]` fields count as `str`."""
    hints = typing.get_type_hints(config_type)
    hint = hints[field.name]
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(arguments) < len(typing.get_args(hint))
        hint = arguments[0] if len(arguments) == 1 else hint
    if typing.get_origin(hint) is Literal:
        return str, optional
    return (hint if isinstance(hint, type) else object), optional


def check_field(config: Any, field: dataclasses.Field[Any]) -> None:
    """Check one declared field of `config` by its type, bounds and choices."""
    rule = declared(field)
    if rule is None:
        return
    value = getattr(config, field.name)
    kind, optional = field_kind(type(config), field)
    if value is None and optional:
        return
    name, why = field.name, rule.why
    if rule.choices is not None:
        one_of(name, value, rule.choices)
    elif kind is bool:
        flag_value(name, value)
    elif kind is int:
        low = None if rule.low is None else int(rule.low) + (1 if rule.above else 0)
        high = None if rule.high is None else int(rule.high) - (1 if rule.below else 0)
        whole_number(name, value, low, high, why)
    elif kind is float:
        real_number(name, value, rule.low, rule.high, above=rule.above, below=rule.below, why=why)


def check_config(config: Any) -> None:
    """Check every field of the dataclass `config` that declares an `Option`."""
    for field in dataclasses.fields(config):
        check_field(config, field)


def config_from_dict(config_type: type, values: dict[str, Any], what: str) -> Any:
    """`config_type(**values)`, unknown keys refused by name (`what` names the options in the
    message, e.g. 'training option')."""
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown {what}(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    return config_type(**values)


def default_of(config_type: type, name: str) -> Any:
    """The default of the field `name` of the dataclass `config_type`."""
    for field in dataclasses.fields(config_type):
        if field.name == name:
            if field.default is not _MISSING:
                return field.default
            if field.default_factory is not _MISSING:
                return field.default_factory()
            raise KeyError(f"{config_type.__name__}.{name} has no default")
    raise KeyError(f"{config_type.__name__} has no field {name!r}")
