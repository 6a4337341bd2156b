"""Atomic and resumable outputs: torn lines, config guards, no clobbering."""

from __future__ import annotations

import json

import pytest

from pope_cli.shared.errors import PopeError
from pope_cli.shared.claim import claim_output
from pope_cli.shared.outputs import JsonlAppender, config_diff, flatten, load_jsonl_repairing


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


def _claim(out, config, overwrite=False, ignored=()):
    """Claim and start a run in `out`; returns whether it resumed."""
    with claim_output(str(out), out / "config.json", config, [out / "stats.jsonl"], overwrite, ignored) as claim:
        claim.started()
        return claim.resuming


def test_claim_resumes_refuses_and_overwrites(tmp_path):
    out = tmp_path / "run"
    config = {"k": 8, "model": {"model": "m", "batch_size": 4}}
    assert _claim(out, config) is False
    (out / "stats.jsonl").write_text('{"id": "a"}\n')
    assert _claim(out, config) is True
    faster = {"k": 8, "model": {"model": "m", "batch_size": 64}}
    assert _claim(out, faster, ignored=["model.batch_size"]) is True
    changed = {"k": 16, "model": {"model": "other", "batch_size": 4}}
    with pytest.raises(PopeError, match=r"different options \(--k: was 8, now 16; --model: was m, now other\)") as info:
        _claim(out, changed)
    assert info.value.exit_code == 2
    assert _claim(out, changed, overwrite=True) is False
    assert not (out / "stats.jsonl").exists()
    assert json.loads((out / "config.json").read_text())["k"] == 16
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no lock file, no side directory left


def test_existing_foreign_output_is_never_clobbered(tmp_path):
    (tmp_path / "stats.jsonl").write_text("mine\n")
    with pytest.raises(PopeError, match="already exists"):
        _claim(tmp_path, {"k": 1})
    assert (tmp_path / "stats.jsonl").read_text() == "mine\n"


def test_a_claim_that_never_starts_changes_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with claim_output(str(out), out / "config.json", {"k": 1}, [out / "stats.jsonl"], False):
            raise RuntimeError("the model did not load")
    assert not (tmp_path / "a").exists()  # the directories made for the lock are gone again
    _claim(out, {"k": 1})
    (out / "stats.jsonl").write_text("old\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError):
        with claim_output(str(out), out / "config.json", {"k": 2}, [out / "stats.jsonl"], True):
            raise RuntimeError("the model did not load")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_out_must_be_a_non_empty_path(tmp_path):
    with pytest.raises(PopeError, match="--out: must be a non-empty path"):
        with claim_output(" ", tmp_path / "config.json", {}, [], False):
            pass
    assert list(tmp_path.iterdir()) == []


def test_flatten_and_diff():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert config_diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}, ignored=["c"]) == ["b"]


def test_a_start_that_failed_before_writing_output_does_not_block_the_corrected_command(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with claim_output(str(out), out / "config.json", {"template": "missing.txt"}, [out / "stats.jsonl"], False) as claim:
            claim.started()
            raise RuntimeError("the start failed after the config was recorded")
    assert _claim(out, {"template": "guided.txt"}) is False
    assert json.loads((out / "config.json").read_text()) == {"template": "guided.txt"}
    (out / "stats.jsonl").write_text('{"id": "a"}\n')  # once there is work, a changed option is refused
    with pytest.raises(PopeError, match=r"different options \(--template: was guided.txt, now other.txt\)"):
        _claim(out, {"template": "other.txt"})
