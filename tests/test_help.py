"""What `--help` shows and what it costs: a command's help loads that command alone and no heavy
library, options with a fixed set of values show it and refuse any other in one line, flags and
paths read as such."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_cli import pope

COMMAND_ARGS = {
    "filter-hard": ["p.jsonl", "--model", "m/x", "--out", "o"],
    "make-prefixes": ["p.jsonl", "--model", "m/x", "--out", "o.jsonl"],
    "make-solutions": ["p.jsonl", "--model", "m/x", "--out", "o.jsonl"],
    "train": ["p.jsonl", "--model", "m/x", "--out", "o"],
    "sft": ["p.jsonl", "--model", "m/x", "--out", "o"],
    "eval": ["p.jsonl", "--model", "m/x", "--out", "o"],
    "export": ["p.jsonl", "--out", "o"],
    "demo": ["--out", "o"],
}
CHOICES = [
    ("filter-hard", "--backend", "auto|hf|vllm|openai"),
    ("filter-hard", "--dtype", "auto|bfloat16|float16|float32"),
    ("make-solutions", "--keep", "shortest|first"),
    ("make-solutions", "--backend", "auto|hf|vllm|openai"),
    ("make-prefixes", "--split", "units|tokens"),
    ("make-prefixes", "--fallback", "largest|drop"),
    ("train", "--mode", "pope|grpo|guided"),
    ("train", "--adv-norm", "std|none"),
    ("train", "--loss-agg", "token-mean|seq-mean|dr-grpo"),
    ("train", "--rollout-is", "auto|token-truncate|sequence-truncate|sequence-mask|token-mask|none"),
    ("train", "--data-parallel", "auto|ddp|fsdp"),
    ("train", "--report-to", "tensorboard|wandb|trackio"),
    ("sft", "--source", "oracle|guided-samples"),
    ("sft", "--report-to", "tensorboard|wandb|trackio"),
    ("eval", "--mode", "unguided|guided"),
    ("export", "--format", "verl|trl"),
    ("demo", "--heldout", "shipped|filter"),
    ("demo", "--arms", "grpo|pope|grpo-easy"),
]


def imported_after(args: list[str]) -> set[str]:
    code = ("import sys; from typer.testing import CliRunner; from pope_cli.cli import app; "
            f"CliRunner().invoke(app, {args!r}); print(' '.join(sorted(sys.modules)))")
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


@pytest.mark.parametrize("args, command_modules, stage", [
    (["--help"], set(), None),
    (["eval", "--help"], {"eval"}, "pope_cli.stages.evaluate"),
    (["train", "--help"], {"train"}, "pope_cli.stages.train"),
    (["toy", "pretrain", "--help"], {"toy"}, None),
])
def test_help_imports_its_command_alone_and_no_heavy_library(args, command_modules, stage):
    modules = imported_after(args)
    assert not modules & {"torch", "transformers", "vllm", "peft", "datasets"}
    commands = {m.rsplit(".", 1)[1] for m in modules if m.startswith("pope_cli.commands.")}
    assert commands - {"options", "common", "registry"} == command_modules
    other_stages = {m for m in modules if m.startswith("pope_cli.stages.") and not (stage and m.startswith(stage))}
    assert other_stages == set()


@pytest.mark.parametrize("command, flag, choices", CHOICES)
def test_fixed_values_are_shown_and_any_other_is_refused_in_one_line(tmp_path, command, flag, choices):
    page = pope(command, "--help", check=True, columns=300).stdout
    line = next(text for text in page.splitlines() if text.lstrip("│ ").startswith(f"{flag} "))
    assert f"[{choices}" in line
    proc = pope(command, *COMMAND_ARGS[command], flag, "bogus", cwd=tmp_path)
    assert proc.returncode == 2
    [message] = proc.stderr.strip().splitlines()
    assert message.startswith(f"error: {flag}: 'bogus' is not one of {choices.replace('|', ', ')}")
    assert list(tmp_path.iterdir()) == []


def test_a_list_option_refuses_the_bad_item_among_good_ones(tmp_path):
    proc = pope("eval", *COMMAND_ARGS["eval"], "--mode", "guided,unguidd", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --mode: 'unguidd' is not one of unguided, guided"


@pytest.mark.parametrize("command", ["", "filter-hard", "train", "eval", "toy", "toy make-data"])
def test_help_shows_no_type_on_flags_and_names_paths(command):
    page = pope(*command.split(), "--help", check=True, columns=200).stdout
    help_line = next(text for text in page.splitlines() if " --help " in text and " -h " in text)
    assert "<bool>" not in help_line and "--install-completion" not in page
    if command in ("filter-hard", "train", "eval"):
        out_line = next(text for text in page.splitlines() if "--out " in text)
        config_line = next(text for text in page.splitlines() if "--config " in text)
        assert " DIR " in out_line and " FILE " in config_line


def test_no_option_shows_a_list_type_and_the_demo_s_arm_table_is_in_the_readme():
    """`eval --model` showed `<list[str]>` for its value; `demo --arms` points to the README's arm
    table, which must list every arm with what it trains."""
    from pathlib import Path

    from pope_cli.cli import COMMANDS
    from pope_cli.stages.demo import ARMS

    for command in [name for name in COMMANDS if name != "toy"] + ["toy make-data", "toy pretrain"]:
        page = pope(*command.split(), "--help", check=True, columns=300).stdout
        options = [line for line in page.splitlines() if line.lstrip("│ ").startswith("-")]
        assert not any("<list" in line for line in options), command
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("#### The demo's arms")[1].split("\n\n")[1].splitlines()
    assert [row.split(" | ")[0].removeprefix("| `").removesuffix("`") for row in table[2:]] == list(ARMS)
    assert all(f"| {what} |" in readme for what in ARMS.values())
