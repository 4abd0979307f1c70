#!/bin/bash
# Stop the daemons started by scripts/start-slurm.sh, by their PID files (nothing else),
# and wait until each has exited (so a following start-slurm.sh starts fresh ones).
BASE=${SLURM_BASE:-/tmp/whisper-ptq-slurm}
stop() {  # stop NAME PIDFILE
  local pid
  [ -f "$2" ] || return 0
  pid=$(cat "$2")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || { echo "stopped $1"; return 0; }; sleep 0.25; done
  echo "stop-slurm.sh: $1 (pid $pid) still running" >&2
}
stop slurmd "$BASE/slurmd.pid"
stop slurmctld "$BASE/slurmctld.pid"
stop slurmdbd "$BASE/slurmdbd.pid"
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
exit 0
