#!/usr/bin/env bash
# Start a one-node SLURM cluster on loopback for the SLURM tests (tests/test_slurm*.py).
#
# What it does (root, Debian, no systemd, no cgroups):
#   1. installs slurm-wlm and munge if slurmctld is missing;
#   2. writes /etc/slurm/slurm.conf and /etc/slurm/gres.conf: one node `localhost` with this machine's
#      CPUs and memory and one GPU GRES backed by a dummy character device (a copy of /dev/null),
#      proctrack/linuxproc, task/none, select/cons_tres, no accounting database;
#   3. starts munged, slurmctld and slurmd directly, recording their PIDs in $CXRBENCH_SLURM_DIR/pids;
#   4. waits until `sinfo` reports the node idle.
# Stop everything with .ci/slurm-down.sh, which kills exactly those PIDs and removes both conf files:
# the Snakemake SLURM plugin calls `scontrol` on every invocation, and a stale slurm.conf without a
# controller makes each call ~10 s slower.
#
# MinJobAge is 3600 s: without an accounting database the plugin's `squeue` status command only sees a
# finished job while slurmctld still remembers it, and the plugin falls back to sacct when
# MinJobAge < 3 x its first status-check delay.
set -euo pipefail

STATE_DIR="${CXRBENCH_SLURM_DIR:-/tmp/cxrbench-slurm}"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
GPU_DEV=/dev/cxrbench-gpu0
MARK="# written by cxrbench .ci/slurm-up.sh"

log() { printf '[slurm-up] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root (it writes /etc/slurm and starts the daemons)"; exit 1
fi
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
  log "$CONF exists and was not written by this script; refusing to overwrite it"; exit 1
fi
if [[ -f "$STATE_DIR/pids" ]]; then
  log "$STATE_DIR/pids exists: a cluster may already be up (run .ci/slurm-down.sh first)"; exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

rm -rf "$STATE_DIR"/state "$STATE_DIR"/spool  # a fresh cluster: no job state from an earlier run
mkdir -p "$STATE_DIR"/{state,spool} /etc/slurm /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi

# The node's real size, as slurmd sees it (leave a little memory for the OS).
read -r CPUS MEM < <(slurmd -C | awk '/^NodeName/ {
  for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  print v["CPUs"], v["RealMemory"] }')
MEM=$(( MEM * 95 / 100 ))

# Dummy GPU: SLURM only needs the device file to exist (no cgroups constrain it here).
[[ -e "$GPU_DEV" ]] || mknod -m 0666 "$GPU_DEV" c 1 3

cat > "$CONF" <<EOF
$MARK
ClusterName=cxrbench
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SchedulerType=sched/backfill
DefMemPerCPU=$(( MEM / CPUS ))
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$GRES_CONF" <<EOF
$MARK
NodeName=localhost Name=gpu File=$GPU_DEV
EOF

# Each daemon runs in the foreground (-D) in its own session so that we own its PID exactly.
: > "$STATE_DIR/pids"
start() {  # name, command...
  local name=$1; shift
  setsid "$@" > "$STATE_DIR/$name.out" 2>&1 < /dev/null &
  echo "$name $!" >> "$STATE_DIR/pids"
  log "started $name (pid $!)"
}
start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground --force
for _ in $(seq 50); do [[ -S /run/munge/munge.socket.2 ]] && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { log "munge does not work (see $STATE_DIR/munged.out)"; exit 1; }
start slurmctld /usr/sbin/slurmctld -D -i
start slurmd /usr/sbin/slurmd -D -N localhost

for _ in $(seq 60); do
  state=$(sinfo -h -N -n localhost -o %t 2>/dev/null || true)
  if [[ "$state" == idle* ]]; then
    log "node localhost is idle: $CPUS CPUs, ${MEM} MB, gres gpu:1 ($GPU_DEV)"
    exit 0
  fi
  sleep 0.5
done
log "node did not become idle (state '${state:-none}'); logs in $STATE_DIR"
exit 1
