#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (as root), for tests and trying `study
# --submit=slurm` without a cluster: munge with a fresh key, slurmctld and slurmd on localhost,
# one partition with every CPU. Needs Debian's packages: apt-get install slurm-wlm munge.
#
#   sudo launch/slurm_local.sh up     # starts it (idempotent); sinfo shows the node idle
#   sudo launch/slurm_local.sh down   # stops the daemons
set -euo pipefail
action=${1:-up}
host=$(hostname -s)
conf=/etc/slurm/slurm.conf
if [[ $action == down ]]; then
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  exit 0
fi
command -v slurmctld >/dev/null || { echo "error: slurmctld not installed (apt-get install slurm-wlm munge)" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "error: run as root (it starts munged, slurmctld and slurmd)" >&2; exit 2; }
mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge /etc/slurm \
  /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$conf" <<CONF
ClusterName=bt
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    sinfo
    exit 0
  fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "error: the node did not come up; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
