"""`pope eval`: options → EvalConfig → run_eval, then a side-by-side table."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pope_cli.commands.common import (AnswerFieldOpt, BackendOpt, BatchOpt, ChatTemplateOpt, DeviceOpt, DtypeOpt,
                                      GpuMemOpt, IdFieldOpt, MaxModelLenOpt, MaxNewTokensOpt, OverwriteOpt,
                                      PROMPT_PANEL, MODEL_PANEL, ProblemFieldOpt, RewardOpt, RewardTimeoutOpt,
                                      RewardWorkersOpt, SeedOpt, SolutionFieldOpt, SystemPromptOpt, TemperatureOpt,
                                      TopPOpt, TrustOpt, UnguidedTemplateOpt, user_errors)


def _int_list(text: str) -> list[int]:
    from pope_cli.errors import PopeError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PopeError(f"--k: expected comma-separated integers, got {text!r}", exit_code=2) from None


def command(
    data: Annotated[str, typer.Argument(help="Problems (.jsonl/.json/.parquet/.csv, saved dataset, hf:NAME) or a prefixes.jsonl from `pope make-prefixes`.")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model to evaluate (hub id, local dir or PEFT adapter dir); repeat for a side-by-side table.", rich_help_panel=MODEL_PANEL)],
    out: Annotated[str, typer.Option(help="Output directory (samples.jsonl, summary.json, manifest.json).")],
    n: Annotated[int, typer.Option(help="Samples per problem and mode.")] = 16,
    k: Annotated[str, typer.Option(help="Comma-separated k values for unbiased pass@k (each ≤ n).")] = "1,8,16",
    mode: Annotated[str, typer.Option(help="Comma-separated modes: unguided, guided.")] = "unguided",
    prefixes: Annotated[Optional[str], typer.Option(help="prefixes.jsonl from `pope make-prefixes`, for guided mode.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Guided template (pope, no-restate or a file) overriding the one in the prefixes file.", rich_help_panel=PROMPT_PANEL)] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples over problems for the 95% intervals (0 = none).")] = 1000,
    max_new_tokens: MaxNewTokensOpt = 4096,
    temperature: TemperatureOpt = 0.8,
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
    """Guided and unguided accuracy: avg@n (= pass@1) and unbiased pass@k with 95% intervals."""
    with user_errors():
        from pope_cli.config import EvalConfig, FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions
        from pope_cli.evaluate import run_eval
        from pope_cli.models import check_model_ref
        from pope_cli.prompts import load_template, load_unguided_template
        from pope_cli.reward import validate_reward_spec
        from pope_cli.runtime import progress_reporter, scorer_factory

        cfg = EvalConfig(
            data=data, out=out, models=model,
            model=ModelOptions(model[0], backend, dtype, device, trust_remote_code, batch_size, gpu_memory_utilization, max_model_len),
            fields=FieldMap(problem_field, answer_field, solution_field, id_field),
            prompt=PromptOptions(chat_template, system_prompt, unguided_template),
            sampling=SamplingOptions(temperature, top_p, max_new_tokens),
            reward=RewardOptions(reward, reward_timeout, reward_workers),
            n=n, ks=_int_list(k), modes=[m.strip() for m in mode.split(",") if m.strip()],
            prefixes=prefixes, template=template, bootstrap=bootstrap, seed=seed, overwrite=overwrite,
        )
        validate_reward_spec(cfg.reward.spec)
        for name in cfg.models:
            check_model_ref(name)
        load_unguided_template(cfg.prompt.unguided_template)
        if cfg.template:
            load_template(cfg.template)
        with progress_reporter("eval", total=0, unit="units") as progress:
            summary = run_eval(cfg, _make_engine, scorer_factory(cfg.reward), progress)
        print_summary(summary)


def _make_engine(opts):
    from pope_cli.engines import make_engine

    return make_engine(opts)


def print_summary(summary: dict) -> None:
    """Metrics down, one column per (model, mode)."""
    from rich.console import Console
    from rich.table import Table

    columns = [(model, mode, metrics) for model, modes in summary["models"].items() for mode, metrics in modes.items()]
    table = Table(title=f"eval (n={summary['n']})")
    table.add_column("metric", style="bold")
    for model, mode, _ in columns:
        table.add_column(f"{model}\n{mode}", justify="right")
    names = ["avg@n"] + [f"pass@{k}" for k in summary["ks"]]
    for name in names:
        table.add_row(name, *[_cell(metrics, name) for _, _, metrics in columns])
    for name in ("problems", "unparseable", "truncated"):
        table.add_row(name, *[str(metrics.get(name, "-")) for _, _, metrics in columns])
    Console().print(table)


def _cell(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "-"
    interval = metrics.get("ci95", {}).get(name)
    return f"{100 * value:.2f}" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")
