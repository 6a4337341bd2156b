#!/usr/bin/env bash
# The GPU checks: every stage of pope on CUDA with the shipped toy model, training launched by
# torchrun, the ~0.5B hardware benchmark, and 4k/8k-token updates of the ~0.5B model with
# log-probs whole vs in chunks (peak memory, train tokens/s, MFU). The training checks also show
# the sampler/trainer mismatch of the bf16 hf engine (mismatch/* in metrics.jsonl). Prints one
# table; about 6 minutes on one H100/H200, and at most 2 more for the vLLM row (cut off at 120 s);
# the limit it is written for: 8.
#
#   bash scripts/gpu_check.sh [WORKDIR]
#
# Run from the repository root on a CUDA machine, with pope and its dependencies importable
# (`pip install -e .`, or PYTHONPATH=. with the packages present). Where vLLM's GPU build is
# importable (`pip install -e ".[vllm,dev]"`), the real-vLLM tests that fit one GPU also run, with sleep
# mode on (the CPU build has none): every sync gives vLLM the policy's weights (LoRA and full), vLLM's
# log-probs against the trainer's forward pass; without vLLM that row says "skipped". The other checks run pope's hf engine. On one GPU torchrun starts one rank, and pope runs a world of
# one as a single process (no process group, no DDP/FSDP2 wrapping): those checks cover the
# launch, not NCCL. Each check logs to WORKDIR/<check>.log; the table gives its exit status, wall
# seconds and a figure read from its outputs. Every stage resumes its outputs, so timings need a
# fresh WORKDIR.
set -u
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TOY=pope_cli/toy/templates
TOY_MODEL=$(python3 -c "from pope_cli.toy.model import SHIPPED_MODEL_DIR; print(SHIPPED_MODEL_DIR)")
MODEL=(--model "$TOY_MODEL" --reward pope_cli.toy.reward:score --reward-workers 4 --max-new-tokens 64 --backend hf)
COMMON=("${MODEL[@]}" --unguided-template "$TOY/unguided.txt")
GPU=(--device cuda --batch-size 1024)
ROWS=()

check() {  # check NAME FIGURE-COMMAND -- COMMAND...
    local name=$1 figure=$2 started status
    shift 3
    started=$(date +%s.%N)
    if "$@" >"$WORK/$name.log" 2>&1; then status=ok; else status="FAIL($?)"; fi
    local seconds
    seconds=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
    local reading=""
    [ "$status" = ok ] && reading=$(eval "$figure" 2>/dev/null | tr '\n' ' ')
    ROWS+=("$name|$status|$seconds|$reading")
    echo "== $name: $status in ${seconds}s"
    [ "$status" = ok ] || tail -5 "$WORK/$name.log"
}

pope() { python3 -m pope_cli.cli "$@"; }
hard_count() { python3 -c "import json, sys; c=json.load(open(sys.argv[1] + '/manifest.json'))['counts']; print(f\"hard {c['hard']}/{c['problems']}, {c['samples']} samples\")" "$1"; }
last_metrics() { python3 -c "
import json, sys; rows=[json.loads(l) for l in open(sys.argv[1] + '/metrics.jsonl')]; last=rows[-5:]
t=[x['time/step_s'] for x in rows[1:]] or [0]; print(f\"{len(rows)} steps, reward/all {rows[0]['reward/all']:.3f} -> {sum(x['reward/all'] for x in last)/len(last):.3f} (last 5), {sum(t)/len(t):.2f} s/step\")" "$1"; }
weights_moved() { python3 -c "
from safetensors.torch import load_file; import glob
import sys; a=load_file(sys.argv[1] + '/model.safetensors'); b=load_file(glob.glob(sys.argv[2] + '/final/*.safetensors')[0])
print('max |dw|', max((a[k].float()-b[k].float()).abs().max().item() for k in a if k in b))" "$TOY_MODEL" "$1"; }
accuracy() { python3 -c "
import json, sys; s=json.load(open(sys.argv[1] + '/summary.json'))['models']
for m, modes in s.items():
    print(' '.join(f\"{mode} avg {v['avg@n']:.3f} pass@8 {v.get('pass@8', float('nan')):.3f}\" for mode, v in modes.items()), end='; ')" "$1"; }
prefix_count() { python3 -c "
import json, sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(len(r), 'problems', sum(x['status'] == 'found' for x in r), 'found')" "$1"; }
mismatch() { python3 -c "
import json, sys; rows=[json.loads(l) for l in open(sys.argv[1] + '/metrics.jsonl')]
m=[x for x in rows if x.get('mismatch/kl') is not None] or [{}]
kl=max(x.get('mismatch/kl') or 0 for x in m); top=max(x.get('mismatch/ratio_max') or 0 for x in m)
mean=sum(x.get('mismatch/ratio_mean') or 0 for x in m)/len(m)
print(f'mismatch kl max {kl:.2e}, ratio mean {mean:.4f}, max {top:.3f} ({len(m)} steps)')" "$1"; }
long_figure() { python3 -c "
import json; r=json.load(open('benchmarks/results/bench_long_gpu.json'))
print('; '.join(f\"{x['completion']}/chunk {x['chunk']}: \" + ('OOM' if x.get('oom') else
      f\"{x['peak_memory_gib']:.1f} GiB, {x['train_tokens_per_s']:,.0f} tok/s, MFU {x['train_mfu']:.1%}\") for x in r['rows']))"; }
pytest_figure() { grep -E "passed|failed|error" "$WORK/$1.log" | tail -1; }
bench_figure() { python3 -c "
import json; r=json.load(open('benchmarks/results/bench_hardware_gpu.json'))
print(', '.join(f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}' for k, v in r.items() if k != 'date'))"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
EOF

pope toy make-data --out "$WORK/data" --n-easy 16 --n-hard 48 --n-heldout 32 >/dev/null
check filter-gpu-bf16 'hard_count "$WORK/filter-bf16"' -- pope filter-hard "$WORK/data/mix.jsonl" --out "$WORK/filter-bf16" \
    --k 32 --dtype bfloat16 "${GPU[@]}" "${COMMON[@]}"
check filter-gpu-fp32 'hard_count "$WORK/filter-fp32"' -- pope filter-hard "$WORK/data/mix.jsonl" --out "$WORK/filter-fp32" \
    --k 32 --dtype float32 "${GPU[@]}" "${COMMON[@]}"
check filter-cpu-fp32 'hard_count "$WORK/filter-cpu"' -- pope filter-hard "$WORK/data/mix.jsonl" --out "$WORK/filter-cpu" \
    --k 32 --device cpu --batch-size 256 "${COMMON[@]}"
head -n 24 "$WORK/filter-fp32/hard.jsonl" > "$WORK/hard24.jsonl"
check make-prefixes 'prefix_count "$WORK/prefixes.jsonl"' -- \
    pope make-prefixes "$WORK/hard24.jsonl" --out "$WORK/prefixes.jsonl" --template "$TOY/guided.txt" --n 16 \
    --max-fraction 0.85 "${GPU[@]}" "${MODEL[@]}"
TRAIN=(--steps 30 --prompts-per-step 16 --group-size 8 --warmup-steps 5 --adv-norm none --save-every 10 "${GPU[@]}")
check train-full-bf16 'last_metrics "$WORK/run-full"; weights_moved "$WORK/run-full"; mismatch "$WORK/run-full"' -- \
    pope train "$WORK/prefixes.jsonl" --out "$WORK/run-full" --mode pope --full --lr 2e-4 "${TRAIN[@]}" "${COMMON[@]}"
check train-lora-bf16 'last_metrics "$WORK/run-lora"; mismatch "$WORK/run-lora"' -- \
    pope train "$WORK/prefixes.jsonl" --out "$WORK/run-lora" --mode pope --lora --lora-rank 16 --lr 2e-4 "${TRAIN[@]}" "${COMMON[@]}"
check torchrun-1rank-full 'last_metrics "$WORK/run-torchrun-full"' -- \
    python3 -m torch.distributed.run --nproc-per-node 1 -m pope_cli.cli train "$WORK/prefixes.jsonl" --out "$WORK/run-torchrun-full" \
    --mode pope --full --steps 6 --prompts-per-step 16 --group-size 8 --lr 2e-4 --save-every 3 \
    "${COMMON[@]}"
check torchrun-1rank-lora 'last_metrics "$WORK/run-torchrun-lora"' -- \
    python3 -m torch.distributed.run --nproc-per-node 1 -m pope_cli.cli train "$WORK/prefixes.jsonl" --out "$WORK/run-torchrun-lora" \
    --mode pope --lora --steps 6 --prompts-per-step 16 --group-size 8 --lr 2e-4 --save-every 3 \
    "${COMMON[@]}"
check eval-gpu 'accuracy "$WORK/eval"' -- pope eval "$WORK/data/heldout.jsonl" --out "$WORK/eval" --n 16 --k 1,8 \
    --mode unguided "${GPU[@]}" "${COMMON[@]}" --model "$WORK/run-full/final"
if python3 -c "import vllm" 2>/dev/null; then
    check vllm-real 'pytest_figure vllm-real' -- timeout 120 python3 -m pytest -q -p no:xdist -m real_vllm \
        tests/test_vllm_real_train.py -k "every_sync or logprobs_match"
else
    ROWS+=("vllm-real|skipped|0|vLLM is not importable")
fi
check bench-hardware-0.5B bench_figure -- \
    python3 benchmarks/bench_hardware.py --gpu
check long-0.5B-4k-8k long_figure -- \
    python3 benchmarks/bench_long.py

echo
printf '%-20s %-9s %8s  %s\n' check status seconds figure
for row in "${ROWS[@]}"; do
    IFS='|' read -r name status seconds figure <<<"$row"
    printf '%-20s %-9s %8s  %s\n' "$name" "$status" "$seconds" "$figure"
done
