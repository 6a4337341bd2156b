"""`pope make-solutions`: a worked solution for every problem that has none, sampled from a teacher.

Most pools have answers only, while make-prefixes and sft need solutions. Each problem without
one is sampled in chunks, up to k samples, from a teacher: a local model, the policy itself at a
large k (PrefixRL's self-found solutions), or a served model (`--backend openai`). Every sample
is scored; sampling stops at the first chunk holding a correct one, and that chunk's shortest (or
first) correct sample becomes the record's `solution`. With `--strip-thinking` a reasoning
model's thinking block is cut off before scoring, so the kept text must carry its own answer.
Sample j of a problem comes from the stream `derive_seed(seed, "make-solutions", id) + j`, so the
files depend neither on chunking, batching or workers nor on a resume. The stage's own tag keeps
its streams apart from filter-hard's (`derive_seed(seed, id) + j`): with the policy as teacher and
the same seed, the first k samples would otherwise be exactly the k failures that made the
problem hard.

Files, all named after `--out` (here `solutions.jsonl`):
  solutions.jsonl                 the solved records whole plus `solution` and `solution_source`, and
                                  the records that came with a solution (kept unless --replace)
  solutions.jsonl.unsolved.jsonl  the problems no sample solved, as a problems file
  solutions.jsonl.stats.jsonl     one row per sampled problem, appended as each is decided (the resume state)
  solutions.jsonl.config.json     the options: a rerun with the same ones resumes
  solutions.jsonl.manifest.json   how the result was made, with the summary
The solutions and unsolved files are written whole at the end, so their presence means done. A
rerun on an edited input redoes exactly the problems whose record changed (`shared/input_state.py`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from pope_cli.shared.claim import claim_output
from pope_cli.shared.config import (API_RESUME_IGNORED, MODEL_RESUME_IGNORED, PROMPT_PANEL, WORKER_RESUME_IGNORED,
                                    ApiOptions, FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions,
                                    WorkerOptions, bad_option, overwrite_option, seed_option)
from pope_cli.shared.data import Problem, read_problems
from pope_cli.shared.engines.base import Completion, Engine, Request, Sampling, served_counts
from pope_cli.shared.models import dtype_record
from pope_cli.shared.options import check_choices, group, option
from pope_cli.shared.outputs import (JsonlAppender, atomic_write_json, atomic_write_jsonl, file_out, load_jsonl_repairing,
                                     manifest)
from pope_cli.shared.rounds import RoundStats, Scorer, run_rounds
from pope_cli.shared import input_state
from pope_cli.shared.input_state import record_hash
from pope_cli.shared.runtime import PromptBuilder, resolved_autos, resumed, say_budget, say_dtype
from pope_cli.shared.seeding import derive_seed

SOLVE_PANEL = "Solution search"
KEEP = ("shortest", "first")
THINK_END = "</think>"
THINK_START = "<think>"


@dataclass
class SolutionsConfig:
    """`pope make-solutions`: sample a teacher until it solves each problem; keep that sample."""

    data: str = option(help="Problems: .jsonl/.json/.parquet/.csv, a saved dataset directory, or hf:NAME[:SPLIT].",
                       argument=True, metavar="PATH")
    out: str = option(help="The solutions file to write (solutions.jsonl); its .unsolved.jsonl, .stats.jsonl, "
                           ".config.json and .manifest.json sit next to it.", metavar="FILE")
    model: ModelOptions = group(help={"model": "The teacher: hub id, local model dir or PEFT adapter dir (the policy "
                                               "itself for self-found solutions); with --backend openai, the "
                                               "tokenizer that builds and counts its prompts."})
    fields: FieldMap = group()
    prompt: PromptOptions = group(show=("chat_template", "system_prompt"))
    sampling: SamplingOptions = group()
    reward: RewardOptions = group()
    api: ApiOptions = group(default_factory=ApiOptions)
    parallel: WorkerOptions = group(default_factory=WorkerOptions)
    template: str | None = option(None, "Text file with a {problem} placeholder: the teacher's prompt (default: the "
                                        "record's unguided_template, which filter-hard records, else the problem plus a "
                                        "\\boxed{} answer instruction).", panel=PROMPT_PANEL, metavar="FILE")
    k: int = option(256, "Samples per problem at most; a problem none of them solves goes to the unsolved file.",
                    panel=SOLVE_PANEL)
    chunk: int = option(16, "Samples per problem per round; sampling stops after the first round with a correct one.",
                        panel=SOLVE_PANEL)
    keep: str = option("shortest", "Which correct sample of that round becomes the solution: shortest (fewest tokens; "
                                   "ties: the earliest) or first.", panel=SOLVE_PANEL, choices=KEEP)
    strip_thinking: bool = option(False, "Cut a reasoning model's thinking block (everything up to the last </think>) "
                                         "before scoring and keeping a sample; one whose thinking never ends scores 0.",
                                  flags=("--strip-thinking",), panel=SOLVE_PANEL)
    replace: bool = option(False, "Also sample the problems that come with a solution and replace it (an unsolved one "
                                  "then goes to the unsolved file).", flags=("--replace",), panel=SOLVE_PANEL)
    seed: int = seed_option()
    overwrite: bool = overwrite_option()
    dry_run: bool = option(False, "Print the plan (problems, samples, tokens, hours) and exit; loads no model.",
                           flags=("--dry-run",))
    assume_unsolved: float = option(0.2, "--dry-run: share of the sampled problems assumed unsolved (k samples each; "
                                         "the others one chunk).")
    gen_tokens_per_s: float | None = option(None, "--dry-run: tokens per second one worker generates (with --backend "
                                                  "openai: the servers together), for the hours.")

    def __post_init__(self):
        check_choices(self)
        checks = [("--k", self.k >= 1, "must be at least 1"), ("--chunk", self.chunk >= 1, "must be at least 1"),
                  ("--assume-unsolved", 0 <= self.assume_unsolved <= 1, "must be in [0, 1]"),
                  ("--gen-tokens-per-s", self.gen_tokens_per_s is None or self.gen_tokens_per_s > 0, "must be > 0")]
        for flag, ok, message in checks:
            if not ok:
                raise bad_option(flag, message)
        self.api.check(self.model, self.prompt)
        self.parallel.check(self.model)

    def teacher(self) -> str:
        """The name `solution_source` records: the served model's, or the local one's."""
        if self.model.backend == "openai" and self.api.api_model:
            return self.api.api_model
        return self.model.model


# Options that change how fast a run goes but not what it writes: a resume may change them.
RESUME_IGNORED = (*WORKER_RESUME_IGNORED, *MODEL_RESUME_IGNORED, *API_RESUME_IGNORED, "overwrite", "reward.workers",
                  "dry_run", "assume_unsolved", "gen_tokens_per_s")


def strip_thinking(text: str) -> str:
    """The answer after a thinking block: the text after the last `</think>`; empty when a
    `<think>` never closes (a truncated sample has no answer of its own); else the text as is."""
    end = text.rfind(THINK_END)
    if end != -1:
        return text[end + len(THINK_END):].lstrip()
    return "" if THINK_START in text else text


class ThinkingStripped:
    """A scorer that sees each completion without its thinking block."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def score(self, completions: list[str], records: list[dict]) -> list[float | None]:
        return self.scorer.score([strip_thinking(text) for text in completions], records)

    def __enter__(self):
        self.scorer.__enter__()
        return self

    def __exit__(self, *exc):
        return self.scorer.__exit__(*exc)


@dataclass
class SolutionJob:
    """Sampling state of one problem: chunks until one holds a correct sample, or k in all."""

    problem: Problem
    prompt_ids: list[int]
    cfg: SolutionsConfig
    seed: int
    drawn: int = 0
    correct: int = 0
    tokens: int = 0
    solution: str | None = None
    source: dict | None = None

    def next_request(self) -> tuple[Request, dict] | None:
        if self.solution is not None or self.drawn >= self.cfg.k:
            return None
        n = min(self.cfg.chunk, self.cfg.k - self.drawn)
        return Request(self.prompt_ids, n, self.seed + self.drawn), self.problem.fields()

    def observe(self, completions: list[Completion], scores: list[float | None]) -> None:
        hits = []
        for completion, score in zip(completions, scores):
            if score is not None and score >= 1.0:
                hits.append((completion.tokens, self.drawn, completion))
            self.tokens += completion.tokens
            self.drawn += 1
        self.correct += len(hits)
        if hits:
            tokens, index, completion = min(hits, key=lambda hit: hit[:2]) if self.cfg.keep == "shortest" else hits[0]
            text = strip_thinking(completion.text) if self.cfg.strip_thinking else completion.text
            self.solution = text
            self.source = {"teacher": self.cfg.teacher(), "sample": index, "tokens": tokens,
                           "pass_count": self.correct, "samples": self.drawn}

    def stats(self) -> dict:
        return {"id": self.problem.id, "solved": self.solution is not None, "samples": self.drawn,
                "correct": self.correct, "tokens": self.tokens, "solution": self.solution,
                "solution_source": self.source}


def config_dict(cfg: SolutionsConfig) -> dict:
    return asdict(cfg)


def side_file(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def teacher_prompt(cfg: SolutionsConfig):
    """The prompt options of the teacher's prompts: `--template` as the unguided template."""
    return replace(cfg.prompt, unguided_template=cfg.template)


def needs_sampling(problem: Problem, cfg: SolutionsConfig) -> bool:
    return cfg.replace or not (problem.solution and problem.solution.strip())


def run_make_solutions(cfg: SolutionsConfig, make_engine: Callable[[], Engine], make_scorer: Callable[[], Scorer],
                       progress: Callable[[int, int], None] = lambda done, total: None,
                       say: Callable[[str], None] = lambda text: None) -> dict:
    """Run the search; returns the summary that the CLI prints and the manifest records.

    The engine and scorer come from factories so nothing heavy is built when every problem is
    already decided, and so tests can pass scripted ones; `say` takes the one-line notices.
    """
    started = time.time()
    problems = read_problems(cfg.data, cfg.fields)
    PromptBuilder(None, teacher_prompt(cfg)).check_records([p.fields() for p in problems], cfg.data, "unguided")
    hashes = {p.id: record_hash(p.fields()) for p in problems}
    out = file_out(cfg.out, "solutions.jsonl")
    stats_path, inputs_path = side_file(out, ".stats.jsonl"), side_file(out, ".inputs.json")
    outputs = [out, stats_path, side_file(out, ".unsolved.jsonl"), side_file(out, ".manifest.json")]
    with claim_output(cfg.out, side_file(out, ".config.json"), cfg, outputs, cfg.overwrite,
                      RESUME_IGNORED, resolved_autos(cfg.model)) as claim:
        done = {row["id"]: row for row in load_jsonl_repairing(stats_path)} if claim.resuming else {}
        changes = input_state.compare(inputs_path, hashes, done, claim.resuming)
        done = {key: row for key, row in done.items() if key not in changes.stale}
        to_sample = [p for p in problems if needs_sampling(p, cfg)]
        todo = [p for p in to_sample if p.id not in done]
        # Teacher and scorer before the run counts as started: a failed load leaves the output as it was.
        engine, scorer = (make_engine(), make_scorer()) if todo else (None, None)
        claim.started()
        resumed(say, "make-solutions", cfg.out, cfg.data, changes, len(to_sample) - len(todo), len(to_sample),
                "problems decided")
        if todo:
            say_dtype(say, "make-solutions", cfg.model)
            say_budget(say, "make-solutions", cfg.model, cfg.sampling.max_new_tokens)
        if changes.stale:
            atomic_write_jsonl(stats_path, done.values())
        input_state.save(inputs_path, hashes)
        round_stats = RoundStats()
        progress(len(done), len(to_sample))
        if todo:
            round_stats = _sample(cfg, todo, done, engine, scorer, progress, len(to_sample))
        return _finish(cfg, problems, done, round_stats, served_counts(engine), started)


def _sample(cfg, todo, done, engine, scorer, progress, total) -> RoundStats:
    prompts = PromptBuilder(engine.tokenizer, teacher_prompt(cfg))
    sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens)
    jobs = (SolutionJob(p, prompts.unguided(p.fields()), cfg, derive_seed(cfg.seed, "make-solutions", p.id))
            for p in todo)
    scorer = ThinkingStripped(scorer) if cfg.strip_thinking else scorer
    with scorer, JsonlAppender(side_file(Path(cfg.out), ".stats.jsonl")) as stats_file:
        def finished(job: SolutionJob) -> None:
            row = job.stats()
            stats_file.write([row])
            done[row["id"]] = row
            progress(len(done), total)

        return run_rounds(jobs, engine, sampling, scorer, cfg.api.rows_per_round(cfg.model), finished)


def _finish(cfg: SolutionsConfig, problems: list[Problem], done: dict, round_stats: RoundStats, served: dict,
            started: float) -> dict:
    out = Path(cfg.out)
    order = {p.id: i for i, p in enumerate(problems)}
    rows = sorted(done.values(), key=lambda row: order.get(row["id"], len(order)))
    atomic_write_jsonl(side_file(out, ".stats.jsonl"), rows)
    solved, unsolved, kept = [], [], 0
    for p in problems:
        row = done.get(p.id)
        if not needs_sampling(p, cfg):
            kept += 1
            solved.append(p.fields())
        elif row["solved"]:
            solved.append({**p.fields(), "solution": row["solution"], "solution_source": row["solution_source"]})
        else:
            unsolved.append(p.fields())
    atomic_write_jsonl(out, solved)
    atomic_write_jsonl(side_file(out, ".unsolved.jsonl"), unsolved)
    summary = {
        "problems": len(problems), "kept": kept, "solved": len(solved) - kept, "unsolved": len(unsolved),
        "samples": sum(row["samples"] for row in rows), "naive_samples": cfg.k * len(rows),
        "tokens": sum(row["tokens"] for row in rows), "tokens_this_run": round_stats.tokens,
        "generate_seconds": round(round_stats.generate_seconds, 3),
        "tokens_per_second": round(round_stats.tokens / round_stats.generate_seconds, 1) if round_stats.generate_seconds else None,
        "api_retries": {}, **served,
    }
    summary["seconds"] = round(time.time() - started, 3)
    atomic_write_json(side_file(out, ".manifest.json"), manifest("make-solutions", config_dict(cfg), started, summary,
                                                                 model=cfg.teacher(), seed=cfg.seed,
                                                                 precision=dtype_record(cfg.model)))
    return summary
