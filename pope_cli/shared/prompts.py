"""Prompts for POPE: guided and unguided templates, chat encoding, and cutting oracle prefixes.

A guided prompt is the problem, a prefix of an oracle solution and an instruction to continue
from it; an unguided prompt is the problem and an answer-format instruction. Prefixes are cut
at natural boundaries of the solution (`split_solution`) or at token boundaries
(`split_tokens`), and measured in tokenizer tokens (`prefix_ladder`, `fixed_fraction_prefix`).

Placeholder rule. Templates are plain text, not `str.format` strings, because they hold LaTeX
(`\\boxed{}`, `\\frac{a}{b}`). A placeholder is `{name}` with `name` a Python identifier, unless
the brace opens a LaTeX argument: it directly follows a command (`\\boxed{your_answer_here}`,
`\\text{problem}`), a `}` or `]` (`\\frac{a}{b}`, `\\sqrt[3]{x}`), or `^`/`_` (`x^{n}`). Those
stay literal, as does any brace group that is not an identifier (`{}`, `{1}`, `{ x }`). A guided
template must use both `{problem}` and `{prefix}`, an unguided one exactly `{problem}`; any
other placeholder is an error. Filling is a single pass, so a problem that happens to contain
`{prefix}` is never filled twice.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from pope_cli.shared.errors import PopeError

POPE_TEMPLATE = r"""You are given a problem and a partial solution.

Your task is to carefully study the partial response, identify what reasoning or steps are already provided, and then complete the solution from where it left off. Ensure your continuation is logically consistent and leads to a complete and correct final answer.

**Important**: Show your reasoning step-by-step, and clearly present the final answer using LaTeX-style `\boxed{}` notation.

Problem:
{problem}

Partial Response:
{prefix}

Continue solving the problem, starting from where the partial response ends. Make sure your final answer is written as: \boxed{your_answer_here}"""

# The paper's ablation: forbidding restatement raises the guided solve rate but hurts transfer.
NO_RESTATE_TEMPLATE = POPE_TEMPLATE.replace(
    "\n\nProblem:\n",
    "\n\n**Do not restate**: Do not restate, paraphrase, summarize or recompute anything that the "
    "partial response already contains. Take its steps and results as given and write only the "
    "new reasoning that comes after it.\n\nProblem:\n",
)

DEFAULT_UNGUIDED_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."

BUILTIN_TEMPLATES = {"pope": POPE_TEMPLATE, "no-restate": NO_RESTATE_TEMPLATE}

_CANDIDATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Template:
    """A validated template: `name` is the built-in name or the file path it came from."""

    name: str
    text: str


def _is_latex_argument(text: str, brace: int) -> bool:
    """Whether the `{` at `brace` opens a LaTeX argument rather than a placeholder."""
    before = brace - 1
    if before < 0:
        return False
    if text[before] in "}]^_":
        return True
    if text[before] == "*":
        before -= 1
    start = before
    while start >= 0 and text[start].isalpha():
        start -= 1
    return start < before and start >= 0 and text[start] == "\\"


def placeholders(text: str) -> list[str]:
    """The placeholder names in `text`, in order of appearance (see the module docstring)."""
    return [m.group(1) for m in _CANDIDATE.finditer(text) if not _is_latex_argument(text, m.start())]


def _fill(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        if _is_latex_argument(text, match.start()):
            return match.group(0)
        return values[match.group(1)]

    return _CANDIDATE.sub(replace, text)


def _check(text: str, required: tuple[str, ...], option: str, source: str) -> None:
    found = placeholders(text)
    allowed = " and ".join("{" + name + "}" for name in required)
    for name in found:
        if name not in required:
            raise PopeError(f"{option}: {source}: unknown placeholder {{{name}}} (this template takes {allowed})", exit_code=2)
    for name in required:
        if name not in found:
            raise PopeError(f"{option}: {source}: missing placeholder {{{name}}}", exit_code=2)


def _read_template_file(path: Path, option: str) -> str:
    """Read a template file; one trailing newline (which editors add) is not part of it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PopeError(f"{option}: {path}: not UTF-8 text", exit_code=2) from None
    except OSError as error:
        raise PopeError(f"{option}: {path}: cannot read ({error.strerror})", exit_code=2) from None
    return text.removesuffix("\n").removesuffix("\r")


def load_template(spec: str) -> Template:
    """A guided template: a built-in name (`pope`, `no-restate`) or a path to a text file.

    Built-in names win over a file of the same name; write `./pope` to mean the file.
    """
    if spec in BUILTIN_TEMPLATES:
        return Template(spec, BUILTIN_TEMPLATES[spec])
    path = Path(spec)
    if not path.is_file():
        builtins = ", ".join(BUILTIN_TEMPLATES)
        raise PopeError(f"--template: {spec}: no such file, nor a built-in template ({builtins})", exit_code=2)
    text = _read_template_file(path, "--template")
    _check(text, ("problem", "prefix"), "--template", spec)
    return Template(spec, text)


def load_unguided_template(path: str | None) -> Template:
    """The unguided template: the default boxed-answer instruction, or a file with `{problem}`."""
    if path is None:
        return Template("default", DEFAULT_UNGUIDED_TEMPLATE)
    if not Path(path).is_file():
        raise PopeError(f"--unguided-template: {path}: no such file", exit_code=2)
    text = _read_template_file(Path(path), "--unguided-template")
    _check(text, ("problem",), "--unguided-template", path)
    return Template(path, text)


def guided_text(template: Template, problem: str, prefix: str) -> str:
    """The guided user message: `template` (from `load_template`) filled with problem and prefix."""
    return _fill(template.text, {"problem": problem, "prefix": prefix})


def unguided_text(template: Template, problem: str) -> str:
    """The unguided user message: `template` (from `load_unguided_template`) filled with problem."""
    return _fill(template.text, {"problem": problem})


def chat_messages(user_text: str, system_prompt: str | None = None) -> list[dict]:
    """The conversation a prompt is: the system message when there is one, then the user's."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user_text}]


def render_prompt(tokenizer, user_text: str, system_prompt: str | None = None, chat_template: bool = True) -> str:
    """The full prompt text the model sees, with the generation prompt for the assistant turn.

    Without a chat template (or with `chat_template=False`) the prompt is the raw user text,
    preceded by the system prompt and a blank line when there is one.
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(chat_messages(user_text, system_prompt), tokenize=False,
                                             add_generation_prompt=True)
    return f"{system_prompt}\n\n{user_text}" if system_prompt else user_text


def encode_prompt(tokenizer, user_text: str, system_prompt: str | None = None, chat_template: bool = True) -> list[int]:
    """Prompt token ids, through the tokenizer's chat template when it has one and it is wanted.

    A chat template already writes any BOS token itself, so its text is encoded without special
    tokens. Raw text is encoded with the tokenizer's default special tokens (a BOS for models
    that expect one), as the model saw text in pretraining.
    """
    text = render_prompt(tokenizer, user_text, system_prompt, chat_template)
    use_chat = chat_template and bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(text, add_special_tokens=not use_chat).input_ids)


# ---------------------------------------------------------------------------------------------
# Cutting an oracle solution into units and prefixes.
#
# Cut points are the union of paragraph breaks, line breaks and sentence ends (".", "?" or "!"
# followed by whitespace); a unit is the text between two cut points and keeps its trailing
# whitespace, so the units join back to the solution exactly. Nothing is cut inside a protected
# span: `$...$`, `$$...$$`, `\[...\]`, `\(...\)`, a math environment (`\begin{align}...`) or a
# `\boxed{...}` (balanced braces). An opener with no closer before the next blank line is taken
# as literal text (LaTeX forbids blank lines inside math), so a stray `$` cannot swallow the rest.

_MATH_ENV = re.compile(
    r"\\begin\{((?:equation|align|alignat|flalign|gather|multline|eqnarray|split|aligned|gathered"
    r"|cases|array|[pbBvV]?matrix)\*?)\}"
)
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
_WHITESPACE = re.compile(r"\s+")
# "1. ", "b. ", "iv. " at the start of a line mark a list item; they do not end a sentence.
_ENUMERATOR = re.compile(r"[ \t>*-]*(?:\d{1,3}|[A-Za-z]|[ivxIVX]{1,5})\.")
_ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.")


def _find_closer(text: str, start: int, closer: str, limit: int) -> int | None:
    """End of the first unescaped `closer` in text[start:limit], or None."""
    i = start
    while i < limit:
        if text.startswith(closer, i):
            return i + len(closer)
        i += 2 if text[i] == "\\" else 1
    return None


def _find_brace_end(text: str, open_brace: int, limit: int) -> int | None:
    """End of the group whose `{` is at `open_brace`, counting nested braces, or None."""
    depth, i = 0, open_brace
    while i < limit:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        depth += (char == "{") - (char == "}")
        i += 1
        if depth == 0:
            return i
    return None


def _find_env_end(text: str, match: re.Match, limit: int) -> int | None:
    """End of the `\\end{name}` matching the `\\begin{name}` in `match`, or None."""
    tags = re.compile(r"\\(begin|end)\{" + re.escape(match.group(1)) + r"\}")
    depth = 0
    for tag in tags.finditer(text, match.start(), limit):
        depth += 1 if tag.group(1) == "begin" else -1
        if depth == 0:
            return tag.end()
    return None


def _span_end(text: str, i: int, limit: int) -> int | None:
    """If a protected span opens at `i`, where it ends (None when nothing opens or it never closes)."""
    if text.startswith("$$", i):
        return _find_closer(text, i + 2, "$$", limit)
    if text[i] == "$":
        return _find_closer(text, i + 1, "$", limit)
    if text.startswith("\\[", i):
        return _find_closer(text, i + 2, "\\]", limit)
    if text.startswith("\\(", i):
        return _find_closer(text, i + 2, "\\)", limit)
    if text.startswith("\\boxed{", i):
        return _find_brace_end(text, i + len("\\boxed"), limit)
    env = _MATH_ENV.match(text, i)
    return _find_env_end(text, env, limit) if env else None


def protected_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character ranges that a cut must not fall inside, in order."""
    spans, i = [], 0
    blank = _BLANK_LINE.search(text)
    while i < len(text):
        while blank and blank.start() < i:
            blank = _BLANK_LINE.search(text, blank.end())
        limit = blank.start() if blank else len(text)
        end = _span_end(text, i, limit) if text[i] in "$\\" else None
        if end is not None:
            spans.append((i, end))
            i = end
        else:
            # A backslash escapes the next character (`\$` is a dollar sign, not math).
            i += 2 if text[i] == "\\" else 1
    return spans


def _ends_sentence(text: str, end: int) -> bool:
    """Whether the character before `end` closes a sentence (not a list number or "e.g.")."""
    if text[end - 1] not in ".?!":
        return False
    if text[end - 1] == "." and text[max(0, end - 4):end].lower().endswith(_ABBREVIATIONS):
        return False
    line_start = text.rfind("\n", 0, end) + 1
    return not _ENUMERATOR.fullmatch(text, line_start, end)


def split_solution(solution: str) -> list[str]:
    """Cut a solution into units at paragraph, line and sentence boundaries outside math.

    `"".join(units) == solution`; every unit keeps its trailing whitespace, leading whitespace
    stays with the first unit, and an empty solution has no units.
    """
    spans = protected_spans(solution)
    span_starts = [start for start, _ in spans]
    cuts = [0]
    for run in _WHITESPACE.finditer(solution):
        start, end = run.span()
        if start == 0 or end == len(solution):
            continue
        inside = bisect.bisect_right(span_starts, start) - 1
        if inside >= 0 and spans[inside][1] > start:
            continue
        if "\n" in run.group() or _ends_sentence(solution, start):
            cuts.append(end)
    cuts.append(len(solution))
    return [solution[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def split_tokens(solution: str, tokenizer) -> list[str]:
    """Cut a solution into one unit per token, using the tokenizer's character offsets.

    Units run from one token's start to the next token's start, so they join back to the
    solution exactly even where offsets skip whitespace; tokens sharing a start (bytes of one
    character) form one unit. Tokenizers without offsets (slow, Python-only ones) are refused
    rather than approximated by decoding, which need not reproduce the text.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise PopeError(
            "--split tokens: the tokenizer gives no character offsets (not a fast tokenizer); "
            "split the solution by text instead", exit_code=2,
        )
    offsets = tokenizer(solution, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = sorted({start for start, end in offsets if end > start} - {0})
    cuts = [0, *starts, len(solution)]
    return [solution[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


@dataclass(frozen=True)
class Rung:
    """A prefix of the first `units` units; `fraction` = its tokens / the solution's tokens."""

    units: int
    text: str
    tokens: int
    fraction: float


def count_tokens(tokenizer, text: str) -> int:
    """Tokenizer tokens in `text`, without special tokens."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _rungs(units: list[str], tokenizer, solution: str):
    """Rungs of 1, 2, 3, ... units, lazily, tokenized a batch at a time.

    A rung's text drops the trailing whitespace of its last unit: it would only add blank lines
    before the template's next line. Token counts are of that text itself, so the fraction is
    what the prompt really shows. A rung whose text equals the previous one is skipped.
    """
    total = count_tokens(tokenizer, solution)
    if total == 0:
        return
    batch, previous = 32, None
    for first in range(0, len(units), batch):
        head = "".join(units[:first])
        texts = []
        for unit in units[first:first + batch]:
            head += unit
            texts.append(head.rstrip())
        counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
        for offset, (text, tokens) in enumerate(zip(texts, counts)):
            if text != previous:
                yield Rung(first + offset + 1, text, tokens, tokens / total)
            previous = text


def prefix_ladder(units: list[str], tokenizer, max_fraction: float, solution: str) -> list[Rung]:
    """Prefixes of 1, 2, 3, ... units, as long as they hold at most `max_fraction` of the tokens.

    The ladder stops at the first rung over `max_fraction`. It is empty when even the first
    unit is over it (the caller reports that problem).
    """
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must be in (0, 1], not {max_fraction}")
    ladder = []
    for rung in _rungs(units, tokenizer, solution):
        if rung.fraction > max_fraction:
            break
        ladder.append(rung)
    return ladder


def _rung(units: list[str], tokenizer, count: int, total: int) -> Rung:
    text = "".join(units[:count]).rstrip()
    tokens = count_tokens(tokenizer, text)
    return Rung(count, text, tokens, tokens / total)


def fixed_fraction_prefix(units: list[str], tokenizer, fraction: float, solution: str) -> Rung:
    """The longest whole-unit prefix holding at most `fraction` of the solution's tokens.

    It is never empty: when the first unit alone is over `fraction`, that unit is the prefix
    (compare `rung.fraction` with `fraction` to notice). With token units (`split_tokens`) this
    is simply the first `fraction` of the tokens. The search is a bisection, so a solution of
    thousands of token units costs a dozen tokenizations; it assumes that a longer prefix never
    has fewer tokens, which holds for the usual tokenizers (then it equals the ladder's top rung).
    """
    total = count_tokens(tokenizer, solution)
    if not units or total == 0:
        raise ValueError("the solution is empty: there is no prefix to cut")
    best = _rung(units, tokenizer, 1, total)
    low, high = 2, len(units)
    while low <= high:
        middle = (low + high) // 2
        rung = _rung(units, tokenizer, middle, total)
        if rung.fraction <= fraction:
            best, low = rung, middle + 1
        else:
            high = middle - 1
    return best
