#!/usr/bin/env bash
# Stop the loopback SLURM cluster started by .ci/slurm-up.sh: kill exactly the daemons it recorded,
# then remove the slurm.conf / gres.conf it wrote and the dummy GPU device. Safe to run twice.
set -uo pipefail

STATE_DIR="${CXRBENCH_SLURM_DIR:-/tmp/cxrbench-slurm}"
MARK="# written by cxrbench .ci/slurm-up.sh"
log() { printf '[slurm-down] %s\n' "$*" >&2; }

if [[ -f "$STATE_DIR/pids" ]]; then
  # Reverse start order: slurmd, slurmctld, munged.
  tac "$STATE_DIR/pids" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      log "stopped $name (pid $pid)"
    fi
  done
  rm -f "$STATE_DIR/pids"
fi
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  if [[ -f "$f" ]] && grep -qF "$MARK" "$f"; then rm -f "$f"; log "removed $f"; fi
done
[[ -c /dev/cxrbench-gpu0 ]] && rm -f /dev/cxrbench-gpu0
exit 0
