"""`pope filter-hard`: find the problems a model never solves in k samples.

Each problem is sampled in chunks and stops at the first correct sample: a solved problem is
not hard and needs no more samples, so on a mixed set the filter draws far fewer than the k×N
samples of a naive one (`exhaustive` draws all k for exact pass rates). The verdict is written
per problem to `stats.jsonl` as it is reached, so a killed run resumes where it stopped; at the
end the files are put in input order and `hard.jsonl`/`easy.jsonl` are written whole: the
input records with the canonical fields (id, problem, answer, ...) added, so the next stage
reads them with the default field names. A rerun on an edited input redoes exactly the problems
whose record changed (`shared/input_state.py`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pope_cli.shared.config import (API_RESUME_IGNORED, MODEL_RESUME_IGNORED, WORKER_RESUME_IGNORED, ApiOptions, FieldMap,
                                    ModelOptions, PromptOptions, RewardOptions, SamplingOptions, WorkerOptions, bad_option,
                                    overwrite_option, seed_option)
from pope_cli.shared.data import Problem, read_problems
from pope_cli.shared.engines.base import Completion, Engine, Request, Sampling, served_counts
from pope_cli.shared.options import group, option
from pope_cli.shared.claim import claim_output
from pope_cli.shared.outputs import JsonlAppender, atomic_write_json, atomic_write_jsonl, load_jsonl_repairing, manifest
from pope_cli.shared.models import dtype_record
from pope_cli.shared.rounds import RoundStats, Scorer, run_rounds
from pope_cli.shared import input_state
from pope_cli.shared.input_state import record_hash
from pope_cli.shared.runtime import PromptBuilder, resolved_autos, resumed, say_budget, say_dtype
from pope_cli.shared.seeding import derive_seed


@dataclass
class FilterHardConfig:
    """`pope filter-hard`: sample each problem up to k times; hard = none of them correct."""

    data: str = option(help="Problems: .jsonl/.json/.parquet/.csv, a saved dataset directory, or hf:NAME[:SPLIT].",
                       argument=True, metavar="PATH")
    out: str = option(help="Output directory (stats.jsonl, hard.jsonl, easy.jsonl, manifest.json).", metavar="DIR")
    model: ModelOptions = group()
    fields: FieldMap = group()
    prompt: PromptOptions = group()
    sampling: SamplingOptions = group()
    reward: RewardOptions = group()
    api: ApiOptions = group(default_factory=ApiOptions)
    parallel: WorkerOptions = group(default_factory=WorkerOptions)
    k: int = option(128, "Samples per problem; hard = 0 correct of k (the paper: 128 at a 32k-token budget).")
    chunk: int = option(16, "Samples per problem per round; sampling stops after the first round with a correct one.")
    exhaustive: bool = option(False, "Draw all k samples even after a correct one (exact pass rates).",
                              flags=("--exhaustive",))
    save_samples: bool = option(False, "Also write every completion to samples.jsonl.", flags=("--save-samples",))
    seed: int = seed_option()
    overwrite: bool = overwrite_option()
    dry_run: bool = option(False, "Print the plan (problems, samples, tokens, hours) and exit; loads no model.",
                           flags=("--dry-run",))
    assume_hard: float = option(0.2, "--dry-run: share of problems assumed hard (k samples each; the others one chunk).")
    gen_tokens_per_s: float | None = option(None, "--dry-run: tokens per second one worker generates, for the hours.")

    def __post_init__(self):
        if self.k < 1:
            raise bad_option("--k", "must be at least 1")
        if self.chunk < 1:
            raise bad_option("--chunk", "must be at least 1")
        if not 0 <= self.assume_hard <= 1:
            raise bad_option("--assume-hard", "must be in [0, 1]")
        if self.gen_tokens_per_s is not None and self.gen_tokens_per_s <= 0:
            raise bad_option("--gen-tokens-per-s", "must be > 0")
        self.api.check(self.model, self.prompt)
        self.parallel.check(self.model)


# Options that change how fast a run goes but not what it writes: a resume may change them.
RESUME_IGNORED = (*WORKER_RESUME_IGNORED, *MODEL_RESUME_IGNORED, *API_RESUME_IGNORED, "overwrite", "reward.workers", "dry_run",
                  "assume_hard", "gen_tokens_per_s")


@dataclass
class FilterJob:
    """Sampling state of one problem: chunks of samples until a correct one or k in all."""

    problem: Problem
    prompt_ids: list[int]
    k: int
    chunk: int
    seed: int
    exhaustive: bool
    keep_samples: bool
    drawn: int = 0
    correct: int = 0
    unparseable: int = 0
    truncated: int = 0
    tokens: int = 0
    samples: list[dict] = field(default_factory=list)

    def next_request(self) -> tuple[Request, dict] | None:
        if self.drawn >= self.k or (self.correct and not self.exhaustive):
            return None
        n = min(self.chunk, self.k - self.drawn)
        return Request(self.prompt_ids, n, self.seed + self.drawn), self.problem.fields()

    def observe(self, completions: list[Completion], scores: list[float | None]) -> None:
        for completion, score in zip(completions, scores):
            self.correct += score is not None and score >= 1.0
            self.unparseable += score is None
            self.truncated += completion.finish_reason == "length"
            self.tokens += completion.tokens
            if self.keep_samples:
                self.samples.append({"id": self.problem.id, "sample": self.drawn, "score": score,
                                     "finish_reason": completion.finish_reason,
                                     "tokens": completion.tokens, "text": completion.text})
            self.drawn += 1

    def stats(self) -> dict:
        return {"id": self.problem.id, "samples": self.drawn, "correct": self.correct,
                "unparseable": self.unparseable, "truncated": self.truncated,
                "pass_rate": self.correct / self.drawn if self.drawn else 0.0,
                "hard": self.correct == 0, "tokens": self.tokens, "source": self.problem.source}


def config_dict(cfg: FilterHardConfig) -> dict:
    return asdict(cfg)


def run_filter_hard(cfg: FilterHardConfig, make_engine: Callable[[], Engine], make_scorer: Callable[[], Scorer],
                    progress: Callable[[int, int], None] = lambda done, total: None,
                    say: Callable[[str], None] = lambda text: None) -> dict:
    """Run the filter; returns the summary that the CLI prints and the manifest records.

    The engine and scorer come from factories so nothing heavy is built when every problem
    is already done, and so tests can pass scripted ones; `say` takes the one-line notices.
    """
    started = time.time()
    problems = read_problems(cfg.data, cfg.fields)
    PromptBuilder(None, cfg.prompt).check_records([p.fields() for p in problems], cfg.data, "unguided")
    hashes = {p.id: record_hash(p.fields()) for p in problems}
    out = Path(cfg.out)
    stats_path, samples_path = out / "stats.jsonl", out / "samples.jsonl"
    with claim_output(cfg.out, out / "config.json", cfg,
                      [stats_path, samples_path, out / "hard.jsonl", out / "easy.jsonl", out / "manifest.json"],
                      cfg.overwrite, RESUME_IGNORED, resolved_autos(cfg.model)) as claim:
        done = {row["id"]: row for row in load_jsonl_repairing(stats_path)} if claim.resuming else {}
        changes = input_state.compare(out / "inputs.json", hashes, done, claim.resuming)
        done = {key: row for key, row in done.items() if key not in changes.stale}
        todo = [p for p in problems if p.id not in done]
        # Model and scorer before the run counts as started: a failed load leaves the output as it was.
        engine, scorer = (make_engine(), make_scorer()) if todo else (None, None)
        claim.started()
        resumed(say, "filter-hard", cfg.out, cfg.data, changes, len(done), len(problems), "problems decided")
        if todo:
            say_dtype(say, "filter-hard", cfg.model)
            say_budget(say, "filter-hard", cfg.model, cfg.sampling.max_new_tokens)
        if changes.stale:
            atomic_write_jsonl(stats_path, done.values())
        input_state.save(out / "inputs.json", hashes)
        if cfg.save_samples:
            _drop_orphan_samples(samples_path, done)
        round_stats = RoundStats()
        progress(len(done), len(problems))
        if todo:
            round_stats = _sample(cfg, todo, done, engine, scorer, progress, len(problems))
        return _finish(cfg, problems, done, round_stats, started, served_counts(engine))


def _sample(cfg, todo, done, engine, scorer, progress, total) -> RoundStats:
    prompts = PromptBuilder(engine.tokenizer, cfg.prompt)
    sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens)
    jobs = (FilterJob(p, prompts.unguided(p.fields()), cfg.k, cfg.chunk, derive_seed(cfg.seed, p.id),
                      cfg.exhaustive, cfg.save_samples) for p in todo)
    out = Path(cfg.out)
    with scorer, JsonlAppender(out / "stats.jsonl") as stats_file:
        samples_file = JsonlAppender(out / "samples.jsonl") if cfg.save_samples else None

        def finished(job: FilterJob) -> None:
            # Samples first: a stats line is the mark that the problem is complete.
            if samples_file:
                samples_file.write(job.samples)
            row = job.stats()
            stats_file.write([row])
            done[row["id"]] = row
            progress(len(done), total)

        try:
            return run_rounds(jobs, engine, sampling, scorer, cfg.api.rows_per_round(cfg.model), finished)
        finally:
            if samples_file:
                samples_file.close()


def _drop_orphan_samples(path: Path, done: dict) -> None:
    """Samples of a problem whose stats line never got written will be drawn again."""
    rows = load_jsonl_repairing(path)
    kept = [row for row in rows if row["id"] in done]
    if len(kept) != len(rows):
        atomic_write_jsonl(path, kept)


def _finish(cfg: FilterHardConfig, problems: list[Problem], done: dict, round_stats: RoundStats,
            started: float, served: dict) -> dict:
    out = Path(cfg.out)
    order = {p.id: i for i, p in enumerate(problems)}
    rows = sorted(done.values(), key=lambda row: order.get(row["id"], len(order)))
    atomic_write_jsonl(out / "stats.jsonl", rows)
    if cfg.save_samples:
        samples = load_jsonl_repairing(out / "samples.jsonl")
        atomic_write_jsonl(out / "samples.jsonl", sorted(samples, key=lambda s: (order.get(s["id"], len(order)), s["sample"])))
    hard_ids = {row["id"] for row in rows if row["hard"]}
    # The template the problems were asked with travels with them, so later stages ask them the same way.
    template = cfg.prompt.unguided_template
    asked = {"unguided_template": str(Path(template).resolve())} if template else {}
    atomic_write_jsonl(out / "hard.jsonl", [{**p.fields(), **asked} for p in problems if p.id in hard_ids])
    atomic_write_jsonl(out / "easy.jsonl", [{**p.fields(), **asked} for p in problems if p.id not in hard_ids])
    summary = {
        "problems": len(rows), "hard": len(hard_ids), "easy": len(rows) - len(hard_ids),
        "samples": sum(row["samples"] for row in rows), "naive_samples": cfg.k * len(rows),
        "tokens": sum(row["tokens"] for row in rows),
        "tokens_this_run": round_stats.tokens, "generate_seconds": round(round_stats.generate_seconds, 3),
        "score_seconds": round(round_stats.score_seconds, 3),
        "tokens_per_second": round(round_stats.tokens / round_stats.generate_seconds, 1) if round_stats.generate_seconds else None,
        **served,
    }
    summary["seconds"] = round(time.time() - started, 3)
    atomic_write_json(out / "manifest.json", manifest("filter-hard", config_dict(cfg), started, summary, model=cfg.model.model, seed=cfg.seed,
                                                             precision=dtype_record(cfg.model)))
    return summary
