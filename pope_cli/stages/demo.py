"""`pope demo`: the whole pipeline on the shipped toy model, plain GRPO against POPE.

Every stage runs as its ordinary command in a subprocess (the commands are recorded in
`results.json`), so each arm's outputs are the usual files of that stage and the user can
reopen them with the other commands. The commands of a phase run side by side in a pool, one
CPU thread each; training and evaluation share one pool, each evaluation starting once its
model is trained; a sampling command started with nothing left to start after it (filter-hard
on the training pool, make-prefixes on its hard problems, the last evaluation) gets a worker per
core. The held-out set is the one shipped with the toy (pope_cli/toy/heldout/), or filtered in
the run with `--heldout filter`. A rerun resumes: every stage picks up its own outputs.

The demo's question is the paper's: on problems the start model never solves, does plain GRPO
get any signal, and does POPE's guidance transfer to held-out problems asked unguided? `--arms`
picks the paper's baselines (see ARMS); `--full` runs them all. Every arm starts from the same
model with the same seed, data, RL step budget and evaluation; the two SFT arms first spend
`--sft-steps` supervised steps (a phase of their own), then the same RL steps.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pope_cli.shared.claim import claim_output
from pope_cli.shared.config import bad_option, overwrite_option, seed_option
from pope_cli.shared.errors import PopeError
from pope_cli.shared.models import check_model_loadable
from pope_cli.shared.options import check_choices, option
from pope_cli.shared.live import Job, command_of, output_of
from pope_cli.shared.outputs import atomic_write_json, atomic_write_jsonl
from pope_cli.shared.runtime import PROGRESS_SECONDS_ENV
from pope_cli.toy.task import ORACLE_STYLES


ENTROPY_COEF = 0.01
CLIP_HIGHER = 0.28
CLIP_MINI_BATCH = 32
"""The clip only acts off-policy: with one optimizer step per batch the ratio is exactly 1, so
the clip-higher arm takes its batch in mini-batches (4 optimizer steps per RL step at the
defaults' 128 sequences), as DAPO does."""
SFT_EXAMPLES_PER_STEP = 16
HELDOUT_SOURCES = ("shipped", "filter")

ARMS = {
    "grpo": "plain GRPO on the unguided hard pool",
    "pope": "POPE: guided (shortest solving prefix) and unguided copies, 1:1",
    "grpo-easy": "plain GRPO, half of each step's prompts from the toy's easy problems",
    "pope-easy": "POPE, half of each step's prompts from the toy's easy problems",
    "pope-no-restate": "POPE with the guided template that says not to restate the prefix",
    "entropy": f"plain GRPO with an entropy bonus ({ENTROPY_COEF})",
    "clip-higher": f"plain GRPO with clip-high {CLIP_HIGHER}, in mini-batches of {CLIP_MINI_BATCH} sequences",
    "sft-grpo": "SFT on the hard pool's oracle solutions, then plain GRPO",
    "rs-sft-grpo": "SFT on correct guided samples (prefix + completion, unguided prompt), then plain GRPO",
}
PAPER_ARMS = tuple(ARMS)
"""The paper's nine, which `--full` runs."""
SELF_K = 512
TEACHER_K = 256
SOLUTION_ARMS = {"pope-self": "self", "pope-teacher": "teacher"}
"""POPE on a pool without written solutions: the pool's oracle solutions are removed, `pope
make-solutions` finds one per problem (the start model's own first success in SELF_K samples, or the
toy teacher's in TEACHER_K), make-prefixes searches prefixes of those, and the problems left
unsolved are still trained unguided."""
OFF_POLICY = ("--updates-per-step", "2", "--mini-batch-size", str(CLIP_MINI_BATCH))
"""Two passes over each step's batch in mini-batches: from the second optimizer step on the
ratio moves off 1 for the clip to act on, for the clip-higher arm and its reference alike."""
CURRICULUM_SHARE = 4
"""The curriculum arm's easy phase: the first 1/CURRICULUM_SHARE of the RL steps (27 of 110)."""
ARMS.update({
    "offpolicy": "plain GRPO with the oracle solution as one of each unguided group's samples, importance weight "
                 "pi_theta (behaviour probability 1), clipped",
    "luffy": "plain GRPO with the oracle solution in each unguided group, LUFFY's shaped weight r/(r+0.1), unclipped",
    "curriculum": f"plain GRPO on the toy's easy problems for the first 1/{CURRICULUM_SHARE} of the steps, then on the "
                  "hard pool",
    "grpo-offpolicy": f"plain GRPO, two passes per step in mini-batches of {CLIP_MINI_BATCH} (clip-higher-offpolicy's "
                      "reference)",
    "clip-higher-offpolicy": f"grpo-offpolicy with clip-high {CLIP_HIGHER}",
    "pope-adaptive": "POPE, a guided copy only while the unguided group fails, its prefix a rung shorter once solved",
    "pope-anneal": "POPE's guided copies showing the whole derivation, then a line less as the share falls "
                   "linearly to none by the last step (UFT)",
    "pope-self": f"POPE from the start model's own successes (make-solutions, up to {SELF_K} samples a problem) "
                 "instead of the oracle solutions; unsolved problems unguided only",
    "pope-teacher": f"POPE from the stronger toy teacher's solutions (make-solutions, up to {TEACHER_K} samples; "
                    "pope_cli/toy/teacher/); unsolved problems unguided only",
})
DEFAULT_ARMS = ("grpo", "pope")
SUITES = {"seed": PAPER_ARMS, "beyond": tuple(arm for arm in ARMS if arm not in PAPER_ARMS), "all": tuple(ARMS)}
"""`--suite`: the paper's nine (the project's first comparison), the arms beyond them, or both."""


def arm_list(text) -> list[str] | None:
    """`--arms grpo,pope` → ["grpo", "pope"] (the names are checked against the option's choices)."""
    if text is None:
        return None
    names = [n.strip() for n in (text if isinstance(text, (list, tuple)) else str(text).split(",")) if n.strip()]
    if not names:
        raise bad_option("--arms", "name at least one arm")
    return list(dict.fromkeys(names))


@dataclass
class DemoConfig:
    """`pope demo`: the stages on the shipped toy model, for any of the paper's arms (plain GRPO against POPE by
    default)."""

    out: str = option("pope-demo", "Output directory: every stage's files, results.json, curves.png, report/, logs/.", metavar="DIR")
    model: str | None = option(None, "Starting model (default: the toy model shipped with pope).", metavar="ID|DIR")
    seed: int = seed_option()
    arms: list[str] = option(None, "Comma-separated training arms (what each one trains: the README's table of the "
                                   "demo's arms).",
                             cli_type=str, parse=arm_list, cli_default="grpo,pope", choices=tuple(ARMS))
    full: bool = option(False, "Run the paper's nine arms (overrides --arms; --suite seed).", flags=("--full",))
    suite: str | None = option(None, "A named set of arms (overrides --arms): seed (the paper's nine, as --full), beyond "
                                     "(off-policy, LUFFY, curriculum, clip-higher off-policy, adaptive and annealed "
                                     "guidance, POPE from found solutions) or all.", choices=tuple(SUITES),
                               show_default=False)
    oracle_style: str = option("steps", "How the toy's written solutions read (toy make-data --oracle-style): steps (the "
                                        "model's own style) or terse (two steps a line, as a person writes); the "
                                        "prefixes, SFT data and oracle rollouts come from them.",
                               choices=tuple(ORACLE_STYLES))
    n_easy: int = option(64, "Easy problems mixed into the filter-hard input.")
    n_hard: int = option(160, "Hard problems in the training pool before filtering.")
    heldout: str = option("shipped", "Held-out set: 'shipped' (the shipped toy model's hard problems, never solved in 128 "
                                     "samples, filtered and prefixed once: pope_cli/toy/heldout/) or 'filter' (filter "
                                     "--n-heldout new candidates in this run; needed with --model).",
                          choices=HELDOUT_SOURCES)
    n_heldout: int = option(320, "With --heldout filter: held-out candidates; filter-hard keeps those the start model "
                                 "never solves (~70%).")
    k: int = option(128, "filter-hard samples per problem, for the pool and the held-out set (the paper: 0 of 128).")
    prefix_n: int = option(16, "make-prefixes samples per rung.")
    max_fraction: float = 0.85
    """Largest prefix as a fraction of the solution's tokens: toy solutions are short, so a
    prefix that leaves one or two look-ups to the model is most of the solution."""
    steps: int = option(110, "RL steps per training arm.")
    prompts_per_step: int = option(16, "Prompts per RL step.")
    group_size: int = option(8, "Completions per prompt.")
    lr: float = option(2e-4, "Learning rate (full fine-tuning of the toy model), RL and SFT alike.")
    sft_steps: int = option(50, "SFT arms: supervised steps of 16 examples before the RL steps.")
    sft_n: int = option(8, "rs-sft-grpo: guided samples per hard problem, the correct ones kept.")
    warmup_steps: int = 20
    adv_norm: str = "none"
    eval_n: int = option(16, "Evaluation samples per problem and mode (16: the paper's pass@16).")
    eval_k: list[int] = None
    parallel: int = option(2, "Commands of one phase (filters, training arms, evaluations) run at once, one CPU thread "
                              "each.")
    dtype: str = option("float32", "Every stage's --dtype. float32 by default, not auto: the toy's recorded results "
                                   "(examples/toy/RESULTS.md) were made in float32, and at the toy's size bf16 buys no speed "
                                   "on a CPU (training 1.02x, generation 0.88x: benchmarks/README.md).",
                        choices=("float32", "bfloat16", "auto"))
    overwrite: bool = overwrite_option("Start again instead of resuming an earlier demo in --out.")

    def __post_init__(self):
        check_choices(self)
        if self.full and self.suite not in (None, "seed"):
            raise bad_option("--suite", "--full is --suite seed; give one of them")
        self.arms = list(SUITES["seed" if self.full else self.suite]) if self.full or self.suite else (
            self.arms or list(DEFAULT_ARMS))
        self.eval_k = sorted(set(self.eval_k or [1, min(8, self.eval_n), min(16, self.eval_n), self.eval_n]))
        for option, value in (("--steps", self.steps), ("--k", self.k), ("--eval-n", self.eval_n),
                              ("--parallel", self.parallel), ("--n-hard", self.n_hard), ("--n-heldout", self.n_heldout),
                              ("--sft-steps", self.sft_steps), ("--sft-n", self.sft_n)):
            if value < 1:
                raise bad_option(option, "must be at least 1")
        if self.model and self.heldout == "shipped":
            raise bad_option("--heldout", "the shipped held-out set is hard for the shipped toy model only; with "
                                          "--model, use --heldout filter")
        if any(k < 1 or k > self.eval_n for k in self.eval_k):
            raise bad_option("--eval-k", f"each k must be in [1, eval-n={self.eval_n}]")
        if not 0 < self.max_fraction <= 1:
            raise bad_option("--max-fraction", "must be in (0, 1]")


REWARD = "pope_cli.toy.reward:score"


def generation(cfg: DemoConfig) -> list[str]:
    """The options every stage of the demo shares. 256 rows per generate call: on one CPU thread the
    toy model samples ~30% more rows per CPU second than at the default 64, and every row's sample
    depends on its own seed only, so the files are the same."""
    return ["--backend", "hf", "--device", "cpu", "--dtype", cfg.dtype, "--max-new-tokens", "64", "--reward", REWARD,
            "--reward-workers", "1", "--batch-size", "256"]


def templates() -> dict[str, str]:
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    return {name: str(TEMPLATES_DIR / f"{name}.txt") for name in ("unguided", "guided", "guided-no-restate")}


def start_model(cfg: DemoConfig) -> str:
    from pope_cli.toy.model import SHIPPED_MODEL_DIR

    return cfg.model or str(SHIPPED_MODEL_DIR)


SFT_SOURCES = {"sft-grpo": "oracle", "rs-sft-grpo": "guided-samples"}


def arms(cfg: DemoConfig, out: Path) -> dict[str, list[str]]:
    """Training arm → its `pope train` arguments beyond the shared ones: the same start, seed,
    budget and hyperparameters; only the data, the objective or the starting weights differ."""
    # The toy's easy tier, which the start model solves (the paper's easy set: problems the
    # base model already solves). filter-hard's easy.jsonl would also hold the pool's hard
    # problems solved once in k samples: near-hard problems that train the hard skill directly.
    easy = ["--easy", str(out / "data" / "easy.jsonl"), "--easy-fraction", "0.5"]
    grpo = ["--mode", "grpo"]
    every = {
        "grpo": grpo,
        "pope": ["--mode", "pope"],
        "grpo-easy": [*grpo, *easy],
        "pope-easy": ["--mode", "pope", *easy],
        "pope-no-restate": ["--mode", "pope", "--template", templates()["guided-no-restate"]],
        "entropy": [*grpo, "--entropy-coef", str(ENTROPY_COEF)],
        "clip-higher": [*grpo, "--clip-high", str(CLIP_HIGHER), "--mini-batch-size", str(CLIP_MINI_BATCH)],
        **{arm: grpo for arm in SFT_SOURCES},
        **{arm: ["--mode", "pope"] for arm in SOLUTION_ARMS},
        "offpolicy": [*grpo, "--oracle-rollouts", "1", "--oracle-is", "plain"],
        "luffy": [*grpo, "--oracle-rollouts", "1", "--oracle-is", "luffy"],
        "curriculum": [*grpo, "--easy", str(out / "data" / "easy.jsonl"), "--curriculum", str(max(1, cfg.steps // CURRICULUM_SHARE))],
        "grpo-offpolicy": [*grpo, *OFF_POLICY],
        "clip-higher-offpolicy": [*grpo, *OFF_POLICY, "--clip-high", str(CLIP_HIGHER)],
        "pope-adaptive": ["--mode", "pope", "--guidance", "adaptive"],
        "pope-anneal": ["--mode", "pope", "--guidance", "anneal"],
    }
    return {arm: every[arm] for arm in cfg.arms}


def answers_file(out: Path) -> Path:
    """The training pool's hard problems without their solutions: what make-solutions starts from."""
    return out / "solutions" / "answers.jsonl"


def solutions_file(out: Path, arm: str) -> Path:
    return out / "solutions" / f"{SOLUTION_ARMS[arm]}.jsonl"


def found_pool(out: Path, arm: str) -> Path:
    """make-solutions' solved records, then its unsolved ones: every hard problem, solved or not."""
    return out / "solutions" / f"{SOLUTION_ARMS[arm]}.pool.jsonl"


def arm_prefixes(out: Path, arm: str) -> Path:
    """The prefixes file an arm trains on: from the found solutions, or from the oracle's."""
    return out / (f"prefixes-{SOLUTION_ARMS[arm]}.jsonl" if arm in SOLUTION_ARMS else "prefixes.jsonl")


def solver(cfg: DemoConfig, arm: str) -> tuple[str, int]:
    """The model make-solutions samples for an arm, and its samples per problem at most."""
    if SOLUTION_ARMS[arm] == "self":
        return start_model(cfg), SELF_K
    from pope_cli.toy.model import TEACHER_MODEL_DIR

    return str(TEACHER_MODEL_DIR), TEACHER_K


def write_answers(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "filter" / "hard.jsonl").read_text().splitlines()]
    atomic_write_jsonl(answers_file(out), [{k: v for k, v in row.items() if k != "solution"} for row in rows])


def write_found_pools(cfg: DemoConfig, out: Path) -> None:
    for arm in (a for a in cfg.arms if a in SOLUTION_ARMS):
        solved = solutions_file(out, arm)
        unsolved = solved.with_name(solved.name + ".unsolved.jsonl")
        atomic_write_jsonl(found_pool(out, arm), [json.loads(line) for path in (solved, unsolved)
                                                  for line in path.read_text().splitlines()])


def sft_run(out: Path, arm: str) -> Path:
    return out / "runs" / f"{arm}.sft"


def arm_start(cfg: DemoConfig, out: Path, arm: str) -> str:
    """The weights an arm's RL starts from: its SFT run's, or the start model."""
    return str(sft_run(out, arm) / "final") if arm in SFT_SOURCES else start_model(cfg)


def own_templates(cfg: DemoConfig) -> dict[str, str]:
    """Arms trained with a guided template other than the default → that template, for a second
    guided evaluation under the arm's own instruction."""
    return {"pope-no-restate": templates()["guided-no-restate"]} if "pope-no-restate" in cfg.arms else {}


def heldout_files(cfg: DemoConfig, out: Path) -> tuple[Path, Path]:
    """The held-out problems and their prefixes: shipped with the toy, or filtered in this run."""
    if cfg.heldout == "shipped":
        from pope_cli.toy.heldout import HARD, PREFIXES

        return HARD, PREFIXES
    return out / "heldout_filter" / "hard.jsonl", out / "heldout_prefixes.jsonl"


def evaluated_models(cfg: DemoConfig, out: Path) -> dict[str, str]:
    """Arm name → the model directory it evaluates: the start model and each arm's final weights."""
    return {"start": start_model(cfg), **{name: str(out / "runs" / name / "final") for name in arms(cfg, out)}}


def sft_commands(cfg: DemoConfig, out: Path, model: str, prompts: list[str]) -> list[list[str]]:
    """The SFT arms' warm starts, on the training pool's hard problems (prefixes.jsonl)."""
    common = ["--model", model, "--full", "--lr", str(cfg.lr), "--steps", str(cfg.sft_steps), "--examples-per-step",
              str(SFT_EXAMPLES_PER_STEP), "--save-every", "50", "--seed", str(cfg.seed), "--n", str(cfg.sft_n),
              "--temperature", "0.8", "--template", templates()["guided"], *prompts, *generation(cfg)]
    return [["sft", str(out / "prefixes.jsonl"), "--source", SFT_SOURCES[arm], "--out", str(sft_run(out, arm)), *common]
            for arm in cfg.arms if arm in SFT_SOURCES]


def stage_commands(cfg: DemoConfig, out: Path) -> dict[str, list[list[str]]]:
    """The demo as phases of `pope` argument lists; the commands of one phase run side by side.

    The held-out set went through filter-hard like the training pool (shipped, or in this run with
    `--heldout filter`), so both hold only problems the start model never solved in `k` samples:
    the paper's definition of hard (0 of 128).
    """
    model, tpl, seed = start_model(cfg), templates(), str(cfg.seed)
    prompts = ["--unguided-template", tpl["unguided"]]
    # Chunks of 32: most hard problems need all k samples, and bigger batches generate faster.
    filter_args = ["--model", model, "--k", str(cfg.k), "--chunk", "32", "--seed", seed, *prompts, *generation(cfg)]
    prefix_args = ["--model", model, "--template", tpl["guided"], "--n", str(cfg.prefix_n), "--max-fraction",
                   str(cfg.max_fraction), "--seed", seed, *generation(cfg)]
    train_common = ["--steps", str(cfg.steps), "--prompts-per-step", str(cfg.prompts_per_step),
                    "--group-size", str(cfg.group_size), "--lr", str(cfg.lr), "--warmup-steps", str(cfg.warmup_steps),
                    "--adv-norm", cfg.adv_norm, "--save-every", "50", "--seed", seed, "--full",
                    "--log-completions", "4", "--log-every", str(max(1, cfg.steps // 10)), *prompts, *generation(cfg)]
    heldout, heldout_prefixes = heldout_files(cfg, out)
    # The self search last: it takes far longer than the teacher's, and the phase's last command gets a worker per core.
    found = sorted((arm for arm in cfg.arms if arm in SOLUTION_ARMS), key=lambda arm: SOLUTION_ARMS[arm] == "self")
    oracle_prefixes = any(arm not in SOLUTION_ARMS for arm in cfg.arms)
    eval_args = [str(heldout), "--prefixes", str(heldout_prefixes), "--n", str(cfg.eval_n), "--k",
                 ",".join(map(str, cfg.eval_k)), "--seed", seed, *prompts, *generation(cfg)]
    filtered = cfg.heldout == "filter"
    phases = {
        "data": [["toy", "make-data", "--out", str(out / "data"), "--seed", seed, "--n-easy", str(cfg.n_easy),
                  "--n-hard", str(cfg.n_hard), "--n-heldout", str(cfg.n_heldout),
                  *(["--oracle-style", cfg.oracle_style] if cfg.oracle_style != "steps" else [])]],
        "filter": [["filter-hard", str(out / "data" / "mix.jsonl"), "--out", str(out / "filter"), *filter_args]]
                  + [["filter-hard", str(out / "data" / "heldout.jsonl"), "--out", str(out / "heldout_filter"),
                      *filter_args]] * filtered,
        "solutions": [["make-solutions", str(answers_file(out)), "--out", str(solutions_file(out, arm)), "--model",
                       solver(cfg, arm)[0], "--k", str(solver(cfg, arm)[1]), "--chunk", "32", "--seed", seed,
                       "--template", tpl["unguided"], *generation(cfg)] for arm in found],
        "prefixes": [["make-prefixes", str(out / "filter" / "hard.jsonl"), "--out", str(out / "prefixes.jsonl"),
                      *prefix_args]] * oracle_prefixes
                    + [["make-prefixes", str(found_pool(out, arm)), "--out", str(arm_prefixes(out, arm)), *prefix_args,
                        "--no-solution", "keep"] for arm in found]
                    + [["make-prefixes", str(heldout), "--out", str(heldout_prefixes), *prefix_args]] * filtered,
        "sft": sft_commands(cfg, out, model, prompts),
        "train": [["train", str(arm_prefixes(out, name)), "--out", str(out / "runs" / name), "--model",
                   arm_start(cfg, out, name), *extra, *train_common] for name, extra in arms(cfg, out).items()],
        # The default guided template named outright: a shipped prefixes row cannot name this machine's copy.
        "eval": [["eval", *eval_args, "--mode", "unguided,guided", "--template", tpl["guided"], "--model", path,
                  "--out", str(out / "eval" / name)] for name, path in evaluated_models(cfg, out).items()]
                + [["eval", *eval_args, "--model", str(out / "runs" / name / "final"), "--mode", "guided", "--template",
                    template, "--out", str(out / "eval" / f"{name}.own-template")]
                   for name, template in own_templates(cfg).items()],
    }
    return {name: commands for name, commands in phases.items() if commands}


def require_hard_problems(out: Path, heldout_filtered: bool = True) -> None:
    """After filtering: both sets must keep a hard problem, or nothing downstream has data."""
    for name, what in (("filter", "training pool"), ("heldout_filter", "held-out set"))[:1 + heldout_filtered]:
        hard = out / name / "hard.jsonl"
        if not hard.read_text().strip():
            raise PopeError(f"demo: the start model solved every problem of the {what} at least once ({hard} is "
                            "empty); use more problems (--n-hard, --n-heldout) or a larger --k")


def require_disjoint_heldout(out: Path, heldout: Path) -> None:
    """The training pool must not hold a held-out problem (possible only with the shipped set and
    another seed's pool, and then unlikely: the toy has millions of hard problems)."""
    held = {json.loads(line)["problem"] for line in heldout.read_text().splitlines()}
    pool = [json.loads(line) for line in (out / "data" / "mix.jsonl").read_text().splitlines()]
    shared = [record["id"] for record in pool if record["problem"] in held]
    if shared:
        raise PopeError(f"demo: the training pool holds held-out problems ({', '.join(shared[:5])}); use another "
                        "--seed or --heldout filter")


SAMPLING_COMMANDS = ("filter-hard", "make-prefixes", "eval")
STARTED_FIRST = ("eval",)
"""Commands that start before the others whenever they can: an evaluation is short and gives the
numbers a user waits for, while a training started a few minutes later still ends when its
own evaluation (which waits for it) can run, so the pool's wall time stays the same."""


def launch_argv(argv: list[str], parallel: int, others_waiting: bool) -> list[str]:
    """A sampling command started with nothing else left to start gets a worker per slot (the same
    files as one engine, sooner): the commands still running share the cores with it until they
    end, and then none is idle. Any other command runs as planned."""
    if argv[0] in SAMPLING_COMMANDS and not others_waiting and parallel > 1 and "--workers" not in argv:
        return [*argv, "--workers", str(parallel)]
    return argv


def run_phase(name: str, commands: list[list[str]], logs: Path, parallel: int, threads: int,
              watch: Callable[[str, list[Job]], None] | None = None, needs: dict[int, int] | None = None,
              ended: Callable[[Job], None] | None = None) -> None:
    """Run a phase's commands, up to `parallel` at a time (the next runnable one starts as soon as
    one ends, a STARTED_FIRST one before any other; `needs` maps a command's index to one that must
    have finished first), each logging to its own file; `watch(name, jobs)` sees every job's state on each poll, `ended(job)` each
    job that has succeeded."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if watch is not None:
        env[PROGRESS_SECONDS_ENV] = "1"  # the live view reads the progress lines from the logs
    jobs = [Job(argv, logs / f"{name}-{index}.log") for index, argv in enumerate(commands)]
    needs = needs or {}
    queue, running = list(range(len(jobs))), {}
    while queue or running:
        ready = [i for i in queue if i not in needs or jobs[needs[i]].returncode == 0]
        for index in sorted(ready, key=lambda i: jobs[i].argv[0] not in STARTED_FIRST):
            if len(running) >= parallel:
                break
            queue.remove(index)
            job = jobs[index]
            job.argv = launch_argv(job.argv, parallel, bool(queue))
            with job.log.open("w") as handle:
                running[index] = subprocess.Popen([sys.executable, "-m", "pope_cli.cli", *job.argv], stdout=handle,
                                                  stderr=subprocess.STDOUT, env=env)
            job.started = time.time()
        time.sleep(0.2)
        for index, proc in [(i, proc) for i, proc in running.items() if proc.poll() is not None]:
            del running[index]
            job = jobs[index]
            job.returncode, job.ended = proc.returncode, time.time()
            if proc.returncode != 0:
                for other in running.values():
                    other.terminate()
                tail = job.log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise PopeError(f"demo: `{command_of(job.argv)}` failed ({tail[0]}); full log: {job.log}")
            if ended is not None:
                ended(job)
        if watch is not None:
            watch(name, jobs)


def phase_line(commands: list[list[str]]) -> str:
    """`pope filter-hard data/mix.jsonl …` for a phase of one command; `9 × pope train, 11 × pope
    eval` for a phase of many (their outputs follow, one line each, as they finish)."""
    if len(commands) == 1:
        return f"pope {shlex.join(commands[0][:2])} …"
    counts = Counter(command[0] for command in commands)
    return ", ".join(f"{count} × pope {name}" for name, count in counts.items())


def pooled(phases: dict[str, list[list[str]]]) -> list[tuple[str, list[list[str]], dict[int, int]]]:
    """The phases as runs of the pool: training and evaluation share one, each evaluation of a
    trained model waiting for its training only, so the start model's evaluation and those of
    arms that finish early fill the cores a longer arm leaves idle."""
    runs = [(name, commands, {}) for name, commands in phases.items() if name not in ("train", "eval")]
    train, evals = phases.get("train", []), phases.get("eval", [])
    trained = {str(Path(c[c.index("--out") + 1]) / "final"): i for i, c in enumerate(train)}
    needs = {len(train) + i: trained[c[c.index("--model") + 1]] for i, c in enumerate(evals)
             if c[c.index("--model") + 1] in trained}
    return runs + [("train-eval", train + evals, needs)]


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print,
             watch: Callable[[str, list[Job]], None] | None = None) -> dict:
    """Run every phase (resuming finished ones), then gather results.json, curves.png and report/."""
    started = time.time()
    out = Path(cfg.out)
    if cfg.model:
        check_model_loadable(cfg.model)
    config = {k: v for k, v in vars(cfg).items() if k != "overwrite"}
    # The stages check their own resumes; the demo's claim is the lock and a safe --overwrite.
    with claim_output(cfg.out, out / "demo.json", config, None, cfg.overwrite, ignored=config) as claim:
        claim.started()
        return _run_phases(cfg, out, say, started, watch)


def _run_phases(cfg: DemoConfig, out: Path, say: Callable[[str], None], started: float,
                watch: Callable[[str, list[Job]], None] | None) -> dict:
    phases = stage_commands(cfg, out)
    timings, cpu = {}, {}
    for name, commands, needs in pooled(phases):
        cpu_before = _children_cpu()
        say(f"[{time.time() - started:6.0f}s] {name}: {phase_line(commands)}")
        phase_started = time.time()
        # In a pipe nothing else shows a phase's progress (a terminal has the live table): a line
        # per finished command, so a 40-minute phase is not silent.
        ended = None if watch is not None else (
            lambda job: say(f"[{time.time() - started:6.0f}s]   done in {job.elapsed(job.ended):.0f}s: "
                            f"{command_of(job.argv)} → {output_of(job.argv)}"))
        # One thread per command: the toy model's matrices are too small for a second thread to
        # pay, and a second thread on a busy core slows generation many times over.
        run_phase(name, commands, out / "logs", cfg.parallel, threads=1, watch=watch, needs=needs, ended=ended)
        if name == "data" and cfg.heldout == "shipped":  # toy make-data keeps its own held-out set disjoint
            require_disjoint_heldout(out, heldout_files(cfg, out)[0])
        if name == "filter":
            require_hard_problems(out, cfg.heldout == "filter")
            write_answers(out)
        if name == "solutions":
            write_found_pools(cfg, out)
        timings[name] = round(time.time() - phase_started, 1)
        cpu[name] = round(_children_cpu() - cpu_before, 1)
    curves = {arm: training_rows(out, arm) for arm in arms(cfg, out)}
    results = collect_results(cfg, out, curves, phases, timings, started)
    results["cpu_seconds"] = {**cpu, "total": round(sum(cpu.values()), 1)}
    atomic_write_json(out / "results.json", results)
    write_report(out, list(curves), [*evaluated_models(cfg, out), *(f"{arm}.own-template" for arm in own_templates(cfg))])
    return results


def write_report(out: Path, arm_names: list[str], evaluated: list[str]) -> None:
    """curves.png (training reward and hard problems solved, per arm) and the full report in report/."""
    from pope_cli.stages.report.config import ReportConfig
    from pope_cli.stages.report.figures import CURVES, draw_training
    from pope_cli.stages.report.inputs import load_inputs
    from pope_cli.stages.report.writer import run_report

    runs = [str(out / "runs" / arm) for arm in arm_names]
    draw_training(CURVES, load_inputs(runs)[0], out / "curves.png", window=10)
    run_report(ReportConfig(dirs=runs + [str(out / "eval" / name) for name in evaluated], out=str(out / "report")))


def filter_counts(cfg: DemoConfig, out: Path, name: str) -> dict:
    """A filter-hard run's counts (candidates, hard, samples): this run's, or the shipped
    held-out set's as it was built."""
    if name == "heldout_filter" and cfg.heldout == "shipped":
        from pope_cli.toy.heldout import BUILD

        return json.loads(BUILD.read_text())["filter"]
    return json.loads((out / name / "manifest.json").read_text())["counts"]


def solution_facts(out: Path, arm: str) -> dict:
    """What make-solutions found for an arm (and what it cost), and the prefixes searched on it."""
    solutions = json.loads(solutions_file(out, arm).with_suffix(".jsonl.manifest.json").read_text())["counts"]
    prefixes = json.loads(arm_prefixes(out, arm).with_suffix(".jsonl.manifest.json").read_text())["counts"]
    return {"solutions": {k: solutions[k] for k in ("problems", "solved", "unsolved", "samples", "naive_samples", "tokens")},
            "prefixes": {k: prefixes[k] for k in ("found", "not_found_kept", "no_solution_kept")}}


def _children_cpu() -> float:
    """User + system CPU seconds of the finished commands: a phase's cost, apart from how busy
    the machine was."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def training_rows(out: Path, arm: str) -> list[dict]:
    """An arm's metrics.jsonl, one dict per step."""
    return [json.loads(line) for line in (out / "runs" / arm / "metrics.jsonl").read_text().splitlines()]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def guidance_facts(rows: list[dict]) -> dict:
    """How much guidance an arm showed: the mean shown share of the solution over its guided prompts."""
    if not any(r.get("prompts/guided") for r in rows):
        return {}
    weighted = [(r["guidance/prefix_fraction"], r["prompts/guided"]) for r in rows
                if r.get("guidance/prefix_fraction") is not None and r.get("prompts/guided")]
    total = sum(n for _, n in weighted)
    return {"prefix_fraction_mean": sum(f * n for f, n in weighted) / total if total else None,
            "guided_skipped": sum(r.get("guidance/guided_skipped") or 0 for r in rows)}


def oracle_facts(rows: list[dict]) -> dict:
    """The oracle tokens' importance weights, loss share and entropy over an arm's steps (arms with
    --oracle-rollouts): the largest weight any step saw, the rest as means over the steps that trained."""
    if not any(r.get("oracle/tokens") for r in rows):
        return {}
    trained = [r for r in rows if r.get("oracle/tokens")]
    late = trained[-max(1, len(trained) // 10):]
    return {"oracle_weight_max": max(r["oracle/weight_max"] for r in trained),
            "oracle_weight_mean": _mean(r.get("oracle/weight_mean") for r in trained),
            "oracle_clip_fraction": _mean(r.get("oracle/clip_fraction") for r in trained),
            "oracle_loss_share": _mean(r.get("oracle/loss_share") for r in trained),
            "oracle_entropy_last_tenth": _mean(r.get("oracle/entropy") for r in late),
            "oracle_reward": _mean(r.get("oracle/reward") for r in rows)}


def collect_results(cfg: DemoConfig, out: Path, curves: dict[str, list[dict]], phases: dict, timings: dict,
                    started: float) -> dict:
    """arm → mode → metric → value, plus training facts (from each arm's metric rows in
    `curves`), the commands and timings."""
    results: dict = {"arms": {}, "training": {}}
    for arm in evaluated_models(cfg, out):
        summary = json.loads((out / "eval" / arm / "summary.json").read_text())
        (modes,) = summary["models"].values()
        results["arms"][arm] = {mode: {k: v for k, v in metrics.items() if k != "ci95"} for mode, metrics in modes.items()}
    for arm in own_templates(cfg):
        summary = json.loads((out / "eval" / f"{arm}.own-template" / "summary.json").read_text())
        (modes,) = summary["models"].values()
        results["arms"][arm]["guided_own_template"] = {k: v for k, v in modes["guided"].items() if k != "ci95"}
    for arm, rows in curves.items():
        results["training"][arm] = {
            "steps": len(rows),
            "sft_steps": cfg.sft_steps if arm in SFT_SOURCES else 0,
            "hard_solved_unguided_ever": rows[-1]["solved_unguided/ever"] if rows else 0,
            "steps_with_unguided_signal": sum(1 for r in rows if (r.get("reward/unguided") or 0) > 0),
            "entropy_last_tenth": _mean(r.get("entropy") for r in rows[-max(1, len(rows) // 10):]),
            "guided_prompts": sum(r.get("prompts/guided") or 0 for r in rows),
            "gen_tokens": sum(r.get("gen_tokens") or 0 for r in rows),
            **guidance_facts(rows), **oracle_facts(rows),
        }
    for arm in SFT_SOURCES:
        if arm in cfg.arms:
            results["training"][arm]["sft_data"] = json.loads((sft_run(out, arm) / "manifest.json").read_text())["counts"]["data"]
    for arm in (a for a in cfg.arms if a in SOLUTION_ARMS):
        results["training"][arm].update(solution_facts(out, arm))
    for name in ("filter", "heldout_filter"):
        counts = filter_counts(cfg, out, name)
        results[name] = {k: counts[k] for k in ("problems", "hard", "easy", "samples", "naive_samples")}
    results["commands"] = ["pope " + shlex.join(c) for commands in phases.values() for c in commands]
    results["seconds"] = {**timings, "total": round(time.time() - started, 1)}
    results["config"] = {k: v for k, v in vars(cfg).items()}
    return results
