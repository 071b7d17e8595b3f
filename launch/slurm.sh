#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node driving all of its GPUs; JAX's
# distributed runtime is set up from SLURM's environment (train.py sees SLURM_NTASKS > 1 and
# calls jax.distributed.initialize, which reads the coordinator and ranks from SLURM).
#
#   launch/slurm.sh NODES GPUS_PER_NODE [SBATCH_OPTION...] -- python -m big_transfer.train \
#       --config=configs/pretrain/simclr.py:data=arrayrecord:/data/redcaps,size=2.7M \
#       --workdir=/shared/runs/simclr_redcaps
#
# Writes the batch script to BT_SBATCH_SCRIPT (default: a temp file), prints it, and submits
# it with sbatch; BT_DRY_RUN=1 prints it and stops.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 NODES GPUS_PER_NODE [SBATCH_OPTION...] -- COMMAND..." >&2
  exit 2
fi
nodes=$1 gpus=$2; shift 2
extra=()
while [[ $# -gt 0 && $1 != "--" ]]; do extra+=("$1"); shift; done
[[ ${1:-} == "--" ]] || { echo "error: expected -- before the command" >&2; exit 2; }
shift
script=${BT_SBATCH_SCRIPT:-}
if [[ -z $script ]]; then  # a temp file, removed on exit (sbatch has read it by then)
  script=$(mktemp -t bt_sbatch.XXXXXX)
  trap 'rm -f "$script"' EXIT
fi
{
  echo "#!/usr/bin/env bash"
  echo "#SBATCH --job-name=big_transfer"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=1"
  echo "#SBATCH --gpus-per-node=$gpus"
  echo "#SBATCH --cpus-per-task=${BT_CPUS_PER_TASK:-16}"
  for opt in "${extra[@]}"; do echo "#SBATCH $opt"; done
  echo "set -euo pipefail"
  echo "cd $(printf '%q' "$PWD")"
  echo "srun $(printf '%q ' "$@")"
} > "$script"
echo "[launch/slurm.sh] batch script $script:"
cat "$script"
if [[ ${BT_DRY_RUN:-0} == 1 ]]; then exit 0; fi
sbatch "$script"
