"""Declaring a config field as a command-line option, in one place.

A stage's config dataclass is where each of its options is written, once: `option(default, help,
...)` makes a dataclass field that carries its flag, help text and help panel, and `group()` marks
a field holding an option group that several stages share (`ModelOptions`, `SamplingOptions`, ...),
with the defaults, help and subset of fields that this stage shows. `pope_cli/commands/options.py`
turns these declarations into typer parameters and the parsed values back into the config; this
module imports no typer, so the stage cores stay free of the command-line layer.

A field without `option()` metadata is not on the command line: it keeps its dataclass default
(or a group's `fixed` value). An option with `choices` is checked by `check_choices(self)` in its
config's `__post_init__`, so a config built in code is refused as the command line is.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

from pope_cli.shared.errors import PopeError


@dataclass(frozen=True)
class Cli:
    """How one config field appears on the command line."""

    help: str
    panel: str | None = None
    """The `--help` panel (None = the plain Options panel)."""
    flags: tuple[str, ...] = ()
    """Flag spellings (`("--model", "-m")`, `("--lora/--full",)`); default: `--field-name`."""
    param: str | None = None
    """The parameter's name where it differs from the field's (e.g. `reward` for RewardOptions.spec)."""
    parse: Callable[[Any], Any] | None = None
    """Turns the command-line value into the field's value (e.g. "1,8" into [1, 8])."""
    cli_type: Any = None
    """The type the command line reads, where it is not the field's (str for a parsed list)."""
    argument: bool = False
    """A positional argument rather than an option."""
    cli_default: Any = None
    """The command line's default, where it is not the field's (e.g. "1,8,16", parsed); None = the field's."""
    metavar: str | None = None
    """What `--help` shows for the value (FILE, DIR, ...); default: the choices, else the type."""
    choices: tuple[str, ...] = ()
    """The values the option takes (each item, for a list); the command line refuses any other."""
    show_default: bool = True
    in_file: bool = True
    """Whether a --config file may set it."""


def flag_of(name: str, cli: Cli) -> str:
    """The spelling a message names a parameter by: --backend, --lora, or for a positional argument
    what `--help` calls it (PATH, PREFIXES)."""
    if cli.argument:
        return cli.metavar or name.upper()
    return (cli.flags or (f"--{name.replace('_', '-')}",))[0].split("/")[0]


# What `--help` shows for an option whose value is a file or directory (`ID|DIR`: a hub id or one).
PATH_METAVARS = ("FILE", "DIR", "PATH", "PREFIXES", "INPUT")


def takes_path(cli: Cli) -> bool:
    return any(word in PATH_METAVARS for word in re.split(r"[|.]+", cli.metavar or ""))


def described_options(config, prefix: str = "") -> dict[str, tuple[str, bool]]:
    """Each option of a config instance, by its key in the flattened config ("sampling.top_p"): the
    spelling a message names it by, and whether its value names a file or directory."""
    found = {}
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if "group" in spec.metadata and dataclasses.is_dataclass(value):
            found.update(described_options(value, f"{prefix}{spec.name}."))
        elif "cli" in spec.metadata:
            cli = spec.metadata["cli"]
            found[prefix + spec.name] = (flag_of(cli.param or spec.name, cli), takes_path(cli))
    return found


def check_choices(config) -> None:
    """Refuse, in one line naming them, a value (or a list's item) outside its option's `choices`."""
    for spec in dataclasses.fields(config):
        cli = spec.metadata.get("cli")
        value = getattr(config, spec.name)
        if cli is None or not cli.choices or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if item not in cli.choices:
                raise PopeError(f"{flag_of(cli.param or spec.name, cli)}: {item!r} is not one of "
                                f"{', '.join(cli.choices)}", exit_code=2)


def given(config, name: str) -> bool:
    """Whether option `name` of a config holds other than its declared default: a value the user
    chose, which a combination of options that ignores it must refuse rather than drop."""
    declared = next(spec for spec in dataclasses.fields(config) if spec.name == name).default
    return getattr(config, name) != declared


def option(default: Any = MISSING, help: str = "", **cli: Any):
    """A dataclass field that is also a command-line option (see `Cli` for the keywords)."""
    return field(default=default, metadata={"cli": Cli(help, **cli)})


@dataclass(frozen=True)
class Group:
    """How a stage shows an option group: dotted keys reach into groups inside the group."""

    defaults: dict[str, Any]
    """Field name -> this stage's default (e.g. temperature 0.8 for training)."""
    show: tuple[str, ...] | None
    """The fields shown (a name, or `group.name`, or a whole `group`); None = all of them."""
    help: dict[str, str]
    """Field name -> this stage's help text, where the group's own reads wrong here."""
    fixed: dict[str, Any]
    """Field name -> the value of a field this stage does not show."""
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Field name -> the choices this stage shows, where it takes fewer than the option's (train: no openai)."""

    def inner(self, name: str) -> Group:
        """The view of group field `name`: this view's keys under `name.`, with `name` itself shown whole."""
        prefix = name + "."

        def strip(mapping: dict) -> dict:
            return {key[len(prefix):]: value for key, value in mapping.items() if key.startswith(prefix)}

        show = None
        if self.show is not None and name not in self.show:
            show = tuple(key[len(prefix):] for key in self.show if key.startswith(prefix))
        return Group(strip(self.defaults), show, strip(self.help), strip(self.fixed), strip(self.choices))

    def shows(self, name: str) -> bool:
        return self.show is None or name in self.show

    def over(self, declared: Group) -> Group:
        """This (outer) view laid over the group field's own declaration: the outer one wins."""
        show = declared.show if self.show is None else self.show
        return Group({**declared.defaults, **self.defaults}, show, {**declared.help, **self.help},
                     {**declared.fixed, **self.fixed}, {**declared.choices, **self.choices})


ALL = Group({}, None, {}, {})


def group(*, defaults: dict | None = None, show: tuple[str, ...] | None = None, help: dict | None = None,
          fixed: dict | None = None, choices: dict | None = None, default_factory: Any = MISSING):
    """A dataclass field holding an option group, as this stage shows it; `default_factory` lets
    code that builds the config leave the group out."""
    return field(default_factory=default_factory,
                 metadata={"group": Group(defaults or {}, show, help or {}, fixed or {}, choices or {})})
