"""Tests for pope_cli.shared.reward.checker: the math answer check, its hostile-input guarantees, the worker pool.

Everything is offline. Pools use a 2 s deadline so hostile inputs cost at most ~2 s each.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from pope_cli.shared.errors import PopeError
from pope_cli.shared.reward.checker import Scorer, is_correct, validate_reward_spec
from pope_cli.shared.reward.worker import TAIL_CHARS, answer_tail

TIMEOUT = 2.0
SLACK = 1.5  # kill + replace of a worker, and a loaded 2-core machine

# (completion, gold, expected is_correct)
CASES = [
    # fractions and decimals
    (r"The answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12", True),
    (r"\boxed{\tfrac{3}{4}}", "0.75", True),
    (r"\boxed{1/2}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", True),
    (r"\boxed{.5}", "0.5", True),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", False),
    (r"\boxed{0.33}", r"\frac{1}{3}", False),
    # integers, negatives, big numbers
    (r"\boxed{3}", "3", True),
    (r"\boxed{ 3 }", "3", True),
    (r"\boxed{4}", "3", False),
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    (r"\boxed{1{,}000}", "1000", True),
    (r"\boxed{1,000,000}", "1000000", True),
    (r"\boxed{10^{3}}", "1000", True),
    (r"\boxed{2.50}", "2.5", True),
    # roots and pi
    (r"\boxed{\sqrt{2}}", r"\sqrt{2}", True),
    (r"\boxed{\sqrt3}", r"\sqrt{3}", True),
    (r"\boxed{\frac{\sqrt{8}}{2}}", r"\sqrt{2}", True),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}", True),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", False),
    (r"\boxed{2\pi}", r"2\pi", True),
    (r"\boxed{\frac{\pi}{2}}", r"\pi/2", True),
    (r"\boxed{\pi}", "3.14", False),
    (r"\boxed{3.14}", r"\pi", False),
    # percent
    (r"\boxed{50\%}", r"50\%", True),
    (r"\boxed{50\%}", "0.5", True),
    (r"\boxed{25\%}", "0.5", False),
    # sets and intervals
    (r"\boxed{\{1,2\}}", r"\{1,2\}", True),
    (r"\boxed{\{2,1\}}", r"\{1,2\}", True),
    (r"\boxed{1, 2}", r"\{1,2\}", True),
    (r"\boxed{\{1,3\}}", r"\{1,2\}", False),
    (r"\boxed{(1,2]}", "(1,2]", True),
    (r"\boxed{\left(1, 2\right]}", "(1,2]", True),
    (r"\boxed{(1,2)}", "(1,2]", False),
    (r"\boxed{[1,2)}", "(1,2]", False),
    (r"\boxed{(-\infty, 3)}", r"(-\infty,3)", True),
    (r"\boxed{x \in (1, 2]}", "(1,2]", True),
    # units and text
    (r"\boxed{5\text{ cm}}", r"5\text{ cm}", True),
    (r"\boxed{5}", r"5\text{ cm}", True),
    (r"\boxed{5 \text{ cm}}", "5", True),
    (r"\boxed{6\text{ cm}}", r"5\text{ cm}", False),
    (r"\boxed{90^\circ}", "90", True),
    (r"\boxed{\text{Monday}}", r"\text{Monday}", True),
    (r"\boxed{\text{Tuesday}}", r"\text{Monday}", False),
    (r"\boxed{\textbf{(B)}}", "B", True),
    (r"\boxed{5}", r"\$5", True),
    # equations and expressions
    (r"\boxed{x = 3}", "3", True),
    (r"\boxed{y = 2x + 1}", "2x+1", True),
    (r"\boxed{x^2 + 2x + 1}", "(x+1)^2", True),
    (r"\boxed{x^2 + 1}", "(x+1)^2", False),
    # several boxes: the last one counts, but boxes close to it (under 10 characters apart, or under
    # 70 with and/or/comma/semicolon between) are read with it as one list (math-verify's rule), so
    # a hedge between candidates, or a quick self-correction, scores wrong
    (r"First \boxed{2}. Hmm, let me double check this by substituting back into the original equation: it fails. So \boxed{3}.", "3", True),
    (r"First \boxed{3}. Hmm, let me double check this by substituting back into the original equation: it fails. So \boxed{2}.", "3", False),
    (r"So \boxed{2}. Wait, that was wrong; redoing it gives \boxed{3}.", "3", False),
    (r"The solutions are \boxed{1}, \boxed{2}", r"\{1,2\}", True),
    (r"It is \boxed{2} or \boxed{3}", "3", False),
    # no box: only anchored LaTeX ("final answer is $..$", "Answer: $..$") counts; plain-text
    # answers and bare mid-derivation math give None (no answer); an unclosed box gives None too
    (r"The final answer is $\frac{1}{2}$", "0.5", True),
    (r"Answer: $7$", "7", True),
    (r"The answer is 7", "7", None),
    (r"We get $x = 7$ and then stop.", "7", None),
    ("", "7", None),
    (r"\boxed{}", "7", None),
    (r"\boxed{7", "7", None),
    (r"\boxed{{{7}", "7", False),
    # the gold may come boxed already
    (r"\boxed{3}", r"\boxed{3}", True),
]


@pytest.mark.parametrize("completion, gold, expected", CASES)
def test_is_correct(completion, gold, expected):
    assert is_correct(completion, gold) is expected


def test_is_correct_off_the_main_thread():
    """math-verify's alarms raise outside the main thread; is_correct must drop them there, not fail."""
    results = []
    thread = threading.Thread(target=lambda: results.append(is_correct(r"\boxed{\frac12}", "0.5")))
    thread.start()
    thread.join()
    assert results == [True]


# -- the tail cap ------------------------------------------------------------------------------

def test_tail_keeps_short_text_whole():
    text = r"so \boxed{3}" * 10
    assert answer_tail(text) == text


def test_tail_keeps_a_box_the_cut_would_split():
    box = r"\boxed{12345}"
    text = "x" * 10_000 + box + "y" * (TAIL_CHARS - 5)
    assert answer_tail(text).startswith(box)
    assert is_correct(text, "12345") is True


def test_tail_ignores_a_box_far_before_the_end():
    text = r"\boxed{3}" + " and then it kept going." * TAIL_CHARS
    assert r"\boxed" not in answer_tail(text)
    assert is_correct(text, "3") is None


def test_long_completion_is_cut_and_fast():
    text = "Let $x = 2$, so $x^2 = 4$. " * 8000 + r"Therefore \boxed{4}."  # ~200 kB
    start = time.monotonic()
    assert is_correct(text, "4") is True
    assert time.monotonic() - start < 2.0
    assert len(answer_tail(text)) <= 2 * TAIL_CHARS


# -- model output is parsed, never run ---------------------------------------------------------

def payloads(marker):
    code = f"__import__('os').system('touch {marker}')"
    return [
        rf"\boxed{{{code}}}",
        rf"The final answer is ${code}$",
        f"The final answer is {code}",
        f"Answer: {code}",
        rf"\boxed{{\text{{{code}}}}}",
        rf"\boxed{{\operatorname{{eval}}({code})}}",
        rf"\boxed{{{code.replace('(', '{').replace(')', '}')}}}",
    ]


def test_only_number_literals_reach_parse_expr(monkeypatch, tmp_path):
    """sympy's parse_expr (behind sympify of a string, and math-verify's plain-expression
    extractor) evals its input. The only text of ours it may see is a number token of the LaTeX
    grammar, which latex2sympy turns into sympy.Number(text)."""
    import latex2sympy2_extended.latex2sympy2
    import math_verify.parser
    import sympy.parsing.sympy_parser

    completions = [c for c, _, _ in CASES] + payloads(tmp_path / "pwned") + [r"\boxed{1e5}", r"\boxed{2.5\%}"]
    for completion in completions:  # sympy builds its unit tables with parse_expr on first use
        is_correct(completion, "0")
    seen = []
    real = sympy.parsing.sympy_parser.parse_expr
    for module in (sympy.parsing.sympy_parser, math_verify.parser, latex2sympy2_extended.latex2sympy2):
        monkeypatch.setattr(module, "parse_expr", lambda text, *a, **k: seen.append(text) or real(text, *a, **k))
    for completion in completions:
        is_correct(completion, "0")
    assert seen
    assert all(re.fullmatch(r"[0-9.]+(?:[eE][+-]?[0-9]+)?", text) for text in seen), seen


def test_payloads_are_not_executed_in_process(tmp_path):
    marker = tmp_path / "pwned"
    for completion in payloads(marker):
        assert is_correct(completion, "0") in (False, None)
    assert not marker.exists()


def test_payloads_are_not_executed_in_workers(tmp_path, math_scorer):
    marker = tmp_path / "pwned"
    completions = payloads(marker)
    assert math_scorer.score(completions, [{"answer": "0"}] * len(completions)) == [0.0, 0.0, None, None, 0.0, 0.0, 0.0]
    assert not marker.exists()


# -- the worker pool ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def math_scorer():
    with Scorer("math", workers=2, timeout=TIMEOUT) as scorer:
        yield scorer


def as_score(expected):
    return None if expected is None else float(expected)


def test_batch_keeps_order(math_scorer):
    completions = [c for c, _, _ in CASES]
    records = [{"id": str(i), "problem": "?", "answer": g} for i, (_, g, _) in enumerate(CASES)]
    assert math_scorer.score(completions, records) == [as_score(e) for _, _, e in CASES]


def test_numeric_gold_in_a_record(math_scorer):
    assert math_scorer.score([r"\boxed{3}", r"\boxed{4}"], [{"answer": 3}, {"answer": 3}]) == [1.0, 0.0]


HOSTILE = {
    "power tower": r"\boxed{9^{9^{9^{9^9}}}}",
    "huge factorial": r"\boxed{(10^{10})!}",
    "200 kB of open braces": "{" * 200_000,
    "200 kB ending in a nested box": "Let x = 1. " * 18_000 + r"\boxed{" + "{" * 2000 + "3" + "}" * 2000 + "}",
    "unbalanced braces": r"\boxed{" + "{" * 100_000 + "3",
    "deeply nested braces": r"\boxed{" + "{" * 5000 + "3" + "}" * 5000 + "}",
    "nested fractions": r"\boxed{" + r"\frac{1}{" * 2000 + "2" + "}" * 2001,
    "display math flood": "\\[" * 100_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_output_is_wrong_within_the_deadline(math_scorer, name):
    start = time.monotonic()
    assert math_scorer.score([HOSTILE[name]], [{"answer": "4"}]) in ([0.0], [None])
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert math_scorer.score([r"\boxed{4}"], [{"answer": "4"}]) == [1.0]


def test_mixed_batch_of_normal_and_hostile(math_scorer):
    normal = [(r"\boxed{\frac{1}{2}}", "0.5", 1.0), (r"\boxed{7}", "8", 0.0), ("no answer", "1", None)]
    completions, records = [], []
    for i, hostile in enumerate(HOSTILE.values()):
        completion, gold, _ = normal[i % len(normal)]
        completions += [completion, hostile]
        records += [{"answer": gold}, {"answer": "4"}]
    scores = math_scorer.score(completions, records)
    assert scores[0::2] == [normal[i % len(normal)][2] for i in range(len(HOSTILE))]
    assert all(score in (0.0, None) for score in scores[1::2])
    assert math_scorer.score([r"\boxed{2}"] * 4, [{"answer": "2"}] * 4) == [1.0] * 4


def test_a_worker_that_died_while_idle_is_replaced(math_scorer):
    victim = math_scorer._workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.conn.poll(5)  # end of file: it is gone
    assert math_scorer.score([r"\boxed{1}"] * 3, [{"answer": "1"}] * 3) == [1.0] * 3


def test_in_process_scorer():
    scorer = Scorer("math", workers=0)
    assert scorer.score([r"\boxed{2}", r"\boxed{3}", "none"], [{"answer": "2"}] * 3) == [1.0, 0.0, None]
    scorer.close()


def test_length_mismatch(math_scorer):
    with pytest.raises(ValueError):
        math_scorer.score(["a"], [])


# -- custom rewards ----------------------------------------------------------------------------

NOT_A_FUNCTION = 3


def quirky_reward(completion: str, record: dict):
    """A user reward whose behaviour the completion picks."""
    if completion == "sleep":
        time.sleep(60)
    if completion == "crash":
        os._exit(3)
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "none":
        return None
    if completion == "half":
        return 0.5
    if completion == "text":
        return "not a number"
    return completion == str(record["answer"])


def test_custom_reward_in_workers():
    ok = {"answer": "3"}
    completions = ["3", "4", "half", "none", "raise", "sleep", "3", "crash", "text", "3"]
    with Scorer(f"{__name__}:quirky_reward", workers=2, timeout=TIMEOUT) as scorer:
        scores = scorer.score(completions, [ok] * len(completions))
        assert scores == [1.0, 0.0, 0.5, None, None, 0.0, 1.0, 0.0, None, 1.0]
        assert scorer.deadline_misses == 2  # the sleep and the crash
        assert scorer.errors == 2  # the exception and the non-number
        assert scorer.score(["3", "4"], [ok, ok]) == [1.0, 0.0]


def test_custom_reward_in_process():
    scorer = Scorer(f"{__name__}:quirky_reward", workers=0)
    assert scorer.score(["3", "half", "raise"], [{"answer": "3"}] * 3) == [1.0, 0.5, None]
    assert scorer.errors == 1


def test_validate_reward_spec_accepts():
    validate_reward_spec("math")
    validate_reward_spec(f"{__name__}:quirky_reward")


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "module:function"),
    ("mod:", "module:function"),
    ("pope_no_such_module_xyz:fn", "cannot import module"),
    (f"{__name__}:missing", "no function 'missing'"),
    (f"{__name__}:NOT_A_FUNCTION", "no function 'NOT_A_FUNCTION'"),
])
def test_validate_reward_spec_rejects(spec, message):
    with pytest.raises(PopeError) as error:
        validate_reward_spec(spec)
    assert error.value.exit_code == 2
    assert str(error.value).startswith("--reward: ")
    assert message in str(error.value)


def test_scorer_rejects_a_bad_spec():
    with pytest.raises(PopeError):
        Scorer("pope_no_such_module_xyz:fn")


def test_a_reward_worker_process_that_cannot_start_says_why_in_one_line():
    from pope_cli.shared.reward.checker import _ForkServer

    # The parent checks a spec before starting workers; here the server meets a bad one itself.
    with pytest.raises(PopeError, match=r"^--reward: the reward worker process could not start: PopeError: --reward: "
                                        r"cannot import module 'no_such_module_here'") as error:
        _ForkServer("no_such_module_here:score", 1)
    assert "\n" not in str(error.value)
