"""`pope export`: the prompts `pope train` would train on, as files that verl or TRL train on.

Same data. The rows come from `pope_cli.stages.train.batch.DataMix`, the object `pope train` draws its
steps from: `steps` steps of `prompts_per_step` prompts each, in train's seeded order, so guided
and unguided copies of each hard problem keep `--mode` and `--guided-ratio` (1:1 by default) and
easy problems their `--easy-fraction`. The user message is built by the same template functions
train uses (`pope_cli.shared.prompts`, the template chosen as `PromptBuilder` chooses it: `--template`,
else the one the prefix record names) and is sent as chat messages (an optional system message,
then one user turn), which verl and TRL render with the model's chat template as pope does.

verl: checked against verl 0.9.1 from PyPI.
- `verl/utils/dataset/rl_dataset.py`, `RLHFDataset`: reads each file with
  `datasets.load_dataset("parquet", data_files=f)["train"]`, takes chat messages from the `prompt`
  column (`data.prompt_key`) and hands them on as `raw_prompt` (the rollout applies the chat
  template with `add_generation_prompt=True`; so does the overlong-prompt filter), and uses
  `extra_info["index"]` as the row index.
- `verl/experimental/reward_loop/reward_manager/naive.py`: reads `data_source`,
  `reward_model["ground_truth"]` and `extra_info` and calls
  `compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`.
- `verl/trainer/ppo/reward.py`, `get_custom_reward_fn`: loads `reward.custom_reward_function.path`
  and `.name`.
A row: data_source (`pope/guided`, `pope/unguided`, `pope/easy`, so verl reports each apart),
prompt, ability `math`, reward_model {style `rule`, ground_truth}, extra_info {index, split, mode,
id, prefix, prefix_fraction, template, record (the pope record as JSON, for custom checkers)}.

TRL: checked against `trl/trainer/grpo_trainer.py` and `grpo_config.py`. A conversational `prompt`
column; every other column reaches the reward function as a keyword argument holding one value
per completion, and a conversational completion arrives as `[{"role": "assistant", "content": ...}]`.
A row: prompt, answer, id, mode, prefix, record.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from pope_cli.shared.claim import DirLock
from pope_cli.shared.outputs import check_out_path
from pope_cli.shared.errors import PopeError
from pope_cli.stages.export.config import ExportConfig

# Room for what a chat template wraps around the messages (role markers, a default system turn).
CHAT_TEMPLATE_ALLOWANCE = 128


def messages(builder, kind: str, record: dict) -> list[dict]:
    """The chat messages of a record's guided or unguided prompt, as `pope train` builds its text."""
    from pope_cli.shared.prompts import guided_text, unguided_text

    if kind == "guided":
        text = guided_text(builder.guided_template(record.get("template")), record["problem"], record["prefix"])
    else:
        text = unguided_text(builder.unguided_template_of(record), record["problem"])
    system = builder.opts.system_prompt
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def draw_train_items(cfg: ExportConfig) -> list:
    """Every step's prompts, as `pope train` with this config would draw them, in order."""
    from pope_cli.stages.train.batch import DataMix
    from pope_cli.stages.train.trainer import read_training_data

    t = cfg.train
    hard, easy = read_training_data(t)
    mix = DataMix(hard, easy, t.mode, t.guided_ratio, t.easy_fraction, t.prompts_per_step, t.seed, curriculum=t.curriculum)
    return [item for step in range(t.steps) for item in mix.draw(step)]


def val_items(path: str) -> list:
    """Validation prompts: each problem unguided, and guided too when the file is a prefixes file."""
    from pope_cli.shared.data import PREFIX_FIELDS, iter_raw_records, read_prefix_records, read_problems
    from pope_cli.stages.train.batch import Item

    first = next(iter_raw_records(path), (None, None))[1]
    if not (isinstance(first, dict) and all(k in first for k in PREFIX_FIELDS)):
        return [Item("unguided", p.fields()) for p in read_problems(path)]
    records = read_prefix_records(path)
    return [Item("unguided", r) for r in records] + [Item("guided", r) for r in records if r.get("prefix")]


def _row(cfg: ExportConfig, builder, item, index: int, split: str) -> dict:
    r = item.record
    prefix = r["prefix"] if item.kind == "guided" else ""
    record = json.dumps(r, ensure_ascii=False, default=str)
    prompt = messages(builder, item.kind, r)
    if cfg.format == "trl":
        return {"prompt": prompt, "answer": str(r["answer"]), "id": str(r["id"]), "mode": item.kind,
                "prefix": prefix, "record": record}
    return {
        "data_source": f"pope/{item.kind}", "prompt": prompt, "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(r["answer"])},
        "extra_info": {"index": index, "split": split, "mode": item.kind, "id": str(r["id"]), "prefix": prefix,
                       "prefix_fraction": r.get("prefix_fraction") if prefix else None,
                       "template": (builder.guided_template(r.get("template")).name if prefix else ""),
                       "record": record},
    }


def _prompt_bound(rows: list[dict]) -> int:
    """An upper bound on prompt tokens: UTF-8 bytes (a token is at least one byte) plus template room."""
    longest = max(sum(len(m["content"].encode("utf-8")) for m in row["prompt"]) for row in rows)
    return -(-(longest + CHAT_TEMPLATE_ALLOWANCE) // 256) * 256


def _write_table(directory: Path, name: str, rows: list[dict], jsonl: bool) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), directory / f"{name}.parquet")
    if not jsonl:
        return [f"{name}.parquet"]
    with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return [f"{name}.parquet", f"{name}.jsonl"]


def _write_files(cfg: ExportConfig, directory: Path, train_rows: list[dict], val_rows: list[dict]) -> list[str]:
    """Every file of the export into `directory`; returns their names."""
    from pope_cli.stages.export.files import reward_module, trl_settings, verl_script

    trl = cfg.format == "trl"
    files = _write_table(directory, "train", train_rows, trl)
    if val_rows:
        files += _write_table(directory, "val", val_rows, trl)
    (directory / "pope_reward.py").write_text(reward_module(cfg), encoding="utf-8")
    files.append("pope_reward.py")
    if trl:
        (directory / "trl_config.json").write_text(json.dumps(trl_settings(cfg), indent=2) + "\n", encoding="utf-8")
        return files + ["trl_config.json"]
    script = directory / "run_verl.sh"
    script.write_text(verl_script(cfg, _prompt_bound(train_rows + val_rows)), encoding="utf-8")
    return files + ["run_verl.sh"]


def _check_out(cfg: ExportConfig) -> None:
    check_out_path(cfg.out)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise PopeError(f"--out: {out}: exists and is not a directory", exit_code=2)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise PopeError(f"--out: {out}: already exists and is not empty; use --overwrite to replace the export", exit_code=2)


def _publish(staging: Path, out: Path) -> None:
    """Move a finished export into place: the whole directory at once, or file by file over an old one.

    Over an old export, the files that export listed and this one lacks are removed; anything
    else in the directory is left alone.
    """
    if not out.exists() or not any(out.iterdir()):
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
        return
    old = out / "export.json"
    stale = json.loads(old.read_text(encoding="utf-8")).get("files", []) if old.is_file() else []
    for name in stale:
        (out / name).unlink(missing_ok=True)
    for path in staging.iterdir():
        os.replace(path, out / path.name)
    staging.rmdir()


def run_export(cfg: ExportConfig) -> dict:
    """Write the export directory; returns counts for the CLI summary."""
    from collections import Counter

    from pope_cli.shared.outputs import check_writable, dir_mode, manifest, publish_modes
    from pope_cli.shared.runtime import PromptBuilder

    started = time.time()
    if cfg.format == "trl":
        from pope_cli.stages.export.files import trl_batch

        trl_batch(cfg)  # a step TRL cannot take in equal batches is refused before anything is written
    builder = PromptBuilder(None, cfg.train.prompt, cfg.train.template)
    train_rows = [_row(cfg, builder, item, i, "train") for i, item in enumerate(draw_train_items(cfg))]
    val_rows = [_row(cfg, builder, item, i, "val") for i, item in enumerate(val_items(cfg.val))] if cfg.val else []
    mode_of = (lambda row: row["mode"]) if cfg.format == "trl" else (lambda row: row["extra_info"]["mode"])
    counts = {"train": dict(Counter(map(mode_of, train_rows))), "val": dict(Counter(map(mode_of, val_rows)))}
    _check_out(cfg)  # after the data: a bad input file is reported as such, whatever lies in --out
    check_writable(Path(cfg.out).parent)
    out = Path(cfg.out).resolve()
    # The lock sits beside the export: the directory itself is replaced whole.
    lock = DirLock(out.with_name(f".{out.name}.lock")).acquire()
    try:
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
        try:
            files = _write_files(cfg, staging, train_rows, val_rows)
            info = manifest("export", asdict(cfg), started, counts, files=files + ["export.json"])
            (staging / "export.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
            publish_modes(staging)  # mkdtemp made it 0700
            if cfg.format == "verl":
                (staging / "run_verl.sh").chmod(dir_mode())  # executable as far as the umask lets a script be
            _publish(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        lock.release()
    return {"counts": counts, "files": files + ["export.json"], "out": str(out)}
