#!/usr/bin/env bash
# `make container-test`: run the testbed inside its OCI image (built or reused by
# scripts/image.sh), as CI does:
#
#   1. privileged: the kernel probe (`.venv/bin/python -m topo.kernel probe`) and the short
#      scenario scenarios/smoke.toml (`make run-scenario`), its results written to this
#      checkout's results/ through a bind mount; with FULL=1 also .ci/run, what CI runs on a
#      host (the README's `make test` with 10 000 examples per property, kernel tests included,
#      then its main command, `make run-scenario` on the default scenario);
#   2. unprivileged (no --privileged, the engine's default capabilities, seccomp and /dev/shm):
#      the same probe and scenario, and a plain statement of what works and why not.
#
# The container gets the current checkout (copied in as a tar stream, the image's .venv kept),
# so a reused image still tests today's code. Logs and a summary go to
# results/container-test/<UTC time>/. The exit status is the privileged run's; the unprivileged
# attempt only reports.
#
# Environment (all optional): FULL=1; UNPRIVILEGED=0 (skip step 2); SOURCE=head (test the
# committed HEAD instead of the working tree, e.g. while that is half-way through an edit);
# SMOKE_SCENARIO (default scenarios/smoke.toml); RESULTS_MODE=bind|copy (default: bind, or copy
# -- `cp` out of the container after the run -- when the engine's daemon is remote, e.g.
# DOCKER_HOST=tcp://..., where a bind mount would name the daemon's file system);
# KERNEL=auto|host|uml (passed in); and those of scripts/image.sh (ENGINE, IMAGE_ARCHIVE, ...).
set -euo pipefail
# shellcheck source=scripts/image.sh
source "$(dirname "${BASH_SOURCE[0]}")/image.sh"
cd "$REPO"

FULL=${FULL:-0}
UNPRIVILEGED=${UNPRIVILEGED:-1}
SMOKE=${SMOKE_SCENARIO:-scenarios/smoke.toml}
[ -f "$SMOKE" ] || die "no scenario file $SMOKE"
if [ -z "${RESULTS_MODE:-}" ]; then
  case "${DOCKER_HOST:-}${CONTAINER_HOST:-}" in
    tcp://*|ssh://*|http*) RESULTS_MODE=copy ;;
    *) RESULTS_MODE=bind ;;
  esac
fi
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGDIR=results/container-test/$STAMP
mkdir -p "$LOGDIR"

# The code under test: the checkout as it is (SOURCE=worktree, the default), or its committed
# HEAD (SOURCE=head: `git archive`, with .git for the run record's revision), e.g. while the
# working tree is half-way through an edit.
SOURCE=${SOURCE:-worktree}
SOURCE_DIR=$REPO
STAGING=
CREATED=()
cleanup() {
  local name
  for name in "${CREATED[@]}"; do
    "$ENGINE" rm -f "$name" >/dev/null 2>&1 || true
  done
  [ -z "$STAGING" ] || rm -rf "$STAGING"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "[container-test] $*" >&2; }

case "$SOURCE" in
  worktree) ;;
  head)
    STAGING=$(mktemp -d /var/tmp/testbed-source.XXXXXX)
    git -C "$REPO" archive HEAD | tar -x -C "$STAGING"
    cp -a "$REPO/.git" "$STAGING/.git"
    git -C "$STAGING" reset -q   # the copy's index to HEAD: the record says "clean"
    [ -e "$STAGING/$SMOKE" ] || cp --parents "$SMOKE" "$STAGING/"   # a scenario not committed yet
    SOURCE_DIR=$STAGING
    ;;
  *) die "SOURCE must be worktree or head, not $SOURCE" ;;
esac

# Runs inside the container: put the current checkout in place (keeping the image's .venv and
# the results mount), then each step of $STEPS, timed; `@@step NAME STATUS SECONDS` lines are
# read back by this script.
INNER='
cd /testbed || exit 1
if [ -d /tmp/checkout ]; then
  find /testbed -mindepth 1 -maxdepth 1 ! -name .venv ! -name results -exec rm -rf {} +
  cp -a /tmp/checkout/. /testbed/ && rm -rf /tmp/checkout
fi
status=0
for step in $STEPS; do
  case $step in
    probe) command=".venv/bin/python -m topo.kernel probe" ;;
    smoke) command="make run-scenario SCENARIO=$SMOKE" ;;
    ci)    command=".ci/run" ;;
  esac
  echo "== $step: $command"
  started=$EPOCHREALTIME
  $command
  rc=$?
  echo "@@step $step $rc $(awk -v a="$started" -v b="$EPOCHREALTIME" "BEGIN { printf \"%.1f\", b - a }")"
  [ $rc -eq 0 ] || [ $status -ne 0 ] || status=$rc
  [ $step = smoke ] && STEP_STARTED=$started .venv/bin/python - <<"PY"
# One line on the run just made (the newest results/<scenario name>/<run id>/ written since the
# step started), per method: handovers and their outcome, the Tables I-IV checks, and handovers
# the emulator did not keep its timing in (from handovers.json, every field optional).
import collections, json, os, pathlib, tomllib
try:
    name = tomllib.loads(pathlib.Path(os.environ["SMOKE"]).read_text()).get("name", "default")
except (OSError, ValueError):
    name = "default"
since = float(os.environ["STEP_STARTED"])
runs = sorted((p for p in pathlib.Path("results", name).glob("*/handovers.json") if p.stat().st_mtime >= since),
              key=lambda p: p.stat().st_mtime)
if runs:
    per_method = collections.defaultdict(collections.Counter)
    for handover in json.loads(runs[-1].read_text()):
        if handover.get("warmup"):
            continue
        counts = per_method[handover.get("method", "?")]
        counts["handovers"] += 1
        outcome = handover.get("outcome") or ("ok" if handover.get("completed") else "incomplete")
        if outcome != "ok":
            counts[outcome] += 1
        if isinstance(handover.get("tables_check"), list):
            counts["tables checked"] += 1
            counts["tables ok"] += not handover["tables_check"]
        fidelity = handover.get("fidelity")
        if isinstance(fidelity, dict) and fidelity.get("violations"):
            counts["timing not kept"] += 1
    parts = []
    for method, counts in per_method.items():
        notes = [f"{key} {value}" for key, value in counts.items()
                 if key not in ("handovers", "tables checked", "tables ok")]
        if counts["tables checked"]:
            notes.insert(0, "Tables I-IV %d/%d" % (counts["tables ok"], counts["tables checked"]))
        parts.append("%s %d%s" % (method, counts["handovers"], " (" + ", ".join(notes) + ")" if notes else ""))
    print(f"@@digest {runs[-1].parent}: " + "; ".join(parts))
PY
done
exit $status
'

# How to run privileged: --privileged, unless the engine asks for capabilities this host's
# bounding set lacks (Docker 20.10 asks for every capability it knows; in some sandboxes
# CAP_SYS_RESOURCE is missing: "unable to apply caps"): then every capability the bounding set
# has, with the other things --privileged lifts (seccomp, AppArmor, masked /proc and /sys).
PRIV_FLAGS=(--privileged)
PRIV_NOTE="--privileged"
CAP_NAMES=(chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap
           linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner
           sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice
           sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap
           mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf
           checkpoint_restore)
detect_privileged() {
  local err bounding bit missing=()
  err=$("$ENGINE" "${ENGINE_FLAGS[@]}" run --rm --network none "${RUN_FLAGS[@]}" --privileged "$IMAGE_REF" true 2>&1) && return
  err=$(printf '%s\n' "$err" | grep -v '^$' | tail -n1)
  case "$err" in *"apply caps"*) ;; *) die "a privileged container does not start: $err" ;; esac
  bounding=$((16#$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)))
  for bit in "${!CAP_NAMES[@]}"; do
    (( bounding >> bit & 1 )) || missing+=("${CAP_NAMES[$bit]}")
  done
  PRIV_FLAGS=(--cap-add ALL --security-opt seccomp=unconfined --security-opt apparmor=unconfined)
  if is_podman; then PRIV_FLAGS+=(--security-opt unmask=ALL)
  else PRIV_FLAGS+=(--security-opt systempaths=unconfined); fi
  for bit in "${missing[@]}"; do PRIV_FLAGS+=(--cap-drop "$bit"); done
  err=$("$ENGINE" "${ENGINE_FLAGS[@]}" run --rm --network none "${RUN_FLAGS[@]}" "${PRIV_FLAGS[@]}" "$IMAGE_REF" true 2>&1) ||
    die "neither --privileged nor ${PRIV_FLAGS[*]} starts a container: $(printf '%s\n' "$err" | tail -n1)"
  PRIV_NOTE="${PRIV_FLAGS[*]} (--privileged refused: the host's capability bounding set lacks ${missing[*]:-?})"
}

# run_container LABEL "STEPS": one container; its log in $LOGDIR/LABEL.log; sets STATUS.
run_container() {
  local label=$1 steps=$2 name started
  name=testbed-ct-$label-$$
  local flags=(--name "$name" --network none --hostname testbed
               -e "STEPS=$steps" -e "SMOKE=$SMOKE" -e TERM=dumb "${RUN_FLAGS[@]}")
  [ -n "${KERNEL:-}" ] && flags+=(-e "KERNEL=$KERNEL")
  [ "$label" = privileged ] && flags+=("${PRIV_FLAGS[@]}")
  [ "$RESULTS_MODE" = bind ] && flags+=(-v "$REPO/results:/testbed/results")
  started=$(now)
  CREATED+=("$name")
  "$ENGINE" "${ENGINE_FLAGS[@]}" create "${flags[@]}" "$IMAGE_REF" bash -c "$INNER" >/dev/null
  tar -C "$SOURCE_DIR" --owner=0 --group=0 --numeric-owner \
      --exclude=./.venv --exclude=./results --exclude=./.cache --exclude=./.pytest_cache \
      --exclude=./.hypothesis --exclude=__pycache__ --transform 's,^\.,checkout,' -cf - . |
    "$ENGINE" cp - "$name:/tmp/"
  say "$label container: steps $steps"
  "$ENGINE" "${ENGINE_FLAGS[@]}" start -a "$name" 2>&1 | tee "$LOGDIR/$label.log" || true
  STATUS=$("$ENGINE" inspect -f '{{.State.ExitCode}}' "$name" 2>/dev/null || echo 125)
  if [ "$RESULTS_MODE" = copy ]; then
    "$ENGINE" cp "$name:/testbed/results/." "$REPO/results/" || say "copying results out of $name failed"
  fi
  "$ENGINE" rm -f "$name" >/dev/null 2>&1 || true
  say "$label container: exit status $STATUS after $(elapsed "$started") s"
}

# step_result LABEL STEP: "ok 12.3 s", "failed (status N) after 12.3 s" or "not run".
step_result() {
  local line
  line=$(grep -a "^@@step $2 " "$LOGDIR/$1.log" | tail -n1 || true)
  [ -n "$line" ] || { echo "not run"; return; }
  set -- $line
  if [ "$3" = 0 ]; then echo "ok, $4 s"; else echo "FAILED (status $3) after $4 s"; fi
}

summary=()
note() { summary+=("$*"); }

started_all=$(now)
ensure_image
detect_run_flags "$IMAGE_REF"
note "engine:       $ENGINE_NOTE"
note "run flags:    ${ENGINE_FLAGS[*]:-} ${RUN_FLAGS[*]:-(none)} [$RUN_FLAGS_NOTE]"
note "image:        $IMAGE_REF ($IMAGE_ACTION)"
note "code:         $SOURCE ($(git -C "$SOURCE_DIR" -c safe.directory='*' rev-parse --short HEAD 2>/dev/null || echo 'no git')$([ "$SOURCE" = worktree ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ', with uncommitted changes'))"
note "results:      $RESULTS_MODE (results/ of $REPO)"

# 1. Privileged.
detect_privileged
note "privileged:   as $PRIV_NOTE"
steps="probe smoke"
[ "$FULL" = 1 ] && steps="$steps ci"
run_container privileged "$steps"
privileged_status=$STATUS
note "              probe $(step_result privileged probe); smoke $(step_result privileged smoke)$([ "$FULL" = 1 ] && echo "; .ci/run $(step_result privileged ci)")"
note "              kernel: $(grep -a -m1 '^kernel: ' "$LOGDIR/privileged.log" | cut -c9- || echo '?')"
digest=$(grep -a -m1 '^@@digest ' "$LOGDIR/privileged.log" | cut -c10- || true)
[ -z "$digest" ] || note "              smoke run: $digest"
run_dir=${digest%%:*}
if [ -n "$run_dir" ] && [ -f "$run_dir/handovers.json" ]; then
  note "              results on the host: $run_dir/ ($(ls "$run_dir" | wc -l) files)"
else
  note "              results on the host: no run directory of the smoke scenario under results/"
  [ "$privileged_status" != 0 ] || privileged_status=1
fi

# 2. Unprivileged: what works without --privileged, and why not.
if [ "$UNPRIVILEGED" = 1 ]; then
  run_container unprivileged "probe smoke"
  log_file=$LOGDIR/unprivileged.log
  note "unprivileged: probe $(step_result unprivileged probe); smoke $(step_result unprivileged smoke)"
  digest=$(grep -a -m1 '^@@digest ' "$log_file" | cut -c10- || true)
  [ -z "$digest" ] || note "              smoke run: $digest"
  if grep -aq '^kernel: .*lacks veth' "$log_file"; then
    note "              the probe finds no veth either: its scratch namespaces (unshare --net) need"
    note "              CAP_SYS_ADMIN, which an unprivileged container lacks; the verdict is UML anyway"
  fi
  if grep -aq 'UML guest exited' "$log_file"; then
    note "              the UML guest runs: linux.uml is an ordinary process (ptrace, mmap of its memory"
    note "              file in topo.kernel's work directory under /tmp, not the noexec 64 MB /dev/shm),"
    note "              and everything the testbed does with namespaces happens inside the guest"
    if ! step_result unprivileged smoke | grep -q "^ok"; then
      note "              (so a failed smoke run there is the scenario's own outcome: see its lines above"
      note "              and $log_file)"
    fi
  elif grep -aq '/dev/shm must be not mounted noexec' "$log_file"; then
    note "              UML refused /dev/shm: it is mounted noexec (set TMPDIR to an exec-able directory)"
  else
    note "              the UML guest did not run: see $log_file"
  fi
fi

note "total:        $(elapsed "$started_all") s; logs in $LOGDIR/"
printf '%s\n' "${summary[@]}" | tee "$LOGDIR/summary.txt" >&2
exit "$privileged_status"
