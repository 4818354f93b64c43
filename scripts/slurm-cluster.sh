#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the sweep's Slurm test (tests/host/test_slurm_sweep.py)
# and for trying `python -m scenarios.sweep slurm` by hand:
#
#   sudo scripts/slurm-cluster.sh start [STATE_DIR]    # munged, slurmctld, slurmd; prints the SLURM_CONF to use
#   sudo scripts/slurm-cluster.sh status [STATE_DIR]
#   sudo scripts/slurm-cluster.sh stop [STATE_DIR]     # cancels its jobs, stops the three daemons by their PIDs
#
# Everything is Debian's (slurmd, slurmctld, slurm-client, munge: scripts/setup.sh installs them)
# and everything it makes is in STATE_DIR (default $SLURM_STATE, else /var/tmp/testbed-slurm): a
# fresh MUNGE key, slurm.conf and cgroup.conf, the controller's state, the daemon's spool, the
# logs, and the PID of each daemon it started (pids/), which is all `stop` ends. Nothing collides
# with a Slurm or MUNGE of the system: its own socket, ports (SLURM_PORT, default 16817, and the
# next one), state directories and configuration, which clients find through SLURM_CONF (also in
# STATE_DIR/env, to source). The node is this machine with all its CPUs; a task runs as the user
# who submitted it. No cgroups are used (proctrack/linuxproc, task/none): the testbed's jobs bring
# their own kernel.
set -euo pipefail

ACTION=${1:-}
STATE=${2:-${SLURM_STATE:-/var/tmp/testbed-slurm}}
PORT=${SLURM_PORT:-16817}
NODE=testbed-node
DAEMONS=(slurmd slurmctld munged)   # the order they are stopped in

say() { echo "[slurm-cluster] $*" >&2; }
die() { say "$*"; exit 1; }

pid_of() {   # the recorded PID of a daemon, if that process still runs that program
  local name=$1 pid
  pid=$(cat "$STATE/pids/$name.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && echo "$pid"
}

export SLURM_CONF=$STATE/slurm.conf

start() {
  [ "$(id -u)" -eq 0 ] || die "start as root: the daemons run tasks as the users who submit them"
  local missing=() binary
  for binary in munged slurmctld slurmd sbatch sinfo; do
    command -v "$binary" >/dev/null || missing+=("$binary")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: run scripts/setup.sh (Debian's slurmd, slurmctld, slurm-client, munge)"
  for binary in "${DAEMONS[@]}"; do
    if pid_of "$binary" >/dev/null; then die "already running in $STATE ($binary PID $(pid_of "$binary")): stop it first"; fi
  done
  local port
  for port in "$PORT" $((PORT + 1)); do
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
      die "port $port is in use: set SLURM_PORT to another base"
    fi
  done
  rm -rf "$STATE"
  mkdir -p "$STATE"/{munge,ctld,spool,log,pids}
  chmod 755 "$STATE" "$STATE/log"
  chmod 700 "$STATE/ctld" "$STATE/spool"
  chmod 755 "$STATE/munge"   # clients reach the socket in it; only root writes there

  # MUNGE: a key of this cluster's own, its own socket.
  head -c 1024 /dev/urandom > "$STATE/munge/munge.key"
  chmod 400 "$STATE/munge/munge.key"
  munged --foreground --force --socket="$STATE/munge/socket" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
    --seed-file="$STATE/munge/seed" </dev/null >>"$STATE/log/munged.out" 2>&1 &
  echo $! > "$STATE/pids/munged.pid"
  local tries=0
  until [ -S "$STATE/munge/socket" ]; do
    tries=$((tries + 1))
    # (alive, not yet necessarily named munged: the fork may not have reached exec)
    if [ $tries -gt 50 ] || ! kill -0 "$(cat "$STATE/pids/munged.pid")" 2>/dev/null; then
      cat "$STATE/log/munged.out" >&2 2>/dev/null || true
      stop_daemons fresh
      die "munged did not start"
    fi
    sleep 0.2
  done

  local host cpus memory
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(( $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) / 1024 * 9 / 10 ))
  cat > "$SLURM_CONF" <<EOF
# A one-node cluster for the testbed's tests, written by scripts/slurm-cluster.sh; clients: SLURM_CONF=$SLURM_CONF
ClusterName=testbed
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=30
MinJobAge=600
NodeName=$NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=testbed Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$STATE/cgroup.conf" <<EOF
# No cgroup is used by this cluster (proctrack/linuxproc, task/none): nothing to constrain.
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
  chmod 644 "$SLURM_CONF" "$STATE/cgroup.conf"
  echo "export SLURM_CONF=$SLURM_CONF" > "$STATE/env"

  slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmctld.out" 2>&1 &
  echo $! > "$STATE/pids/slurmctld.pid"
  slurmd -D -f "$SLURM_CONF" -N "$NODE" </dev/null >>"$STATE/log/slurmd.out" 2>&1 &
  echo $! > "$STATE/pids/slurmd.pid"

  # Up when the node is idle (ReturnToService=2: it is as soon as slurmd registers).
  local state=""
  for tries in $(seq 1 60); do
    for binary in slurmctld slurmd; do
      kill -0 "$(cat "$STATE/pids/$binary.pid")" 2>/dev/null || {
        tail -n 20 "$STATE/log/$binary.log" "$STATE/log/$binary.out" >&2 2>/dev/null || true
        stop_daemons fresh; die "$binary exited"; }
    done
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 1
  done
  if [ "$state" != idle ]; then
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
    stop_daemons fresh
    die "the node did not become idle in 60 s (state: ${state:-none})"
  fi
  say "up: node $NODE ($cpus CPUs, ${memory} MB), partition testbed; PIDs munged $(pid_of munged), slurmctld $(pid_of slurmctld), slurmd $(pid_of slurmd)"
  say "clients: export SLURM_CONF=$SLURM_CONF   (or: source $STATE/env)"
  echo "$SLURM_CONF"
}

stop_daemons() {   # "fresh": PIDs recorded by this start, seconds ago (one may not have reached exec yet)
  local name pid waited
  for name in "${DAEMONS[@]}"; do
    if [ "${1:-}" = fresh ]; then
      pid=$(cat "$STATE/pids/$name.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
    else
      pid=$(pid_of "$name") || continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for waited in $(seq 1 100); do
      [ -d "/proc/$pid" ] || break
      sleep 0.2
    done
    if [ -d "/proc/$pid" ]; then
      say "$name (PID $pid) did not stop in 20 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/pids/$name.pid"
  done
}

stop() {
  [ -f "$SLURM_CONF" ] || { say "no cluster in $STATE"; return 0; }
  if pid_of slurmctld >/dev/null; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 60); do
        [ -z "$(squeue -h -o %A 2>/dev/null || true)" ] && break
        sleep 1
      done
    fi
  fi
  stop_daemons
  say "stopped (state and logs kept in $STATE)"
}

status() {
  local name pid
  for name in munged slurmctld slurmd; do
    if pid=$(pid_of "$name"); then echo "$name: running, PID $pid"; else echo "$name: not running"; fi
  done
  if pid_of slurmctld >/dev/null; then
    sinfo || true
    squeue || true
  fi
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [STATE_DIR]" >&2; exit 2 ;;
esac
