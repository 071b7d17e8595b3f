#!/usr/bin/env bash
# Several JAX processes on one machine, as on several hosts: the same entrypoint in every
# process, joined through jax.distributed on 127.0.0.1 (gloo collectives on CPU).
#
#   launch/local.sh NUM_PROCESSES [DEVICES_PER_PROCESS] -- python -m big_transfer.train \
#       --config=configs/mini/supervised.py --workdir=/tmp/mp
#
# DEVICES_PER_PROCESS simulates that many CPU devices in each process (default 1). Set
# BT_PORT to choose the coordinator port (default: a free one). Prints what it runs first.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 NUM_PROCESSES [DEVICES_PER_PROCESS] -- COMMAND..." >&2
  exit 2
fi
n=$1; shift
devices=1
if [[ $1 != "--" ]]; then devices=$1; shift; fi
[[ $1 == "--" ]] || { echo "error: expected -- before the command" >&2; exit 2; }
shift
port=${BT_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# Gloo's connection lines (one per process pair and collective group, from C++) are dropped
# unless BT_VERBOSE=1.
quiet='/^\[Gloo\] Rank [0-9]* is connected to/d'
[[ ${BT_VERBOSE:-0} == 1 ]] && quiet='/^$/!b'
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < n; i++)); do
  args=("$@" "--coordinator_address=127.0.0.1:$port" "--num_processes=$n" "--process_id=$i")
  echo "[launch/local.sh] process $i/$n: JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$devices ${args[*]}"
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
    "${args[@]}" > >(sed -u -e "$quiet" -e "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
# The first non-zero exit code is the launcher's (75: stopped on a signal after saving).
status=0
for p in "${pids[@]}"; do
  wait "$p"; rc=$?
  # A process that failed leaves the others waiting on it in a collective: stop them.
  if [[ $rc != 0 && $status == 0 ]]; then status=$rc; cleanup; fi
done
exit $status
