"""Options shared by several commands, and the one place user errors become exit codes.

Each alias is an `Annotated` type, so a command declares `model: ModelOpt` and gets the same
flag name and help text as every other command.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Optional

import typer

from pope_cli.errors import PopeError

MODEL_PANEL = "Model and generation"
DATA_PANEL = "Input fields"
PROMPT_PANEL = "Prompts"

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub id or local directory of the model (a PEFT adapter directory loads base + adapter).", rich_help_panel=MODEL_PANEL)]
BackendOpt = Annotated[str, typer.Option(help="Generation backend: hf (transformers), vllm, or auto (vllm when importable and CUDA is present).", rich_help_panel=MODEL_PANEL)]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32.", rich_help_panel=MODEL_PANEL)]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N] (hf backend).", rich_help_panel=MODEL_PANEL)]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model repo's own Python code to run.", rich_help_panel=MODEL_PANEL)]
BatchOpt = Annotated[int, typer.Option(help="hf backend: sequences per generate call.", rich_help_panel=MODEL_PANEL)]
GpuMemOpt = Annotated[float, typer.Option(help="vllm backend: fraction of GPU memory vLLM may use.", rich_help_panel=MODEL_PANEL)]
MaxModelLenOpt = Annotated[Optional[int], typer.Option(help="vllm backend: maximum context length (prompt + completion).", rich_help_panel=MODEL_PANEL)]
MaxNewTokensOpt = Annotated[int, typer.Option(help="Token budget per completion.", rich_help_panel=MODEL_PANEL)]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature.", rich_help_panel=MODEL_PANEL)]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling threshold (1.0 = off).", rich_help_panel=MODEL_PANEL)]
SeedOpt = Annotated[int, typer.Option(help="Random seed; the same seed on the same machine gives the same files.")]
RewardOpt = Annotated[str, typer.Option(help="Answer checker: 'math' (math-verify on the boxed answer) or 'module:function' taking (completion, record) -> score or None.")]
RewardTimeoutOpt = Annotated[float, typer.Option(help="Hard deadline in seconds for checking one completion; a miss scores 0.")]
RewardWorkersOpt = Annotated[int, typer.Option(help="Worker processes for answer checking.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs instead of resuming them.")]

ProblemFieldOpt = Annotated[str, typer.Option(help="Column holding the problem text (dotted path for nested fields).", rich_help_panel=DATA_PANEL)]
AnswerFieldOpt = Annotated[str, typer.Option(help="Column holding the gold answer; when missing, the last \\boxed{} of the solution is used.", rich_help_panel=DATA_PANEL)]
SolutionFieldOpt = Annotated[str, typer.Option(help="Column holding the oracle solution (optional).", rich_help_panel=DATA_PANEL)]
IdFieldOpt = Annotated[str, typer.Option(help="Column holding the problem id; when missing, a hash of the problem text.", rich_help_panel=DATA_PANEL)]

ChatTemplateOpt = Annotated[bool, typer.Option("--chat-template/--no-chat-template", help="Send prompts through the tokenizer's chat template (when it has one) or as raw text.", rich_help_panel=PROMPT_PANEL)]
SystemPromptOpt = Annotated[Optional[str], typer.Option(help="Optional system message.", rich_help_panel=PROMPT_PANEL)]
UnguidedTemplateOpt = Annotated[Optional[str], typer.Option(help="Text file with a {problem} placeholder for unguided prompts (default: the problem plus a \\boxed{} answer instruction).", rich_help_panel=PROMPT_PANEL)]


def fail(error: PopeError) -> typer.Exit:
    """Print a user error as one line on stderr and return the Exit to raise."""
    print(f"error: {error}", file=sys.stderr)
    return typer.Exit(code=error.exit_code)


@contextlib.contextmanager
def user_errors():
    """Turn a PopeError into one stderr line and its exit code, and Ctrl-C into a resume hint.

    Every stage writes each finished record before taking the next, so an interrupted run has
    lost at most the work in flight and the same command picks up where it stopped.
    """
    try:
        yield
    except PopeError as error:
        raise fail(error) from None
    except KeyboardInterrupt as interrupt:
        hint = getattr(interrupt, "hint", "finished work is saved; rerun the same command to resume")
        print(f"interrupted: {hint}", file=sys.stderr)
        raise typer.Exit(code=130) from None


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    """The end-of-stage summary: a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    Console().print(table)
