#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by tests/slurm/start_cluster.sh.
#
# Stops slurmd and slurmctld by their pid files, and munged only if start_cluster.sh started
# it (a munged that was already running is left alone). Jobs still queued or running are
# lost. Then removes the /etc/slurm/slurm.conf that start_cluster.sh wrote: while a slurm.conf
# names a controller that is down, every scontrol call waits ~9 s for it, and the Snakemake
# SLURM plugin calls `scontrol show config` each time snakemake starts (even `--version`).
# Without a slurm.conf it fails at once.
#
# --keep-munge leaves munged running and slurm.conf in place (start_cluster.sh uses it to
# restart SLURM).
set -euo pipefail

state=/run/infogan-slurm
keep_munge=0
[ "${1:-}" = "--keep-munge" ] && keep_munge=1

log() { echo "stop_cluster: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "error: must run as root"; exit 1; }

stop() {  # stop NAME PIDFILE
    local name="$1" pidfile="$2" pid
    if [ ! -s "$pidfile" ] || ! pid="$(cat "$pidfile")" || ! kill -0 "$pid" 2>/dev/null; then
        log "$name not running"
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop in 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
if [ "$keep_munge" = 0 ]; then
    if [ -e "$state/munged" ]; then
        stop munged /run/munge/munged.pid
        rm -f "$state/munged"
    fi
    if grep -qF "# Written by infogan_cells tests/slurm/start_cluster.sh" /etc/slurm/slurm.conf 2>/dev/null; then
        rm -f /etc/slurm/slurm.conf
        log "removed /etc/slurm/slurm.conf"
    fi
fi
