"""Custom `--reward module:function` checkers for tests, as a user would write them."""


def contains_answer(completion: str, record: dict) -> float:
    """1.0 when the gold answer appears anywhere in the completion: easy for a random tiny model
    on one-character answers, impossible on long ones."""
    return float(record["answer"] in completion)
