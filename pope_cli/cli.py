"""The `pope` command line: one thin command per stage.

Each command maps its options onto the stage's config dataclass and calls the stage's
`run_*` function. A command's module is imported only when that command runs or shows its help
(`commands/registry.py`), and heavy libraries (torch, transformers, vllm, peft) only inside the
command bodies, so `--help` stays fast. A `PopeError` ends the command with one line on stderr
and its exit code, never a traceback.
"""

from __future__ import annotations

import typer

from pope_cli import __version__
from pope_cli.commands.registry import Entry, lazy_group

COMMANDS = {
    "filter-hard": Entry("filter_hard", "Sample each problem up to k times and keep the ones the model never solves."),
    "make-solutions": Entry("make_solutions", "Sample a teacher (a model, the policy itself, or a served model) until "
                                              "it solves each problem; keep that solution."),
    "make-prefixes": Entry("make_prefixes", "Per hard problem, the shortest oracle prefix under which the model solves "
                                            "the guided version."),
    "train": Entry("train", "RL on hard problems with guided (oracle-prefix) and unguided copies: on-policy GRPO, LoRA "
                            "or full."),
    "sft": Entry("sft", "Supervised warm start: oracle solutions, or guided samples the reward scores correct; LoRA or "
                        "full."),
    "eval": Entry("eval", "Guided and unguided accuracy: avg@n (= pass@1) and unbiased pass@k with 95% intervals."),
    "export": Entry("export", "Write the data mix pope train would use, with its reward and GRPO settings, for verl or "
                              "TRL."),
    "report": Entry("report", "Figures, report.md and a self-contained index.html from training runs and evaluations."),
    "demo": Entry("demo", "Run the four stages on the embedded toy model: plain GRPO vs POPE, evaluated on held-out hard "
                          "problems.", no_args_is_help=False),
    "toy": Entry("toy", "The toy testbed: chain arithmetic mod 10 and a ~1M-parameter model that runs on CPU."),
    "lm": Entry("lm", "The real-LM testbed: SmolLM2-135M-Instruct (fetched from PyPI, converted from GGUF) and word "
                      "problems."),
}

app = typer.Typer(
    name="pope",
    help="POPE: RL for LLM reasoning on hard problems, guided by oracle-solution prefixes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    cls=lazy_group(COMMANDS),
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


if __name__ == "__main__":
    app()
