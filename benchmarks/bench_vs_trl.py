"""Training throughput of `pope train --mode grpo` against TRL's GRPOTrainer, same model, same task.

    pip install -e .[bench]
    nice -n 0 python benchmarks/bench_vs_trl.py [--sizes 1M,6M] [--steps 8] [--reps 2] [--threads 1] [--lora]
    nice -n 0 python benchmarks/bench_vs_trl.py --profile --sizes 6M --steps 4   # where the time goes (py-spy)

Both trainers run as their own subprocess, alternating pope, TRL, pope, TRL, ..., on the same
tiny Qwen2 models, from the same directory:
- 1M: the shipped toy model (pretrained on the toy task), on "one-lookup" toy problems (an easy
  chain with one `*` step by 4-9, which the model gets right about a third of the time, so
  most groups carry a signal), scored by the toy reward `pope_cli.toy.reward:score`;
- 6M: a randomly initialised Qwen2 of bench_train.py's 6M shape; the toy reward would score
  all its samples 0, so both score the coin reward of bench_train.py instead (1 when the first
  character has an odd code), which is deterministic and learnable.

Everything that sets the work done per step is the same for both: prompts per step x group size
completions (one optimizer step per batch), max completion length, temperature 0.8 (top-p 1,
top-k off), AdamW with a constant learning rate and no warmup, grad clip 1.0, fp32, no gradient
checkpointing, full fine-tuning (or LoRA r16/alpha 32 on all linear layers with --lora), the same
micro-batch for the forward/backward passes, one generate call per step for the whole batch,
and the same prompts in the same order (TRL's dataset is pope's draw order, unshuffled). The
objective is matched as far as TRL's options go: Dr. GRPO advantages (reward - group mean, no
std: pope --adv-norm none, TRL scale_rewards="none"), token-mean aggregation (pope token-mean,
TRL loss_type="dapo"), clip 0.2 both sides, no KL (beta=0, no reference model), one update per
batch (num_iterations=1: the ratio is 1, neither computes old log-probs). Two differences
remain and are pope's design, not settings: pope leaves groups whose rewards are all equal out
of the backward pass (their gradient is zero anyway), and so divides by the tokens it trains
on, while TRL forwards and backwards every sequence and divides by all tokens of the batch
(under Adam this rescaling barely changes the update).

Timing. pope logs time/generate_s, time/score_s and time/step_s per step in metrics.jsonl. The
TRL child times the same things itself: a callback's on_step_begin/on_step_end bracket one
optimizer step (generation happens inside it, in GRPOTrainer._prepare_inputs), the model's
`generate` is wrapped with a timer (GRPOTrainer calls it once per step), and so is the reward
function. For both, "rest" = step - generate - score: tokenising, advantages, forward/backward
passes and the optimizer step. The first step of each run is a warm-up and is left out of the
per-step medians; "wall" is the whole child process (imports, model load, final save).
Peak RSS is the child's ru_maxrss from os.wait4. "trained" is the sequences that went through
the update (pope leaves out groups with no signal), "ms/seq" the rest per trained sequence.

Prints a table per model and writes benchmarks/results/bench_vs_trl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))  # bench_train's model shapes and coin reward

PROMPTS, GROUP, MAX_NEW, TEMPERATURE, LR, MICRO = 16, 8, 48, 0.8, 2e-4, 32
REWARDS = {"toy": "pope_cli.toy.reward:score", "coin": "bench_train:coin"}


# --------------------------------------------------------------------------------------------
# Shared set-up: models, problems, the order both trainers see them in.

def one_lookup_problems(n: int, seed: int = 0) -> list[dict]:
    """Easy-shaped chains with exactly one `*` by 4-9: one uncertain table look-up each."""
    from pope_cli.toy.task import make_record, sample_easy

    rng = random.Random(f"bench-vs-trl-{seed}")
    records, seen = [], set()
    while len(records) < n:
        record = make_record(f"lookup-{len(records):04d}", "toy-lookup", *sample_easy(rng, 1.0, 1.0))
        if record["problem"] not in seen:
            seen.add(record["problem"])
            records.append(record)
    return records


def prepare(work: Path, size: str) -> tuple[Path, str, int]:
    """The model directory, the reward name and the parameter count for one row."""
    from pope_cli.toy.model import SHIPPED_MODEL_DIR

    model_dir = work / size
    if size == "1M":
        shutil.copytree(SHIPPED_MODEL_DIR, model_dir)
        reward = "toy"
    else:
        from bench_train import build
        build(model_dir, size)
        reward = "coin"
    from transformers import AutoConfig, AutoModelForCausalLM
    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters())
    return model_dir, reward, params


def write_prefixes(path: Path, records: list[dict]) -> None:
    """A prefixes file for `--mode grpo`, which reads the problems from it and asks them unguided
    only: the prefix is never shown, so it is left empty."""
    from pope_cli.shared.outputs import atomic_write_jsonl

    atomic_write_jsonl(path, ({**record, "prefix": "", "prefix_fraction": 0.0, "status": "none"} for record in records))


def pope_order(records: list[dict], steps: int, seed: int) -> list[dict]:
    """The records pope draws at steps 0..steps-1 with this seed, in order: TRL's dataset."""
    from pope_cli.stages.train.batch import DataMix

    mix = DataMix(records, [], "grpo", 1.0, 0.0, PROMPTS, seed)
    return [item.record for step in range(steps) for item in mix.draw(step)]


def user_text(problem: str) -> str:
    """The unguided user message pope builds (the toy template), for TRL's conversational prompt."""
    from pope_cli.shared.prompts import load_unguided_template, unguided_text
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    return unguided_text(load_unguided_template(str(TEMPLATES_DIR / "unguided.txt")), problem)


def check_same_prompts(model_dir: Path, records: list[dict]) -> None:
    """Fail loudly unless TRL's chat-templated prompt tokenises to pope's prompt ids: otherwise
    the two would not be training on the same inputs."""
    from transformers import AutoTokenizer

    from pope_cli.shared.config import PromptOptions
    from pope_cli.shared.runtime import PromptBuilder
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    builder = PromptBuilder(tokenizer, PromptOptions(unguided_template=str(TEMPLATES_DIR / "unguided.txt")))
    for record in records[:8]:
        # What TRL does with a conversational prompt: the chat template with the generation prompt.
        trl_ids = tokenizer.apply_chat_template([{"role": "user", "content": user_text(record["problem"])}],
                                                tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        if list(trl_ids) != builder.unguided(record):
            raise SystemExit(f"prompt mismatch on {record['id']}: {trl_ids} vs {builder.unguided(record)}")


# --------------------------------------------------------------------------------------------
# The children.

def pope_command(model_dir: Path, reward: str, prefixes: Path, out: Path, steps: int, seed: int, lora: bool,
                 dtype: str = "float32") -> list[str]:
    from pope_cli.toy.pretrain import TEMPLATES_DIR

    tuning = ["--lora", "--lora-rank", "16", "--lora-alpha", "32", "--lora-targets", "all-linear"] if lora else ["--full"]
    return [sys.executable, "-m", "pope_cli.cli", "train", str(prefixes), "--model", str(model_dir), "--out", str(out),
            "--mode", "grpo", "--steps", str(steps), "--prompts-per-step", str(PROMPTS), "--group-size", str(GROUP),
            "--max-new-tokens", str(MAX_NEW), "--temperature", str(TEMPERATURE), "--top-p", "1.0",
            "--lr", str(LR), "--warmup-steps", "0", "--weight-decay", "0", "--max-grad-norm", "1.0",
            "--adv-norm", "none", "--loss-agg", "token-mean", "--clip-low", "0.2", "--clip-high", "0.2",
            "--kl-coef", "0", "--updates-per-step", "1", "--micro-batch-size", str(MICRO), *tuning,
            # --batch-size: generate the whole step in one call, as TRL does.
            "--batch-size", str(PROMPTS * GROUP), "--backend", "hf", "--device", "cpu", "--dtype", dtype,
            "--reward", REWARDS[reward], "--reward-workers", "1",
            "--unguided-template", str(TEMPLATES_DIR / "unguided.txt"),
            "--seed", str(seed), "--save-every", str(steps), "--keep", "1", "--overwrite"]


def pope_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "step_s": r["time/step_s"], "generate_s": r["time/generate_s"],
             "score_s": r["time/score_s"], "reward": r["reward/all"], "gen_tokens": r["gen_tokens"],
             "trained": r["trained_sequences"]} for r in rows]


def trl_child(spec: dict) -> None:
    """Runs in its own process: TRL GRPOTrainer with the settings in `spec`; writes per-step rows."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(spec["threads"])
    records = spec["records"]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": user_text(r["problem"])}],
                                  "problem": r["problem"], "answer": r["answer"]} for r in records])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    timings = {"generate": 0.0, "score": 0.0}
    rewards_per_call, tokens_per_call = [], []

    # GRPOTrainer calls model.generate once per step (the unwrapped model is this object on one
    # CPU process; a peft wrapper forwards to it): an instance attribute shadows the method.
    inner_generate = model.generate

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner_generate(*args, **kwargs)
        finally:
            timings["generate"] += time.perf_counter() - started

    model.generate = timed_generate

    if spec["reward"] == "toy":
        from pope_cli.toy.reward import score as base_score
    else:
        from bench_train import coin as base_score

    def reward(prompts, completions, completion_ids, problem, answer, **kwargs):
        # TRL's signature: one call per step with the whole batch; dataset columns as lists.
        started = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = [float(base_score(t, {"problem": p, "answer": a}) or 0.0) for t, p, a in zip(texts, problem, answer)]
        timings["score"] += time.perf_counter() - started
        rewards_per_call.append(sum(scores) / len(scores))
        tokens_per_call.append(sum(len(ids) for ids in completion_ids))
        return scores

    rows: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()
            timings["generate"] = timings["score"] = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            rows.append({"step": state.global_step, "step_s": time.perf_counter() - self.started,
                         "generate_s": timings["generate"], "score_s": timings["score"],
                         "reward": rewards_per_call[-1], "gen_tokens": tokens_per_call[-1],
                         "trained": PROMPTS * GROUP})  # TRL forwards and backwards every sequence

    batch = PROMPTS * GROUP
    config = GRPOConfig(**spec["grpo_config"], output_dir=spec["out"], max_steps=spec["steps"], seed=spec["seed"],
                        gradient_accumulation_steps=batch // MICRO)
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    trainer.train()
    trainer.save_model(spec["out"] + "/final")  # pope saves its final model too: same end-of-run work
    Path(spec["result"]).write_text(json.dumps({"rows": rows, "trl_logs": trainer.state.log_history}))


def grpo_config(lora: bool, dtype: str = "float32") -> dict:
    """The GRPOConfig fields that match pope's settings (see the module docstring)."""
    return dict(
        per_device_train_batch_size=MICRO, generation_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=MAX_NEW, temperature=TEMPERATURE, top_p=1.0, top_k=0,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=1.0, beta=0.0, num_iterations=1, epsilon=0.2, epsilon_high=0.2, loss_type="dapo",
        scale_rewards="none", mask_truncated_completions=False, gradient_checkpointing=False,
        use_cpu=True, bf16=dtype == "bfloat16", fp16=False, shuffle_dataset=False, use_vllm=False,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )


def run_child(command: list[str], env: dict) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MiB (of the child, from wait4) and the exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.stderr.write(stderr.decode(errors="replace")[-4000:])
    return wall, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is in KiB on Linux


# --------------------------------------------------------------------------------------------
# Summaries.

def summarise(rows: list[dict], wall: float, rss: float) -> dict:
    timed = rows[1:] if len(rows) > 1 else rows  # step 1 is a warm-up

    def med(key):
        return statistics.median(key(r) for r in timed)

    return {"completions_per_s": PROMPTS * GROUP / med(lambda r: r["step_s"]), "step_s": med(lambda r: r["step_s"]),
            "generate_s": med(lambda r: r["generate_s"]), "score_s": med(lambda r: r["score_s"]),
            "rest_s": med(lambda r: r["step_s"] - r["generate_s"] - r["score_s"]),
            "gen_tokens_per_s": med(lambda r: r["gen_tokens"] / r["generate_s"]),
            "mean_completion_tokens": med(lambda r: r["gen_tokens"] / (PROMPTS * GROUP)),
            # pope skips groups with no signal: how many sequences went through the update.
            "trained_sequences": med(lambda r: r["trained"]),
            "rest_ms_per_trained_sequence": med(lambda r: 1e3 * (r["step_s"] - r["generate_s"] - r["score_s"])
                                                / max(r["trained"], 1)),
            "wall_s": wall, "peak_rss_mib": rss, "rewards": [r["reward"] for r in rows]}


# Where the time goes, read off py-spy's raw (collapsed) stacks: a sample counts for a part when
# any frame of its stack matches one of the part's patterns ("function (path" prefixes), so the
# parts overlap (the loss forward is inside the update) and need not add up to 100%.
PROFILE_PARTS = {
    "startup: imports": ["_find_and_load ("],
    "model load": ["from_pretrained ("],
    "generate (all)": ["GenerationMixin.generate ("],
    "  sampling (logits processors)": ["(pope_cli/shared/engines/noise.py", "(transformers/generation/logits_process.py"],
    "reward": ["Scorer.score (pope_cli", "_calculate_rewards ("],
    "update (all)": ["policy_update (pope_cli", "GRPOTrainer.compute_loss (", "Accelerator.backward (",
                     "step (torch/optim/adam", "clip_grad_norm_ ("],
    "  loss forward": ["sequence_logprobs (pope_cli", "_get_per_token_logps_and_entropies ("],
    "  backward": ["Tensor.backward (torch/_tensor.py"],
    "  optimizer step": ["step (torch/optim/adam"],
    "gc at train start (accelerate)": ["free_memory (accelerate"],
    "save": ["save_pretrained (", "save_checkpoint (pope_cli", "save_model ("],
}


def profile_parts(raw: str, rate: int) -> dict:
    totals = {part: 0 for part in PROFILE_PARTS}
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples += int(count)
        for part, patterns in PROFILE_PARTS.items():
            if any(pattern in stack for pattern in patterns):
                totals[part] += int(count)
    return {"seconds": samples / rate, **{part: n / rate for part, n in totals.items()}}


def profile(args, env: dict) -> None:
    """One pope and one TRL child of the first size, each under `py-spy record`."""
    rate, size = 50, args.sizes.split(",")[0]
    records = one_lookup_problems(64)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_prefixes(work / "prefixes.jsonl", records)
        model_dir, reward, params = prepare(work, size)
        spec = {"model": str(model_dir), "records": pope_order(records, args.steps, 0), "reward": reward,
                "out": str(work / "trl"), "result": str(work / "trl.json"), "steps": args.steps, "seed": 0,
                "threads": args.threads, "lora": args.lora, "grpo_config": grpo_config(args.lora)}
        (work / "spec.json").write_text(json.dumps(spec))
        commands = {"pope": pope_command(model_dir, reward, work / "prefixes.jsonl", work / "pope", args.steps, 0, args.lora),
                    "trl": [sys.executable, str(Path(__file__).resolve()), "--child-trl", str(work / "spec.json")]}
        parts = {}
        for name, command in commands.items():
            raw = work / f"{name}.txt"
            subprocess.run(["py-spy", "record", "-r", str(rate), "-f", "raw", "-o", str(raw), "--", *command],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            parts[name] = profile_parts(raw.read_text(), rate)
    print(f"\npy-spy, {size}, {args.steps} steps, seconds of samples in each part (parts overlap):")
    print(f"{'part':<32} {'pope':>7} {'trl':>7}")
    for part in ["seconds", *PROFILE_PARTS]:
        print(f"{part:<32} {parts['pope'][part]:>7.1f} {parts['trl'][part]:>7.1f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"profile_vs_trl_{size}{'_lora' if args.lora else ''}.json"
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "size": size, "steps": args.steps,
                                "rate_hz": rate, "parts_seconds": parts}, indent=1))
    print(f"wrote {path}")


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,6M")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lora", action="store_true", help="LoRA r16 on all linear layers instead of full fine-tuning")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: pope --dtype bfloat16 against TRL's bf16=True (both bf16 autocast over "
                             "float32 weights)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: one pope and one TRL run of the first size under py-spy, time per part")
    parser.add_argument("--child-trl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_trl:
        trl_child(json.loads(Path(args.child_trl).read_text()))
        return

    import torch
    import trl

    # Children get the thread count through the environment (pope's CLI has no thread option;
    # torch takes OMP_NUM_THREADS at start-up) and find bench_train's coin reward on PYTHONPATH.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false"}
    if args.profile:
        profile(args, env)
        return
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, load {os.getloadavg()}",
              "torch": torch.__version__, "trl": trl.__version__, "threads": args.threads, "steps": args.steps,
              "reps": args.reps, "prompts_per_step": PROMPTS, "group_size": GROUP, "max_new_tokens": MAX_NEW,
              "temperature": TEMPERATURE, "lr": LR, "micro_batch": MICRO, "tuning": "lora r16" if args.lora else "full",
              "dtype": args.dtype, "grpo_config": grpo_config(args.lora, args.dtype), "rows": []}
    records = one_lookup_problems(64)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_prefixes(work / "prefixes.jsonl", records)
        for size in args.sizes.split(","):
            model_dir, reward, params = prepare(work, size)
            check_same_prompts(model_dir, records)
            runs = {"pope": [], "trl": []}
            for rep in range(args.reps):
                seed = rep  # both trainers get the same seeds: the same seed budget for the reward curves
                for trainer in ("pope", "trl"):  # alternate, so both see the same background load
                    out = work / f"{size}-{trainer}-{rep}"
                    load = os.getloadavg()[0]
                    if trainer == "pope":
                        command = pope_command(model_dir, reward, work / "prefixes.jsonl", out, args.steps, seed, args.lora,
                                               args.dtype)
                        wall, rss, code = run_child(command, env)
                        rows = pope_rows(out) if code == 0 else []
                    else:
                        spec = {"model": str(model_dir), "records": pope_order(records, args.steps, seed),
                                "reward": reward, "out": str(out), "result": str(work / f"{size}-trl-{rep}.json"),
                                "steps": args.steps, "seed": seed, "threads": args.threads, "lora": args.lora,
                                "grpo_config": grpo_config(args.lora, args.dtype)}
                        (work / "spec.json").write_text(json.dumps(spec))
                        wall, rss, code = run_child([sys.executable, str(Path(__file__).resolve()), "--child-trl",
                                                     str(work / "spec.json")], env)
                        result = json.loads(Path(spec["result"]).read_text()) if code == 0 else {"rows": []}
                        rows = result["rows"]
                    if code:
                        raise SystemExit(f"{trainer} child failed (exit {code})")
                    summary = {"rep": rep, "seed": seed, "load_before": load, **summarise(rows, wall, rss)}
                    if trainer == "trl":
                        # TRL's own logged reward and loss per step: a check that our wrapper saw
                        # what TRL trained on, and that it did take optimizer steps.
                        summary["trl_logged"] = [{k: h.get(k) for k in ("step", "reward", "loss", "grad_norm")}
                                                 for h in result["trl_logs"] if "reward" in h]
                    runs[trainer].append(summary)
                    print(f"  {size} {trainer} rep {rep}: {summary['completions_per_s']:.1f} completions/s, "
                          f"step {summary['step_s']:.2f}s (gen {summary['generate_s']:.2f}s), wall {wall:.0f}s, "
                          f"rss {rss:.0f} MiB, load {load:.1f}", flush=True)
            pairs = list(zip(runs["pope"], runs["trl"]))  # rep i of pope ran right before rep i of TRL
            ratios = [p["completions_per_s"] / t["completions_per_s"] for p, t in pairs]
            curves = {name: [statistics.mean(r["rewards"][s] for r in reps_) for s in range(args.steps)]
                      for name, reps_ in runs.items()}
            tail = max(1, args.steps // 2)
            row = {"size": size, "params": params, "reward": REWARDS[reward], "runs": runs, "ratio_pope_over_trl": ratios,
                   # TRL seconds / pope seconds per part of the step: > 1 where pope is faster.
                   "generate_speedup": [t["generate_s"] / p["generate_s"] for p, t in pairs],
                   "rest_speedup": [t["rest_s"] / p["rest_s"] for p, t in pairs],
                   "reward_curve": curves, "reward_last_steps": tail,
                   "reward_last_mean": {name: statistics.mean(c[-tail:]) for name, c in curves.items()}}
            report["rows"].append(row)
            print_row(row)
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_lora" if args.lora else "") + ("_bf16" if args.dtype == "bfloat16" else "")
    path = RESULTS / f"bench_vs_trl{suffix}.json"
    # Sizes run in separate invocations (each under ~10 minutes here) share one file: a row
    # replaces the earlier row of the same size, the others stay.
    if path.exists():
        kept = [r for r in json.loads(path.read_text()).get("rows", []) if r["size"] not in args.sizes.split(",")]
        report["rows"] = kept + report["rows"]
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


def print_row(row: dict) -> None:
    def med(trainer, key):
        return statistics.median(r[key] for r in row["runs"][trainer])

    print(f"\n{row['size']} ({row['params']:,} params, reward {row['reward']}): medians over reps")
    print(f"{'trainer':<6} {'compl/s':>8} {'step s':>7} {'gen s':>6} {'score s':>7} {'rest s':>7} "
          f"{'gen tok/s':>9} {'len':>5} {'trained':>7} {'ms/seq':>6} {'wall s':>7} {'RSS MiB':>8}")
    for trainer in ("pope", "trl"):
        print(f"{trainer:<6} {med(trainer, 'completions_per_s'):>8.1f} {med(trainer, 'step_s'):>7.2f} "
              f"{med(trainer, 'generate_s'):>6.2f} {med(trainer, 'score_s'):>7.3f} {med(trainer, 'rest_s'):>7.2f} "
              f"{med(trainer, 'gen_tokens_per_s'):>9.0f} {med(trainer, 'mean_completion_tokens'):>5.1f} "
              f"{med(trainer, 'trained_sequences'):>7.0f} {med(trainer, 'rest_ms_per_trained_sequence'):>6.1f} "
              f"{med(trainer, 'wall_s'):>7.1f} {med(trainer, 'peak_rss_mib'):>8.0f}")
    print(f"pope/TRL completions/s, min / median / max: {spread(row['ratio_pope_over_trl'])}")
    print(f"TRL/pope seconds, generate: {spread(row['generate_speedup'])}; rest: {spread(row['rest_speedup'])}")
    for trainer in ("pope", "trl"):
        curve = " ".join(f"{v:.3f}" for v in row["reward_curve"][trainer])
        print(f"reward per step {trainer:<4}: {curve}  (mean of last {row['reward_last_steps']}: "
              f"{row['reward_last_mean'][trainer]:.3f})")
    print(flush=True)


if __name__ == "__main__":
    main()
