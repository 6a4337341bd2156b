#!/usr/bin/env bash
# POPE on Qwen/Qwen3-4B-Instruct-2507, the paper's setup: pools -> hard problems -> prefixes ->
# train (POPE and the plain-GRPO baseline) -> eval on AIME 2025 and HMMT Feb 2025. Each stage
# resumes when rerun. Needs GPUs, vLLM (pip install -e ".[vllm]") and the network (hub data).
#   GPUS=8 WORK=pope-qwen3-4b bash examples/qwen3-4b-instruct/run.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${MODEL:-Qwen/Qwen3-4B-Instruct-2507}"
WORK="${WORK:-pope-qwen3-4b}"
GPUS="${GPUS:-1}"
mkdir -p "$WORK"

# 1. DAPO-Math-17k + Omni-MATH levels 5-8 + AceReason-Math, deduplicated.
[ -f "$WORK/problems.jsonl" ] || python "$HERE/prepare_pools.py" --out "$WORK/problems.jsonl"

# 2. Hard = 0 correct of 128 samples at a 32k-token budget (sampling stops at the first correct one).
#    One engine worker per GPU in each sampling stage (--ray auto to spread them over a Ray cluster).
pope filter-hard "$WORK/problems.jsonl" --model "$MODEL" --k 128 --chunk 16 --max-new-tokens 32768 \
    --backend vllm --max-model-len 36864 --workers "$GPUS" --out "$WORK/filter"

# 3. The shortest oracle prefix (at most a quarter of the solution) that the model finishes at
#    least once in 16 guided samples. Hard problems without a solution are reported and skipped.
pope make-prefixes "$WORK/filter/hard.jsonl" --model "$MODEL" --max-fraction 0.25 --n 16 \
    --max-new-tokens 16384 --temperature 0.8 --backend vllm --max-model-len 20480 --workers "$GPUS" \
    --out "$WORK/prefixes.jsonl"

# 4. What training will take, without loading weights; then POPE (1:1 guided:unguided) and plain GRPO.
#    Under torchrun pope generates with the hf engine (vLLM is one-GPU only for now), 16 sequences
#    at a time to fit their KV cache next to the policy.
TRAIN=(pope train "$WORK/prefixes.jsonl" --model "$MODEL" --config "$HERE/train.toml")
if [ "$GPUS" -gt 1 ]; then
    TRAIN+=(--backend hf --batch-size 16)
fi
"${TRAIN[@]}" --out "$WORK/runs/pope" --dry-run --gpus "$GPUS" --model-config "$HERE/model_config.json"
if [ "$GPUS" -gt 1 ]; then
    TRAIN=(torchrun --nproc-per-node "$GPUS" -m pope_cli.cli "${TRAIN[@]:1}")
fi
"${TRAIN[@]}" --out "$WORK/runs/pope"
"${TRAIN[@]}" --out "$WORK/runs/grpo" --mode grpo

# 5. Unguided avg@16 (= pass@1) and pass@16 on AIME 2025 and HMMT Feb 2025, base vs GRPO vs POPE,
#    and the hard set itself, unguided and guided.
MODELS=(--model "$MODEL" --model "$WORK/runs/grpo/final" --model "$WORK/runs/pope/final")
for BENCH in aime_2025 hmmt_feb_2025; do
    pope eval "hf:MathArena/$BENCH:train" --id-field problem_idx "${MODELS[@]}" --n 16 --k 1,16 \
        --max-new-tokens 16384 --backend vllm --max-model-len 20480 --workers "$GPUS" --out "$WORK/eval/$BENCH"
done
pope eval "$WORK/prefixes.jsonl" --mode unguided,guided "${MODELS[@]}" --n 16 --k 1,16 \
    --max-new-tokens 16384 --backend vllm --max-model-len 20480 --workers "$GPUS" --out "$WORK/eval/hard"
