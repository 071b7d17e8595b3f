#!/usr/bin/env bash
# The issue-7 GPU checks in one go, for a machine with one NVIDIA GPU (H100/H200) and
# requirements.txt + requirements-dev.txt installed (jax with CUDA: see README, "Accelerators").
# Writes JSON lines to ${OUT:-bench_gpu.jsonl} and prints them; ~6-8 minutes on an H100.
#
#   ViT-B/16 at 224, bf16: MFU (goal >= 0.5)
#   ResNet-50 at 224, bf16, synthetic data: images/s (goal >= 3,000), beside timm in PyTorch
#   CLIP ResNet-50 at 224, bf16: samples/s beside OpenCLIP's own step (goal >= 1.0x)
#   ResNet-50 with the real JPEG decode + Inception-crop pipeline: does the input keep up?
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_gpu.jsonl}
STEPS=${STEPS:-20}
: > "$OUT"
run() {
  echo "== bench $*" >&2
  timeout "${CASE_TIMEOUT:-240}" python -m big_transfer.bench "$@" --steps="$STEPS" 2>&2 \
    | grep '^{' | tee -a "$OUT"
}
run --model=vit_b16 --resolution=224 --batch_size=256 --dtype=bfloat16
run --model=resnet50 --resolution=224 --batch_size=256 --dtype=bfloat16
run --model=clip_rn50 --method=clip --resolution=224 --batch_size=256 --dtype=bfloat16
run --model=resnet50 --resolution=224 --batch_size=256 --dtype=bfloat16 --data=pipeline --torch=off
echo "wrote $OUT" >&2
