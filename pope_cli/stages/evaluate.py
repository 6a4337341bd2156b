"""`pope eval`: unguided and guided accuracy as avg@n and unbiased pass@k.

Every (model, mode, problem) unit draws n samples from a seed fixed by (seed, mode, id), so
two models are compared on the same random streams and a rerun reproduces the files. Samples
go to `samples.jsonl` a unit at a time (a killed run resumes after its last complete unit);
`summary.json` is computed from that file at the end. A rerun on an edited input redoes exactly
the units whose record changed (`shared/input_state.py`). `evaluate_in_process` is the same
measurement without files, for the trainer's periodic evaluation.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pope_cli.shared.config import (API_RESUME_IGNORED, MODEL_PANEL, MODEL_RESUME_IGNORED, PROMPT_PANEL,
                                    WORKER_RESUME_IGNORED, ApiOptions, FieldMap, ModelOptions, PromptOptions,
                                    RewardOptions, SamplingOptions, WorkerOptions, bad_option, int_list,
                                    overwrite_option, seed_option)
from pope_cli.shared.data import iter_raw_records, read_prefix_records, read_problems, PREFIX_FIELDS
from pope_cli.shared.engines.base import Completion, Engine, Request, Sampling, served_counts
from pope_cli.shared.errors import PopeError
from pope_cli.shared.options import check_choices, group, option
from pope_cli.shared.claim import claim_output
from pope_cli.shared.outputs import JsonlAppender, atomic_write_json, atomic_write_jsonl, load_jsonl_repairing, manifest
from pope_cli.shared import input_state
from pope_cli.shared.input_state import record_hash
from pope_cli.shared.models import dtype_record
from pope_cli.shared.rounds import RoundStats, Scorer, run_rounds
from pope_cli.shared.seeding import derive_seed


def _comma_list(text: str | list) -> list[str]:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [item.strip() for item in items if item.strip()]


@dataclass
class EvalConfig:
    """`pope eval`: guided and unguided accuracy, avg@n and unbiased pass@k."""

    data: str = option(help="Problems (.jsonl/.json/.parquet/.csv, saved dataset, hf:NAME) or a prefixes.jsonl from "
                            "`pope make-prefixes`.", argument=True, metavar="PATH")
    out: str = option(help="Output directory (samples.jsonl, summary.json, manifest.json).", metavar="DIR")
    models: list[str] = option(help="Model to evaluate (hub id, local dir or PEFT adapter dir); repeat for a side-by-side "
                                    "table.", param="model", flags=("--model", "-m"), panel=MODEL_PANEL, metavar="ID|DIR")
    model: ModelOptions = group(show=("backend", "dtype", "device", "trust_remote_code", "batch_size",
                                      "gpu_memory_utilization", "kv_cache_gb", "max_model_len",
                                      "enforce_eager"), fixed={"model": ""})
    """Loading options shared by every model in `models` (its `model` field is the first one)."""
    fields: FieldMap = group()
    prompt: PromptOptions = group()
    sampling: SamplingOptions = group(defaults={"temperature": 0.8})
    reward: RewardOptions = group()
    parallel: WorkerOptions = group(default_factory=WorkerOptions)
    api: ApiOptions = group(default_factory=ApiOptions)
    n: int = option(16, "Samples per problem and mode.")
    ks: list[int] = option(None, "Comma-separated k values for unbiased pass@k, each ≤ n (default: 1,8,16, those over "
                                 "--n left out and --n itself added).", param="k", cli_type=str, parse=int_list("--k"),
                           show_default=False)
    modes: list[str] = option(None, "Comma-separated modes.", param="mode", cli_type=str, cli_default="unguided",
                              parse=_comma_list, choices=("unguided", "guided"))
    prefixes: str | None = option(None, "prefixes.jsonl from `pope make-prefixes`, for guided mode.", metavar="FILE")
    template: str | None = option(None, "Guided template (pope, no-restate or a file) overriding the one in the prefixes "
                                        "file.", panel=PROMPT_PANEL, metavar="NAME|FILE")
    bootstrap: int = option(1000, "Bootstrap resamples over problems for the 95% intervals (0 = none).")
    seed: int = seed_option()
    overwrite: bool = overwrite_option()

    def __post_init__(self):
        self.modes = list(dict.fromkeys(self.modes or ["unguided"]))
        check_choices(self)
        if self.n < 1:
            raise bad_option("--n", "must be at least 1")
        self.ks = sorted(set(self.ks)) if self.ks else default_ks(self.n)
        bad_k = [k for k in self.ks if k < 1 or k > self.n]
        if bad_k:
            raise bad_option("--k", f"each k must be in [1, n={self.n}], got {bad_k}")
        if not self.models:
            raise bad_option("--model", "at least one model is needed")
        repeated = [m for i, m in enumerate(self.models) if m in self.models[:i]]
        if repeated:
            raise bad_option("--model", f"{repeated[0]} is given twice")
        if self.bootstrap < 0:
            raise bad_option("--bootstrap", "must be >= 0")
        if not self.model.model:
            self.model.model = self.models[0]
        if self.model.backend == "openai" and len(self.models) > 1:
            raise bad_option("--model", "with --backend openai give one --model (the served model's tokenizer; "
                                        "--api-model names the model): one server serves one model")
        self.api.check(self.model, self.prompt)
        self.parallel.check(self.model)


DEFAULT_KS = (1, 8, 16)


def default_ks(n: int) -> list[int]:
    """pass@1, @8 and @16 where n allows them, and pass@n where it cuts the list short."""
    return sorted({k for k in DEFAULT_KS if k <= n} | ({n} if n < max(DEFAULT_KS) else set()))


RESUME_IGNORED = (*WORKER_RESUME_IGNORED, *MODEL_RESUME_IGNORED, *API_RESUME_IGNORED, "overwrite", "reward.workers",
                  "bootstrap")


@dataclass
class EvalJob:
    """n samples of one (model, mode, problem) unit."""

    model: str
    mode: str
    record: dict
    prompt_ids: list[int]
    n: int
    seed: int
    rows: list[dict] = field(default_factory=list)
    asked: bool = False

    def next_request(self) -> tuple[Request, dict] | None:
        if self.asked:
            return None
        self.asked = True
        return Request(self.prompt_ids, self.n, self.seed), self.record

    def observe(self, completions: list[Completion], scores: list[float | None]) -> None:
        for j, (completion, score) in enumerate(zip(completions, scores)):
            self.rows.append({"model": self.model, "mode": self.mode, "id": self.record["id"], "sample": j,
                              "score": score, "correct": score is not None and score >= 1.0,
                              "finish_reason": completion.finish_reason, "tokens": completion.tokens,
                              "text": completion.text})


def load_items(cfg: EvalConfig) -> dict[str, list[dict]]:
    """The records to evaluate per mode; guided ones are those with a prefix."""
    first = next(iter_raw_records(cfg.data), (None, None))[1]
    if isinstance(first, dict) and all(k in first for k in PREFIX_FIELDS):
        prefixed = read_prefix_records(cfg.data)
        problems = prefixed
    else:
        problems = [p.fields() for p in read_problems(cfg.data, cfg.fields)]
        prefixed = read_prefix_records(cfg.prefixes) if cfg.prefixes else []
    items = {}
    if "unguided" in cfg.modes:
        items["unguided"] = problems
    if "guided" in cfg.modes:
        if not prefixed:
            raise PopeError("--mode guided: needs --prefixes FILE (from `pope make-prefixes`) or a prefixes file as DATA", exit_code=2)
        wanted = {p["id"] for p in problems}
        items["guided"] = [r for r in prefixed if r["id"] in wanted and r["prefix"] is not None]
        if not items["guided"]:
            raise PopeError(f"{cfg.prefixes}: no prefix record matches an id in {cfg.data}; problems held out from "
                            "training need prefixes of their own (filter-hard and make-prefixes on them)", exit_code=2)
    return items


def make_jobs(model: str, items: dict[str, list[dict]], build_prompt: Callable[[str, dict], list[int]],
              n: int, seed: int, skip: set) -> list[EvalJob]:
    return [EvalJob(model, mode, record, build_prompt(mode, record), n, derive_seed(seed, mode, record["id"]))
            for mode, records in items.items() for record in records
            if (model, mode, record["id"]) not in skip]


def summarize_rows(rows: list[dict], ks: list[int], bootstrap: int, seed: int) -> dict:
    """Metrics per model and mode from sample rows."""
    from pope_cli.shared.metrics import summarize

    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        grouped[row["model"]][row["mode"]][row["id"]].append(row)
    result: dict = {}
    for model, modes in grouped.items():
        for mode, units in modes.items():
            counts = [(len(u), sum(r["correct"] for r in u)) for u in units.values()]
            metrics = summarize(counts, ks, bootstrap=bootstrap, seed=seed)
            samples = [r for u in units.values() for r in u]
            metrics["unparseable"] = sum(r["score"] is None for r in samples)
            metrics["truncated"] = sum(r["finish_reason"] == "length" for r in samples)
            metrics["mean_tokens"] = sum(r["tokens"] for r in samples) / len(samples)
            result.setdefault(model, {})[mode] = metrics
    return result


def evaluate_in_process(engine: Engine, scorer: Scorer, sampling: Sampling, items: dict[str, list[dict]],
                        build_prompt: Callable[[str, dict], list[int]], n: int, ks: list[int],
                        seed: int, rows_per_round: int) -> dict:
    """{mode: metrics} for one engine, without touching disk (bootstrap off for speed)."""
    rows: list[dict] = []
    jobs = make_jobs("policy", items, build_prompt, n, seed, set())
    run_rounds(jobs, engine, sampling, scorer, rows_per_round, lambda job: rows.extend(job.rows))
    return summarize_rows(rows, ks, bootstrap=0, seed=seed).get("policy", {})


def run_eval(cfg: EvalConfig, make_engine: Callable[[ModelOptions], Engine], make_scorer: Callable[[], Scorer],
             progress: Callable[[int, int], None] = lambda done, total: None,
             say: Callable[[str], None] = lambda text: None) -> dict:
    """Evaluate every model on every mode; returns the summary written to summary.json. `say`
    takes the one-line notices."""
    from pope_cli.shared.runtime import PromptBuilder, resolved_autos, resumed, say_budget, say_dtype

    started = time.time()
    items = load_items(cfg)
    for mode, records in items.items():  # every template a record names loads, before anything is written
        PromptBuilder(None, cfg.prompt, cfg.template).check_records(records, _source(cfg, mode), mode)
    hashes = {unit_key(mode, r["id"]): record_hash(r) for mode, records in items.items() for r in records}
    out = Path(cfg.out)
    samples_path, inputs_path = out / "samples.jsonl", out / "inputs.json"
    with claim_output(cfg.out, out / "config.json", cfg, [samples_path, out / "summary.json", out / "manifest.json"],
                      cfg.overwrite, RESUME_IGNORED, resolved_autos(cfg.model)) as claim:
        # A resumed run keys its rows by the model names the earlier run recorded (`M/` and `M` are one model).
        keys = dict(zip(cfg.models, claim.recorded["models"] if claim.resuming else cfg.models))
        rows = _complete_units(samples_path, cfg.n) if claim.resuming else []
        changes = input_state.compare(inputs_path, hashes, {unit_key(r["mode"], r["id"]) for r in rows}, claim.resuming)
        rows = [r for r in rows if unit_key(r["mode"], r["id"]) not in changes.stale]
        done = {(r["model"], r["mode"], r["id"]) for r in rows}
        total = len(cfg.models) * sum(len(v) for v in items.values())
        pending = [name for name in cfg.models
                   if any((keys[name], mode, r["id"]) not in done for mode, records in items.items() for r in records)]
        # The first model loads before the run counts as started: a failed load leaves the output as it was.
        engine = make_engine(ModelOptions(**{**asdict(cfg.model), "model": pending[0]})) if pending else None
        claim.started()
        say(f"eval: {plan_line(cfg, items)}")
        if pending:
            say_dtype(say, "eval", cfg.model)
        resumed(say, "eval", cfg.out, cfg.data, changes, len(done), total, "units")
        if changes.stale:
            atomic_write_jsonl(samples_path, rows)
        input_state.save(inputs_path, hashes)
        progress(len(done), total)
        stats, served = RoundStats(), {}
        for name in pending:
            opts = ModelOptions(**{**asdict(cfg.model), "model": name})
            say_budget(say, "eval", opts, cfg.sampling.max_new_tokens)
            if engine is None:
                engine = make_engine(opts)
            builder = PromptBuilder(engine.tokenizer, cfg.prompt, cfg.template)
            jobs = make_jobs(keys[name], items, builder.build, cfg.n, cfg.seed, done)
            sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens)
            with make_scorer() as scorer, JsonlAppender(samples_path) as writer:
                def finished(job: EvalJob) -> None:
                    writer.write(job.rows)
                    done.add((job.model, job.mode, job.record["id"]))
                    progress(len(done), total)

                run_rounds(jobs, engine, sampling, scorer, cfg.api.rows_per_round(cfg.model), finished, stats)
            served, engine = served_counts(engine) or served, None
        return _finish(cfg, [keys[name] for name in cfg.models], items, started, stats, served)


def plan_line(cfg: EvalConfig, items: dict[str, list[dict]]) -> str:
    """What the run measures: models x problems per mode, and why the modes' problems differ."""
    counts = " + ".join(f"{len(records)} {mode}" for mode, records in items.items())
    line = (f"{len(cfg.models)} model(s) x ({counts} problems), {cfg.n} samples each = "
            f"{len(cfg.models) * sum(map(len, items.values()))} units")
    if "guided" in items and "unguided" in items and len(items["guided"]) < len(items["unguided"]):
        line += (f"; guided covers the {len(items['guided'])} of the {len(items['unguided'])} problems that have a "
                 "prefix")
    return line


def unit_key(mode: str, problem_id: str) -> str:
    """The input record behind a unit: the same problem is one record unguided, another guided."""
    return f"{mode}/{problem_id}"


def _source(cfg: EvalConfig, mode: str) -> str:
    """The file the records of `mode` come from."""
    return cfg.prefixes if mode == "guided" and cfg.prefixes else cfg.data


def _complete_units(path: Path, n: int) -> list[dict]:
    """Rows of units with all n samples; a unit torn by a kill is dropped and redrawn."""
    rows = load_jsonl_repairing(path)
    sizes: dict = defaultdict(int)
    for row in rows:
        sizes[(row["model"], row["mode"], row["id"])] += 1
    kept = [r for r in rows if sizes[(r["model"], r["mode"], r["id"])] == n]
    if len(kept) != len(rows):
        atomic_write_jsonl(path, kept)
    return kept


def _finish(cfg: EvalConfig, models: list[str], items: dict, started: float, stats: RoundStats, served: dict) -> dict:
    out = Path(cfg.out)
    rows = load_jsonl_repairing(out / "samples.jsonl")
    model_rank = {m: i for i, m in enumerate(models)}
    mode_rank = {m: i for i, m in enumerate(cfg.modes)}
    item_rank = {(mode, r["id"]): i for mode, records in items.items() for i, r in enumerate(records)}
    rows.sort(key=lambda r: (model_rank.get(r["model"], 0), mode_rank.get(r["mode"], 0),
                             item_rank.get((r["mode"], r["id"]), 0), r["sample"]))
    atomic_write_jsonl(out / "samples.jsonl", rows)
    summary = {"n": cfg.n, "ks": cfg.ks, "modes": cfg.modes, "models": summarize_rows(rows, cfg.ks, cfg.bootstrap, cfg.seed)}
    atomic_write_json(out / "summary.json", summary)
    counts = {"samples": len(rows), "tokens_this_run": stats.tokens,
              "generate_seconds": round(stats.generate_seconds, 3), **served}
    atomic_write_json(out / "manifest.json", manifest("eval", asdict(cfg), started, counts, models=models, seed=cfg.seed,
                                                        precision=dtype_record(cfg.model)))
    return summary
