#!/usr/bin/env bash
# Stops what tests/slurm/start_slurm.sh started: cancels every job, then slurmd and
# slurmctld (by their pid files). munged stays (other tools may use it).
DIR="${XRAY_SLURM_DIR:-/tmp/xray-slurm}"
export SLURM_CONF="$DIR/slurm.conf"
[ -f "$SLURM_CONF" ] || exit 0
timeout 10 scancel --full --quiet -u "$(id -un)" 2>/dev/null || true
for daemon in slurmd slurmctld; do
  pidfile="$DIR/$daemon.pid"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
rm -f "$DIR"/*.pid
