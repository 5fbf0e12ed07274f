#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for tests/workflow/test_slurm.py.
#
# Idempotent: installs Debian's slurmctld, slurmd, slurm-client and munge when missing,
# writes /etc/slurm/slurm.conf from tests/slurm/slurm.conf.in (this node's name, CPU count
# and memory filled in), starts munged, slurmctld and slurmd directly (no systemd: this is
# meant for containers and CI machines) and waits until the node is idle. Running it again
# leaves a healthy cluster alone and restarts the daemons only when the config changed.
#
# Needs root. Debian 12 (bookworm) ships SLURM 22.05. Accounting is off, so `sacct` does
# not work: query jobs with `squeue` / `scontrol show job` (finished jobs stay visible for
# MinJobAge seconds).
#
# Environment:
#   INFOGAN_SLURM_FORCE=1   overwrite an /etc/slurm/slurm.conf this script did not write
#   INFOGAN_SLURM_WAIT=60   seconds to wait for the node to become idle
#
# Stop with tests/slurm/stop_cluster.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
conf=/etc/slurm/slurm.conf
marker="# Written by infogan_cells tests/slurm/start_cluster.sh"
state=/run/infogan-slurm          # what this script started (read by stop_cluster.sh)
wait_s="${INFOGAN_SLURM_WAIT:-60}"

log() { echo "start_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"

# ---------------------------------------------------------------------------
# Packages

need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get to install them"
    log "installing ${need[*]}"
    # Wait for another apt/dpkg run instead of failing on its lock (shared machines, CI).
    apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
    apt-get "${apt_opts[@]}" update >&2   # a fresh machine has no package lists
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends \
        "${need[@]}" >&2
fi

# ---------------------------------------------------------------------------
# Munge

mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge "$state"
chown munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/log/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
else
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    touch "$state/munged"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer; see /var/log/munge/munged.log"
fi

# ---------------------------------------------------------------------------
# slurm.conf

node="$(hostname -s)"
# `slurmd -C` prints what slurmd itself will detect; a node declared with more CPUs or
# memory than that is drained as invalid.
hw="$(slurmd -C | head -n 1)"
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$hw"; }
cpus="$(field CPUs)"; sockets="$(field SocketsPerBoard)"
cores="$(field CoresPerSocket)"; threads="$(field ThreadsPerCore)"; mem="$(field RealMemory)"
[ -n "$cpus" ] && [ -n "$mem" ] || die "cannot parse 'slurmd -C': $hw"

if [ -e "$conf" ] && ! grep -qF "$marker" "$conf" && [ "${INFOGAN_SLURM_FORCE:-0}" != 1 ]; then
    die "$conf exists and was not written by this script; set INFOGAN_SLURM_FORCE=1 to replace it"
fi

new="$(mktemp)"
trap 'rm -f "$new"' EXIT
{
    echo "$marker"
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) from $here/slurm.conf.in; do not edit, rerun the script."
    sed -e "s/@NODE@/$node/g" -e "s/@CPUS@/$cpus/g" -e "s/@SOCKETS@/$sockets/g" \
        -e "s/@CORES@/$cores/g" -e "s/@THREADS@/$threads/g" -e "s/@MEMORY@/$mem/g" \
        "$here/slurm.conf.in"
} >"$new"

mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
changed=1
if [ -e "$conf" ] && diff -q <(sed 1,2d "$conf") <(sed 1,2d "$new") >/dev/null; then
    changed=0
else
    install -m 0644 "$new" "$conf"
    log "wrote $conf (node $node: $cpus CPUs, $mem MB)"
fi

# ---------------------------------------------------------------------------
# Daemons

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$changed" = 1 ] && { alive /run/slurm/slurmctld.pid || alive /run/slurm/slurmd.pid; }; then
    log "config changed: restarting slurmctld and slurmd"
    "$here/stop_cluster.sh" --keep-munge
fi

if alive /run/slurm/slurmctld.pid; then
    log "slurmctld already running"
else
    log "starting slurmctld"
    # -i: ignore state files a previous run with another config may have left behind.
    /usr/sbin/slurmctld -i
fi
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q "is UP" && break
    sleep 0.2
done
scontrol ping | grep -q "is UP" || {
    tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
    die "slurmctld does not answer"
}

if alive /run/slurm/slurmd.pid; then
    log "slurmd already running"
else
    log "starting slurmd"
    /usr/sbin/slurmd
fi

# ---------------------------------------------------------------------------
# Wait for the node

deadline=$((SECONDS + wait_s))
resumed=0
while :; do
    nstate="$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n 1)"
    case "$nstate" in
        idle | mixed | allocated) break ;;
        down* | drain* | drained*)
            # A node that was down before a restart stays down until resumed.
            if [ "$resumed" = 0 ]; then
                scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
                resumed=1
            fi
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        sinfo -N -l >&2 || true
        scontrol show node "$node" >&2 || true
        tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
        die "node $node is '$nstate' after ${wait_s}s, not idle"
    fi
    sleep 0.5
done
log "cluster up: node $node is $nstate"
sinfo
