"""Templates, prompt encoding, solution splitting and the prefix ladder."""

from __future__ import annotations

import pytest

from pope_cli.shared.errors import PopeError
from pope_cli.shared.prompts import (
    DEFAULT_UNGUIDED_TEMPLATE,
    Rung,
    Template,
    count_tokens,
    encode_prompt,
    fixed_fraction_prefix,
    guided_text,
    load_template,
    load_unguided_template,
    placeholders,
    prefix_ladder,
    protected_spans,
    render_prompt,
    split_solution,
    split_tokens,
    unguided_text,
)

EXPECTED_POPE = r"""You are given a problem and a partial solution.

Your task is to carefully study the partial response, identify what reasoning or steps are already provided, and then complete the solution from where it left off. Ensure your continuation is logically consistent and leads to a complete and correct final answer.

**Important**: Show your reasoning step-by-step, and clearly present the final answer using LaTeX-style `\boxed{}` notation.

Problem:
What is $1+1$?

Partial Response:
We add one and one.

Continue solving the problem, starting from where the partial response ends. Make sure your final answer is written as: \boxed{your_answer_here}"""


# --- templates -------------------------------------------------------------------------------

def test_pope_template_renders_verbatim():
    template = load_template("pope")
    assert template == Template("pope", template.text)
    assert guided_text(template, "What is $1+1$?", "We add one and one.") == EXPECTED_POPE


def test_no_restate_differs_and_holds_problem_and_prefix():
    text = guided_text(load_template("no-restate"), "PROBLEM-X", "PREFIX-Y")
    assert "PROBLEM-X" in text and "PREFIX-Y" in text
    assert "restate" in text.lower() and "recompute" in text.lower()
    assert text != guided_text(load_template("pope"), "PROBLEM-X", "PREFIX-Y")


def test_unguided_default_and_file(tmp_path):
    assert unguided_text(load_unguided_template(None), "2+2?") == (
        "2+2?\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert load_unguided_template(None).text == DEFAULT_UNGUIDED_TEMPLATE
    path = tmp_path / "plain.txt"
    path.write_text("Solve: {problem}\n")
    template = load_unguided_template(str(path))
    assert template.name == str(path)
    assert unguided_text(template, "2+2?") == "Solve: 2+2?"  # the file's final newline is dropped


def test_user_template_file_keeps_latex_literal(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text(r"P: {problem} | S: {prefix} | \boxed{answer} \frac{a}{b} x^{n} \sqrt[3]{k} {} {1}")
    template = load_template(str(path))
    assert template.name == str(path)
    assert guided_text(template, "p", "s") == r"P: p | S: s | \boxed{answer} \frac{a}{b} x^{n} \sqrt[3]{k} {} {1}"


def test_placeholder_rule():
    assert placeholders(r"{problem} \boxed{your_answer_here} \text{prefix} a_{i} {prefix}") == ["problem", "prefix"]
    assert placeholders(r"Problem:{problem}, x{prefix} {{problem}}") == ["problem", "prefix", "problem"]
    assert placeholders(r"\section*{title} {x y} {1st}") == []


def test_fill_is_one_pass():
    text = guided_text(load_template("pope"), "mentions {prefix} literally", "uses {problem}")
    assert "mentions {prefix} literally" in text and "uses {problem}" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{problem} {prefix} {answer}", "unknown placeholder {answer}"),
        ("only {problem}", "missing placeholder {prefix}"),
        ("only {prefix}", "missing placeholder {problem}"),
    ],
)
def test_bad_guided_template(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_text(content)
    with pytest.raises(PopeError) as error:
        load_template(str(path))
    assert error.value.exit_code == 2
    assert str(error.value).startswith(f"--template: {path}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unguided_template_rejects_prefix(tmp_path):
    path = tmp_path / "u.txt"
    path.write_text("{problem} with {prefix}")
    with pytest.raises(PopeError, match=r"^--unguided-template: .*u\.txt: unknown placeholder \{prefix\}") as error:
        load_unguided_template(str(path))
    assert error.value.exit_code == 2


@pytest.mark.parametrize("loader", [load_template, load_unguided_template])
def test_missing_template_file(tmp_path, loader):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(PopeError, match="nope.txt") as error:
        loader(missing)
    assert error.value.exit_code == 2


def test_unknown_builtin_name_lists_builtins():
    with pytest.raises(PopeError, match=r"^--template: popee: .*pope, no-restate"):
        load_template("popee")


def test_non_utf8_template(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("{problem} {prefix} caf\xe9".encode("latin-1"))
    with pytest.raises(PopeError, match="not UTF-8"):
        load_template(str(path))


# --- encoding --------------------------------------------------------------------------------

def test_encode_prompt_with_chat_template(char_tokenizer):
    ids = encode_prompt(char_tokenizer, "hi", system_prompt="be brief")
    assert char_tokenizer.decode(ids) == "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"
    assert render_prompt(char_tokenizer, "hi") == "<|user|>hi<|end|><|assistant|>"


def test_encode_prompt_raw(char_tokenizer):
    ids = encode_prompt(char_tokenizer, "hi", chat_template=False)
    assert ids == char_tokenizer("hi", add_special_tokens=False).input_ids
    ids = encode_prompt(char_tokenizer, "hi", system_prompt="sys", chat_template=False)
    assert ids == char_tokenizer("sys\n\nhi").input_ids


def test_encode_prompt_without_a_chat_template(char_tokenizer):
    plain = char_tokenizer.__class__(tokenizer_object=char_tokenizer.backend_tokenizer)
    assert not plain.chat_template
    assert encode_prompt(plain, "hi") == char_tokenizer("hi", add_special_tokens=False).input_ids


# --- splitting -------------------------------------------------------------------------------

TRICKY = [
    "We have $a. b$ here. Then more.\n\nNext paragraph? Yes! Done.",
    "Consider \\[x.\\ y\\] and so. Final: \\boxed{1. 2}. End.",
    "Nested \\boxed{\\frac{1. 2}{3. {4. 5}}} is it. Next one.",
    "Display $$a.\n b. c$$ end. Also \\(p. q\\) fine! Last",
    "1. First step. Second sentence.\n2. Another.\n\n\n  Para three.  \n",
    "Cost is \\$5. Then $x = 1. 5$ and more.\n",
    "\\begin{align*}\na. b \\\\\nc. d\n\\end{align*}\nAfter. e.g. this one. Done",
    "   leading space. x",
    "Stray $ dollar. Here.\n\nAnd $ another. here",
    "Box \\boxed{\\text{a. b}} then \\boxed{x\\{. \\}}. Next.",
]

# Fragments that must end up whole inside a single unit.
MUST_STAY_WHOLE = [
    "$a. b$", "\\[x.\\ y\\]", "\\boxed{1. 2}", "\\boxed{\\frac{1. 2}{3. {4. 5}}}", "$$a.\n b. c$$",
    "\\(p. q\\)", "$x = 1. 5$", "\\begin{align*}\na. b \\\\\nc. d\n\\end{align*}",
    "\\boxed{\\text{a. b}}", "\\boxed{x\\{. \\}}",
]


@pytest.mark.parametrize("solution", TRICKY)
def test_split_joins_back_and_never_cuts_math(solution):
    units = split_solution(solution)
    assert "".join(units) == solution
    assert all(unit.strip() for unit in units)
    cuts, position = [], 0
    for unit in units[:-1]:
        position += len(unit)
        cuts.append(position)
    for fragment in MUST_STAY_WHOLE:
        start = solution.find(fragment)
        if start >= 0:
            assert not any(start < cut < start + len(fragment) for cut in cuts), fragment
    for start, end in protected_spans(solution):
        assert not any(start < cut < end for cut in cuts)


def test_split_boundaries():
    assert split_solution("A b. C d? E!  F\nG\n\nH") == ["A b. ", "C d? ", "E!  ", "F\n", "G\n\n", "H"]
    assert split_solution("1. One.\n2. Two. Three.") == ["1. One.\n", "2. Two. ", "Three."]
    assert split_solution("Stray $ dollar. Here.\n\nX") == ["Stray $ dollar. ", "Here.\n\n", "X"]
    assert split_solution("x = 3.14 and e.g. this") == ["x = 3.14 and e.g. this"]
    assert split_solution("") == []


@pytest.mark.parametrize("solution", TRICKY)
def test_split_tokens_joins_back(solution, char_tokenizer):
    units = split_tokens(solution, char_tokenizer)
    assert "".join(units) == solution
    # One unit per token (the fixture tokenizes a run of newlines as one <unk>).
    assert len(units) == count_tokens(char_tokenizer, solution)


def test_split_tokens_needs_offsets():
    class Slow:
        is_fast = False

    with pytest.raises(PopeError, match="^--split tokens: ") as error:
        split_tokens("x", Slow())
    assert error.value.exit_code == 2


# --- the prefix ladder -----------------------------------------------------------------------

def test_ladder_hand_computed(char_tokenizer):
    solution = "Ab. Cd. Ef.\nGhij klmn opqr."  # 27 characters = 27 tokens
    units = split_solution(solution)
    assert units == ["Ab. ", "Cd. ", "Ef.\n", "Ghij klmn opqr."]
    ladder = prefix_ladder(units, char_tokenizer, 0.5, solution)
    # Trailing whitespace is dropped: "Ab." = 3, "Ab. Cd." = 7, "Ab. Cd. Ef." = 11 tokens.
    assert ladder == [
        Rung(1, "Ab.", 3, 3 / 27),
        Rung(2, "Ab. Cd.", 7, 7 / 27),
        Rung(3, "Ab. Cd. Ef.", 11, 11 / 27),
    ]
    assert prefix_ladder(units, char_tokenizer, 0.3, solution) == ladder[:2]
    assert prefix_ladder(units, char_tokenizer, 0.1, solution) == []
    assert [r.units for r in prefix_ladder(units, char_tokenizer, 1.0, solution)] == [1, 2, 3, 4]


def test_ladder_monotone_and_capped(char_tokenizer):
    solution = " ".join(f"Step {i}: we find $x_{i} = {i}. 5$." for i in range(40)) + " \\boxed{7}"
    units = split_solution(solution)
    total = count_tokens(char_tokenizer, solution)
    ladder = prefix_ladder(units, char_tokenizer, 0.25, solution)
    assert len(ladder) > 3
    assert [r.units for r in ladder] == list(range(1, len(ladder) + 1))
    assert all(a.tokens < b.tokens for a, b in zip(ladder, ladder[1:]))
    assert all(r.fraction <= 0.25 and r.fraction == r.tokens / total for r in ladder)
    assert all(r.tokens == count_tokens(char_tokenizer, r.text) for r in ladder)
    over = "".join(units[:len(ladder) + 1]).rstrip()
    assert count_tokens(char_tokenizer, over) / total > 0.25
    assert fixed_fraction_prefix(units, char_tokenizer, 0.25, solution) == ladder[-1]


def test_fixed_fraction_prefix(char_tokenizer):
    solution = "Ab. Cd. Ef.\nGhij klmn opqr."
    units = split_solution(solution)
    assert fixed_fraction_prefix(units, char_tokenizer, 0.3, solution) == Rung(2, "Ab. Cd.", 7, 7 / 27)
    # The first unit alone is over 5%: it is still the prefix, and its fraction says so.
    assert fixed_fraction_prefix(units, char_tokenizer, 0.05, solution) == Rung(1, "Ab.", 3, 3 / 27)
    tokens = split_tokens(solution, char_tokenizer)
    assert fixed_fraction_prefix(tokens, char_tokenizer, 0.5, solution).text == solution[:13]
    with pytest.raises(ValueError):
        fixed_fraction_prefix([], char_tokenizer, 0.5, "")


def test_split_tokens_multibyte_characters():
    """A byte-level BPE gives several tokens per emoji: they share one unit, and join is exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(["the answer is 42. so the sum is x."] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    solution = "the café 🎉 answer  is\n\n 42."
    units = split_tokens(solution, tokenizer)
    assert "".join(units) == solution
    assert "🎉" in units and "é" in units
    assert len(units) < count_tokens(tokenizer, solution)
