"""`pope make-prefixes`: options → PrefixConfig → run_make_prefixes, then a summary table."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pope_cli.commands.common import (PROMPT_PANEL, AnswerFieldOpt, BackendOpt, BatchOpt, ChatTemplateOpt, DeviceOpt,
                                      DtypeOpt, GpuMemOpt, IdFieldOpt, MaxModelLenOpt, MaxNewTokensOpt, ModelOpt,
                                      OverwriteOpt, ProblemFieldOpt, RewardOpt, RewardTimeoutOpt, RewardWorkersOpt,
                                      SeedOpt, SolutionFieldOpt, SystemPromptOpt, TemperatureOpt, TopPOpt, TrustOpt,
                                      print_table, user_errors)

SEARCH_PANEL = "Prefix search"


def command(
    data: Annotated[str, typer.Argument(help="Hard problems with oracle solutions (typically filter/hard.jsonl): .jsonl/.json/.parquet/.csv, a saved dataset directory, or hf:NAME[:SPLIT].")],
    model: ModelOpt,
    out: Annotated[str, typer.Option(help="The prefixes file to write (prefixes.jsonl); its .stats.jsonl, .skipped.jsonl, .config.json and .manifest.json sit next to it.")],
    n: Annotated[int, typer.Option(help="Guided samples per rung; a rung with at least one correct is the problem's prefix.", rich_help_panel=SEARCH_PANEL)] = 16,
    max_fraction: Annotated[float, typer.Option(help="Largest prefix, as a fraction of the solution's tokens (the paper: 0.25).", rich_help_panel=SEARCH_PANEL)] = 0.25,
    max_rungs: Annotated[int, typer.Option(help="At most this many rungs per problem, spaced evenly in tokens; 0 = one rung per unit (--split units only).", rich_help_panel=SEARCH_PANEL)] = 16,
    split: Annotated[str, typer.Option(help="Cut solutions into 'units' (paragraph, line and sentence boundaries outside math) or 'tokens'.", rich_help_panel=SEARCH_PANEL)] = "units",
    fallback: Annotated[str, typer.Option(help="When no rung is solved: 'largest' keeps the largest rung (status not_found) or 'drop' leaves the problem out.", rich_help_panel=SEARCH_PANEL)] = "largest",
    fixed_fraction: Annotated[Optional[float], typer.Option(help="Skip the search: every prefix is the first F of its solution (QuestA-style); loads only the tokenizer.", rich_help_panel=SEARCH_PANEL)] = None,
    template: Annotated[str, typer.Option(help="Guided template: pope, no-restate, or a text file with {problem} and {prefix}; recorded in each record.", rich_help_panel=PROMPT_PANEL)] = "pope",
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
    overwrite: OverwriteOpt = False,
):
    """Per hard problem, the shortest oracle prefix under which the model solves the guided version."""
    with user_errors():
        from pope_cli.config import (FieldMap, ModelOptions, PrefixConfig, PromptOptions, RewardOptions,
                                     SamplingOptions)
        from pope_cli.models import check_model_ref
        from pope_cli.prefixes import run_make_prefixes
        from pope_cli.reward import validate_reward_spec
        from pope_cli.runtime import engine_factory, progress_reporter, scorer_factory

        cfg = PrefixConfig(
            data=data, out=out,
            model=ModelOptions(model, backend, dtype, device, trust_remote_code, batch_size, gpu_memory_utilization, max_model_len),
            fields=FieldMap(problem_field, answer_field, solution_field, id_field),
            prompt=PromptOptions(chat_template, system_prompt, None),
            sampling=SamplingOptions(temperature, top_p, max_new_tokens),
            reward=RewardOptions(reward, reward_timeout, reward_workers),
            template=template, split=split, max_fraction=max_fraction, n=n, max_rungs=max_rungs,
            fallback=fallback, fixed_fraction=fixed_fraction, seed=seed, overwrite=overwrite,
        )
        validate_reward_spec(cfg.reward.spec)
        check_model_ref(cfg.model.model)
        with progress_reporter("make-prefixes", total=0) as progress:
            summary = run_make_prefixes(cfg, engine_factory(cfg.model), scorer_factory(cfg.reward), progress)
        print_table("make-prefixes", summary_rows(summary, cfg))


def summary_rows(summary: dict, cfg) -> list[tuple[str, object]]:
    """The table: outcomes, the chosen fractions and their histogram, cost and files."""
    skipped_ids = summary["no_solution_ids"]
    shown = ", ".join(skipped_ids[:5]) + (", …" if len(skipped_ids) > 5 else "")
    rows = [("problems", summary["problems"])]
    if cfg.fixed_fraction is None:
        rows += [("found", summary["found"]), ("not found, kept largest rung", summary["not_found_kept"]),
                 ("not found, dropped", summary["dropped"])]
    else:
        rows += [("fixed fraction", summary["fixed"])]
    rows += [("skipped: no solution", f"{len(skipped_ids)} ({shown})" if skipped_ids else 0),
             ("skipped: first unit over the cap", summary["no_rung"]),
             ("prefix fraction", _distribution_text(summary["fraction"]))]
    most = max([b["count"] for b in summary["fraction_histogram"]] + [1])
    rows += [(f"  {100 * b['from']:.0f}–{100 * b['to']:.0f}%", f"{b['count']:>5} {'█' * round(20 * b['count'] / most)}")
             for b in summary["fraction_histogram"]]
    rows += [("samples drawn", summary["samples"]), ("tokens/s (this run)", summary["tokens_per_second"]),
             ("time (s)", summary["seconds"]),
             ("written", f"{cfg.out} ({summary['usable']} usable), {cfg.out}.skipped.jsonl, {cfg.out}.stats.jsonl")]
    return rows


def _distribution_text(fraction: dict | None) -> str | None:
    if fraction is None:
        return None
    return f"mean {fraction['mean']:.3f} · median {fraction['median']:.3f} · min {fraction['min']:.3f} · max {fraction['max']:.3f}"
