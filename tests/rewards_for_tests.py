"""Custom `--reward module:function` checkers for tests, as a user would write them."""


def shares_a_character(completion: str, record: dict) -> float:
    """1.0 when the completion contains any character of the gold answer.

    With a random tiny model this makes a long answer of common characters near-certain and an
    answer of characters outside the tokenizer's vocabulary impossible.
    """
    return float(any(ch in completion for ch in record["answer"]))


def ends_with_boxed_answer(completion: str, record: dict) -> float:
    """1.0 when the completion ends with \\boxed{gold answer}."""
    return float(completion.rstrip().endswith("\\boxed{" + record["answer"] + "}"))
