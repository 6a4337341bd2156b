"""pope export: the data loads the way verl and TRL load it, mixes as pope train does, and its reward scores."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pope_cli.shared.config import ModelOptions, PromptOptions, RewardOptions, SamplingOptions
from pope_cli.shared.errors import PopeError
from pope_cli.stages.export.config import ExportConfig
from pope_cli.stages.export.writer import run_export
from pope_cli.stages.train.config import TrainConfig

TESTS = Path(__file__).parent
VERL_COLUMNS = {"data_source", "prompt", "ability", "reward_model", "extra_info"}


def write_prefixes(path: Path, n: int = 4) -> Path:
    """A prefixes.jsonl with the fields `pope make-prefixes` writes; the last problem's search found no prefix."""
    rows = []
    for i in range(n):
        solution = f"Add {i} and 3.\n\nThat is {i + 3}, so \\boxed{{{i + 3}}}."
        rows.append({"id": f"p{i}", "problem": f"What is {i} + 3?", "answer": str(i + 3), "solution": solution,
                     "level": i, "status": "found", "prefix": f"Add {i} and 3.", "prefix_units": 1, "prefix_tokens": 5,
                     "prefix_fraction": 0.2, "rung": 1, "rungs": 2, "solution_units": 3, "solution_tokens": 25,
                     "samples": 4, "guided_correct": 1, "template": "pope", "split": "units"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, fmt: str = "verl", out: str = "export", val: str | None = None, overwrite: bool = False,
           **train) -> ExportConfig:
    values = dict(prefixes=str(write_prefixes(tmp_path / "prefixes.jsonl")), out=str(tmp_path / out),
                  model=ModelOptions("Qwen/Qwen3-4B-Instruct-2507", gpu_memory_utilization=0.5), prompt=PromptOptions(),
                  sampling=SamplingOptions(temperature=0.8, max_new_tokens=64), reward=RewardOptions(workers=1),
                  steps=4, prompts_per_step=4)
    values.update(train)
    return ExportConfig(train=TrainConfig(**values), out=str(tmp_path / out), format=fmt, val=val, overwrite=overwrite)


def load_parquet(path: Path):
    """As verl's RLHFDataset reads a training file (and as a TRL user loads one)."""
    import datasets

    return datasets.load_dataset("parquet", data_files=str(path))["train"]


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"exported_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verl_rows_have_verls_schema_and_trains_one_to_one_mix(tmp_path):
    from pope_cli.stages.train.batch import DataMix

    cfg = config(tmp_path)
    run_export(cfg)
    rows = load_parquet(tmp_path / "export" / "train.parquet")
    assert set(rows.column_names) == VERL_COLUMNS
    assert len(rows) == 16
    kinds = [row["extra_info"]["mode"] for row in rows]
    assert kinds.count("guided") == kinds.count("unguided") == 8
    for index, row in enumerate(rows):
        assert row["data_source"] == f"pope/{row['extra_info']['mode']}" and row["ability"] == "math"
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert row["reward_model"] == {"style": "rule", "ground_truth": str(int(row["extra_info"]["id"][1:]) + 3)}
        assert row["extra_info"]["index"] == index and row["extra_info"]["split"] == "train"
        assert (row["extra_info"]["prefix"] != "") == (row["extra_info"]["mode"] == "guided")
    hard = [json.loads(line) for line in Path(cfg.train.prefixes).read_text().splitlines()]
    mix = DataMix(hard, [], "pope", 1.0, 0.0, 4, cfg.train.seed)
    expected = [(item.kind, item.record["id"]) for step in range(4) for item in mix.draw(step)]
    assert [(row["extra_info"]["mode"], row["extra_info"]["id"]) for row in rows] == expected


@pytest.mark.parametrize("mode, ratio, guided, unguided", [("grpo", 1.0, 0, 16), ("guided", 1.0, 16, 0), ("pope", 3.0, 12, 4)])
def test_mode_and_guided_ratio_mean_what_they_mean_in_train(tmp_path, mode, ratio, guided, unguided):
    run_export(config(tmp_path, mode=mode, guided_ratio=ratio))
    kinds = [row["extra_info"]["mode"] for row in load_parquet(tmp_path / "export" / "train.parquet")]
    assert (kinds.count("guided"), kinds.count("unguided")) == (guided, unguided)


@pytest.mark.parametrize("template, system", [(None, None), ("no-restate", "Be brief.")])
def test_prompts_are_the_tokens_pope_train_builds(tmp_path, char_tokenizer, template, system):
    from pope_cli.shared.runtime import PromptBuilder

    cfg = config(tmp_path, template=template, prompt=PromptOptions(system_prompt=system))
    run_export(cfg)
    train_prompts = PromptBuilder(char_tokenizer, cfg.train.prompt, template)
    records = {r["id"]: r for r in map(json.loads, Path(cfg.train.prefixes).read_text().splitlines())}
    for row in load_parquet(tmp_path / "export" / "train.parquet"):
        # verl renders `prompt` with the chat template and encodes it without special tokens.
        text = char_tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        record = records[row["extra_info"]["id"]]
        assert char_tokenizer(text, add_special_tokens=False).input_ids == train_prompts.build(row["extra_info"]["mode"], record)


def test_verl_reward_module_scores_with_pope_checker(tmp_path):
    run_export(config(tmp_path))
    reward = import_file(tmp_path / "export" / "pope_reward.py")
    row = load_parquet(tmp_path / "export" / "train.parquet")[0]
    gold = row["reward_model"]["ground_truth"]
    score = lambda text: reward.compute_score(data_source=row["data_source"], solution_str=text, ground_truth=gold,
                                              extra_info=row["extra_info"])
    assert score(f"so the answer is \\boxed{{{gold}}}") == 1.0
    assert score("so the answer is \\boxed{100}") == 0.0
    assert score("no final answer") == 0.0


def test_trl_export_loads_and_its_reward_takes_conversational_completions(tmp_path):
    import datasets

    run_export(config(tmp_path, fmt="trl", reward=RewardOptions(spec="rewards_for_tests:shares_a_character", workers=1)))
    out = tmp_path / "export"
    from_jsonl = datasets.load_dataset("json", data_files=str(out / "train.jsonl"))["train"]
    from_parquet = load_parquet(out / "train.parquet")
    assert from_jsonl.to_list() == from_parquet.to_list()
    assert set(from_jsonl.column_names) == {"prompt", "answer", "id", "mode", "prefix", "record"}
    batch = from_jsonl.select(range(2))
    extra = {k: batch[k] for k in batch.column_names if k != "prompt"}  # as GRPOTrainer passes columns
    reward = import_file(out / "pope_reward.py")
    gold = batch["answer"]
    completions = [[{"role": "assistant", "content": f"it is {gold[0]}"}], [{"role": "assistant", "content": "xyz"}]]
    assert reward.pope_reward(prompts=batch["prompt"], completions=completions, trainer_state=None, **extra) == [1.0, 0.0]
    assert reward.pope_reward(prompts=batch["prompt"], completions=["xyz", f"{gold[1]}"], **extra) == [0.0, 1.0]
    settings = json.loads((out / "trl_config.json").read_text())
    assert settings["grpo_config"]["num_generations"] == 8 and settings["grpo_config"]["shuffle_dataset"] is False
    assert settings["lora"]["r"] == 64


def test_val_file_gives_unguided_and_guided_rows(tmp_path):
    cfg = config(tmp_path, val=str(write_prefixes(tmp_path / "heldout.jsonl", n=3)))
    run_export(cfg)
    val = load_parquet(tmp_path / "export" / "val.parquet")
    assert sorted(row["extra_info"]["mode"] for row in val) == ["guided"] * 3 + ["unguided"] * 3
    assert {row["extra_info"]["split"] for row in val} == {"val"}
    assert 'data.val_files="$HERE/val.parquet"' in (tmp_path / "export" / "run_verl.sh").read_text()


def test_an_existing_export_is_not_clobbered_without_overwrite(tmp_path):
    run_export(config(tmp_path))
    out = tmp_path / "export"
    (out / "notes.txt").write_text("mine")
    before = (out / "train.parquet").read_bytes()
    with pytest.raises(PopeError, match="--overwrite"):
        run_export(config(tmp_path, fmt="trl"))
    assert (out / "train.parquet").read_bytes() == before and (out / "run_verl.sh").exists()
    run_export(config(tmp_path, fmt="trl", overwrite=True))
    assert not (out / "run_verl.sh").exists()  # the old export's own file is gone
    assert (out / "notes.txt").read_text() == "mine" and (out / "train.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_refuses_an_existing_directory_in_one_line(tmp_path):
    write_prefixes(tmp_path / "prefixes.jsonl")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    proc = subprocess.run([sys.executable, "-m", "pope_cli.cli", "export", "prefixes.jsonl", "--out", "out"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --out: out: already exists and is not empty; use --overwrite to replace the export"]


def test_run_verl_sh_uses_only_keys_verl_knows(tmp_path):
    verl = pytest.importorskip("verl")
    import yaml

    run_export(config(tmp_path, kl_coef=0.01, loss_agg="dr-grpo"))
    script = (tmp_path / "export" / "run_verl.sh").read_text()
    subprocess.run(["bash", "-n", str(tmp_path / "export" / "run_verl.sh")], check=True)
    defaults = yaml.safe_load((Path(verl.__file__).parent / "trainer/config/_generated_ppo_trainer.yaml").read_text())
    keys = re.findall(r"^\s+([a-z_.]+)=", script, re.M)
    assert "actor_rollout_ref.rollout.n" in keys and "algorithm.adv_estimator" in keys
    for key in keys:
        node = defaults
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]
    assert "loss_agg_mode=seq-mean-token-sum-norm" in script and "use_kl_loss=True" in script


def test_verl_rlhf_dataset_reads_the_export(tmp_path, char_tokenizer):
    pytest.importorskip("verl.utils.dataset.rl_dataset")
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    run_export(config(tmp_path))
    files = [str(tmp_path / "export" / "train.parquet")]
    settings = {"filter_overlong_prompts": True, "filter_overlong_prompts_workers": 1, "cache_dir": str(tmp_path / "cache")}
    dataset = RLHFDataset(files, char_tokenizer, OmegaConf.create({**settings, "max_prompt_length": 4096}))
    assert len(dataset) == 16  # every prompt went through the chat template and fits
    item = dataset[1]
    assert item["extra_info"]["index"] == 1 and item["index"] == 1
    assert item["data_source"] in ("pope/guided", "pope/unguided")
    assert item["raw_prompt"] == load_parquet(files[0])[1]["prompt"]
    assert len(RLHFDataset(files, char_tokenizer, OmegaConf.create({**settings, "max_prompt_length": 50}))) == 0


@pytest.mark.parametrize("gpus, mini_batch, updates", [(1, None, 1), (2, None, 1), (1, 8, 2)])
def test_trl_config_takes_pope_s_step_in_train_s_order(tmp_path, gpus, mini_batch, updates):
    """GRPOConfig(**grpo_config) draws prompts_per_step prompts per generation batch, reads the rows in
    order and ends where they end; each optimizer step holds --mini-batch-size sequences."""
    trl = pytest.importorskip("trl")
    cfg = config(tmp_path, fmt="trl", steps=3, prompts_per_step=4, group_size=4, micro_batch_size=3,
                 mini_batch_size=mini_batch, updates_per_step=updates)
    cfg.gpus = gpus
    run_export(cfg)
    out = tmp_path / "export"
    settings = json.loads((out / "trl_config.json").read_text())
    grpo = trl.GRPOConfig(**settings["grpo_config"], output_dir=str(tmp_path / "trl"), use_cpu=True)
    rows = len((out / "train.jsonl").read_text().splitlines())
    per_device, accumulated = grpo.per_device_train_batch_size, grpo.gradient_accumulation_steps
    generation = per_device * gpus * grpo.steps_per_generation  # TRL's generation batch on `gpus` processes
    assert generation == 16 and generation // grpo.num_generations == 4 == settings["prompts_per_step"]
    assert per_device <= 3 and per_device * gpus * accumulated == (mini_batch or 16)
    per_step = 16 // (mini_batch or 16) * updates
    assert grpo.max_steps == 3 * per_step and grpo.max_steps // per_step * 4 == rows == 12
    assert grpo.num_iterations == updates and settings["processes"] == gpus
    if gpus == 1:
        assert grpo.generation_batch_size == 16


def test_a_step_trl_cannot_split_evenly_is_refused_before_anything_is_written(tmp_path):
    cfg = config(tmp_path, fmt="trl", prompts_per_step=3, group_size=2)
    cfg.gpus = 4
    with pytest.raises(PopeError, match=r"--format trl: a step of 6 sequences in optimizer steps of 6 "
                                        r"\(--mini-batch-size\) over 4 process\(es\) \(--gpus\) cannot be equal") as error:
        run_export(cfg)
    assert error.value.exit_code == 2 and not (tmp_path / "export").exists()
