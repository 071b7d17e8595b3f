#!/usr/bin/env bash
# The throughput checks in one go, for a machine with one NVIDIA GPU
# (H100/H200) and requirements.txt (+ requirements-dev.txt for the PyTorch rows) installed, jax
# with CUDA (README, "Accelerators").
# Writes JSON lines to ${OUT:-bench_gpu.jsonl} and prints them; each case under its own timeout
# (CASE_TIMEOUT, default 240 s). About 12-14 minutes on an H200 with a 16-core host.
#
#   1. the loader alone, study chain on 500x375 JPEGs, batch 256, 0/4/8/14 workers
#      (goal: >= 8,000 img/s on a 16-core host)
#   2. ResNet-50, ViT-B/16, CLIP RN50 at 224, bf16, batch 256, the real JPEG chain through the
#      training loop with DATA_WORKERS workers: loop_overhead (goal <= 0.10; ResNet-50
#      >= 6,000 img/s on an H200) and mfu from FLOPs counted on the lowered program
#   3. ViT-B/16 bare step, one option at a time: JAX's default attention, the XLA and the cuDNN
#      fused attention (goal >= 0.40 MFU)
#   4. ResNet-50 and CLIP RN50 bare steps beside timm / OpenCLIP (with requirements-dev.txt)
#   5. caption tokenisation per host core, pure Python against Rust (the CLIP loader's text half)
#   6. ResNet-50's 1x1 convolutions as convolutions (the GPU default) against matmuls (the CPU
#      default, 1.2x there), and a --profile of the ViT-B/16 step: where its time goes
#   7. a fine-tuning grid of 4 learning rates, fused (one vmapped program) against unfused (a
#      step per point): the mini transfer model and CLIP RN50 at 224 with the JPEG chain
#      (fuse_grid=auto turns fusion on for accelerators; the CPU measured no gain)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_gpu.jsonl}
STEPS=${STEPS:-30}
WORKERS=${DATA_WORKERS:-$(( $(nproc) - 2 ))}
: > "$OUT"
run() {
  echo "== bench $*" >&2
  timeout "${CASE_TIMEOUT:-240}" python -m big_transfer.bench "$@" 2>&2 \
    | grep '^{' | tee -a "$OUT"
}
run --what=loader --workers="0,4,8,$(( $(nproc) - 2 ))" --batch_size=256 --seconds=10 \
    --height=375 --width=500 --images=64
for model in resnet50 vit_b16; do
  run --model=$model --resolution=224 --batch_size=256 --dtype=bfloat16 --steps="$STEPS" \
      --data=pipeline --data_workers="$WORKERS" --torch=off
done
run --model=clip_rn50 --method=clip --resolution=224 --batch_size=256 --dtype=bfloat16 \
    --steps="$STEPS" --data=pipeline --data_workers="$WORKERS" --torch=off
run --model=vit_b16 --resolution=224 --batch_size=256 --dtype=bfloat16 --steps="$STEPS" \
    --rounds=1 --variants='args:;args:--model_kwargs={"attention_impl":"xla"};args:--model_kwargs={"attention_impl":"cudnn"}'
run --model=resnet50 --resolution=224 --batch_size=256 --dtype=bfloat16 --steps="$STEPS" --loop=off
run --model=clip_rn50 --method=clip --resolution=224 --batch_size=256 --dtype=bfloat16 \
    --steps="$STEPS" --loop=off
run --what=tokenizer --seconds=5
run --model=resnet50 --resolution=224 --batch_size=256 --dtype=bfloat16 --steps="$STEPS" \
    --rounds=1 --variants='args:;args:--model_kwargs={"pointwise":"dot"}'
run --model=vit_b16 --resolution=224 --batch_size=256 --dtype=bfloat16 --steps=5 --loop=off \
    --torch=off --profile="${PROFILE_DIR:-profile_vit_b16}"
run --what=fuse --model=resnet18 --model_kwargs='{"width":0.25}' --resolution=32 \
    --batch_size=64 --steps=100 --points=4
run --what=fuse --model=clip_rn50 --resolution=224 --batch_size=128 --dtype=bfloat16 \
    --steps=20 --points=4 --data=pipeline
echo "wrote $OUT" >&2
