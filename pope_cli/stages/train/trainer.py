"""`pope train`: POPE's RL loop, generate → score → advantages → loss → step → log → checkpoint.

The algorithm, exactly: GRPO with an outcome reward, fully on-policy, no value model.
- A step draws `prompts_per_step` prompts from the data mix: guided copies of hard problems
  (problem + oracle prefix + an instruction to continue, all in the prompt), unguided copies
  (1:1 by default), optionally easy problems: `easy_fraction` of every step, or, with
  `curriculum` C, every prompt of steps 1..C and none after (the easy-to-hard curriculum the
  paper's summary argues against). A guided prompt shows the whole chosen prefix (`guidance`
  fixed) or, with `guidance` anneal, a beginning of the written solution in whole lines, from
  the whole derivation at the first step falling linearly to none; `guidance` adaptive draws a
  guided copy only while the problem's last unguided group failed and shortens its prefix a
  rung once the guided group mostly succeeds (exact rules in guidance.py). The current policy
  samples `group_size` completions per prompt at `temperature` (0.8, the paper's).
- Reward: 1 if the final answer is correct, else 0 (an unparseable answer is 0).
- Advantage: reward − the group's mean reward, divided by the group's sample std (GRPO) or not
  (`adv_norm=none`, Dr. GRPO). A group whose rewards are all equal has no signal: it is left
  out of the backward pass, which would cost a full forward/backward for zero gradient (it
  stays in when a KL or entropy term is on, since those do move it). The loss is then averaged
  over the trained groups' tokens (as after DAPO's dynamic sampling), so a step where few groups
  have signal is not scaled down; TRL divides by every token of the batch instead.
- Off-policy oracle rollouts (`oracle_rollouts` N, off by default; the baseline the paper's
  summary argues against, and LUFFY's regularised form of it): in every unguided group of a
  problem with a `solution`, the policy samples G - N completions and the last N are the oracle
  solution (its tokens, then EOS), scored by the same reward; advantages are taken over the
  union. The oracle tokens' old log-probs are 0 (behaviour probability 1, LUFFY's assumption), so
  their importance weight is r_t = pi_theta(o_t | ·): `oracle_is` plain keeps the clipped
  surrogate, luffy replaces it on oracle tokens by the unclipped -A r_t / (r_t + gamma) (formulas
  and gradients in loss.py). Training metrics (reward, problems solved) count the policy's own
  samples only; `oracle/*` logs the oracle tokens' weights (mean, max), the share the clip
  stopped, their share of the surrogate, their entropy.
- Loss: the PPO-clipped surrogate over completion tokens only, EOS included; the prompt, the
  oracle prefix inside it and the padding are never a target, so the model is never trained to
  imitate oracle tokens, only on its own continuations (unless `oracle_rollouts` asks for it). Aggregation `token-mean` by default.
  KL (k3, to the starting model) and an entropy bonus exist but are off, as in the paper, whose
  clip-higher and entropy-bonus baselines made entropy blow up.
- One optimizer step per batch by default. The policy that sampled is then exactly the policy
  being trained: the importance ratio is 1, the clip never fires, no old-log-prob pass is spent,
  and the gradient is REINFORCE with a group baseline. Only `updates_per_step` > 1 or
  mini-batches make the ratio and the clip matter; old log-probs are then computed once.
- Rollout correction. The engine returns the log-prob of every token it sampled; vLLM's kernels
  (or bf16 `generate`) compute a slightly different distribution than the training forward.
  With l_t the trainer's log-prob of sampled token t under the policy that sampled (the old
  log-probs: the update's own detached forward on-policy) and s_t the engine's, r_t = exp(l_t -
  s_t) and, per sequence, R = exp(sum_t (l_t - s_t)). `--rollout-is` multiplies each token's
  clipped surrogate term (not the KL or entropy terms) by a constant weight: token-truncate
  min(r_t, C), sequence-truncate min(R, C), token-mask r_t inside [lo, C] else 0, sequence-mask
  R inside [lo, C] else 0 (C = --rollout-is-cap, 2; lo = --rollout-is-min, default 1/C), none 1.
  A zero weight leaves the token in the loss denominators. `auto` is token-truncate with vLLM
  (TRL's correction of vLLM sampling, Yao et al.'s truncated IS) and none with the hf engine,
  which samples with the policy object itself (on CPU in fp32 the toy model's mismatch/kl was
  ~1e-12 and its largest ratio 1.00001: kernel noise; bf16 on a GPU is not measured yet).
  Logged every step over the trained tokens, whatever the mode: `mismatch/kl`, the mean k3
  estimate r_t - log r_t - 1 of KL(sampler || trainer); `mismatch/ratio_mean` and
  `mismatch/ratio_max` of r_t; `mismatch/masked_fraction`, the share of tokens a mask mode zeroed.
- Memory: log-probs are taken `--logprob-chunk` positions at a time, each chunk's LM-head
  projection recomputed in backward (logprobs.py), and micro-batches are cut from the mini-batch
  sorted by length (`train/pad_fraction`, and `train/pad_fraction_unsorted` for the order it
  replaced); neither changes the gradient.
Why on-policy with one update: that is the paper's setup, and any other choice would make a
comparison with it say something about off-policy correction instead of about guidance.

Data parallel (`torchrun --nproc-per-node N -m pope_cli.cli train ...`): every rank draws the
same step, generates and scores its contiguous block of the prompts (whole groups, with the
sample seeds a single process would use; with vLLM each rank's own engine, tensor parallel 1,
asleep during the update and given the new weights before it wakes, see policy.EngineSync),
and the ranks exchange their rollouts, so each holds
the whole step's rewards, advantages and metrics. Each rank trains on every N-th sequence of
each mini-batch with the whole mini-batch's loss denominators, and DDP (LoRA; any run on CPU)
or FSDP2 (full fine-tuning on GPU) averages the gradients: a step on N ranks is the step one
process takes on the same batch. Rank 0 alone logs and writes; see parallel.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from pope_cli.shared.data import written_solution
from pope_cli.shared.distributed import SOLO, Ranks, launched
from pope_cli.shared.engines.base import Completion
from pope_cli.shared.errors import Interrupted, PopeError
from pope_cli.shared.claim import claim_output
from pope_cli.shared.config import MODEL_RESUME_IGNORED
from pope_cli.shared.outputs import JsonlAppender, atomic_write_json, atomic_write_jsonl, load_jsonl_repairing, manifest
from pope_cli.shared.models import dtype_record
from pope_cli.shared.seeding import derive_seed
from pope_cli.shared.trackers import OUTPUTS as TRACKER_OUTPUTS
from pope_cli.stages.train.advantages import group_advantages
from pope_cli.stages.train.batch import DataMix, joined, rollout, rollout_metrics, training_samples
from pope_cli.stages.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from pope_cli.stages.train.config import TrainConfig
from pope_cli.stages.train.loss import LossSettings
from pope_cli.stages.train.parallel import choose, generating, wrap
from pope_cli.stages.train.policy import EngineSync, build_policy, make_optimizer, save_final
from pope_cli.stages.train.report import StepReporter, start_notes
from pope_cli.stages.train.update import ORACLE_METRICS, UpdateSettings, policy_update, reference_scorer
from pope_cli.stages.train.guidance import AdaptiveGuidance, AnnealedPrefixes, prefix_share
from pope_cli.stages.train.watch import RunWatch, completion_rows

# Options a rerun may change without changing what the finished steps computed.
RESUME_IGNORED = (*MODEL_RESUME_IGNORED, "overwrite", "steps", "save_every", "keep", "merge", "data_parallel",
                  "reward.workers", "trackers.report_to", "trackers.run_name", "trackers.project", "log_completions",
                  "log_every")

_NO_UPDATE = {"loss": None, "grad_norm": None, "optimizer_steps": 0, "nan_skipped": 0, "entropy": None, "kl": None,
              "clip_fraction": None, "clip_low_fraction": None, "clip_high_fraction": None, "ratio_mean": None,
              "trained_sequences": 0, "train_tokens": 0, "train/pad_fraction": None, "train/pad_fraction_unsorted": None,
              "mismatch/kl": None, "mismatch/ratio_mean": None, "mismatch/ratio_max": None,
              "mismatch/masked_fraction": None, **dict.fromkeys(ORACLE_METRICS)}


class Run:
    """Everything a step needs: the config, the policy and its optimizer, engine, scorer, data."""

    def __init__(self, cfg: TrainConfig, checkpoint: Path | None, scorer,
                 data: tuple[list[dict], list[dict]] | None = None, ranks: Ranks = SOLO):
        from transformers.utils import logging as hf_logging

        from pope_cli.shared.engines import choose_backend
        from pope_cli.shared.engines.base import Sampling
        from pope_cli.shared.runtime import PromptBuilder

        hf_logging.disable_progress_bar()  # checkpoint saves would draw a bar each
        self.cfg, self.out, self.scorer, self.ranks = cfg, Path(cfg.out), scorer, ranks
        hard, easy = data or read_training_data(cfg)
        torch.manual_seed(cfg.seed)
        self.policy = build_policy(cfg, checkpoint)
        self.strategy = choose(cfg.data_parallel, cfg.lora, self.policy.device)
        self.train_model = wrap(self.policy.model, ranks, self.strategy, self.policy.device)
        self.optimizer, self.scheduler = make_optimizer(cfg, self.train_model, self.policy.autocast_dtype is not None)
        state = {}
        if checkpoint:
            state = load_training_state(checkpoint, self.policy.model, self.optimizer, self.scheduler, ranks.rank)
        self.solved_ever = set(state.get("solved_ever", []))
        self.nan_streak = state.get("nan_streak", 0)
        self.mix = DataMix(hard, easy, cfg.mode, cfg.guided_ratio, cfg.easy_fraction, cfg.prompts_per_step, cfg.seed,
                           state.get("data"), cfg.curriculum)
        self.prompts = PromptBuilder(self.policy.tokenizer, cfg.prompt, cfg.template)
        self._prompt_cache: dict = {}
        self.annealed = AnnealedPrefixes(self.policy.tokenizer) if cfg.guidance == "anneal" else None
        self._oracle: dict[str, Completion] = {}
        self.adaptive = AdaptiveGuidance(cfg.guidance_shorten_at, state.get("guidance")) \
            if cfg.guidance == "adaptive" else None
        # The sampled tokens' log-probs measure (and correct) the sampler/trainer mismatch.
        self.sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens,
                                 logprobs=True)
        vllm = choose_backend(cfg.model.backend) == "vllm"
        self.engine = self._engine(vllm)
        self.sync = EngineSync(self.engine, self.policy, self.out, cfg.lora, vllm, ranks)
        if checkpoint is not None:
            self.sync.sync()
        self.settings = UpdateSettings(
            LossSettings(cfg.clip_low, cfg.clip_high, cfg.loss_agg, cfg.sampling.max_new_tokens, cfg.kl_coef,
                         cfg.entropy_coef, cfg.oracle_is, cfg.oracle_is_gamma),
            cfg.sampling.temperature, cfg.updates_per_step, cfg.mini_batch_size, cfg.micro_batch_size,
            cfg.max_grad_norm, self.policy.autocast_dtype, cfg.logprob_chunk, rollout_mode(cfg.rollout_is, vllm),
            cfg.rollout_is_cap, cfg.rollout_is_min if cfg.rollout_is_min is not None else 1 / cfg.rollout_is_cap)
        self.reference = None
        if cfg.kl_coef:
            self.reference = reference_scorer(self.policy.model, self.policy.frozen_reference, self.settings)
        self.evaluation = _periodic_eval(cfg, self) if cfg.eval_data else None

    def _engine(self, vllm: bool):
        if not vllm:
            from pope_cli.shared.engines.hf import HFEngine

            return HFEngine(self.policy.model, self.policy.tokenizer, self.cfg.model.batch_size,
                            self.policy.autocast_dtype)
        from pope_cli.shared.engines import make_engine

        return make_engine(self.cfg.model, max_lora_rank=self.cfg.lora_rank if self.cfg.lora else None,
                           enable_sleep_mode=True, full_weight_sync=not self.cfg.lora)

    def generating(self):
        """The context generation runs in: a sharded policy gathered whole for the hf engine;
        nothing for vLLM, which holds its own copy of the weights."""
        return contextlib.nullcontext() if self.sync.vllm else generating(self.policy.model)

    def shown_guided(self, record: dict, share: float) -> dict | None:
        """A guided record as this step shows it (guidance.py); None: no prefix left, the unguided prompt."""
        if self.adaptive is not None:
            return self.adaptive.record(record)
        return self.annealed.record(record, share) if self.annealed is not None else record

    def prompt_ids(self, record: dict, shown: dict | None) -> list[int]:
        """`record`'s prompt: guided on `shown` (what `shown_guided` gave), unguided when None."""
        as_kind = "guided" if shown is not None else "unguided"
        key = (as_kind, record["id"], len(shown["prefix"]) if shown is not None else 0)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = self.prompts.build(as_kind, shown or record)
        return self._prompt_cache[key]

    def oracle_completion(self, item) -> Completion | None:
        """`--oracle-rollouts`: an unguided hard prompt's oracle solution as a group sample (its
        tokens, then EOS, as the policy would end it); None for other prompts and problems without one."""
        solution = written_solution(item.record)
        if not self.cfg.oracle_rollouts or item.kind != "unguided" or not solution:
            return None
        if item.record["id"] not in self._oracle:
            from pope_cli.shared.engines.hf import eos_ids

            ids = self.policy.tokenizer.encode(solution, add_special_tokens=False)
            self._oracle[item.record["id"]] = Completion(ids + eos_ids(self.policy.model, self.policy.tokenizer)[:1],
                                                         solution, "stop")
        return self._oracle[item.record["id"]]

    def state(self) -> dict:
        guidance = {"guidance": self.adaptive.state()} if self.adaptive is not None else {}
        return {"data": self.mix.state(), "solved_ever": sorted(self.solved_ever), "nan_streak": self.nan_streak,
                **guidance}


def _guidance_metrics(shown: list, share: float) -> dict:
    """The step's guidance from what its guided copies showed (None: the unguided prompt)."""
    fractions = [float(record.get("prefix_fraction") or 0.0) if record is not None else 0.0 for record in shown]
    return {"guidance/prefix_share": share if shown else None,
            "guidance/prefix_fraction": sum(fractions) / len(fractions) if fractions else None}


def _drawn(run: Run, step: int) -> tuple[list, int]:
    """The step's items, less the guided copies adaptive guidance leaves out; and how many it left."""
    items = run.mix.draw(step)
    if run.adaptive is None:
        return items, 0
    kept = [item for item in items if item.kind != "guided" or run.adaptive.wanted(item.record)]
    return kept, len(items) - len(kept)


def _adapt(run: Run, result) -> int:
    """Adaptive guidance takes the step's outcomes; returns how many prefixes it shortened."""
    return sum(run.adaptive.observe(item.kind, item.record, result.sampled([g])[1].tolist())
               for g, item in enumerate(result.items))


def train_step(run: Run, step: int) -> dict:
    """One step (0-based); returns its metrics row."""
    cfg, started = run.cfg, time.perf_counter()
    items, skipped = _drawn(run, step)
    mine = run.ranks.block(len(items))
    share = prefix_share(cfg.guidance, step, cfg.anneal_steps or cfg.steps)
    shown = [run.shown_guided(item.record, share) if item.kind == "guided" else None for item in items]
    prompts = [run.prompt_ids(item.record, record) for item, record in zip(items[mine], shown[mine])]
    oracle = [run.oracle_completion(item) for item in items[mine]]
    with run.generating():
        result, times = rollout(items[mine], prompts, run.engine, run.scorer, run.sampling, cfg.group_size, cfg.seed,
                                step, mine.start, oracle, cfg.oracle_rollouts)
    result, times = _whole_step(run.ranks, result, times)
    run.last_rollout = result  # for the logged completions
    advantages, has_signal = group_advantages(result.rewards, cfg.adv_norm)  # (P, n), (P,)
    regularised = bool(cfg.kl_coef or cfg.entropy_coef)
    trained = torch.ones_like(has_signal) if regularised else has_signal  # (P,)
    samples = training_samples(result, advantages, trained, cfg.mask_truncated)
    metrics, solved = rollout_metrics(result, has_signal)
    run.solved_ever |= solved
    lr = run.scheduler.get_last_lr()[0]
    train_started = time.perf_counter()
    run.sync.before_update()
    update = dict(_NO_UPDATE)
    if samples:
        update = policy_update(run.train_model, run.optimizer, samples, run.settings, run.policy.pad_id,
                               run.policy.device, derive_seed(cfg.seed, "update", step), run.reference, run.ranks)
    with warnings.catch_warnings():
        # The schedule counts training steps, including ones with no optimizer step (no signal).
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        run.scheduler.step()
    train_s = time.perf_counter() - train_started
    sync_started = time.perf_counter()
    run.sync.after_update()
    sync_s = time.perf_counter() - sync_started
    metrics.update(_guidance_metrics([record for item, record in zip(items, shown) if item.kind == "guided"], share))
    if run.adaptive is not None:
        metrics.update({"guidance/guided_skipped": skipped, "guidance/shortened": _adapt(run, result)})
    row = {"step": step + 1, **metrics, "solved_unguided/step": len(solved), "solved_unguided/ever": len(run.solved_ever),
           "lr": lr, **update,
           "time/generate_s": times["generate"], "time/score_s": times["score"], "time/train_s": train_s,
           "time/sync_s": sync_s,
           "throughput/gen_tokens_per_s": metrics["gen_tokens"] / times["generate"] if times["generate"] else None,
           "throughput/train_tokens_per_s": update["train_tokens"] / train_s if update["train_tokens"] else None}
    if run.evaluation and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
        eval_started = time.perf_counter()
        with run.generating():
            if run.ranks.main:  # the others wait at the next collective
                row.update(run.evaluation())
        row["time/eval_s"] = time.perf_counter() - eval_started
    row["time/step_s"] = time.perf_counter() - started
    # JSON has no NaN: a skipped non-finite update logs its loss as null (and nan_skipped > 0).
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def train_autos(cfg: TrainConfig) -> dict:
    """What each `auto` of the run's options means here (see `runtime.resolved_autos`)."""
    from pope_cli.shared.engines import choose_backend
    from pope_cli.shared.runtime import resolved_autos

    autos = resolved_autos(cfg.model)
    return {**autos, "rollout_is": rollout_mode("auto", choose_backend(cfg.model.backend) == "vllm")}


def rollout_mode(requested: str, vllm: bool) -> str:
    """`--rollout-is` with `auto` resolved: truncated per-token IS for vLLM, as TRL corrects vLLM
    by default; none for the hf engine, which samples with the very model being trained."""
    if requested != "auto":
        return requested
    return "token-truncate" if vllm else "none"


def _whole_step(ranks: Ranks, result, times: dict):
    """Every rank's block of the rollout joined, on every rank; the slowest rank's timings."""
    if ranks.world == 1:
        return result, times
    parts = ranks.gather((result, times))
    return joined([part for part, _ in parts]), {key: max(t[key] for _, t in parts) for key in times}


def _periodic_eval(cfg: TrainConfig, run: Run):
    """A callable returning {"eval/<mode>/<metric>": value} for the current policy."""
    from pope_cli.shared.data import PREFIX_FIELDS, iter_raw_records
    from pope_cli.stages.evaluate import evaluate_in_process, load_items
    from pope_cli.stages.evaluate import EvalConfig
    from pope_cli.shared.config import FieldMap

    first = next(iter_raw_records(cfg.eval_data), (None, None))[1]
    modes = ["unguided", "guided"] if isinstance(first, dict) and all(k in first for k in PREFIX_FIELDS) else ["unguided"]
    eval_cfg = EvalConfig(data=cfg.eval_data, out=cfg.out, models=[cfg.model.model], model=cfg.model, fields=FieldMap(),
                          prompt=cfg.prompt, sampling=cfg.sampling, reward=cfg.reward, n=cfg.eval_n, ks=cfg.eval_k,
                          modes=modes, template=cfg.template, bootstrap=0, seed=cfg.seed)
    items = load_items(eval_cfg)

    def evaluate() -> dict:
        results = evaluate_in_process(run.engine, run.scorer, run.sampling, items, run.prompts.build, cfg.eval_n,
                                      cfg.eval_k, derive_seed(cfg.seed, "eval"), cfg.model.batch_size)
        return {f"eval/{mode}/{name}": value for mode, metrics in results.items() for name, value in metrics.items()
                if isinstance(value, (int, float))}

    return evaluate


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


def read_training_data(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """The hard problems with their prefixes, and the easy problems (if any)."""
    from pope_cli.shared.data import read_prefix_records, read_problems
    from pope_cli.shared.runtime import PromptBuilder

    hard = read_prefix_records(cfg.prefixes)
    if cfg.guidance == "adaptive":
        unladdered = [r["id"] for r in hard if r.get("prefix") and not (r.get("ladder") and r.get("rung"))]
        if unladdered:
            raise PopeError(f"--guidance adaptive: {cfg.prefixes}: {len(unladdered)} record(s) have no rung ladder "
                            f"(first: {unladdered[0]!r}); make the prefixes again with this pope's make-prefixes")
    if cfg.guidance == "anneal":
        unwritten = [r["id"] for r in hard if r.get("prefix") and not written_solution(r)]
        if unwritten:
            raise PopeError(f"--guidance anneal: {cfg.prefixes}: {len(unwritten)} guided record(s) have no `solution` "
                            f"to anneal from (first: {unwritten[0]!r})", exit_code=2)
    if cfg.oracle_rollouts and not any(written_solution(r) for r in hard):
        raise PopeError(f"--oracle-rollouts: no record of {cfg.prefixes} has a `solution` to put in its groups", exit_code=2)
    easy = [p.fields() for p in read_problems(cfg.easy)] if cfg.easy else []
    # Every template a record names loads, before anything is written.
    prompts = PromptBuilder(None, cfg.prompt, cfg.template)
    prompts.check_records(hard, cfg.prefixes, *{"pope": ("guided", "unguided"), "grpo": ("unguided",),
                                                "guided": ("guided",)}[cfg.mode])
    prompts.check_records(easy, str(cfg.easy), "unguided")
    return hard, easy


def run_train(cfg: TrainConfig, reporter_stream=None) -> dict:
    """Train (or resume) the run in `cfg.out`; returns the summary the CLI prints. Under
    torchrun every rank runs it, and rank 0 alone writes the run's files."""
    from pope_cli.shared.models import resolve_device

    started = time.time()
    data = read_training_data(cfg)  # before anything is written: bad data must leave no run behind
    with launched(resolve_device(cfg.model)) as ranks, contextlib.ExitStack() as claims:
        return _train(cfg, data, ranks, started, reporter_stream, claims)


def _prepare(cfg: TrainConfig, claims: contextlib.ExitStack) -> tuple[Path | None, int, list[dict], bool]:
    """Claim RUN (held until `claims` closes) and read where it stands: the checkpoint to resume
    from, its step, the metrics rows up to it, and whether the run is already finished."""
    out = Path(cfg.out)
    metrics_path = out / "metrics.jsonl"
    claim = claims.enter_context(claim_output(
        cfg.out, out / "config.json", cfg,
        [metrics_path, out / "checkpoints", out / "final", out / "manifest.json", *(out / name for name in TRACKER_OUTPUTS)],
        cfg.overwrite, RESUME_IGNORED, train_autos(cfg)))
    claims.claim = claim  # rank 0's; `_start` commits it once the model is loaded
    checkpoint = latest_checkpoint(out) if claim.resuming else None
    done = _checkpoint_step(checkpoint)
    # Steps after the checkpoint were lost with the process; they will be recomputed.
    rows = [row for row in load_jsonl_repairing(metrics_path) if row["step"] <= done] if claim.resuming else []
    return checkpoint, done, rows, done >= cfg.steps and (out / "final").is_dir()


def _start(cfg: TrainConfig, claims: contextlib.ExitStack, rows: list[dict]) -> None:
    """The model is loaded: commit the run and record its config (a changed --steps etc.)."""
    out = Path(cfg.out)
    claims.claim.started()
    atomic_write_json(out / "config.json", config_dict(cfg))
    atomic_write_jsonl(out / "metrics.jsonl", rows)


def _train(cfg: TrainConfig, data, ranks: Ranks, started: float, reporter_stream, claims: contextlib.ExitStack) -> dict:
    """The run as this rank takes part in it; rank 0 alone prepares RUN, logs and writes."""
    from pope_cli.shared.reward.checker import Scorer

    out = Path(cfg.out)
    checkpoint, done, rows, finished = ranks.on_main(lambda: _prepare(cfg, claims))
    if finished:
        ranks.on_main(lambda: _start(cfg, claims, rows))
        return _summary(cfg, rows, started, resumed_from=done, trained=0)
    reporter = StepReporter(cfg.steps, done, reporter_stream, silent=not ranks.main)
    try:
        with Scorer(cfg.reward.spec, workers=cfg.reward.workers, timeout=cfg.reward.timeout) as scorer:
            run = Run(cfg, checkpoint, scorer, data, ranks)
            ranks.on_main(lambda: _start(cfg, claims, rows))
            reporter.message(_banner(cfg, run, done))
            for note in start_notes(cfg):
                reporter.message(note)
            watch = RunWatch(cfg, out, config_dict(cfg), done, reporter.message) if ranks.main else None
            with (JsonlAppender(out / "metrics.jsonl") if ranks.main else contextlib.nullcontext()) as metrics_file:
                saved = done
                try:
                    for step in range(done, cfg.steps):
                        row = train_step(run, step)
                        if metrics_file is not None:
                            metrics_file.write([row])
                            watch.step(row, lambda step, count: completion_rows(
                                step, run.last_rollout, count, run.policy.tokenizer.decode))
                        rows.append(row)
                        reporter.step(row)
                        _check_nan(run, row, reporter)
                        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                            save_checkpoint(out, step + 1, run.policy.model, run.policy.tokenizer, run.optimizer,
                                            run.scheduler, run.state(), cfg.keep, ranks)
                            saved = step + 1
                except KeyboardInterrupt:
                    raise Interrupted(f"stopped in step {step + 1}; the last checkpoint is step {saved}; rerun the "
                                      "same command to resume from it") from None
                finally:
                    if watch is not None:
                        watch.close()
            written = save_final(run.policy, out, cfg.merge, ranks)
            run.sync.close()
    finally:
        reporter.close()
    summary = _summary(cfg, rows, started, resumed_from=done, trained=cfg.steps - done)
    summary["written"] = [str(p) for p in written]
    if ranks.main:
        atomic_write_json(out / "manifest.json", manifest("train", config_dict(cfg), started, summary,
                                                          model=cfg.model.model, seed=cfg.seed,
                                                          precision=dtype_record(cfg.model)))
    return summary


def _checkpoint_step(checkpoint: Path | None) -> int:
    return json.loads((checkpoint / "state.json").read_text())["step"] if checkpoint else 0


def _check_nan(run: Run, row: dict, reporter: StepReporter) -> None:
    """Count steps in a row whose update was skipped as non-finite; stop after too many."""
    if not row["nan_skipped"]:
        run.nan_streak = 0
        return
    run.nan_streak += 1
    reporter.message(f"step {row['step']}: non-finite loss or gradient, update skipped "
                     f"({run.nan_streak} step(s) in a row)")
    if run.nan_streak >= run.cfg.max_nan_steps:
        raise PopeError(f"stopped at step {row['step']}: the loss or gradient was not finite for {run.nan_streak} steps "
                        f"in a row (--max-nan-steps {run.cfg.max_nan_steps}); lower --lr, or check the model and data. "
                        f"Rerunning resumes from the last checkpoint.")


def _banner(cfg: TrainConfig, run: Run, done: int) -> str:
    streams = ", ".join(f"{len(s.records)} {kind}" for kind, s in run.mix.streams.items())
    kind = f"LoRA r{cfg.lora_rank}/a{cfg.lora_alpha}" if cfg.lora else "full"
    where = f"resuming after step {done}" if done else "starting"
    ranks = f", {run.ranks.world} ranks ({run.strategy})" if run.ranks.world > 1 else ""
    return (f"pope train: {where}; mode {cfg.mode} ({streams} prompts), {cfg.prompts_per_step} prompts x "
            f"{cfg.group_size} samples per step, {kind}, lr {cfg.lr:g}, device {run.policy.device}{ranks}")


def _summary(cfg: TrainConfig, rows: list[dict], started: float, resumed_from: int, trained: int) -> dict:
    last = rows[-1] if rows else {}
    return {"steps": len(rows), "trained_this_run": trained, "resumed_from": resumed_from,
            "solved_unguided_ever": last.get("solved_unguided/ever"),
            "last_reward": {kind: last.get(f"reward/{kind}") for kind in ("guided", "unguided", "easy")},
            "seconds": round(time.time() - started, 1), "out": cfg.out}
