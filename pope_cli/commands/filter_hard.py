"""`pope filter-hard`: options → FilterHardConfig → run_filter_hard."""

from __future__ import annotations

from typing import Annotated

import typer

from pope_cli.commands.common import (AnswerFieldOpt, BackendOpt, BatchOpt, ChatTemplateOpt, DeviceOpt, DtypeOpt,
                                      GpuMemOpt, IdFieldOpt, MaxModelLenOpt, MaxNewTokensOpt, ModelOpt, OverwriteOpt,
                                      ProblemFieldOpt, RewardOpt, RewardTimeoutOpt, RewardWorkersOpt, SeedOpt,
                                      SolutionFieldOpt, SystemPromptOpt, TemperatureOpt, TopPOpt, TrustOpt,
                                      UnguidedTemplateOpt, print_table, user_errors)


def command(
    data: Annotated[str, typer.Argument(help="Problems: .jsonl/.json/.parquet/.csv, a saved dataset directory, or hf:NAME[:SPLIT].")],
    model: ModelOpt,
    out: Annotated[str, typer.Option(help="Output directory (stats.jsonl, hard.jsonl, easy.jsonl, manifest.json).")],
    k: Annotated[int, typer.Option(help="Samples per problem; hard = 0 correct of k (the paper: 128 at a 32k-token budget).")] = 128,
    chunk: Annotated[int, typer.Option(help="Samples per problem per round; sampling stops after the first round with a correct one.")] = 16,
    exhaustive: Annotated[bool, typer.Option("--exhaustive", help="Draw all k samples even after a correct one (exact pass rates).")] = False,
    save_samples: Annotated[bool, typer.Option("--save-samples", help="Also write every completion to samples.jsonl.")] = False,
    max_new_tokens: MaxNewTokensOpt = 4096,
    temperature: TemperatureOpt = 1.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    reward: RewardOpt = "math",
    reward_timeout: RewardTimeoutOpt = 5.0,
    reward_workers: RewardWorkersOpt = 2,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    gpu_memory_utilization: GpuMemOpt = 0.85,
    max_model_len: MaxModelLenOpt = None,
    trust_remote_code: TrustOpt = False,
    problem_field: ProblemFieldOpt = "problem",
    answer_field: AnswerFieldOpt = "answer",
    solution_field: SolutionFieldOpt = "solution",
    id_field: IdFieldOpt = "id",
    chat_template: ChatTemplateOpt = True,
    system_prompt: SystemPromptOpt = None,
    unguided_template: UnguidedTemplateOpt = None,
    overwrite: OverwriteOpt = False,
):
    """Sample each problem up to k times and keep the ones the model never solves."""
    with user_errors():
        from pope_cli.config import (FieldMap, FilterHardConfig, ModelOptions, PromptOptions, RewardOptions,
                                     SamplingOptions)
        from pope_cli.filter_hard import run_filter_hard
        from pope_cli.models import check_model_ref
        from pope_cli.reward import validate_reward_spec
        from pope_cli.prompts import load_unguided_template
        from pope_cli.runtime import engine_factory, progress_reporter, scorer_factory

        cfg = FilterHardConfig(
            data=data, out=out,
            model=ModelOptions(model, backend, dtype, device, trust_remote_code, batch_size, gpu_memory_utilization, max_model_len),
            fields=FieldMap(problem_field, answer_field, solution_field, id_field),
            prompt=PromptOptions(chat_template, system_prompt, unguided_template),
            sampling=SamplingOptions(temperature, top_p, max_new_tokens),
            reward=RewardOptions(reward, reward_timeout, reward_workers),
            k=k, chunk=chunk, exhaustive=exhaustive, save_samples=save_samples, seed=seed, overwrite=overwrite,
        )
        validate_reward_spec(cfg.reward.spec)
        check_model_ref(cfg.model.model)
        load_unguided_template(cfg.prompt.unguided_template)
        with progress_reporter("filter-hard", total=0) as progress:
            summary = run_filter_hard(cfg, engine_factory(cfg.model), scorer_factory(cfg.reward), progress)
        print_table("filter-hard", [
            ("problems", summary["problems"]), ("hard", summary["hard"]), ("easy", summary["easy"]),
            ("samples drawn", f"{summary['samples']} of {summary['naive_samples']} a naive filter draws"),
            ("tokens generated", summary["tokens"]), ("tokens/s (this run)", summary["tokens_per_second"]),
            ("time (s)", summary["seconds"]), ("written", f"{out}/hard.jsonl, {out}/easy.jsonl"),
        ])
