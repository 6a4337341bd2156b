"""Readers, field mapping and the one-line errors for bad problem files."""

from __future__ import annotations

import json

import pytest

from pope_cli.shared.config import FieldMap
from pope_cli.shared.data import last_boxed, read_prefix_records, read_problems, stable_id
from pope_cli.shared.errors import PopeError

ROWS = [
    {"id": "a", "problem": "What is 1+1?", "answer": "2", "solution": "1+1=2, so \\boxed{2}", "source": "s"},
    {"id": "b", "problem": "What is 2+2?", "answer": "4"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_json_csv_parquet_and_saved_dataset_agree(tmp_path):
    import pandas as pd
    from datasets import Dataset

    jsonl = write_jsonl(tmp_path / "p.jsonl", ROWS)
    (tmp_path / "p.json").write_text(json.dumps(ROWS))
    pd.DataFrame(ROWS).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "p.parquet")
    Dataset.from_list([{**r, "solution": r.get("solution", ""), "source": r.get("source", "")} for r in ROWS]).save_to_disk(str(tmp_path / "saved"))
    for spec in [jsonl, tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "p.parquet", tmp_path / "saved"]:
        problems = read_problems(str(spec))
        assert [(p.id, p.problem, p.answer) for p in problems] == [("a", "What is 1+1?", "2"), ("b", "What is 2+2?", "4")], spec
        assert problems[0].solution == "1+1=2, so \\boxed{2}"


def test_field_mapping_dotted_paths_and_chat_prompt(tmp_path):
    rows = [{"uid": 7, "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Solve x."}],
             "reward_model": {"ground_truth": "42", "style": "rule"}}]
    path = write_jsonl(tmp_path / "dapo.jsonl", rows)
    problem = read_problems(str(path), FieldMap(problem="prompt", answer="reward_model.ground_truth", id="uid"))[0]
    assert (problem.id, problem.problem, problem.answer) == ("7", "Solve x.", "42")
    assert problem.record["reward_model"]["style"] == "rule"


def test_answer_from_last_balanced_box_and_hash_id(tmp_path):
    solution = "First \\boxed{1}. Then \\boxed{\\frac{1}{2}} done."
    path = write_jsonl(tmp_path / "math.jsonl", [{"problem": "Half?", "solution": solution}])
    problem = read_problems(str(path))[0]
    assert problem.answer == "\\frac{1}{2}"
    assert problem.id == stable_id("Half?") and len(problem.id) == 16
    assert read_problems(str(path))[0].id == problem.id


def test_last_boxed_edge_cases():
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("\\boxed{ok} then \\boxed{unbalanced") == "ok"


@pytest.mark.parametrize("content, fragment", [
    ('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": "q", "answer": 2\n', "p.jsonl:2: malformed JSON"),
    ('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "a", "problem": "q", "answer": "2"}\n', "p.jsonl:2: field 'id': duplicate id 'a'"),
    ('{"id": "a", "problem": "  ", "answer": "1"}\n', "p.jsonl:1: field 'problem' is empty"),
    ('{"id": "a", "answer": "1"}\n', "p.jsonl:1: missing field 'problem'"),
    ('{"id": "a", "problem": "p"}\n', "p.jsonl:1: missing field 'answer'"),
    ('{"id": "a", "problem": ["x", 1], "answer": "1"}\n', "p.jsonl:1: field 'problem' is a list"),
    ('[1, 2]\n', "p.jsonl:1: expected a JSON object"),
    ('', "no records"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, content, fragment):
    path = tmp_path / "p.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PopeError) as info:
        read_problems(str(path))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_non_utf8_missing_path_directory_and_unknown_type(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_bytes(b'{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": "\xff", "answer": "1"}\n')
    with pytest.raises(PopeError, match=r"p.jsonl:2: not valid UTF-8"):
        read_problems(str(bad))
    with pytest.raises(PopeError, match="no such file"):
        read_problems(str(tmp_path / "missing.jsonl"))
    with pytest.raises(PopeError, match="is a directory"):
        read_problems(str(tmp_path))
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(PopeError, match="unknown file type"):
        read_problems(str(tmp_path / "p.txt"))


def test_prefix_files_and_problem_files_are_not_confused(tmp_path):
    problems = write_jsonl(tmp_path / "problems.jsonl", ROWS)
    prefixes = write_jsonl(tmp_path / "prefixes.jsonl", [{**ROWS[0], "prefix": "1+1", "prefix_fraction": 0.2}])
    with pytest.raises(PopeError, match="this is a prefixes file"):
        read_problems(str(prefixes))
    with pytest.raises(PopeError, match="not a prefixes file"):
        read_prefix_records(str(problems))
    assert read_prefix_records(str(prefixes))[0]["prefix"] == "1+1"


def test_a_csv_row_with_more_or_fewer_fields_than_the_header_stops_the_read(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,problem,answer\np1,What is 1+1?,2\np2,Let x = 1, y = 2. What is x+y?,3\n")
    with pytest.raises(PopeError, match=r"^.*p.csv:3: malformed CSV row: 4 fields where the header has 3 \(a comma "):
        read_problems(str(path))
    path.write_text('id,problem,answer\np1,"Let x = 1, y = 2. What is x+y?",3\np2,What is 2+2?\n')
    with pytest.raises(PopeError, match=r"p.csv:3: malformed CSV row: 2 fields where the header has 3$"):
        read_problems(str(path))


@pytest.mark.parametrize("field", ["answer", "solution", "id"])
def test_a_named_field_that_no_record_has_is_an_error(tmp_path, field):
    # Every record has a boxed solution: a misspelt --answer-field would fall back to it unnoticed.
    path = write_jsonl(tmp_path / "p.jsonl", [{**row, "solution": f"so \\boxed{{{row['answer']}}}"} for row in ROWS])
    with pytest.raises(PopeError, match=rf"^--{field}-field: no record of .*p.jsonl has a field 'gold'$") as info:
        read_problems(str(path), FieldMap(**{field: "gold"}))
    assert info.value.exit_code == 2
    with_gold = write_jsonl(tmp_path / "q.jsonl", [{**ROWS[0], "gold": "2"}, ROWS[1]])
    assert len(read_problems(str(with_gold), FieldMap(solution="gold"))) == 2  # one record having it is enough
