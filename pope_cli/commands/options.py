"""Typer commands derived from the stages' config dataclasses.

`stage_command(ConfigA, ConfigB, ...)` reads the `option()`/`group()` declarations of each config
(`pope_cli/shared/options.py`), gives the command one typer parameter per shown field (plus
`--config FILE`), and calls the decorated body with the built, validated configs. So an option is
written once, in its config field, and reaches it with no per-option glue.

Every parameter has a default at parse time, so that a `--config` file (TOML or JSON, keys are
option names) can supply what the command line leaves out; required ones are checked after the
file is merged, and the command line wins over the file.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from pope_cli.shared.errors import PopeError
from pope_cli.shared.options import ALL, Cli, Group, flag_of

CONFIG_PARAM = "config"


@dataclass
class Param:
    """One command-line parameter and the config fields it fills."""

    name: str
    cli: Cli
    help: str
    hint: Any
    """The field's type (`str | None` and the like)."""
    default: Any
    required: bool

    @property
    def flag(self) -> str:
        return flag_of(self.name, self.cli)

    @property
    def metavar(self) -> str | None:
        if self.is_flag:
            return ""
        if self.cli.metavar is not None or not self.cli.choices:
            return self.cli.metavar
        listed = "[" + "|".join(self.cli.choices) + "]"
        return listed + ",..." if self.takes_list else listed

    @property
    def takes_list(self) -> bool:
        return any(typing.get_origin(t) is list for t in (self.hint, *typing.get_args(self.hint)))

    def typer_parameter(self) -> inspect.Parameter:
        kind = typer.Argument if self.cli.argument else typer.Option
        flags = () if self.cli.argument else self.cli.flags
        metavar = self.metavar
        help_text = self.help + (" Required (here or in --config)." if self.required and not self.cli.argument else "")
        info = kind(*flags, help=help_text, rich_help_panel=self.cli.panel, metavar=metavar,
                    show_default=self.cli.show_default and not self.required)
        annotation = Annotated[Optional[self.cli_type()], info]
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=None if self.required else self.default,
                                 annotation=annotation)

    @property
    def is_flag(self) -> bool:
        return self.cli_type() is bool

    def cli_type(self):
        if self.cli.cli_type is not None:
            return self.cli.cli_type
        inner = [t for t in typing.get_args(self.hint) if t is not type(None)]
        return inner[0] if inner and typing.get_origin(self.hint) is not list else self.hint


def params(cls, view: Group = ALL) -> list[Param]:
    """The parameters `cls` shows under `view`, in field order (a name shared by two fields appears once)."""
    found: dict[str, Param] = {}
    hints = typing.get_type_hints(cls)
    own = cls.__dict__.get("__annotations__", {})
    # A config's own fields first, then those it inherits (PolicyOptions), so that its panels lead.
    for spec in sorted(dataclasses.fields(cls), key=lambda spec: spec.name not in own):
        if "group" in spec.metadata:
            for param in params(hints[spec.name], view.inner(spec.name).over(spec.metadata["group"])):
                found.setdefault(param.name, param)
        elif "cli" in spec.metadata and view.shows(spec.name):
            cli = spec.metadata["cli"]
            if spec.name in view.choices:
                cli = dataclasses.replace(cli, choices=view.choices[spec.name])
            default = view.defaults.get(spec.name, spec.default if cli.cli_default is None else cli.cli_default)
            name = cli.param or spec.name
            found.setdefault(name, Param(name, cli, view.help.get(spec.name, cli.help), hints[spec.name],
                                         None if default is MISSING else default, default is MISSING))
    return list(found.values())


def build(cls, values: dict, view: Group = ALL):
    """An instance of `cls` from parameter values (validated by its `__post_init__`)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for spec in dataclasses.fields(cls):
        if "group" in spec.metadata:
            kwargs[spec.name] = build(hints[spec.name], values, view.inner(spec.name).over(spec.metadata["group"]))
        elif "cli" in spec.metadata and view.shows(spec.name):
            cli = spec.metadata["cli"]
            raw = values[cli.param or spec.name]
            kwargs[spec.name] = cli.parse(raw) if cli.parse is not None and raw is not None else raw
        elif spec.name in view.fixed:
            kwargs[spec.name] = view.fixed[spec.name]
    return cls(**kwargs)


def stage_command(*configs: type) -> Callable:
    """Decorate `body(cfg_a, cfg_b, ...)`: the typer command taking every option of `configs`."""
    shown = [param for cls in configs for param in params(cls)]
    by_name = {param.name: param for param in shown}

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def command(ctx: typer.Context, **values):
            from pope_cli.commands.common import user_errors

            with user_errors():
                path = values.pop(CONFIG_PARAM)
                if path is not None:
                    values = merge_config_file(ctx, values, path, by_name)
                missing = [param.flag for param in shown if param.required and values[param.name] in (None, [], ())]
                if missing:
                    raise PopeError(f"{missing[0]}: missing (give it on the command line or in --config)", exit_code=2)
                built = [build(cls, values) for cls in configs]
                return body(*built)

        context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        file_param = inspect.Parameter(CONFIG_PARAM, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option(help="TOML or JSON file of options (keys are option names, e.g. lora-rank = 32); "
                                             "command-line options override it.", metavar="FILE")])
        parameters = [context] + [param.typer_parameter() for param in shown] + [file_param]
        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        del command.__wrapped__  # typer must read the signature above, not the body's
        return command

    return decorate


def _read_config_file(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise PopeError(f"--config: {path}: no such file", exit_code=2)
    is_toml = file.suffix.lower() == ".toml"
    try:
        text = file.read_text(encoding="utf-8")
        if is_toml:
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:  # tomllib and json errors are ValueErrors
        raise PopeError(f"--config: {path}: not valid {'TOML' if is_toml else 'JSON'} ({error})", exit_code=2) from None
    if not isinstance(data, dict):
        raise PopeError(f"--config: {path}: expected a table/object of options", exit_code=2)
    return data


def _negations(by_name: dict[str, Param]) -> dict[str, str]:
    """File keys that name a flag's off side (`full` for --lora/--full) -> the parameter."""
    names = {}
    for param in by_name.values():
        for flag in param.cli.flags:
            if "/" in flag:
                names[flag.split("/")[1].lstrip("-").replace("-", "_")] = param.name
    return names


def _convert(param: Param, value, key: str):
    """A config-file value as the parameter's command-line type (int, float, str, bool, list, or
    None); an error names the option as the file spells it (`full`, not the `lora` it sets)."""
    wanted = param.cli_type()
    if value is None and not param.required:
        return None
    if param.cli.parse is not None and isinstance(value, list):
        return value
    if typing.get_origin(wanted) is list:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        wanted = list
    elif wanted is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, wanted) and not (wanted is int and isinstance(value, bool)):
        return value
    raise PopeError(f"--config: option '{key}': expected {wanted.__name__}, got {value!r}", exit_code=2)


def merge_config_file(ctx: typer.Context, values: dict, path: str, by_name: dict[str, Param]) -> dict:
    """Values from the file where the command line left the default, type-checked."""
    negations = _negations(by_name)
    merged = dict(values)
    for raw_key, value in _read_config_file(path).items():
        key = raw_key.replace("-", "_")
        if key in negations and key not in by_name:
            key, value = negations[key], not value if isinstance(value, bool) else value
        param = by_name.get(key)
        if param is None or not param.cli.in_file:
            raise PopeError(f"--config: {path}: unknown option '{raw_key}'", exit_code=2)
        source = ctx.get_parameter_source(key)
        if source is not None and source.name != "DEFAULT":
            continue  # given on the command line (or by environment): it wins
        merged[key] = _convert(param, value, raw_key)
    return merged
