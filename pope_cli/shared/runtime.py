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
from pope_cli.shared.errors import PopeError


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
    `template_override` replaces that name for all records. A record may name the file of its
    unguided template too (`unguided_template`: filter-hard records the one it asked with, and the
    later files carry it), used unless `--unguided-template` (`opts.unguided_template`) is given.
    """

    def __init__(self, tokenizer, opts: PromptOptions, template_override: str | None = None):
        self.tokenizer = tokenizer
        self.opts = opts
        self.template_override = template_override
        self._templates: dict = {}
        self.unguided_template_of({})  # --unguided-template loads (or fails) at once

    def guided_template(self, name: str | None):
        from pope_cli.shared.prompts import load_template

        return self._load(load_template, self.template_override or name or "pope")

    def unguided_template_of(self, record: dict):
        from pope_cli.shared.prompts import load_unguided_template

        return self._load(load_unguided_template, self.opts.unguided_template or record.get("unguided_template"))

    def _load(self, loader, name: str | None):
        if (loader, name) not in self._templates:
            self._templates[loader, name] = loader(name)
        return self._templates[loader, name]

    def check_records(self, records: list[dict], source: str, *modes: str) -> None:
        """Load every template the records name for `modes` (unguided, guided) that no option
        replaces, before a stage writes anything: one that does not load is the record's error."""
        fields = {"guided": ("template", "--template", self.guided_template),
                  "unguided": ("unguided_template", "--unguided-template", self.unguided_template_of)}
        for mode in modes:
            name, flag, load = fields[mode]
            for record in records:
                if record.get(name) is None or (mode == "guided" and record.get("prefix") is None):
                    continue
                try:
                    load(record if mode == "unguided" else record[name])
                except PopeError as error:
                    reason = str(error).split(": ", 1)[1]
                    raise PopeError(f"{source}: record {record.get('id')!r}: field '{name}': {reason}; or give {flag}") \
                        from None

    def unguided(self, record: dict) -> list[int]:
        from pope_cli.shared.prompts import unguided_text

        return self._encode(unguided_text(self.unguided_template_of(record), record["problem"]))

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


def resolved_autos(model: ModelOptions) -> dict:
    """What each `auto` of the model options means on this machine, by its config key: a resume
    compares meanings, so `--backend hf` resumes a run whose `auto` chose hf."""
    import dataclasses

    from pope_cli.shared.engines import choose_backend
    from pope_cli.shared.models import resolve_device, resolve_dtype

    auto = dataclasses.replace(model, device="auto", dtype="auto")
    device = resolve_device(auto)
    return {"model.backend": choose_backend("auto"), "model.device": device.type,
            "model.dtype": str(resolve_dtype(auto, device)).removeprefix("torch.")}


def resumed(say: Callable[[str], None], stage: str, out: str, source: str, changes, done: int, total: int,
            what: str) -> None:
    """The notices of a resumed sampling stage: how its input changed (an `input_state.InputChanges`),
    and how much of the work was already done."""
    note = changes.describe(source)
    if note:
        say(f"{stage}: {note}")
    if done:
        say(f"{stage}: resuming {out}: {done} of {total} {what} already")


def model_context(opts: ModelOptions) -> int | None:
    """The positions `--model` attends over, as its config.json says (`max_position_embeddings`; vLLM's
    `--max-model-len` where lower), from a local directory (an adapter's base) or the hub cache;
    None when unknown. Nothing is downloaded and no model is loaded."""
    import json
    from pathlib import Path

    from pope_cli.shared.models import adapter_base

    try:
        source = adapter_base(opts.model) or opts.model
        path = Path(source) / "config.json"
        if not path.is_file():
            from huggingface_hub import try_to_load_from_cache

            path = Path(str(try_to_load_from_cache(source, "config.json")))
        config = json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # not a model directory, not cached, not JSON: nothing to say
        return None
    positions = config.get("text_config", config).get("max_position_embeddings")
    if not isinstance(positions, int) or positions < 1:
        return None
    return min(positions, opts.max_model_len) if opts.max_model_len else positions


def say_dtype(say: Callable[[str], None], stage: str, opts: ModelOptions, trains: bool = False) -> None:
    """The dtype the stage's model computes in, and why: `--dtype auto` depends on the machine (bf16 on a
    GPU or a CPU with bf16 matrix units, else fp32)."""
    from pope_cli.shared.models import describe_dtype

    dtype, why = describe_dtype(opts)
    scheme = ": trainable weights and optimizer state in float32, matmuls under bf16 autocast" \
        if trains and dtype != "float32" else ""
    say(f"{stage}: dtype {dtype} ({why}){scheme}")


def say_budget(say: Callable[[str], None], stage: str, opts: ModelOptions, max_new_tokens: int) -> None:
    """Say so when `--max-new-tokens` is more than the model can hold (the engines stop every
    completion at the model's context, whatever the budget)."""
    context = model_context(opts)
    if context is not None and max_new_tokens >= context:
        say(f"{stage}: --max-new-tokens {max_new_tokens} is not less than the context of {opts.model} ({context} "
            f"positions): each completion stops at the context, {context} minus its prompt's tokens")


def notice(text: str) -> None:
    """A one-line notice on stderr (above a progress bar on a terminal)."""
    print(text, file=sys.stderr, flush=True)


PROGRESS_SECONDS_ENV = "POPE_PROGRESS_SECONDS"
"""Seconds between the plain progress lines in a pipe (default 10); `pope demo` asks for 1 from the
commands whose logs its live view reads."""


@contextmanager
def progress_reporter(description: str, total: int, unit: str = "problems",
                      detail: str | None = None) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal; in a pipe, a plain line at most every 10 seconds, with
    `detail` (what a unit is) in parentheses."""
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
            print(f"{description}: {done}/{_total} {unit}" + (f" ({detail})" if detail else ""), file=sys.stderr,
                  flush=True)

    yield report
