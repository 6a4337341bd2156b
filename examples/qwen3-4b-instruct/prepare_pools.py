"""The paper's three source pools as one problems.jsonl for `pope filter-hard` (needs the network).

- DAPO-Math-17k: the text is the prompt's user turn minus DAPO's "Answer:" format instructions,
  which would contradict pope's \\boxed{} instruction; the answer is reward_model.ground_truth.
  The published split repeats each problem many times, so problems are deduplicated.
- Omni-MATH: the `test` split (its only one), difficulty 5 to 8; it is the only pool here with
  oracle solutions, which `pope make-prefixes` needs.
- AceReason-Math: problem and answer.
A problem found in several pools is kept once, with a solution when one pool has it.

    python prepare_pools.py --out problems.jsonl
"""

from __future__ import annotations

import argparse
import json
import re

DAPO_PREAMBLE = ("Solve the following math problem step by step. The last line of your response should be of the "
                 "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.")
DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:".'


def dapo():
    from datasets import load_dataset

    for row in load_dataset("BytedTsinghua-SIA/DAPO-Math-17k", split="train"):
        text = row["prompt"][-1]["content"].strip().removeprefix(DAPO_PREAMBLE).removesuffix(DAPO_REMINDER).strip()
        yield {"problem": text, "answer": str(row["reward_model"]["ground_truth"]), "source": "dapo-math-17k"}


def omni_math(low: float, high: float):
    from datasets import load_dataset

    for row in load_dataset("KbsdJames/Omni-MATH", split="test"):
        if row["difficulty"] is not None and low <= float(row["difficulty"]) <= high:
            yield {"problem": row["problem"], "answer": str(row["answer"]), "solution": row["solution"],
                   "difficulty": row["difficulty"], "source": "omni-math"}


def acereason():
    from datasets import load_dataset

    for row in load_dataset("nvidia/AceReason-Math", split="train"):
        yield {"problem": row["problem"], "answer": str(row["answer"]), "source": "acereason-math"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="problems.jsonl", help="The problems file to write.")
    parser.add_argument("--omni-min", type=float, default=5.0, help="Lowest Omni-MATH difficulty kept.")
    parser.add_argument("--omni-max", type=float, default=8.0, help="Highest Omni-MATH difficulty kept.")
    args = parser.parse_args()
    kept: dict[str, dict] = {}
    # Omni-MATH first: where pools overlap, the copy with an oracle solution wins.
    for row in [*omni_math(args.omni_min, args.omni_max), *dapo(), *acereason()]:
        if row["problem"] and row["answer"]:
            kept.setdefault(re.sub(r"\s+", " ", row["problem"]).strip(), row)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in kept.values())
    sources = {}
    for row in kept.values():
        sources[row["source"]] = sources.get(row["source"], 0) + 1
    print(f"{args.out}: {len(kept)} problems {sources}")


if __name__ == "__main__":
    main()
