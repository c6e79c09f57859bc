#!/usr/bin/env bash
# A one-machine SLURM for the tests (tests/test_slurm.py) and CI (.ci/run): munged, slurmctld
# and slurmd as root, everything (config, state, spool, logs) under $XRAY_SLURM_DIR
# (default /tmp/xray-slurm). Prints `export SLURM_CONF=...`; tests find the config there too.
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). Idempotent: a cluster
# that already answers is left alone. Stop it with tests/slurm/stop_slurm.sh.
set -euo pipefail
DIR="${XRAY_SLURM_DIR:-/tmp/xray-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"
if [ -f "$CONF" ] && timeout 5 scontrol ping 2>/dev/null | grep -q UP && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  echo "export SLURM_CONF=$CONF"; exit 0
fi
for tool in munged slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "error: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "error: start_slurm.sh runs the SLURM daemons as root" >&2; exit 1; }
PATH="/usr/sbin:$PATH"
mkdir -p "$DIR/state" "$DIR/spool"

# munge: its socket directory must exist; the key is made once per machine.
mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

HOST="$(hostname -s)"
MEM="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
# 8 CPUs whatever the machine has (config_overrides): the tests' jobs are light, and two array
# tasks plus a 2-task trial must run at once on a 2-core CI box.
CPUS=${XRAY_SLURM_CPUS:-8}
cat > "$CONF" <<CONF
ClusterName=xray-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${XRAY_SLURM_PORT:-6817}
SlurmdPort=$(( ${XRAY_SLURM_PORT:-6817} + 1 ))
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Short waits keep the tests fast; clusters use the defaults (KillWait 30 s).
KillWait=10
MessageTimeout=20
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
MinJobAge=600
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

slurmctld -f "$CONF"
slurmd -f "$CONF"
for _ in $(seq 150); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)$'; then
    echo "export SLURM_CONF=$CONF"; exit 0
  fi
  sleep 0.2
done
echo "error: SLURM did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
tail -5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
exit 1
