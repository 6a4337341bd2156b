"""The three sampling stages on the toy model: 2 local workers and 2 Ray actors (a Ray started
here, on 127.0.0.1 with token authentication) write byte for byte the files of one in-process
engine; a Ray actor killed mid-stage is restarted and its work redone. One local Ray serves every
Ray test of the module (starting one costs seconds)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pope_cli.shared.config import (FieldMap, ModelOptions, PromptOptions, RewardOptions, SamplingOptions,
                                    WorkerOptions)
from pope_cli.shared.runtime import engine_factory
from pope_cli.shared.workers.factory import WorkerPlan, pooled_engine
from pope_cli.shared.workers.plan import local_slots
from pope_cli.shared.workers.worker import EngineSpec
from pope_cli.stages.evaluate import EvalConfig, run_eval
from pope_cli.stages.filter_hard import FilterHardConfig, run_filter_hard
from pope_cli.stages.prefixes import PrefixConfig, run_make_prefixes
from pope_cli.toy.model import SHIPPED_MODEL_DIR
from pope_cli.toy.pretrain import TEMPLATES_DIR

TESTS = Path(__file__).parent
MODEL = ModelOptions(str(SHIPPED_MODEL_DIR), backend="hf", device="cpu", batch_size=8)
SAMPLING = SamplingOptions(max_new_tokens=40)
PROMPT = PromptOptions(unguided_template=str(TEMPLATES_DIR / "unguided.txt"))
COMPARED = {"filter": ("stats.jsonl", "hard.jsonl", "easy.jsonl", "samples.jsonl"),
            "eval": ("samples.jsonl", "summary.json")}
PREFIX_FILES = ("prefixes.jsonl", "prefixes.jsonl.stats.jsonl", "prefixes.jsonl.skipped.jsonl")


class ToyScorer:
    """The toy reward in this process: the reward pool is not what these tests are about."""

    def score(self, completions, records):
        from pope_cli.toy.reward import score

        return [score(c, r) for c, r in zip(completions, records)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def pipeline(data: Path, out: Path, make_engine) -> None:
    """filter-hard -> make-prefixes (on the hard ones) -> eval (unguided and guided) into `out`."""
    common = dict(fields=FieldMap(), sampling=SAMPLING, reward=RewardOptions(), seed=1)
    run_filter_hard(FilterHardConfig(data=str(data), out=str(out / "filter"), model=MODEL, prompt=PROMPT, k=2,
                                     chunk=1, save_samples=True, **common), lambda: make_engine(MODEL), ToyScorer)
    run_make_prefixes(PrefixConfig(data=str(out / "filter" / "hard.jsonl"), out=str(out / "prefixes.jsonl"),
                                   model=MODEL, prompt=PromptOptions(), template=str(TEMPLATES_DIR / "guided.txt"),
                                   n=2, max_rungs=2, max_fraction=0.5, **common),
                      lambda: make_engine(MODEL), ToyScorer)
    run_eval(EvalConfig(data=str(out / "prefixes.jsonl"), out=str(out / "eval"), models=[MODEL.model], model=MODEL,
                        prompt=PROMPT, n=2, ks=[1, 2], modes=["unguided", "guided"], bootstrap=20, **common),
             make_engine, ToyScorer)


def in_process_engine(opts: ModelOptions):
    from pope_cli.shared.engines import make_engine

    return make_engine(opts)


def assert_same_files(a: Path, b: Path) -> None:
    for stage, names in COMPARED.items():
        for name in names:
            assert (a / stage / name).read_bytes() == (b / stage / name).read_bytes(), f"{stage}/{name}"
    for name in PREFIX_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    from pope_cli.shared.outputs import atomic_write_jsonl
    from pope_cli.toy.task import easy_problems, hard_problems

    path = tmp_path_factory.mktemp("toy") / "mix.jsonl"
    atomic_write_jsonl(path, easy_problems(0, 2) + hard_problems(0, 2, 0)[0])
    return path


@pytest.fixture(scope="module")
def reference(toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    pipeline(toy_data, out, in_process_engine)
    return out


@pytest.fixture(scope="module")
def local_ray():
    from pope_cli.shared.workers.ray_backend import connect

    # Ray's worker processes inherit this environment: they import the tests' fake engines too.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), saved) if p)
    ray = connect("local", num_cpus=2)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


def test_reference_run_has_hard_and_easy_problems_and_prefixes(reference):
    stats = [json.loads(line) for line in (reference / "filter" / "stats.jsonl").read_text().splitlines()]
    assert [row["hard"] for row in stats] == [False, False, True, True]
    prefixes = (reference / "prefixes.jsonl").read_text().splitlines()
    assert len(prefixes) == 2
    summary = json.loads((reference / "eval" / "summary.json").read_text())
    assert set(summary["models"][MODEL.model]) == {"unguided", "guided"}


def test_two_local_workers_write_the_same_bytes(toy_data, reference, tmp_path):
    plan = WorkerPlan(2, 1, 0, slots=local_slots(2, 1, "cpu", cpus=2))
    pipeline(toy_data, tmp_path, lambda opts: engine_factory(opts, plan)())
    assert_same_files(reference, tmp_path)


def test_two_ray_actors_write_the_same_bytes(toy_data, reference, tmp_path, local_ray):
    from pope_cli.shared.workers.factory import plan_workers

    plan = plan_workers(MODEL, WorkerOptions(workers=2, ray="local"))
    assert plan.ray is local_ray and plan.workers == 2 and plan.num_gpus == 0
    pipeline(toy_data, tmp_path, lambda opts: engine_factory(opts, plan)())
    assert_same_files(reference, tmp_path)


def test_local_ray_listens_on_loopback_only_with_token_authentication(local_ray):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert local_ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert local_ray.util.get_node_ip_address() == "127.0.0.1"
    assert os.environ["RAY_AUTH_MODE"] == "token" and get_authentication_mode() == AuthenticationMode.TOKEN


def test_a_killed_ray_actor_is_reported_restarted_and_its_problem_redone(tmp_path, char_tokenizer, local_ray):
    from fakes import BoxScorer
    from test_workers import assert_same_files as same_filter_files, config, in_process, make_problems, vocab_of
    from worker_fakes import char_engine

    data = make_problems(tmp_path / "p.jsonl", 6)
    in_process(char_tokenizer, config(data, tmp_path / "one"))
    marker = tmp_path / "killed-once"
    spec = EngineSpec(char_engine, (vocab_of(char_tokenizer), 0.0, "hard problem 3", str(marker)))
    reports: list[str] = []

    def make():
        engine = pooled_engine(ModelOptions("scripted"), WorkerPlan(2, 1, 3, ray=local_ray), spec, char_tokenizer)
        engine.report = reports.append
        return engine

    run_filter_hard(config(data, tmp_path / "two"), make, BoxScorer)
    assert marker.exists() and len(reports) == 1
    assert re.match(r"Ray worker \d failed \(ActorDiedError: .*\) holding [^:]*\bp3\b.*restart 1 of at most 3",
                    reports[0]), reports[0]
    same_filter_files(tmp_path / "one", tmp_path / "two")
