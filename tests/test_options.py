"""Options declared once in the config dataclasses: every command keeps its flags and defaults
(against the list in cli_options.json), boolean flags read as flags, and a --config file fills
any stage's options with the command line winning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from pope_cli.cli import app
from pope_cli.commands.options import stage_command
from pope_cli.shared.config import int_list
from pope_cli.shared.options import group, option

EXPECTED = json.loads((Path(__file__).parent / "cli_options.json").read_text(encoding="utf-8"))


def commands(group_command, path: tuple[str, ...] = ()):
    if hasattr(group_command, "commands"):
        for name in group_command.list_commands(None):
            yield from commands(group_command.get_command(None, name), path + (name,))
    else:
        yield " ".join(path), group_command


def declared(command) -> dict:
    return {" ".join(sorted(p.opts + p.secondary_opts)): p.default for p in command.params}


ALL_COMMANDS = dict(commands(typer.main.get_command(app)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_command_keeps_its_options_and_defaults(name):
    assert declared(ALL_COMMANDS[name]) == EXPECTED[name]


def test_the_list_covers_every_command():
    assert set(ALL_COMMANDS) == set(EXPECTED)


def test_boolean_options_are_shown_as_flags():
    runner = CliRunner()
    page = runner.invoke(app, ["filter-hard", "--help"], env={"COLUMNS": "150"}).output
    line = next(text for text in page.splitlines() if "--exhaustive" in text)
    assert "<bool>" not in line and "Draw all k samples" in line
    page = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "150"}).output
    line = next(text for text in page.splitlines() if "--lora" in text)
    assert "--full" in line and "<bool>" not in line


@dataclass
class Inner:
    size: int = option(3, "A size.")
    name: str = option("x", "A name.", param="inner_name")


@dataclass
class Outer:
    data: str = option(help="Input.", argument=True)
    inner: Inner = group(defaults={"size": 7})
    count: int = option(1, "A count.")
    on: bool = option(True, "Switch.", flags=("--on/--off",))
    ks: list[int] = option(None, "Ks.", cli_type=str, parse=int_list("--ks"))
    hidden: int = 42


def run_outer(*args: str) -> tuple[int, list, str]:
    """Run a one-command app built from `Outer`; the configs its body received."""
    seen = []
    holder = typer.Typer()

    @holder.command()
    @stage_command(Outer)
    def body(cfg: Outer):
        seen.append(cfg)

    result = CliRunner().invoke(holder, list(args))
    return result.exit_code, seen, result.output


def test_one_declaration_reaches_its_field_with_group_defaults_and_parsing():
    code, seen, output = run_outer("in.jsonl", "--count", "5", "--off", "--ks", "1,8", "--inner-name", "y")
    assert code == 0, output
    assert seen == [Outer("in.jsonl", Inner(size=7, name="y"), 5, False, [1, 8], 42)]


def test_config_file_fills_options_and_the_command_line_wins(tmp_path):
    config = tmp_path / "opts.toml"
    config.write_text('data = "file.jsonl"\ncount = 9\nsize = 2\noff = true\nks = [1, 4]\n', encoding="utf-8")
    code, seen, output = run_outer("--config", str(config), "--count", "3")
    assert code == 0, output
    assert seen == [Outer("file.jsonl", Inner(size=2, name="x"), 3, False, [1, 4], 42)]


def test_config_file_errors_name_the_option(tmp_path):
    config = tmp_path / "opts.json"
    config.write_text(json.dumps({"data": "a", "hidden": 1}), encoding="utf-8")
    code, seen, output = run_outer("--config", str(config))
    assert code == 2 and not seen and "unknown option 'hidden'" in output
    config.write_text(json.dumps({"data": "a", "count": "many"}), encoding="utf-8")
    code, seen, output = run_outer("--config", str(config))
    assert code == 2 and "option 'count': expected int" in output


def test_a_config_file_error_names_the_key_the_file_used(tmp_path):
    config = tmp_path / "train.toml"
    config.write_text('full = "yes"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "p.jsonl", "--out", "run", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --config: option 'full': expected bool, got 'yes'"


def test_a_missing_required_option_is_one_line():
    code, seen, output = run_outer("--count", "2")
    assert code == 2 and not seen
    assert "DATA: missing (give it on the command line or in --config)" in output


def test_every_stage_reads_a_config_file(tmp_path):
    config = tmp_path / "filter.json"
    config.write_text(json.dumps({"model": str(tmp_path / "no-model"), "k": 0}), encoding="utf-8")
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"problem": "1+1", "answer": "2"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["filter-hard", str(problems), "--out", str(tmp_path / "out"),
                                      "--config", str(config)])
    assert result.exit_code == 2 and "--k: must be at least 1" in result.output
    assert not (tmp_path / "out").exists()
