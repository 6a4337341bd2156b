"""The `pope` commands, registered by name and imported only when one is run or asked for help.

Importing every command module (and the stage configs under them) cost `pope train --help` the
import of the other eight stages. Here each command is an entry (module, one-line help); the
top-level `pope --help` lists the entries without importing any of them, and `pope NAME ...`
imports NAME's module alone. The one-line help lives here only: it is both the line in the
command list and the first line of the command's own `--help`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Entry:
    """One command: the module under `pope_cli.commands` holding it, and its one-line help."""

    module: str
    help: str
    no_args_is_help: bool = True


class UntypedHelp:
    """`--help`/`-h` shown without the `<bool>` typer 0.29 prints for every flag's type."""

    def get_help_option(self, ctx):
        help_option = super().get_help_option(ctx)
        if help_option is not None:
            help_option.metavar = ""
        return help_option


class Command(UntypedHelp, TyperCommand):
    """A pope command (`cls=` of `app.command`)."""


class Group(UntypedHelp, TyperGroup):
    """A group of pope commands (`cls=` of `typer.Typer`)."""


class Placeholder(TyperCommand):
    """A command's name and help, standing in for it until it is run or its help is asked for."""


class LazyGroup(Group):
    """A typer group whose commands come from `entries`, each imported on first use.

    A module defines `command` (a function typer turns into the command) or `app` (a Typer
    with subcommands). While the group formats its own help, it reads only the placeholders.
    """

    entries: dict[str, Entry] = {}

    def __init__(self, **attrs):
        super().__init__(**attrs)
        self._listing = False
        for name, entry in self.entries.items():
            self.commands.setdefault(name, Placeholder(name=name, help=entry.help))

    def get_command(self, ctx, cmd_name: str):
        command = self.commands.get(cmd_name)
        if isinstance(command, Placeholder) and not self._listing:
            command = self.commands[cmd_name] = load(cmd_name, self.entries[cmd_name])
        return command

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def load(name: str, entry: Entry):
    """The click command of `entry`, built by typer from the module's `app` or `command`."""
    module = importlib.import_module(f"pope_cli.commands.{entry.module}")
    if hasattr(module, "app"):
        command = typer.main.get_command(module.app)
    else:
        holder = typer.Typer(add_completion=False)
        holder.command(name, help=entry.help, no_args_is_help=entry.no_args_is_help, cls=Command)(module.command)
        command = typer.main.get_command(holder)
    command.name = name
    return command


def subcommands(name: str, help: str) -> typer.Typer:
    """The `app` of a command with subcommands (`pope toy`, `pope lm`), taking options as the others do."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False, cls=Group,
                       context_settings={"help_option_names": ["-h", "--help"]})


def lazy_group(entries: dict[str, Entry]) -> type[LazyGroup]:
    """A LazyGroup class over `entries`, for `typer.Typer(cls=...)`."""
    return type("PopeCommands", (LazyGroup,), {"entries": entries})
