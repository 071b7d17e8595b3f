#!/usr/bin/env bash
# Several JAX processes on one machine, as on several hosts: the same entrypoint in every
# process, joined through jax.distributed on 127.0.0.1 (gloo collectives on CPU).
#
#   launch/local.sh NUM_PROCESSES [DEVICES_PER_PROCESS] -- python -m big_transfer.train \
#       --config=configs/mini/supervised.py --workdir=/tmp/mp
#
# DEVICES_PER_PROCESS simulates that many CPU devices in each process (default 1). Set
# BT_PORT to choose the coordinator port (default: a free one). Prints what it runs first;
# BT_DRY_RUN=1 prints it and stops.
#
# Signals: SIGTERM / SIGINT to the launcher are forwarded to every process (they finish the
# step, save and exit 75 together) and the launcher waits for them up to BT_GRACE_S seconds
# (default 120), then kills what is left, saying so. A process that dies takes the others
# down within BT_HEARTBEAT_TIMEOUT_S seconds (default 60: JAX's coordination service ends a
# process whose peer stopped sending heartbeats), and the launcher names it in one line.
# Exit code: the first process's non-zero one (75: stopped on a signal after saving).
set -uo pipefail
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
for ((i = 0; i < n; i++)); do
  echo "[launch/local.sh] process $i/$n: JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$devices $* --coordinator_address=127.0.0.1:$port --num_processes=$n --process_id=$i"
done
[[ ${BT_DRY_RUN:-0} == 1 ]] && exit 0

pids=()
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
on_signal() {
  local sig=$1 grace=${BT_GRACE_S:-120}
  echo "[launch/local.sh] SIG$sig: forwarded to the $n processes; waiting up to ${grace}s for them to save" >&2
  for p in "${pids[@]}"; do kill -s "$sig" "$p" 2>/dev/null || true; done
  local deadline=$((SECONDS + grace))
  while alive && ((SECONDS < deadline)); do sleep 0.5; done
  if alive; then
    echo "[launch/local.sh] processes still running ${grace}s after SIG$sig: killed (their last saved checkpoint is kept)" >&2
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  fi
  finish
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

for ((i = 0; i < n; i++)); do
  args=("$@" "--coordinator_address=127.0.0.1:$port" "--num_processes=$n" "--process_id=$i")
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
    BT_HEARTBEAT_TIMEOUT_S="${BT_HEARTBEAT_TIMEOUT_S:-60}" \
    "${args[@]}" > >(sed -u -e "$quiet" -e "s/^/[$i] /") 2>&1 &
  pids+=($!)
done

# Every process's exit, in the order they end; the first non-zero code is the launcher's.
status=0
declare -A code=()
collect() {
  local rc done_pid
  wait -n -p done_pid "${pids[@]}" 2>/dev/null
  rc=$?
  [[ -n ${done_pid:-} ]] || return 0
  code[$done_pid]=$rc
  if [[ $rc != 0 && $status == 0 ]]; then status=$rc; fi
}
finish() {
  local i p
  while alive; do collect; done
  for i in "${!pids[@]}"; do
    p=${pids[$i]}
    [[ -n ${code[$p]:-} ]] || { wait "$p" 2>/dev/null; code[$p]=$?; }
    if [[ ${code[$p]} != 0 && $status == 0 ]]; then status=${code[$p]}; fi
    if [[ ${code[$p]} == 137 ]]; then
      echo "[launch/local.sh] process $i was killed (SIGKILL)" >&2
    elif [[ ${code[$p]} == 134 ]]; then
      echo "[launch/local.sh] process $i was ended by JAX's coordination service after a peer process died" >&2
    fi
  done
  exit "$status"
}
# A process that dies leaves the others waiting on it in a collective: JAX's coordination
# service ends them within BT_HEARTBEAT_TIMEOUT_S.
finish
