#!/usr/bin/env bash
# One GPU session's measurements, in priority order, each step time-boxed so a slow or failing step
# cannot starve the next (all limits together: 9.9 minutes with DATA, 8.1 without): CUDA tests (Triton kernel and the model's
# real-pair layer path vs the reference), training throughput HAMT vs GPT-2 SDPA (bf16, eager, same run,
# paired medians: tok/s, MFU, activation memory), memory-scan kernel vs its bandwidth floor, whether
# torch.compile takes a whole block (graph breaks), decoding vs context, the trainer's own step
# (`hamt bench model --optimizer`: AdamW included), a short real 100m training run on Tiny Shakespeare,
# torch.compile throughput. Last, scripts/gpu_targets.py prints issue 16's GPU target rows from the results.
#
#   OUT=results/gpu DATA=/path/with/text/and/gpt2-tokenizer bash scripts/gpu_session.sh
#
# DATA holds text/ (a text file to train on) and gpt2-tokenizer/ (vocab.json, merges.txt); without it
# the real training step is skipped. Everything lands in $OUT (log.txt and results.tgz).
set -u
OUT=${OUT:-results/gpu}
DATA=${DATA:-}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export USERNAME=${USERNAME:-hamt} PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
mkdir -p "$WORK/bin" && printf '#!/bin/sh\nexec python3 -m hamt.cli "$@"\n' >"$WORK/bin/hamt" && chmod +x "$WORK/bin/hamt"
command -v hamt >/dev/null || export PATH="$WORK/bin:$PATH"  # the repo's CLI without installing it
pack() { tar -czf "$OUT/results.tgz" -C "$WORK" --exclude=./bin --exclude=./run . 2>/dev/null; }
step() {  # step NAME SECONDS CMD...: time-boxed, logged, results packed after each
  local name=$1 secs=$2; shift 2
  echo "== $(date -u +%T) $name (limit ${secs}s)"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$secs" "$@"
  echo "== $name: rc=$? in $((SECONDS - t0))s"
  pack
}
B="--preset 100m --device cuda --precision bf16 --results-dir"

echo "== env"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name())'
step gpu-tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ops/test_triton.py tests/test_layers.py \
    tests/test_tokens.py tests/metrics/test_systems.py
step model-eager 120 hamt bench model $B "$WORK/eager" --seq-lens 1024 8192 512 2048 4096 --repeats 5
step memory 50 hamt bench memory $B "$WORK/memory" --memory-seq-len 1024 --memory-batch 16 --repeats 5
step compile-check 60 bash -c 'python3 scripts/gpu_compile_check.py --preset 100m --device cuda >"$1" 2>&1
    echo "rc=$?" >>"$1"; cat "$1"' _ "$WORK/compile.txt"  # the last line, rc=N, is what gpu_targets.py reads
step decode 30 hamt bench decode $B "$WORK/decode" --decode-steps 32
step trainer 45 hamt bench model $B "$WORK/trainer" --optimizer --seq-lens 1024 --tokens-per-step 32768 --repeats 5
if [ -n "$DATA" ]; then
  mkdir -p "$WORK/run" && cp params.yaml "$WORK/run/" && (
    cd "$WORK/run" && export HAMT_DATA_DIR="$DATA/text"
    S="--profile ${PROFILE:-100m} --set tokenizer.name_or_path=$DATA/gpt2-tokenizer"
    step download 20 hamt download $S && step tokenize 30 hamt tokenize $S &&
    step train-100m ${TRAIN_SECS:-60} hamt train $S --set train.max_steps=40 --set train.warmup_steps=10 \
        --set train.eval_every=20 --set train.ckpt_every=40 --set train.log_every=5
    cp -r results "$WORK/train-results" 2>/dev/null; rm -rf data checkpoints
  )
fi
step model-compile 90 hamt bench model $B "$WORK/compile" --seq-lens 1024 8192 --repeats 5 --compile
python3 scripts/gpu_targets.py "$WORK" | tee "$WORK/targets.md"
echo "== done $(date -u +%T)"; pack
