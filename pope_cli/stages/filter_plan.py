"""`--dry-run` plans of the early-stopping sampling stages: what a run will cost, before any weights load.

Worst case: every problem draws all k samples. Expected: a share (`--assume-hard` for
filter-hard, `--assume-unsolved` for make-solutions) draws k; the others stop after their
first chunk (all k with filter-hard's `--exhaustive`). Tokens count every sample at the
`--max-new-tokens` budget, an upper bound (hard problems tend to run long). Hours divide the
tokens by `--gen-tokens-per-s` times the number of workers.
"""

from __future__ import annotations

from pope_cli.shared.data import read_problems


def sampling_plan(problems: int, k: int, first_draw: int, share_all_k: float, workers: int, max_new_tokens: int,
                  gen_tokens_per_s: float | None) -> dict:
    """Samples, tokens and hours of `problems` problems, a share `share_all_k` of them drawing k, the others `first_draw`."""
    worst = problems * k
    expected = round(problems * (share_all_k * k + (1 - share_all_k) * first_draw))
    plan = {"problems": problems, "workers": workers, "worst_samples": worst, "expected_samples": expected,
            "worst_tokens": worst * max_new_tokens, "expected_tokens": expected * max_new_tokens,
            "gen_tokens_per_s": gen_tokens_per_s, "worst_hours": None, "expected_hours": None}
    if gen_tokens_per_s:
        rate = gen_tokens_per_s * workers * 3600
        plan["worst_hours"] = round(plan["worst_tokens"] / rate, 2)
        plan["expected_hours"] = round(plan["expected_tokens"] / rate, 2)
    return plan


def plan_filter_hard(cfg) -> dict:
    problems = len(read_problems(cfg.data, cfg.fields))
    first_draw = cfg.k if cfg.exhaustive else min(cfg.chunk, cfg.k)
    plan = sampling_plan(problems, cfg.k, first_draw, cfg.assume_hard, cfg.parallel.workers or 1,
                         cfg.sampling.max_new_tokens, cfg.gen_tokens_per_s)
    return {**plan, "assume_hard": cfg.assume_hard}


def plan_make_solutions(cfg) -> dict:
    """The plan of the problems make-solutions samples: those without a solution (all with --replace)."""
    from pope_cli.stages.solutions import needs_sampling

    problems = read_problems(cfg.data, cfg.fields)
    sampled = sum(needs_sampling(p, cfg) for p in problems)
    workers = 1 if cfg.model.backend == "openai" else cfg.parallel.workers or 1
    plan = sampling_plan(sampled, cfg.k, min(cfg.chunk, cfg.k), cfg.assume_unsolved, workers,
                         cfg.sampling.max_new_tokens, cfg.gen_tokens_per_s)
    return {**plan, "records": len(problems), "kept": len(problems) - sampled, "assume_unsolved": cfg.assume_unsolved}
