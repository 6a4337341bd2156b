"""`pope make-prefixes`: per hard problem, the shortest oracle prefix under which the model solves it.

Each oracle solution is cut into units (`prompts.split_solution`, or tokens with `--split
tokens`) and a ladder of growing whole-unit prefixes is built, up to `max_fraction` of the
solution's tokens. A `PrefixJob` samples n guided completions at one rung per round and climbs
until a rung has a correct one: that rung is the problem's prefix, chosen once. `run_rounds`
packs the rungs of many problems into each engine call. A rung's samples come from a seed fixed
by (seed, id, rung length), so the outcome depends neither on batching nor on a resume.
`--fixed-fraction` skips the search and needs only the tokenizer.

Files, all named after `--out` (here `prefixes.jsonl`):
  prefixes.jsonl                the usable records (found, or not found and kept), in input order
  prefixes.jsonl.stats.jsonl    one row per problem, appended as each is decided (the resume state)
  prefixes.jsonl.skipped.jsonl  the problems left out, as a problems file (no solution, no rung, dropped)
  prefixes.jsonl.config.json    the options: a rerun with the same ones resumes
  prefixes.jsonl.manifest.json  how the result was made, with the summary
`prefixes.jsonl` and the skipped file are written whole at the end, so their presence means done. A
rerun on an edited input redoes exactly the problems whose record changed (`shared/input_state.py`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pope_cli.shared.config import (API_RESUME_IGNORED, MODEL_RESUME_IGNORED, PROMPT_PANEL, WORKER_RESUME_IGNORED,
                                    ApiOptions, FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions,
                                    WorkerOptions, bad_option, overwrite_option, seed_option)
from pope_cli.shared.data import Problem, read_problems
from pope_cli.shared.engines.base import Completion, Engine, Request, Sampling, served_counts
from pope_cli.shared.options import check_choices, given, group, option
from pope_cli.shared.claim import claim_output
from pope_cli.shared.models import dtype_record
from pope_cli.shared.outputs import (JsonlAppender, atomic_write_json, atomic_write_jsonl, file_out, load_jsonl_repairing,
                                     manifest)
from pope_cli.shared.prompts import (Rung, count_tokens, fixed_fraction_prefix, load_template, prefix_ladder,
                                     split_solution, split_tokens)
from pope_cli.shared.rounds import RoundStats, Scorer, run_rounds
from pope_cli.shared import input_state
from pope_cli.shared.input_state import record_hash
from pope_cli.shared.runtime import PromptBuilder, resolved_autos, resumed, say_budget, say_dtype
from pope_cli.shared.seeding import derive_seed

SEARCH_PANEL = "Prefix search"


@dataclass
class PrefixConfig:
    """`pope make-prefixes`: per hard problem, the shortest oracle prefix the model can finish."""

    data: str = option(help="Hard problems with oracle solutions (typically filter/hard.jsonl): .jsonl/.json/.parquet/.csv, "
                            "a saved dataset directory, or hf:NAME[:SPLIT].", argument=True, metavar="PATH")
    out: str = option(help="The prefixes file to write (prefixes.jsonl); its .stats.jsonl, .skipped.jsonl, .config.json "
                           "and .manifest.json sit next to it.", metavar="FILE")
    model: ModelOptions = group()
    fields: FieldMap = group()
    prompt: PromptOptions = group(show=("chat_template", "system_prompt"))
    sampling: SamplingOptions = group()
    reward: RewardOptions = group()
    parallel: WorkerOptions = group(default_factory=WorkerOptions)
    api: ApiOptions = group(default_factory=ApiOptions)
    template: str = option("pope", "Guided template: pope, no-restate, or a text file with {problem} and {prefix}; recorded "
                                   "in each record.", panel=PROMPT_PANEL, metavar="NAME|FILE")
    split: str = option("units", "Cut solutions into 'units' (paragraph, line and sentence boundaries outside math) or "
                                 "'tokens'.", panel=SEARCH_PANEL, choices=("units", "tokens"))
    max_fraction: float = option(0.25, "Largest prefix, as a fraction of the solution's tokens (the paper: 0.25).",
                                 panel=SEARCH_PANEL)
    n: int = option(16, "Guided samples per rung; a rung with at least one correct is the problem's prefix.",
                    panel=SEARCH_PANEL)
    max_rungs: int = option(16, "At most this many rungs per problem, spaced evenly in tokens; 0 = one rung per unit "
                                "(--split units only).", panel=SEARCH_PANEL)
    fallback: str = option("largest", "When no rung is solved: 'largest' keeps the largest rung (status not_found) or "
                                      "'drop' leaves the problem out.", panel=SEARCH_PANEL,
                           choices=("largest", "drop"))
    no_solution: str = option("skip", "A problem without a solution (e.g. one `pope make-solutions` left unsolved): 'skip' "
                                      "sets it aside in .skipped.jsonl; 'keep' writes it with no prefix, so `pope train "
                                      "--mode pope` still trains it unguided.", panel=SEARCH_PANEL,
                              choices=("skip", "keep"))
    fixed_fraction: float | None = option(None, "Skip the search: every prefix is the first F of its solution "
                                                "(QuestA-style); loads only the tokenizer.", panel=SEARCH_PANEL)
    seed: int = seed_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        check_choices(self)
        self.api.check(self.model, self.prompt)
        self.parallel.check(self.model)
        if not 0 < self.max_fraction <= 1:
            raise bad_option("--max-fraction", f"must be in (0, 1], not {self.max_fraction}")
        if self.fixed_fraction is not None and not 0 < self.fixed_fraction <= 1:
            raise bad_option("--fixed-fraction", f"must be in (0, 1], not {self.fixed_fraction}")
        if self.n < 1:
            raise bad_option("--n", "must be at least 1")
        if self.max_rungs < 0:
            raise bad_option("--max-rungs", "must be >= 0")
        if self.max_rungs == 0 and self.split == "tokens":
            raise bad_option("--max-rungs", "0 (one rung per unit) needs --split units; one rung per token is too slow")
        if self.fixed_fraction is not None:
            for name in ("n", "max_fraction", "max_rungs", "fallback"):
                if given(self, name):
                    raise bad_option(f"--{name.replace('_', '-')}", "has no effect with --fixed-fraction (no search: every "
                                                                    "prefix is that share of its solution)")


# Options that change how fast a run goes but not what it writes: a resume may change them.
RESUME_IGNORED = (*WORKER_RESUME_IGNORED, *MODEL_RESUME_IGNORED, *API_RESUME_IGNORED, "overwrite", "reward.workers")

# Every stats row has all of these (None where they do not apply), whatever its status.
STATS_FIELDS = ("id", "status", "kept", "prefix", "prefix_units", "prefix_tokens", "prefix_fraction", "rung",
                "rungs", "ladder", "solution_units", "solution_tokens", "samples", "guided_correct", "unparseable",
                "truncated", "tokens")
# The part of a stats row that a prefixes.jsonl record carries next to the problem's fields.
RECORD_FIELDS = ("status", "prefix", "prefix_units", "prefix_tokens", "prefix_fraction", "rung", "rungs", "ladder",
                 "solution_units", "solution_tokens", "samples", "guided_correct")
"""`ladder`: [characters, tokens] of each rung searched, shortest first, so that a rung's text is
the chosen prefix's first `characters` (`pope train --guidance adaptive` steps down it)."""
HISTOGRAM_BINS = 5


def side_file(out: Path, suffix: str) -> Path:
    """`prefixes.jsonl` + `.stats.jsonl`: the run's other files sit next to the prefixes file."""
    return out.with_name(out.name + suffix)


def stats_row(problem_id: str, status: str, kept: bool, chosen: Rung | None = None, **values) -> dict:
    row = dict.fromkeys(STATS_FIELDS)
    row.update({"id": problem_id, "status": status, "kept": kept, "samples": 0, **values})
    if chosen is not None:
        row.update(prefix=chosen.text, prefix_units=chosen.units, prefix_tokens=chosen.tokens,
                   prefix_fraction=chosen.fraction)
    return row


# --- the ladder -------------------------------------------------------------------------------

def cut_units(solution: str, tokenizer, split: str) -> list[str]:
    return split_tokens(solution, tokenizer) if split == "tokens" else split_solution(solution)


def build_ladder(units: list[str], tokenizer, solution: str, cfg: PrefixConfig) -> list[Rung]:
    """The rungs to try, shortest first, none over `max_fraction` of the solution's tokens.

    Unit ladders have one rung per unit, thinned to `max_rungs` when longer. Token ladders are
    cut straight at `max_rungs` evenly spaced fractions: one rung per token would tokenize a
    prefix per token, quadratic in the solution's length.
    """
    if cfg.split == "units":
        ladder = prefix_ladder(units, tokenizer, cfg.max_fraction, solution)
        return thin_ladder(ladder, cfg.max_rungs) if cfg.max_rungs and len(ladder) > cfg.max_rungs else ladder
    ladder: list[Rung] = []
    for step in range(1, cfg.max_rungs + 1):
        rung = fixed_fraction_prefix(units, tokenizer, cfg.max_fraction * step / cfg.max_rungs, solution)
        if rung.fraction <= cfg.max_fraction and (not ladder or rung.text != ladder[-1].text):
            ladder.append(rung)
    return ladder


def thin_ladder(ladder: list[Rung], count: int) -> list[Rung]:
    """At most `count` rungs of `ladder`, spaced evenly in tokens from its first to its top rung."""
    if count == 1:
        return [ladder[-1]]
    low, high = ladder[0].fraction, ladder[-1].fraction
    picked, i = [], 0
    for step in range(count - 1):
        while i + 1 < len(ladder) and ladder[i + 1].fraction <= low + (high - low) * step / (count - 1):
            i += 1
        if not picked or ladder[i] is not picked[-1]:
            picked.append(ladder[i])
    return picked if picked[-1] is ladder[-1] else picked + [ladder[-1]]


# --- the search -------------------------------------------------------------------------------

@dataclass
class PrefixJob:
    """The ladder search of one problem: n guided samples per rung until a rung has a correct one."""

    problem: Problem
    ladder: list[Rung]
    prompt_for: Callable[[str], list[int]]
    n: int
    seed: int
    solution_units: int
    solution_tokens: int
    tried: int = 0
    correct: int = 0
    unparseable: int = 0
    truncated: int = 0
    tokens: int = 0

    def next_request(self) -> tuple[Request, dict] | None:
        if self.correct or self.tried >= len(self.ladder):
            return None
        rung = self.ladder[self.tried]
        seed = derive_seed(self.seed, self.problem.id, rung.units)
        return Request(self.prompt_for(rung.text), self.n, seed), self.problem.fields()

    def observe(self, completions: list[Completion], scores: list[float | None]) -> None:
        self.tried += 1
        self.correct = sum(score is not None and score >= 1.0 for score in scores)
        self.unparseable += sum(score is None for score in scores)
        self.truncated += sum(c.finish_reason == "length" for c in completions)
        self.tokens += sum(c.tokens for c in completions)

    def row(self, fallback: str) -> dict:
        counts = dict(rungs=len(self.ladder), ladder=[[len(r.text), r.tokens] for r in self.ladder],
                      solution_units=self.solution_units,
                      solution_tokens=self.solution_tokens, samples=self.tried * self.n,
                      unparseable=self.unparseable, truncated=self.truncated, tokens=self.tokens)
        if not self.ladder:
            return stats_row(self.problem.id, "no_rung", False, **counts)
        found = self.correct > 0
        return stats_row(self.problem.id, "found" if found else "not_found", found or fallback == "largest",
                         self.ladder[self.tried - 1], rung=self.tried, guided_correct=self.correct, **counts)


def make_job(cfg: PrefixConfig, problem: Problem, tokenizer, prompts: PromptBuilder) -> PrefixJob:
    units = cut_units(problem.solution, tokenizer, cfg.split)

    def prompt_for(prefix: str) -> list[int]:
        return prompts.guided({"problem": problem.problem, "prefix": prefix, "template": cfg.template})

    return PrefixJob(problem, build_ladder(units, tokenizer, problem.solution, cfg), prompt_for, cfg.n, cfg.seed,
                     len(units), count_tokens(tokenizer, problem.solution))


def fixed_row(cfg: PrefixConfig, problem: Problem, tokenizer) -> dict:
    """The first `fixed_fraction` of the solution, whole units; no_rung when one unit is already more."""
    units = cut_units(problem.solution, tokenizer, cfg.split)
    rung = fixed_fraction_prefix(units, tokenizer, cfg.fixed_fraction, problem.solution)
    sizes = dict(solution_units=len(units), solution_tokens=count_tokens(tokenizer, problem.solution))
    if rung.fraction > cfg.fixed_fraction:
        return stats_row(problem.id, "no_rung", False, **sizes)
    return stats_row(problem.id, "fixed", True, rung, **sizes)


def has_solution(problem: Problem) -> bool:
    return bool(problem.solution and problem.solution.strip())


# --- the stage --------------------------------------------------------------------------------

def config_dict(cfg: PrefixConfig) -> dict:
    return asdict(cfg)


def run_make_prefixes(cfg: PrefixConfig, make_engine: Callable[[], Engine], make_scorer: Callable[[], Scorer],
                      progress: Callable[[int, int], None] = lambda done, total: None,
                      make_tokenizer: Callable[[], object] | None = None,
                      say: Callable[[str], None] = lambda text: None) -> dict:
    """Find every problem's prefix; returns the summary that the CLI prints and the manifest records.

    The engine, scorer and tokenizer come from factories so nothing heavy is built when every
    problem is already decided; `--fixed-fraction` builds only the tokenizer (by default the
    one of `--model`). `say` takes the one-line notices.
    """
    started = time.time()
    load_template(cfg.template)
    problems = read_problems(cfg.data, cfg.fields)
    hashes = {p.id: record_hash(p.fields()) for p in problems}
    out = file_out(cfg.out, "prefixes.jsonl")
    stats_path, inputs_path = side_file(out, ".stats.jsonl"), side_file(out, ".inputs.json")
    with claim_output(cfg.out, side_file(out, ".config.json"), cfg,
                      [out, stats_path, side_file(out, ".skipped.jsonl"), side_file(out, ".manifest.json")],
                      cfg.overwrite, RESUME_IGNORED, resolved_autos(cfg.model)) as claim:
        done = {row["id"]: row for row in load_jsonl_repairing(stats_path)} if claim.resuming else {}
        changes = input_state.compare(inputs_path, hashes, done, claim.resuming)
        done = {key: row for key, row in done.items() if key not in changes.stale}
        todo = [p for p in problems if p.id not in done and has_solution(p)]
        # What the run needs is built before it counts as started: a failed load leaves the output as it was.
        if todo and cfg.fixed_fraction is not None:
            tokenizer, search = (make_tokenizer or _tokenizer_of(cfg))(), None
        else:
            tokenizer, search = None, (make_engine(), make_scorer()) if todo else None
        claim.started()
        resumed(say, "make-prefixes", cfg.out, cfg.data, changes, len(done), len(problems), "problems decided")
        if search is not None:
            say_dtype(say, "make-prefixes", cfg.model)
            say_budget(say, "make-prefixes", cfg.model, cfg.sampling.max_new_tokens)
        if changes.stale:
            atomic_write_jsonl(stats_path, done.values())
        input_state.save(inputs_path, hashes)
        progress(len(done), len(problems))
        round_stats = RoundStats()
        with JsonlAppender(stats_path) as stats_file:
            def decided(row: dict) -> None:
                stats_file.write([row])
                done[row["id"]] = row
                progress(len(done), len(problems))

            for problem in problems:
                if problem.id not in done and not has_solution(problem):
                    decided(stats_row(problem.id, "no_solution", cfg.no_solution == "keep"))
            if tokenizer is not None:
                for problem in todo:
                    decided(fixed_row(cfg, problem, tokenizer))
            elif search is not None:
                round_stats = _search(cfg, todo, *search, decided)
        return _finish(cfg, problems, done, round_stats, started, served_counts(search[0] if search else None))


def _tokenizer_of(cfg: PrefixConfig) -> Callable[[], object]:
    def build():
        from pope_cli.shared.models import load_tokenizer

        return load_tokenizer(cfg.model.model, cfg.model.trust_remote_code)

    return build


def _search(cfg: PrefixConfig, todo: list[Problem], engine, scorer, decided) -> RoundStats:
    prompts = PromptBuilder(engine.tokenizer, cfg.prompt)
    sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens)
    # A generator: each ladder is cut when its job enters a round, not all before the first one.
    jobs = (make_job(cfg, problem, engine.tokenizer, prompts) for problem in todo)
    with scorer:
        return run_rounds(jobs, engine, sampling, scorer, cfg.api.rows_per_round(cfg.model),
                          lambda job: decided(job.row(cfg.fallback)))


def _finish(cfg: PrefixConfig, problems: list[Problem], done: dict, round_stats: RoundStats, started: float,
            served: dict) -> dict:
    out = Path(cfg.out)
    order = {p.id: i for i, p in enumerate(problems)}
    rows = sorted(done.values(), key=lambda row: order.get(row["id"], len(order)))
    atomic_write_jsonl(side_file(out, ".stats.jsonl"), rows)
    by_id = {p.id: p for p in problems}
    listed = [row for row in rows if row["id"] in by_id]
    atomic_write_jsonl(out, [{**by_id[row["id"]].fields(), **{k: row.get(k) for k in RECORD_FIELDS},
                              "template": cfg.template, "split": cfg.split}
                             for row in listed if row["kept"]])
    atomic_write_jsonl(side_file(out, ".skipped.jsonl"),
                       [{**by_id[row["id"]].fields(), "status": row["status"], "samples": row["samples"]}
                        for row in listed if not row["kept"]])
    summary = {**summarize(rows, cfg, round_stats), **served}
    summary["seconds"] = round(time.time() - started, 3)
    atomic_write_json(side_file(out, ".manifest.json"),
                      manifest("make-prefixes", config_dict(cfg), started, summary, model=cfg.model.model, seed=cfg.seed,
                               precision=dtype_record(cfg.model)))
    return summary


def summarize(rows: list[dict], cfg: PrefixConfig, round_stats: RoundStats) -> dict:
    """Counts per outcome, the distribution of chosen fractions, and what the sampling cost."""
    def count(status: str, kept: bool | None = None) -> int:
        return sum(r["status"] == status and (kept is None or r["kept"] == kept) for r in rows)

    fractions = [r["prefix_fraction"] for r in rows if r["kept"] and r["prefix"] is not None]
    cap = cfg.fixed_fraction if cfg.fixed_fraction is not None else cfg.max_fraction
    return {
        "problems": len(rows), "usable": len(fractions), "found": count("found"), "fixed": count("fixed"),
        "not_found_kept": count("not_found", True), "dropped": count("not_found", False),
        "no_solution": count("no_solution"), "no_solution_kept": count("no_solution", True), "no_rung": count("no_rung"),
        "no_solution_ids": [r["id"] for r in rows if r["status"] == "no_solution"],
        "fraction": _distribution(fractions), "fraction_histogram": _histogram(fractions, cap),
        "samples": sum(r["samples"] for r in rows), "samples_this_run": round_stats.samples,
        "tokens_this_run": round_stats.tokens, "generate_seconds": round(round_stats.generate_seconds, 3),
        "score_seconds": round(round_stats.score_seconds, 3),
        "tokens_per_second": round(round_stats.tokens / round_stats.generate_seconds, 1) if round_stats.generate_seconds else None,
    }


def _distribution(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def _histogram(values: list[float], cap: float) -> list[dict]:
    """Counts in HISTOGRAM_BINS equal bins over (0, cap]; a bin holds its upper edge."""
    edges = [cap * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    counts = [0] * HISTOGRAM_BINS
    for value in values:
        counts[next((i for i in range(HISTOGRAM_BINS) if value <= edges[i + 1]), HISTOGRAM_BINS - 1)] += 1
    return [{"from": round(edges[i], 4), "to": round(edges[i + 1], 4), "count": counts[i]} for i in range(HISTOGRAM_BINS)]
