"""The SFT examples: (record, response text) pairs, from oracle solutions or from rejection sampling.

`oracle`: the response is the problem's full oracle solution.
`guided-samples`: the model is sampled `n` times on each problem's guided prompt (the prefix the
prefixes file chose); a completion is kept when the reward scores its unguided-format response
correct on the unguided record. That response is the prefix followed by the completion, or the
completion alone when it already restates the prefix (the restating template asks for that), so
that the example reads as one solution written from the start. Sample j of a problem uses the
seed (seed, "sft-sample", problem id) + j, like every sampling stage.
"""

from __future__ import annotations

from pope_cli.shared.engines.base import Request, Sampling
from pope_cli.shared.errors import PopeError
from pope_cli.shared.seeding import derive_seed
from pope_cli.stages.sft.config import SftConfig


def oracle_examples(cfg: SftConfig) -> list[dict]:
    """One example per problem (of a problems or a prefixes file) with its oracle solution; a
    problem without one is an error."""
    from pope_cli.shared.data import PREFIX_FIELDS, iter_raw_records, read_prefix_records, read_problems

    first = next(iter_raw_records(cfg.data), (None, None))[1]
    if isinstance(first, dict) and all(k in first for k in PREFIX_FIELDS):
        records = read_prefix_records(cfg.data)
    else:
        records = [p.fields() for p in read_problems(cfg.data, cfg.fields)]
    missing = [r["id"] for r in records if not isinstance(r.get("solution"), str) or not r["solution"].strip()]
    if missing:
        raise PopeError(f"{cfg.data}: {len(missing)} problem(s) have no oracle solution in field "
                        f"'{cfg.fields.solution}' (first: {missing[0]!r}); --source oracle needs one per problem")
    return [example(r, r["solution"].strip(), None) for r in records]


def example(record: dict, response: str, sample: int | None) -> dict:
    """An SFT example of `record`: its problem asked unguided (with the unguided template the
    record names, if any), answered by `response`."""
    asked = {"unguided_template": record["unguided_template"]} if record.get("unguided_template") else {}
    return {"id": record["id"], "problem": record["problem"], "answer": record["answer"], **asked, "response": response,
            "sample": sample}


def joined_response(prefix: str, completion: str) -> str:
    """The guided completion as an unguided solution: prefix + completion, unless it restates the prefix."""
    prefix, completion = prefix.strip(), completion.strip()
    return completion if completion.startswith(prefix) else f"{prefix}\n{completion}"


def guided_sample_examples(cfg: SftConfig, engine, scorer, prompts) -> tuple[list[dict], dict]:
    """Correct guided samples as examples, and the counts (problems, samples, kept, problems kept)."""
    from pope_cli.shared.data import read_prefix_records

    records = [r for r in read_prefix_records(cfg.data) if r["prefix"] is not None]
    sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens)
    requests = [Request(prompts.guided(r), cfg.n, derive_seed(cfg.seed, "sft-sample", r["id"])) for r in records]
    completions = engine.generate(requests, sampling)
    candidates = [(r, j, joined_response(r["prefix"], c.text))
                  for r, group in zip(records, completions) for j, c in enumerate(group)]
    unguided = [{k: v for k, v in r.items() if k not in ("prefix", "prefix_fraction")} for r, _, _ in candidates]
    scores = scorer.score([text for _, _, text in candidates], unguided)
    examples = [example(r, text, j) for (r, j, text), score in zip(candidates, scores) if score is not None and score >= 1.0]
    counts = {"problems": len(records), "samples": len(candidates), "kept": len(examples),
              "problems_kept": len({e["id"] for e in examples})}
    return examples, counts
