#!/usr/bin/env bash
# Several independent study workers on one multi-accelerator host, one per device: worker i
# sees only device i (CUDA_VISIBLE_DEVICES; TPU_VISIBLE_CHIPS on a TPU VM), a share of its
# memory (XLA_PYTHON_CLIENT_MEM_FRACTION) and a compilation cache on this node
# (JAX_COMPILATION_CACHE_DIR), and never joins the others into one JAX job (--distributed=off
# is implied: study workers run their runs in-process). Each is `study --worker=...` with
# BT_PACK_INDEX/BT_PACK_COUNT set, so `--worker=slurm` (an array task) or `--worker=I/N` splits
# the study over every packed worker of every task.
#
#   launch/pack.sh DEVICES -- python -m big_transfer.study --config=configs/study/paper.py \
#       --workdir=/shared/runs/paper --worker=slurm --stage=transfer
#
# BT_MEM_FRACTION (of its one device; default 0.9), BT_CACHE_DIR (default
# /tmp/bt_jax_cache), BT_DRY_RUN=1 prints each worker's environment and command and stops.
# Exits with the first non-zero exit of its workers (75 if one was stopped after saving).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 DEVICES -- COMMAND..." >&2
  exit 2
fi
n=$1; shift
[[ $1 == "--" ]] || { echo "error: expected -- before the command" >&2; exit 2; }
shift
cache=${BT_CACHE_DIR:-/tmp/bt_jax_cache}
fraction=${BT_MEM_FRACTION:-0.9}
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < n; i++)); do
  env_i=(BT_PACK_INDEX=$i BT_PACK_COUNT=$n CUDA_VISIBLE_DEVICES=$i TPU_VISIBLE_CHIPS=$i
         XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction JAX_COMPILATION_CACHE_DIR=$cache)
  echo "[launch/pack.sh] worker $i/$n: ${env_i[*]} $(printf '%q ' "$@")"
  [[ ${BT_DRY_RUN:-0} == 1 ]] && continue
  env "${env_i[@]}" "$@" &
  pids+=($!)
done
[[ ${BT_DRY_RUN:-0} == 1 ]] && exit 0
rc=0
for p in "${pids[@]}"; do
  wait "$p" || { r=$?; [[ $rc == 0 ]] && rc=$r; }
done
exit $rc
