"""The datasets `amc-data prepare` makes, one `PrepareRecipe` each.

A recipe is plain data, declared by the module that prepares the dataset (its module-level
`DATASET`): the command's name and help, the config class whose declared fields
(`checks.option`) become the command's options, the extra files its `prepare` function reads,
and that function. The command line builds `prepare <name>` from it, so no other code names the
dataset. The built-in datasets are listed in `BUILT_IN` (module paths, imported only when the
list is asked for); another package adds its own through the entry-point group
`amc_data.datasets` (each entry point names a `PrepareRecipe`), and a program or a test with
`register`. No Click here: the library states the options, the CLI spells them.

Every recipe's `prepare` is called with keywords only: `features`, `feature_ids`, `out`,
`data_dir`, `encoded` (the options every `prepare` command takes), one keyword per `FileInput`,
and `config`; it returns the `PrepareResult` of the folder it wrote (`write_folder` or
`write_prepared`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..checks import config_from_dict, declared
from ..errors import ConfigError

if TYPE_CHECKING:
    from .common import PrepareResult

__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "SHARED_CONFIG_FIELDS",
    "FileInput",
    "PrepareRecipe",
    "recipe",
    "recipes",
    "register",
    "unregister",
]

ENTRY_POINT_GROUP = "amc_data.datasets"
# The modules of the built-in datasets, each with its `DATASET`: adding one is a row here.
BUILT_IN = ("amc_data.prepare.coco", "amc_data.prepare.clickture")
# Config fields every `prepare` command shows when its config declares them (one declaration
# each, in `common`), before the dataset's own options.
SHARED_CONFIG_FIELDS = ("missing", "on_error", "min_query_count", "force")


@dataclass(frozen=True)
class FileInput:
    """A file the recipe's `prepare` reads besides the features, passed as the keyword `name`
    and shown as the option `--<name-with-dashes> FILE`. An optional one may be None."""

    name: str
    help: str
    required: bool = False


@dataclass(frozen=True)
class PrepareRecipe:
    """How `amc-data prepare <name>` makes a prepared folder (see the module's docstring).

    `options` lists, in the order the command shows them after the shared options, the
    dataset's own options: a name is a declared field of `config` (or of `settings`, a
    dataclass of further declared options that are not config fields, e.g. a layout spelled
    as several flags), a `FileInput` a file. `make_config` turns the values of the shared and
    own options (by field name) into the config; by default `config(**values)`.
    """

    name: str
    config: type
    prepare: Callable[..., PrepareResult]
    help: str
    options: tuple[str | FileInput, ...] = ()
    settings: type | None = None
    make_config: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"A dataset's name must be a non-empty word (letters, digits, '-', '_'), not "
                f"{self.name!r}: it is the `prepare` subcommand and the prepared folder's source."
            )
        for entry in self.options:
            if isinstance(entry, str):
                self.declaring(entry)  # fails early when no class declares it

    @property
    def inputs(self) -> tuple[FileInput, ...]:
        """The files the recipe's `prepare` takes by keyword, beside the shared ones."""
        return tuple(e for e in self.options if isinstance(e, FileInput))

    def declaring(self, name: str) -> type:
        """The class (`config` or `settings`) whose declared field `name` is."""
        for kind in (self.config, self.settings):
            if kind is None:
                continue
            field = next((f for f in dataclasses.fields(kind) if f.name == name), None)
            if field is not None and declared(field) is not None:
                return kind
        raise ConfigError(
            f"Dataset {self.name!r} shows the option {name!r}, which neither "
            f"{self.config.__name__} nor its settings declare with checks.option."
        )

    def build_config(self, values: dict[str, Any]) -> Any:
        """The config from the options' values, by field name."""
        if self.make_config is not None:
            return self.make_config(dict(values))
        return config_from_dict(self.config, values, f"{self.name} option")


_REGISTERED: dict[str, PrepareRecipe] = {}


def register(recipe: PrepareRecipe) -> PrepareRecipe:
    """Add `recipe` to the datasets `prepare` makes (for the running process); return it."""
    if recipe.name in recipes():
        raise ConfigError(
            f"A dataset named {recipe.name!r} is already registered; choose another name, or "
            "unregister the first."
        )
    _REGISTERED[recipe.name] = recipe
    return recipe


def unregister(name: str) -> None:
    """Remove the dataset `register` added under `name` (nothing when there is none)."""
    _REGISTERED.pop(name, None)


def _load_entry_points() -> list[PrepareRecipe]:
    found = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if not isinstance(loaded, PrepareRecipe):
            raise ConfigError(
                f"The entry point {entry.name} = {entry.value} of group {ENTRY_POINT_GROUP} is "
                f"a {type(loaded).__name__}, not a PrepareRecipe. Point it at the module's "
                "DATASET."
            )
        found.append(loaded)
    return found


def recipes() -> dict[str, PrepareRecipe]:
    """Every dataset `prepare` makes, by name, in name order: the built-in ones, those of
    installed packages (entry points), and those registered in this process."""
    found: dict[str, PrepareRecipe] = {}
    built_in = [importlib.import_module(module).DATASET for module in BUILT_IN]
    for item in [*built_in, *_load_entry_points(), *_REGISTERED.values()]:
        found.setdefault(item.name, item)
    return dict(sorted(found.items()))


def recipe(name: str) -> PrepareRecipe:
    """The dataset `name`; a `ConfigError` naming the known ones when there is none."""
    known = recipes()
    if name not in known:
        raise ConfigError(
            f"No dataset named {name!r} can be prepared; known: {', '.join(known)}.",
            parameter=None,
        )
    return known[name]
