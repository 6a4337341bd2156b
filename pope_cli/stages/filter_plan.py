"""`pope filter-hard --dry-run`: what a filter will cost, before any weights are loaded.

Worst case: every problem draws all k samples. Expected: a share `--assume-hard` of the problems
is hard and draws k; the others are solved in their first chunk (all k with `--exhaustive`).
Tokens count every sample at the `--max-new-tokens` budget, an upper bound (hard problems tend
to run long). Hours divide the tokens by `--gen-tokens-per-s` times the number of workers.
"""

from __future__ import annotations

from pope_cli.shared.data import read_problems


def plan_filter_hard(cfg) -> dict:
    problems = len(read_problems(cfg.data, cfg.fields))
    workers = cfg.parallel.workers or 1
    easy_draw = cfg.k if cfg.exhaustive else min(cfg.chunk, cfg.k)
    worst = problems * cfg.k
    expected = round(problems * (cfg.assume_hard * cfg.k + (1 - cfg.assume_hard) * easy_draw))
    plan = {"problems": problems, "workers": workers, "assume_hard": cfg.assume_hard,
            "worst_samples": worst, "expected_samples": expected,
            "worst_tokens": worst * cfg.sampling.max_new_tokens,
            "expected_tokens": expected * cfg.sampling.max_new_tokens,
            "gen_tokens_per_s": cfg.gen_tokens_per_s, "worst_hours": None, "expected_hours": None}
    if cfg.gen_tokens_per_s:
        rate = cfg.gen_tokens_per_s * workers * 3600
        plan["worst_hours"] = round(plan["worst_tokens"] / rate, 2)
        plan["expected_hours"] = round(plan["expected_tokens"] / rate, 2)
    return plan
