#!/bin/bash
# Start a single-node SLURM (slurmctld + slurmd + slurmdbd/MariaDB, munge) on this machine,
# for tests/workflow/test_slurm.py and CI. Debian 12, run as root, no systemd needed.
# Recipe: ../shared/notes/slurm-local.md (tested with slurm-wlm 22.05.8).
#
#   SLURM_BASE=/tmp/whisper-ptq-slurm scripts/start-slurm.sh     # ~15 s apt + ~4 s start
#   SLURM_BASE=/tmp/whisper-ptq-slurm scripts/stop-slurm.sh
#
# Installs the Debian packages if they are missing (apt-get), writes /etc/slurm/slurm.conf
# and slurmdbd.conf, starts the daemons (each only if its PID file names no live process),
# registers cluster `localcluster`, account `testacct` (user root), partition `debug`.
# Idempotent: a second call with the same SLURM_BASE changes nothing that runs.
set -euo pipefail
BASE=${SLURM_BASE:-/tmp/whisper-ptq-slurm}
[ "$(id -u)" = 0 ] || { echo "start-slurm.sh: must run as root" >&2; exit 2; }

PKGS="slurm-wlm munge slurm-client slurmdbd mariadb-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || { echo "start-slurm.sh: apt-get not found; need:$missing" >&2; exit 3; }
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

H=$(hostname -s)
# the node offers 90% of this machine's memory (the pipeline's jobs ask up to 16 GB each)
MEM_MB=${SLURM_NODE_MEM_MB:-$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)}
mkdir -p "$BASE"/{state,spool,log} /etc/slurm

cat > /etc/slurm/slurm.conf <<CONF
# written by whisper-ptq scripts/start-slurm.sh
ClusterName=localcluster
SlurmctldHost=$H
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
NodeName=$H CPUs=$(nproc) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF

cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$BASE/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a world-readable file

wait_for() {
  local what=$1; shift
  for _ in $(seq 1 120); do "$@" >/dev/null 2>&1 && { echo "$what ready"; return 0; }; sleep 0.5; done
  echo "start-slurm.sh: $what NOT ready (logs in $BASE/log)" >&2; return 1
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 1. munge (/etc/munge/munge.key comes from the package postinst)
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
wait_for munge bash -c 'munge -n | unmunge'

# 2. MariaDB (datadir initialised by the package postinst)
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
  nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
    --socket=/run/mysqld/mysqld.sock > "$BASE/log/mariadb.log" 2>&1 &
fi
wait_for mariadb mysqladmin ping
mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# 3. slurmdbd, then cluster + account (sacctmgr talks to slurmdbd only)
alive "$BASE/slurmdbd.pid" || /usr/sbin/slurmdbd
wait_for slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster localcluster >/dev/null 2>&1 || true
sacctmgr -i add account testacct Description=test Organization=test >/dev/null 2>&1 || true
sacctmgr -i add user root Account=testacct >/dev/null 2>&1 || true

# 4. slurmctld + slurmd
alive "$BASE/slurmctld.pid" || /usr/sbin/slurmctld
alive "$BASE/slurmd.pid" || /usr/sbin/slurmd
wait_for "node idle" bash -c '[ "$(sinfo -h -o %t)" = idle ]'
sinfo
