#!/usr/bin/env bash
# POPE against plain GRPO on a real instruct model, SmolLM2-135M-Instruct, on CPU in bf16:
# word problems -> the hard ones (filter-hard) -> their shortest sufficient prefixes (make-prefixes)
# -> both arms trained from the same start (LoRA) -> eval on held-out hard problems -> report.
#   pip install -e ".[lm]" && SEED=0 WORK=smollm2-run bash examples/smollm2/run.sh
# The problems, hard sets and prefixes do not depend on SEED: a second seed reuses them (every stage
# resumes when rerun) and trains and evaluates anew under WORK/seed-$SEED.
# Knobs (environment): MODEL, WORK, SEED, BACKEND (hf or vllm: filter-hard, make-prefixes, eval) and
# TRAIN_BACKEND (train's sampler; vLLM's CPU build samples a LoRA policy no faster than hf), POOL and HELDOUT (problems),
# K (filter-hard samples), PREFIX_N (guided samples a rung), STEPS (training steps an arm), N (eval samples).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LM="$HERE/../../pope_cli/lm"
MODEL="${MODEL:-$HOME/.cache/pope/smollm2-135m-instruct}"
WORK="${WORK:-smollm2-run}"
SEED="${SEED:-0}"
BACKEND="${BACKEND:-hf}"
TRAIN_BACKEND="${TRAIN_BACKEND:-hf}"
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
POOL="${POOL:-32}"
HELDOUT="${HELDOUT:-24}"
K="${K:-16}"
PREFIX_N="${PREFIX_N:-16}"
STEPS="${STEPS:-8}"
N="${N:-8}"
RUN="$WORK/seed-$SEED"
mkdir -p "$RUN"
started=$SECONDS
lap() { echo "== $1: $((SECONDS - started)) s since the start" | tee -a "$RUN/times.txt"; }

# Every stage samples as training does (T = 0.8: hard means never solved as the policy samples),
# in bf16, with the templates that ask for "The answer is N." and the reward that reads it.
SAMPLE=(--model "$MODEL" --dtype bfloat16 --temperature 0.8 --max-new-tokens 96
        --reward pope_cli.lm.reward:score)
UNGUIDED=(--unguided-template "$LM/templates/unguided.txt")
GUIDED=(--template "$LM/templates/guided.txt")

# 1. The model (fetched and converted once; verified on later runs) and three-step word problems
#    with small operands: the tier where SmolLM2 solves a few problems by luck and a worked first
#    step sometimes makes a hard one solvable (pope_cli/lm/README.md).
pope lm get --out "$MODEL"
[ -f "$WORK/data/pool.jsonl" ] || pope lm make-data --out "$WORK/data" --steps 3 --sizes small \
    --n-pool "$POOL" --n-heldout "$HELDOUT" --seed 0
lap "model and data"

# 2. Hard = no correct answer in K samples, for the training pool and the held-out set alike.
for SPLIT in pool heldout; do
    pope filter-hard "$WORK/data/$SPLIT.jsonl" "${SAMPLE[@]}" --backend "$BACKEND" "${UNGUIDED[@]}" --k "$K" --chunk 8 --seed 0 --out "$WORK/filter-$SPLIT"
done
lap "filter-hard"

# 3. The shortest prefix of the worked solution (whole sentences, at most 3/4 of it) that the model
#    finishes correctly at least once in PREFIX_N guided samples; the longest rung where none does.
for SPLIT in pool heldout; do
    pope make-prefixes "$WORK/filter-$SPLIT/hard.jsonl" "${SAMPLE[@]}" --backend "$BACKEND" "${GUIDED[@]}" --max-fraction 0.75 --n "$PREFIX_N" \
        --seed 0 --out "$WORK/prefixes-$SPLIT.jsonl"
done
lap "make-prefixes"

# 4. Plain GRPO (unguided prompts only) and POPE (guided and unguided copies, the prefix masked from
#    the loss), same start model, seed and budget: LoRA r16, bf16 autocast over float32 adapters.
for ARM in grpo pope; do
    pope train "$WORK/prefixes-pool.jsonl" "${SAMPLE[@]}" --backend "$TRAIN_BACKEND" "${UNGUIDED[@]}" "${GUIDED[@]}" \
        --mode "$ARM" --steps "$STEPS" --prompts-per-step 4 --group-size 8 --lora-rank 16 --lora-alpha 32 --lr 1e-4 \
        --warmup-steps 1 --save-every "$STEPS" \
        --seed "$SEED" --out "$RUN/runs/$ARM"
done
lap "train"

# 5. The start model and both arms on the held-out hard problems, unguided and guided (their own
#    prefixes), avg@N and pass@k; then the figures and tables.
pope eval "$WORK/prefixes-heldout.jsonl" --mode unguided,guided --model "$MODEL" --model "$RUN/runs/grpo/final" \
    --model "$RUN/runs/pope/final" "${SAMPLE[@]:2}" --backend "$BACKEND" "${UNGUIDED[@]}" "${GUIDED[@]}" --n "$N" --k "1,$N" --seed "$SEED" --out "$RUN/eval"
pope report "$RUN/runs/grpo" "$RUN/runs/pope" "$RUN/eval" --smooth 2 --out "$RUN/report"
lap "eval and report"
