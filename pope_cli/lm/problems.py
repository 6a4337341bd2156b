"""`pope lm make-data`: arithmetic word problems a small real LM can read, with worked solutions.

A problem is a short story: someone starts with a number of things (apples, coins, pages, ...)
and then gains some, loses some or sees the number double or triple, one event a sentence, and is
asked how many there are at the end. Its worked solution does one step a sentence, in the same
words, and ends with "The answer is N.":

    Maya has 12 apples. She picks 5 more apples. Then she gives 3 apples to Leo. How many apples
    does Maya have now?

    After picking 5 more apples, Maya has 12 + 5 = 17 apples. After giving 3 apples to Leo, Maya
    has 17 - 3 = 14 apples. The answer is 14.

A tier is a number of steps and an operand size: `small` starts at 3-19 and adds or takes 2-9,
`large` starts at 20-99 and adds or takes 10-99 (multipliers are 2 or 3 in both). Every count
stays positive, and the answer is not one a model can reach by chance (`make_problem`). Which tiers a model can solve is for `pope filter-hard` to say, not for this
module: the tiers only give it a range of difficulty.
"""

from __future__ import annotations

import itertools
import operator
import random
from dataclasses import dataclass
from pathlib import Path

from pope_cli.shared.config import bad_option, int_list, overwrite_option, seed_option
from pope_cli.shared.errors import PopeError
from pope_cli.shared.options import check_choices, option
from pope_cli.shared.outputs import atomic_write_jsonl

SIZES = {"small": ((3, 19), (2, 9)), "large": ((20, 99), (10, 99))}
"""Operand size → (range of the starting count, range of an added or taken amount)."""
MULTIPLIERS = {2: "doubles", 3: "triples"}
MULTIPLY_RATE = 0.25
"""Share of steps (after the first) that double or triple the count."""
MIN_ANSWER = 10

NAMES = (("Maya", "she"), ("Tom", "he"), ("Lena", "she"), ("Omar", "he"), ("Sara", "she"), ("Ben", "he"),
         ("Nina", "she"), ("Leo", "he"), ("Ana", "she"), ("Sam", "he"))


@dataclass(frozen=True)
class Event:
    """One way the count changes: the story's sentence and the solution's clause, with {n} the amount,
    {items} the things and {other} another person."""

    story: str
    clause: str


@dataclass(frozen=True)
class Frame:
    """A story's setting: what is counted and how the count goes up and down."""

    items: str
    start: str
    gains: tuple[Event, ...]
    losses: tuple[Event, ...]


FRAMES = (
    Frame("apples", "{name} has {n} apples.",
          (Event("{pronoun} picks {n} more apples.", "picking {n} more apples"),
           Event("{pronoun} buys {n} apples at the market.", "buying {n} apples")),
          (Event("{pronoun} eats {n} apples.", "eating {n} apples"),
           Event("{pronoun} gives {n} apples to {other}.", "giving {n} apples to {other}"))),
    Frame("coins", "{name} has {n} coins in a jar.",
          (Event("{pronoun} finds {n} coins under the sofa.", "finding {n} coins"),
           Event("{other} gives {object} {n} coins.", "getting {n} coins from {other}")),
          (Event("{pronoun} spends {n} coins on a toy.", "spending {n} coins"),
           Event("{pronoun} loses {n} coins.", "losing {n} coins"))),
    Frame("pages", "{name} has written {n} pages of a story.",
          (Event("{pronoun} writes {n} more pages.", "writing {n} more pages"),
           Event("{other} helps and adds {n} pages.", "{other} adds {n} pages")),
          (Event("{pronoun} throws away {n} pages.", "throwing away {n} pages"),
           Event("{pronoun} cuts {n} pages that {other} did not like.", "cutting {n} pages"))),
    Frame("marbles", "{name} has {n} marbles.",
          (Event("{pronoun} wins {n} marbles in a game.", "winning {n} marbles"),
           Event("{other} gives {object} {n} marbles.", "getting {n} marbles from {other}")),
          (Event("{pronoun} loses {n} marbles in a game.", "losing {n} marbles"),
           Event("{pronoun} trades {n} marbles to {other}.", "trading away {n} marbles"))),
    Frame("cookies", "{name} bakes {n} cookies.",
          (Event("{pronoun} bakes {n} more cookies.", "baking {n} more cookies"),
           Event("{other} brings {n} cookies.", "{other} brings {n} cookies")),
          (Event("{pronoun} eats {n} cookies.", "eating {n} cookies"),
           Event("{pronoun} shares {n} cookies with {other}.", "sharing {n} cookies with {other}"))),
    Frame("stickers", "{name} has {n} stickers.",
          (Event("{pronoun} buys a pack of {n} stickers.", "buying {n} stickers"),
           Event("{other} gives {object} {n} stickers.", "getting {n} stickers from {other}")),
          (Event("{pronoun} puts {n} stickers on a card for {other}.", "using {n} stickers"),
           Event("{pronoun} gives {n} stickers to {other}.", "giving {n} stickers to {other}"))),
)

OBJECT = {"she": "her", "he": "him"}


def tier_name(steps: int, size: str) -> str:
    """A tier's name in the files: `2-step-small`."""
    return f"{steps}-step-{size}"


def _step(rng: random.Random, count: int, size: str, first: bool) -> tuple[str, int]:
    """One operation on `count`: ("+", n), ("-", n) or ("*", 2|3), keeping the count positive."""
    low, high = SIZES[size][1]
    if not first and rng.random() < MULTIPLY_RATE:
        return "*", rng.choice(tuple(MULTIPLIERS))
    if count - low >= 1 and rng.random() < 0.5:
        return "-", rng.randint(low, min(high, count - 1))
    return "+", rng.randint(low, high)


def _sentence(lead: str, text: str) -> str:
    """`text` after an optional "then ", its first letter capitalized."""
    text = lead + text
    return text[0].upper() + text[1:]


def make_problem(rng: random.Random, steps: int, size: str) -> dict:
    """A problem of `steps` operations at operand `size`: problem, answer and worked solution.

    A small model often states one of the story's numbers, a small number, or the result of one
    operation on two of the story's numbers (the wrong one, or only the first step), whatever the
    question. So the answer is at least MIN_ANSWER, none of the story's numbers and, past one step,
    no sum, difference or product of two of them: a problem is not solved by chance or by half.
    """
    while True:
        record, numbers = _draw(rng, steps, size)
        answer = int(record["answer"])
        shortcuts = set(numbers) | ({op(a, b) for a, b in itertools.permutations(numbers, 2)
                                     for op in (operator.add, operator.sub, operator.mul)} if steps > 1 else set())
        if answer >= MIN_ANSWER and answer not in shortcuts:
            return record


def _draw(rng: random.Random, steps: int, size: str) -> tuple[dict, list[int]]:
    """A problem (its record) and the numbers its story gives: the start, the amounts, the multipliers."""
    frame = rng.choice(FRAMES)
    (name, pronoun), (other, _) = rng.sample(NAMES, 2)
    count = rng.randint(*SIZES[size][0])
    words = dict(name=name, other=other, items=frame.items, object=OBJECT[pronoun], pronoun=pronoun)
    story, solution, numbers = [frame.start.format(n=count, **words)], [], [count]
    for index in range(steps):
        op, n = _step(rng, count, size, index == 0)
        numbers.append(n)
        result = count + n if op == "+" else count - n if op == "-" else count * n
        lead = "then " if index and rng.random() < 0.5 else ""
        if op == "*":
            story.append(_sentence(lead, f"the number of {frame.items} {name} has {MULTIPLIERS[n]}."))
            solution.append(f"When the number {MULTIPLIERS[n]}, {name} has {count} × {n} = {result} {frame.items}.")
        else:
            event = rng.choice(frame.gains if op == "+" else frame.losses)
            story.append(_sentence(lead, event.story.format(n=n, **words)))
            solution.append(f"After {event.clause.format(n=n, **words)}, {name} has {count} {op} {n} = {result} "
                            f"{frame.items}.")
        count = result
    story.append(f"How many {frame.items} does {name} have now?")
    solution.append(f"The answer is {count}.")
    return {"problem": " ".join(story), "answer": str(count), "solution": " ".join(solution)}, numbers


FILES = ("pool.jsonl", "heldout.jsonl")


def _names(text) -> list[str]:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [item.strip() for item in items if item.strip()]


@dataclass
class WordProblemsConfig:
    """`pope lm make-data`: how many word problems of each tier, from which seed."""

    out: str = option(help="Output directory (pool.jsonl: the training pool; heldout.jsonl: held-out problems).",
                      metavar="DIR")
    seed: int = seed_option()
    steps: list[int] = option(None, "Tiers' numbers of steps (one arithmetic operation each), comma-separated.",
                              cli_type=str, parse=int_list("--steps"), cli_default="1,2,3")
    sizes: list[str] = option(None, "Tiers' operand sizes: small (start 3-19, amounts 2-9) and/or large (start 20-99, "
                                    "amounts 10-99), comma-separated.", cli_type=str,
                              parse=_names, cli_default="small,large", choices=tuple(SIZES))
    n_pool: int = option(64, "Problems per tier in the training pool.")
    n_heldout: int = option(32, "Problems per tier in the held-out set, none of them in the pool.")
    overwrite: bool = overwrite_option("Replace pool.jsonl and heldout.jsonl when they exist.")

    def __post_init__(self):
        self.steps = self.steps if self.steps is not None else [1, 2, 3]
        self.sizes = self.sizes if self.sizes is not None else list(SIZES)
        check_choices(self)
        if not self.steps or any(steps < 1 or steps > 8 for steps in self.steps):
            raise bad_option("--steps", "give numbers of steps from 1 to 8")
        if not self.sizes:
            raise bad_option("--sizes", "give at least one of small, large")
        for flag, value in (("--n-pool", self.n_pool), ("--n-heldout", self.n_heldout)):
            if value < 0:
                raise bad_option(flag, "must be >= 0")


def tier_problems(seed: int, steps: int, size: str, count: int) -> list[dict]:
    """`count` distinct problems of one tier, from a stream of their own (adding a tier changes no other)."""
    rng = random.Random(f"lm-{seed}-{tier_name(steps, size)}")
    seen: set[str] = set()
    records: list[dict] = []
    attempts = 0
    while len(records) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise PopeError(f"--n-pool/--n-heldout: tier {tier_name(steps, size)} has too few distinct problems "
                            f"for {count}")
        record = make_problem(rng, steps, size)
        if record["problem"] not in seen:
            seen.add(record["problem"])
            records.append(record)
    return records


def write_word_problems(cfg: WordProblemsConfig) -> dict[str, int]:
    """Write pool.jsonl and heldout.jsonl (tiers in order, each record with id, problem, answer,
    solution, tier and source = tier); returns each file's row count. The same seed gives the same files."""
    out = Path(cfg.out)
    existing = [out / name for name in FILES if (out / name).exists()]
    if existing and not cfg.overwrite:
        raise PopeError(f"--out: {existing[0]} exists; pass --overwrite to replace it", exit_code=2)
    files: dict[str, list[dict]] = {name: [] for name in FILES}
    for steps in cfg.steps:
        for size in cfg.sizes:
            tier = tier_name(steps, size)
            records = tier_problems(cfg.seed, steps, size, cfg.n_pool + cfg.n_heldout)
            for split, part in (("pool.jsonl", records[:cfg.n_pool]), ("heldout.jsonl", records[cfg.n_pool:])):
                kind = "pool" if split == "pool.jsonl" else "heldout"
                files[split] += [{"id": f"{tier}-{kind}-{i:04d}", **record, "tier": tier, "source": tier}
                                 for i, record in enumerate(part)]
    out.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        atomic_write_jsonl(out / name, records)
    return {name: len(records) for name, records in files.items()}
