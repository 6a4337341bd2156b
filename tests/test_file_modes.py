"""Outputs get the mode the umask gives a file the user creates, so another user can read them:
files 0666 & ~umask, directories (and run_verl.sh) 0777 & ~umask, including files written through
a temporary file and the adapter safetensors that `save_pretrained` writes."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import same_prefix_rows, sampling_stage_config, write_prefix_workspace
from fakes import BoxScorer, ScriptedEngine
from pope_cli.shared.config import FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def mask(request):
    earlier = os.umask(request.param)
    yield request.param
    os.umask(earlier)


def modes_under(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.name.startswith(".") and not any(part.startswith(".") for part in path.relative_to(root).parts):
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def wrong_modes(root: Path, mask: int) -> dict[str, str]:
    """Every file and directory under `root` whose mode is not the umask's, with its mode."""
    wrong = {}
    for name, mode in modes_under(root).items():
        path = root / name
        expected = (0o777 if path.is_dir() or name.endswith(".sh") else 0o666) & ~mask
        if mode != expected:
            wrong[name] = oct(mode)
    return wrong


def test_every_stage_output_has_the_umask_mode(tmp_path, mask, tiny_model_dir, char_tokenizer):
    from pope_cli.stages.evaluate import EvalConfig, run_eval
    from pope_cli.stages.export.config import ExportConfig
    from pope_cli.stages.export.writer import run_export
    from pope_cli.stages.filter_hard import FilterHardConfig, run_filter_hard
    from pope_cli.stages.report.config import ReportConfig
    from pope_cli.stages.report.writer import run_report
    from pope_cli.stages.train.config import TrainConfig
    from pope_cli.stages.train.trainer import run_train

    torch.set_num_threads(1)
    (tmp_path / "in").mkdir()
    root = write_prefix_workspace(tmp_path / "in", same_prefix_rows(2))
    problems = root / "problems.jsonl"
    problems.write_text("".join(line.replace('"prefix"', '"hint"') + "\n"
                                for line in (root / "prefixes.jsonl").read_text().splitlines()))
    engine = ScriptedEngine(char_tokenizer, lambda prompt, stream: "\\boxed{x}" if stream % 2 else "no")
    run_filter_hard(sampling_stage_config(FilterHardConfig, problems, tmp_path / "filter", k=2, chunk=2),
                    lambda: engine, BoxScorer)
    train = TrainConfig(prefixes=str(root / "prefixes.jsonl"), out=str(tmp_path / "run"),
                        model=ModelOptions(str(tiny_model_dir), backend="hf", device="cpu"),
                        prompt=PromptOptions(unguided_template=str(root / "unguided.txt")),
                        sampling=SamplingOptions(max_new_tokens=4), reward=RewardOptions("train_rewards:starts_lower",
                                                                                         workers=1),
                        steps=1, prompts_per_step=2, group_size=2, lora_rank=2, warmup_steps=0)
    run_train(train, reporter_stream=io.StringIO())
    run_eval(EvalConfig(data=str(root / "prefixes.jsonl"), out=str(tmp_path / "eval"), models=["m"],
                        model=ModelOptions("m"), fields=FieldMap(),
                        prompt=PromptOptions(), sampling=SamplingOptions(max_new_tokens=8), reward=RewardOptions(),
                        n=2, ks=[1]),
             lambda opts: engine, BoxScorer)
    run_report(ReportConfig(dirs=[str(tmp_path / "run"), str(tmp_path / "eval")], out=str(tmp_path / "report")))
    for fmt in ("verl", "trl"):
        run_export(ExportConfig(train=train, out=str(tmp_path / fmt), format=fmt))
    outputs = ["filter", "run", "eval", "report", "verl", "trl"]
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_000001" / "model" / "adapter_model.safetensors").is_file()
    assert {name: wrong_modes(tmp_path / name, mask) for name in outputs} == dict.fromkeys(outputs, {})


def test_an_atomic_write_gets_the_umask_mode_not_the_temporary_file_s(tmp_path, mask):
    from pope_cli.shared.outputs import atomic_write_text, file_mode

    atomic_write_text(tmp_path / "x.json", "{}")
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == file_mode() == 0o666 & ~mask
