#!/usr/bin/env bash
# The same entrypoint on every host of a TPU VM pod slice; JAX joins the hosts itself
# (train.py sees TPU_WORKER_HOSTNAMES and calls jax.distributed.initialize).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- python -m big_transfer.train \
#       --config=configs/pretrain/clip.py:data=arrayrecord:/mnt/bucket/laion,size=2.7M \
#       --workdir=gs://BUCKET/runs/clip_laion  (data: local or a gcsfuse mount)
#
# Runs from BT_REMOTE_DIR on the workers (default: ~/big_transfer, a checkout with the set-up
# command run, e.g. by `launch/tpu_pod.sh NAME ZONE -- pip install -r requirements.txt -e .`).
# Prints the command first; BT_DRY_RUN=1 prints it and stops.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- COMMAND..." >&2
  exit 2
fi
name=$1 zone=$2; shift 2
project=()
if [[ $1 != "--" ]]; then project=(--project="$1"); shift; fi
[[ $1 == "--" ]] || { echo "error: expected -- before the command" >&2; exit 2; }
shift
remote_dir=${BT_REMOTE_DIR:-'~/big_transfer'}
inner="cd $remote_dir && $(printf '%q ' "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${project[@]}" --worker=all
     --command="$inner")
echo "[launch/tpu_pod.sh] $(printf '%q ' "${cmd[@]}")"
if [[ ${BT_DRY_RUN:-0} == 1 ]]; then exit 0; fi
exec "${cmd[@]}"
