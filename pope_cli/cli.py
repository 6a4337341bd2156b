"""The `pope` command line: one thin command per stage.

Each command maps its options onto the stage's config dataclass and calls the stage's
`run_*` function. Heavy libraries (torch, transformers, vllm, peft) are imported inside the
command bodies so `pope --help` stays fast. A `PopeError` ends the command with one line on
stderr and its exit code, never a traceback.
"""

from __future__ import annotations

import typer

from pope_cli import __version__
from pope_cli.commands import eval as eval_cmd
from pope_cli.commands import filter_hard
from pope_cli.commands import demo, export, make_prefixes, make_solutions, report, sft, toy, train

app = typer.Typer(
    name="pope",
    help="POPE: RL for LLM reasoning on hard problems, guided by oracle-solution prefixes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"pope {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.", metavar=""),
):
    """POPE: RL for LLM reasoning on hard problems, guided by oracle-solution prefixes."""


app.command("filter-hard", no_args_is_help=True)(filter_hard.command)
app.command("make-solutions", no_args_is_help=True)(make_solutions.command)
app.command("make-prefixes", no_args_is_help=True)(make_prefixes.command)
app.command("train", no_args_is_help=True)(train.command)
app.command("sft", no_args_is_help=True)(sft.command)
app.command("eval", no_args_is_help=True)(eval_cmd.command)
app.command("export", no_args_is_help=True)(export.command)
app.command("report", no_args_is_help=True)(report.command)
app.command("demo")(demo.command)
app.add_typer(toy.app, name="toy")

if __name__ == "__main__":
    app()
