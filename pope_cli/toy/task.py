"""The toy reasoning task: chain arithmetic mod 10, where the hard skill is the rare `*` step.

A problem is a start digit and a chain of steps, read left to right, every result taken mod 10:
`7*9-5*9*7+9*4` means ((((7*9)-5)*9)*7 ... The oracle solution works it one step per line
and ends in the boxed answer:

    7*9=3
    3-5=8
    ...
    \\boxed{2}

`+` and `-` take an operand 1-9, `*` an operand 2-9.

Tiers, and why POPE's mechanism can occur here:
- *easy*: 2-6 steps of `+`/`-`; a share of them (`STAR_RATE`) carry one `*` step, almost
  always by 2 or 3. Pretraining sees these, so the model reads, writes and copies `*` lines as
  well as any other, but knows the `*` table by 4-9 (the hard skill) only from the rare easy
  `*` step that uses one (`RARE_RATE`): partly. Easy problems never hold two `*` steps, so RL
  on easy problems barely exercises that table.
- *hard*: 6 steps (no longer than the longest easy problem, so length is not the obstacle),
  exactly 4 of them `*` by 4-9, each with an input 2-9 and a nonzero result (41 table
  entries), so no `*` is trivial and the chain never collapses to 0. Solving one unguided
  needs 4 uncertain look-ups in a row: pass@32 is about 0. A guided twin hands over the first
  lines, so its continuation needs only the last one or two look-ups: solvable. They are the
  same table the unguided problems need, which is what lets guided learning transfer.
- *held-out*: more hard problems, disjoint from the training pool, for evaluation.

Written solutions come in two styles (`--oracle-style`). `steps` is the model's own: one step a
line, as the model was pretrained to write. `terse` is how a person might write it: two steps a
line with the intermediate result left out (`7*9-5=8`), so a model that copies the style has to
do two look-ups in one go; the reward accepts either (a merged line is checked as the steps it
stands for). It plays the human solutions that are far from the model's distribution.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from pope_cli.shared.config import bad_option, overwrite_option, seed_option
from pope_cli.shared.errors import PopeError
from pope_cli.shared.options import check_choices, option
from pope_cli.shared.outputs import atomic_write_text

STAR_RATE = 0.3
"""Share of easy problems that carry one `*` step (the rest are pure `+`/`-`)."""
RARE_RATE = 0.03
"""Share of easy `*` steps by a hard multiplier (4-9) rather than 2 or 3."""
EASY_MULTIPLIERS = (2, 3)
HARD_MULTIPLIERS = (4, 5, 6, 7, 8, 9)
EASY_STEPS = (2, 6)
HARD_STEPS = 6
HARD_STARS = 4


def apply(value: int, op: str, operand: int) -> int:
    """One step of the chain, mod 10."""
    if op == "+":
        return (value + operand) % 10
    if op == "-":
        return (value - operand) % 10
    return (value * operand) % 10


ORACLE_STYLES = {"steps": 1, "terse": 2}
"""How a written solution reads: the steps per derivation line. `steps` is the way the model
writes (it was pretrained on it); `terse` is a person's, two steps a line with the intermediate
result skipped (`7*9-5=8`)."""


def solution_lines(start: int, steps: list[tuple[str, int]], style: str = "steps") -> list[str]:
    """The derivation in `style`, one `a<op>b...=c` line per ORACLE_STYLES[style] steps (no answer line)."""
    per_line = ORACLE_STYLES[style]
    lines, value = [], start
    for first in range(0, len(steps), per_line):
        chunk, result = steps[first:first + per_line], value
        for op, operand in chunk:
            result = apply(result, op, operand)
        lines.append(f"{value}" + "".join(f"{op}{operand}" for op, operand in chunk) + f"={result}")
        value = result
    return lines


def make_record(pid: str, source: str, start: int, steps: list[tuple[str, int]], style: str = "steps") -> dict:
    """A pipeline record: the problem text, its gold answer and the worked solution (in `style`)."""
    lines = solution_lines(start, steps, style)
    answer = lines[-1].split("=")[1]
    problem = str(start) + "".join(f"{op}{operand}" for op, operand in steps)
    solution = "\n".join(lines + [f"\\boxed{{{answer}}}"])
    return {"id": pid, "problem": problem, "answer": answer, "solution": solution, "source": source}


def sample_easy(rng: random.Random, star_rate: float = STAR_RATE,
                rare_rate: float = RARE_RATE) -> tuple[int, list[tuple[str, int]]]:
    """An easy problem: 2-6 `+`/`-` steps, one of them turned into a `*` step in a `star_rate`
    share of problems; that `*` is by 2 or 3, or by 4-9 in a `rare_rate` share of them."""
    n = rng.randint(*EASY_STEPS)
    steps = [(rng.choice("+-"), rng.randint(1, 9)) for _ in range(n)]
    if rng.random() < star_rate:
        multipliers = HARD_MULTIPLIERS if rng.random() < rare_rate else EASY_MULTIPLIERS
        steps[rng.randrange(n)] = ("*", rng.choice(multipliers))
    return rng.randint(1, 9), steps


def sample_hard(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    """A hard problem: 6 steps, 4 of them `*` by 4-9 with input 2-9 and a nonzero result.

    Drawn by rejection: a `+`/`-` step that leaves 0 or 1 before a `*`, or a `*` that lands on
    0, would make a look-up trivial.
    """
    while True:
        stars = set(rng.sample(range(HARD_STEPS), HARD_STARS))
        steps = [("*", rng.choice(HARD_MULTIPLIERS)) if i in stars else (rng.choice("+-"), rng.randint(1, 9))
                 for i in range(HARD_STEPS)]
        start = rng.randint(2, 9)
        if hard_ok(start, steps):
            return start, steps


def hard_ok(start: int, steps: list[tuple[str, int]]) -> bool:
    value = start
    for op, operand in steps:
        if op == "*" and value < 2:
            return False
        value = apply(value, op, operand)
        if op == "*" and value == 0:
            return False
    return True


def hard_problems(seed: int, n_pool: int, n_heldout: int, style: str = "steps") -> tuple[list[dict], list[dict]]:
    """Distinct hard problems: the first `n_pool` form the training pool, the next the held-out set."""
    rng = random.Random(f"toy-hard-{seed}")
    seen: set[str] = set()
    records: list[dict] = []
    while len(records) < n_pool + n_heldout:
        start, steps = sample_hard(rng)
        pool = len(records) < n_pool
        pid = f"hard-{len(records):05d}" if pool else f"heldout-{len(records) - n_pool:05d}"
        record = make_record(pid, "toy-hard", start, steps, style)
        if record["problem"] not in seen:
            seen.add(record["problem"])
            records.append(record)
    return records[:n_pool], records[n_pool:]


def easy_problems(seed: int, n: int, style: str = "steps") -> list[dict]:
    """Distinct easy problems drawn like the pretraining data (a different stream)."""
    rng = random.Random(f"toy-easy-{seed}")
    seen: set[str] = set()
    records: list[dict] = []
    while len(records) < n:
        record = make_record(f"easy-{len(records):05d}", "toy-easy", *sample_easy(rng), style)
        if record["problem"] not in seen:
            seen.add(record["problem"])
            records.append(record)
    return records


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


@dataclass
class ProblemSetsConfig:
    """`pope toy make-data`: how many problems of each kind, from which seed."""

    out: str = option(help="Output directory (easy.jsonl, hard_pool.jsonl, heldout.jsonl, mix.jsonl).", metavar="DIR")
    seed: int = seed_option()
    n_easy: int = option(64, "Easy problems (solved by the shipped model).")
    n_hard: int = option(256, "Hard problems in the training pool.")
    n_heldout: int = option(64, "Held-out hard problems for evaluation, disjoint from the pool.")
    oracle_style: str = option("steps", "How the written solutions read: steps (one step a line, the model's own style) "
                                        "or terse (two steps a line, the intermediate result skipped, as a person "
                                        "writes); the problems are the same.", choices=tuple(ORACLE_STYLES))
    overwrite: bool = overwrite_option("Replace problem sets in --out that differ from these (the same sets are "
                                       "rewritten as they are, so a rerun of the same command goes through).")

    def __post_init__(self):
        check_choices(self)
        for name, value in (("--n-easy", self.n_easy), ("--n-hard", self.n_hard), ("--n-heldout", self.n_heldout)):
            if value < 0:
                raise bad_option(name, "must be >= 0")


def write_problem_sets(out_dir: str | Path, seed: int = 0, n_easy: int = 64, n_hard: int = 256,
                       n_heldout: int = 64, style: str = "steps", overwrite: bool = False) -> dict[str, int]:
    """Write easy.jsonl, hard_pool.jsonl, heldout.jsonl and mix.jsonl (easy + hard pool, shuffled).

    Returns the row count of each file. The same seed always gives the same files; a file that
    already holds other problems (another seed, size or style) is replaced only with `overwrite`.
    """
    out = Path(out_dir)
    easy = easy_problems(seed, n_easy, style)
    pool, heldout = hard_problems(seed, n_hard, n_heldout, style)
    mix = easy + pool
    random.Random(f"toy-mix-{seed}").shuffle(mix)
    files = {"easy.jsonl": easy, "hard_pool.jsonl": pool, "heldout.jsonl": heldout, "mix.jsonl": mix}
    texts = {name: jsonl_text(records) for name, records in files.items()}
    other = [name for name, text in texts.items() if (out / name).is_file() and (out / name).read_text() != text]
    if other and not overwrite:
        raise PopeError(f"--out: {out / other[0]} already holds other problems (another --seed, size or --oracle-style); "
                        "use --overwrite to replace them, or another --out", exit_code=2)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    return {name: len(records) for name, records in files.items()}
