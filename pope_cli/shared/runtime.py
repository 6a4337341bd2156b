"""Builders the stages share: engine and scorer factories, prompt encoders, progress reporting.

These sit between the pure stage cores and the heavy libraries, so that a stage core can be
driven by a scripted engine in tests and the CLI stays fast to start.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from pope_cli.shared.config import ApiOptions, ModelOptions, PromptOptions, RewardOptions


def engine_factory(opts: ModelOptions, plan=None, api: ApiOptions | None = None) -> Callable:
    """The stage's engine: in-process, with a `workers.factory.WorkerPlan` a pool of workers, or
    with `--backend openai` a client of the server `api` names."""
    def build():
        if plan is not None:
            from pope_cli.shared.workers.factory import pooled_engine

            return pooled_engine(opts, plan)
        from pope_cli.shared.engines import make_engine

        return make_engine(opts, api=api)

    return build


def scorer_factory(opts: RewardOptions) -> Callable:
    def build():
        from pope_cli.shared.reward.checker import Scorer

        return Scorer(opts.spec, workers=opts.workers, timeout=opts.timeout)

    return build


class PromptBuilder:
    """Token ids of the unguided or guided prompt of a record, the same for every stage (a `Prompt`,
    which also keeps the chat messages for a served chat endpoint).

    A guided record carries `prefix` and the name (or file) of its guided `template`;
    `template_override` replaces that name for all records.
    """

    def __init__(self, tokenizer, opts: PromptOptions, template_override: str | None = None):
        from pope_cli.shared.prompts import load_unguided_template

        self.tokenizer = tokenizer
        self.opts = opts
        self.template_override = template_override
        self.unguided_template = load_unguided_template(opts.unguided_template)
        self._guided_templates: dict = {}

    def guided_template(self, name: str | None):
        from pope_cli.shared.prompts import load_template

        name = self.template_override or name or "pope"
        if name not in self._guided_templates:
            self._guided_templates[name] = load_template(name)
        return self._guided_templates[name]

    def unguided(self, record: dict) -> list[int]:
        from pope_cli.shared.prompts import unguided_text

        return self._encode(unguided_text(self.unguided_template, record["problem"]))

    def guided(self, record: dict) -> list[int]:
        from pope_cli.shared.prompts import guided_text

        template = self.guided_template(record.get("template"))
        return self._encode(guided_text(template, record["problem"], record["prefix"]))

    def build(self, mode: str, record: dict) -> list[int]:
        return self.guided(record) if mode == "guided" else self.unguided(record)

    def _encode(self, text: str) -> list[int]:
        from pope_cli.shared.engines.base import Prompt
        from pope_cli.shared.prompts import chat_messages, encode_prompt

        ids = encode_prompt(self.tokenizer, text, self.opts.system_prompt, self.opts.chat_template)
        return Prompt(ids, chat_messages(text, self.opts.system_prompt))


PROGRESS_SECONDS_ENV = "POPE_PROGRESS_SECONDS"
"""Seconds between the plain progress lines in a pipe (default 10); `pope demo` asks for 1 from the
commands whose logs its live view reads."""


@contextmanager
def progress_reporter(description: str, total: int, unit: str = "problems") -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal; in a pipe, a plain line at most every 10 seconds."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done, _total: bar.update(task, completed=done, total=_total)
        return
    last = [0.0]
    every = float(os.environ.get(PROGRESS_SECONDS_ENV, "10"))

    def report(done: int, _total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every or done == _total:
            last[0] = now
            print(f"{description}: {done}/{_total} {unit}", file=sys.stderr, flush=True)

    yield report
