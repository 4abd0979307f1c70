#!/bin/bash
# Stop the daemons started by scripts/start-slurm.sh, by their PID files (nothing else).
BASE=${SLURM_BASE:-/tmp/whisper-ptq-slurm}
for d in slurmd slurmctld slurmdbd; do
  f=$BASE/$d.pid
  [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null && echo "stopped $d"
done
sleep 2
[ -f /run/mysqld/mysqld.pid ] && kill "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null && echo "stopped mariadbd"
[ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null && echo "stopped munged"
exit 0
