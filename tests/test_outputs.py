"""Atomic and resumable outputs: torn lines, config guards, no clobbering."""

from __future__ import annotations

import json

import pytest

from pope_cli.shared.errors import PopeError
from pope_cli.shared.outputs import JsonlAppender, config_diff, flatten, load_jsonl_repairing, prepare_output


def test_torn_last_line_is_cut_and_appending_continues(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "par')
    assert load_jsonl_repairing(path) == [{"id": 1}, {"id": 2}]
    assert path.read_bytes() == b'{"id": 1}\n{"id": 2}\n'
    with JsonlAppender(path) as out:
        out.write([{"id": 3}])
    assert [r["id"] for r in load_jsonl_repairing(path)] == [1, 2, 3]


def test_corrupt_middle_line_is_an_error_not_a_repair(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": 1}\nGARBAGE\n{"id": 3}\n')
    with pytest.raises(PopeError, match="x.jsonl:2: corrupt line"):
        load_jsonl_repairing(path)
    assert path.read_bytes() == b'{"id": 1}\nGARBAGE\n{"id": 3}\n'


def test_prepare_output_resumes_refuses_and_overwrites(tmp_path):
    out = tmp_path / "run"
    config = {"k": 8, "model": {"model": "m", "batch_size": 4}}
    assert prepare_output(out / "config.json", config, [out / "stats.jsonl"], overwrite=False) is False
    (out / "stats.jsonl").write_text('{"id": "a"}\n')
    assert prepare_output(out / "config.json", config, [out / "stats.jsonl"], overwrite=False) is True
    faster = {"k": 8, "model": {"model": "m", "batch_size": 64}}
    assert prepare_output(out / "config.json", faster, [out / "stats.jsonl"], False, ["model.batch_size"]) is True
    changed = {"k": 16, "model": {"model": "other", "batch_size": 4}}
    with pytest.raises(PopeError, match=r"different options \(--k, --model\)") as info:
        prepare_output(out / "config.json", changed, [out / "stats.jsonl"], overwrite=False)
    assert info.value.exit_code == 2
    assert prepare_output(out / "config.json", changed, [out / "stats.jsonl"], overwrite=True) is False
    assert not (out / "stats.jsonl").exists()
    assert json.loads((out / "config.json").read_text())["k"] == 16


def test_existing_foreign_output_is_never_clobbered(tmp_path):
    (tmp_path / "stats.jsonl").write_text("mine\n")
    with pytest.raises(PopeError, match="already exists"):
        prepare_output(tmp_path / "config.json", {"k": 1}, [tmp_path / "stats.jsonl"], overwrite=False)
    assert (tmp_path / "stats.jsonl").read_text() == "mine\n"


def test_flatten_and_diff():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert config_diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}, ignored=["c"]) == ["b"]
