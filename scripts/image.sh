#!/usr/bin/env bash
# `make image`: build the testbed's OCI image (Containerfile), or reuse it when its inputs have not
# changed. Prints the image reference on standard output; everything else goes to standard error.
#
# Decided here, not configured:
#   - the engine: Docker when its client works (a daemon answers), Podman otherwise; when neither
#     is present, `podman runc` are installed with apt (as root);
#   - the base: docker.io/library/debian:bookworm when it is present or can be pulled, else a
#     Debian 12 base made with debootstrap from the mirror this machine's apt already uses;
#   - the run flags: Podman's default OCI runtime unless it fails (crun on hosts with cgroups in
#     hybrid mode), then runc; --ulimit only when the runtime refuses the engine's default limits
#     (above this host's hard limits), then the largest the runtime accepts.
#
# The image is tagged with a hash of Containerfile, scripts/setup.sh and requirements.txt (the
# inputs of its environment): `<IMAGE_NAME>:env-<hash>`, and `<IMAGE_NAME>:latest` points at it.
# The repository is also copied into the image at /testbed, as it was at build time; a reused
# image may hold older code, so scripts/container-test.sh copies the current checkout in.
#
# Environment (all optional): ENGINE=docker|podman, IMAGE_NAME (default testbed), BASE (skip the
# base detection), MIRROR (Debian mirror for debootstrap when apt's configuration names none),
# IMAGE_ARCHIVE (a tar file: loaded when the image is missing, written after a build; for CI
# caches), CA_BUNDLE (CA certificates for pip during the build; default: the host's trust store,
# so that builds behind a TLS-intercepting proxy work; used in one RUN step, never stored),
# REBUILD=1 (build even when an image with the same inputs exists).
#
# scripts/container-test.sh sources this file for the same detection.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE_NAME=${IMAGE_NAME:-testbed}
DEBIAN_IMAGE=docker.io/library/debian:bookworm
RUN_FLAGS=()          # --ulimit flags for `run`/`create` and `build`, set by detect_run_flags
RUN_FLAGS_DONE=0
RUN_FLAGS_NOTE=""

log() { echo "[image] $*" >&2; }
die() { echo "[image] error: $*" >&2; exit 1; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

input_hash() {
  (cd "$REPO" && cat Containerfile scripts/setup.sh requirements.txt) | sha256sum | cut -c1-12
}

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }
is_podman() { [ "${ENGINE##*/}" = podman ]; }

apt_install() {
  [ "$(id -u)" -eq 0 ] || die "$* missing and not root: install them, or run as root (sudo make ...)"
  log "installing $* with apt"
  local out
  if ! out=$(DEBIAN_FRONTEND=noninteractive apt-get update -qq 2>&1 &&
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" 2>&1); then
    printf '%s\n' "$out" | tail -n 20 >&2
    die "apt-get install $* failed"
  fi
}

# ENGINE: docker when present and working, podman otherwise (installed when neither is present).
detect_engine() {
  if [ -n "${ENGINE:-}" ]; then
    command -v "$ENGINE" >/dev/null || die "ENGINE=$ENGINE is not installed"
    ENGINE_NOTE="$ENGINE (forced by ENGINE)"
    return
  fi
  local why_not_docker="not installed"
  if command -v docker >/dev/null; then
    local out
    if out=$(docker info 2>&1 >/dev/null); then
      ENGINE=docker ENGINE_NOTE="docker (client and daemon answer)"
      return
    fi
    why_not_docker="client present but not working: $(printf '%s\n' "$out" | grep -v '^$' | tail -n1)"
  fi
  if ! command -v podman >/dev/null; then
    log "no working container engine (docker: $why_not_docker); installing podman"
    apt_install podman runc
  fi
  ENGINE=podman ENGINE_NOTE="podman (docker: $why_not_docker)"
}

# How the engine can start a container here, tried with throw-away containers of $1: the default
# OCI runtime unless it fails (Podman's crun: "cgroups in hybrid mode not supported"), then runc;
# no --ulimit unless the engine's default limits are refused (rootful Podman asks for 1048576
# open files and processes, above many hosts' hard limits); then the host's hard limits
# (`ulimit -Hn`, `ulimit -Hu`), halving the one the runtime still refuses (the engine may run
# with lower limits than the shell, e.g. Podman with 32768 processes).
# Sets ENGINE_FLAGS (global, before the subcommand: the runtime) and RUN_FLAGS (the ulimits).
ENGINE_FLAGS=()
detect_run_flags() {
  local image=$1 err
  [ "$RUN_FLAGS_DONE" = 1 ] && return
  local nofile='' nproc='' notes=()
  for _ in $(seq 1 16); do
    RUN_FLAGS=()
    [ -n "$nofile" ] && RUN_FLAGS+=(--ulimit "nofile=$nofile:$nofile")
    [ -n "$nproc" ] && RUN_FLAGS+=(--ulimit "nproc=$nproc:$nproc")
    if err=$("$ENGINE" "${ENGINE_FLAGS[@]}" run --rm --network none "${RUN_FLAGS[@]}" "$image" true 2>&1); then
      RUN_FLAGS_DONE=1
      [ ${#notes[@]} -gt 0 ] || notes=("defaults work")
      RUN_FLAGS_NOTE="$(IFS=';'; echo "${notes[*]}")"
      log "runtime flags: ${ENGINE_FLAGS[*]:-(default runtime)} ${RUN_FLAGS[*]:-(default limits)} [$RUN_FLAGS_NOTE]"
      return
    fi
    err=$(printf '%s\n' "$err" | grep -v '^$' | tail -n1)
    if printf '%s' "$err" | grep -qiE 'rlimit|ulimit'; then
      if [ -z "$nofile$nproc" ]; then
        nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
        [ "$nofile" = unlimited ] && nofile=1048576
        [ "$nproc" = unlimited ] && nproc=1048576
        notes+=("default limits refused ($err): host hard limits nofile $nofile, nproc $nproc")
        continue
      fi
      # Which limit: runc says "rlimit type N" (7 is RLIMIT_NOFILE, 6 RLIMIT_NPROC), crun names it.
      case "$err" in
        *"rlimit type 7"*|*RLIMIT_NOFILE*) nofile=$((nofile / 2)) ;;
        *"rlimit type 6"*|*RLIMIT_NPROC*) nproc=$((nproc / 2)) ;;
        *) nofile=$((nofile / 2)) nproc=$((nproc / 2)) ;;
      esac
      [ "$nofile" -ge 256 ] && [ "$nproc" -ge 256 ] || die "cannot start a container with $ENGINE: $err"
      notes+=("limit refused: trying nofile $nofile, nproc $nproc")
    elif is_podman && [ ${#ENGINE_FLAGS[@]} -eq 0 ] && command -v runc >/dev/null; then
      ENGINE_FLAGS=(--runtime runc)
      notes+=("default runtime failed ($err): using runc")
    else
      die "cannot start a container with $ENGINE: $err"
    fi
  done
  die "cannot start a container with $ENGINE (last error: $err)"
}

# The Debian archive (and security archive) this machine's apt uses, read from its sources.
apt_uri() {  # $1: suite to look for (bookworm or bookworm-security)
  local suite=$1 file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -r "$file" ] || continue
    awk -v want="$suite" '
      function flush() { if (uris != "" && (" " suites " ") ~ (" " want " ") && types ~ /(^| )deb( |$)/) { split(uris, u, " "); print u[1]; found = 1; exit } }
      /^[[:space:]]*$/ { flush(); uris = ""; suites = ""; types = ""; next }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
      END { if (!found) flush() }' "$file"
  done | head -n1 | grep . && return
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v want="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == want) { print $i; exit } }' |
    grep .
}

# A Debian 12 base image made with debootstrap, for machines that reach no container registry.
make_debootstrap_base() {
  local ref=$1 mirror security rootfs started
  mirror=${MIRROR:-$(apt_uri bookworm || true)}
  [ -n "$mirror" ] || die "no Debian bookworm mirror in /etc/apt/sources.list*; set MIRROR=<Debian archive URL>"
  security=$(apt_uri bookworm-security || true)
  command -v debootstrap >/dev/null || apt_install debootstrap
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
  rootfs=$(mktemp -d /var/tmp/testbed-rootfs.XXXXXX)
  started=$(now)
  log "making a Debian 12 base with debootstrap from $mirror (a few minutes)"
  if ! debootstrap --variant=minbase --components=main bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    tail -n 20 "$rootfs.log" >&2
    rm -rf "$rootfs" "$rootfs.log"
    die "debootstrap failed"
  fi
  # The same apt sources the official image has (bookworm, -updates, -security), on this mirror.
  rm -f "$rootfs/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror"
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$security"
    fi
  } >"$rootfs/etc/apt/sources.list.d/debian.sources"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  if ! tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
       "$ENGINE" import --change 'CMD ["bash"]' - "$ref" >/dev/null; then
    "$ENGINE" rmi "$ref" >/dev/null 2>&1 || true
    rm -rf "$rootfs" "$rootfs.log"
    die "importing the debootstrap tree failed"
  fi
  rm -rf "$rootfs" "$rootfs.log"
  log "base $ref made in $(elapsed "$started") s"
}

# BASE: the official image if present or pullable, else the debootstrap base (made once, reused).
detect_base() {
  if [ -n "${BASE:-}" ]; then BASE_NOTE="$BASE (forced by BASE)"; return; fi
  if image_exists "$DEBIAN_IMAGE"; then BASE=$DEBIAN_IMAGE BASE_NOTE="$DEBIAN_IMAGE (present)"; return; fi
  local out
  if out=$(timeout 120 "$ENGINE" pull -q "$DEBIAN_IMAGE" 2>&1 >/dev/null); then
    BASE=$DEBIAN_IMAGE BASE_NOTE="$DEBIAN_IMAGE (pulled)"
    return
  fi
  BASE=${IMAGE_NAME}-base:bookworm
  is_podman && BASE=localhost/$BASE
  BASE_NOTE="$BASE (debootstrap: $DEBIAN_IMAGE cannot be pulled: $(printf '%s\n' "$out" | grep -v '^$' | tail -n1 | cut -c1-160))"
  if image_exists "$BASE"; then
    log "reusing the debootstrap base $BASE"
  else
    make_debootstrap_base "$BASE"
  fi
}

ca_bundle() {
  local candidate
  for candidate in "${CA_BUNDLE:-}" "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -n "$candidate" ] && [ -s "$candidate" ]; then echo "$candidate"; return; fi
  done
}

# IMAGE_REF: the image for the current inputs, built unless it exists (or is in IMAGE_ARCHIVE).
ensure_image() {
  detect_engine
  local hash started
  hash=$(input_hash)
  IMAGE_REF=$IMAGE_NAME:env-$hash
  is_podman && IMAGE_REF=localhost/$IMAGE_REF
  log "engine: $ENGINE_NOTE"
  if [ "${REBUILD:-0}" != 1 ] && ! image_exists "$IMAGE_REF" && [ -n "${IMAGE_ARCHIVE:-}" ] && [ -s "$IMAGE_ARCHIVE" ]; then
    started=$(now)
    if "$ENGINE" load -q -i "$IMAGE_ARCHIVE" >&2 && image_exists "$IMAGE_REF"; then
      log "loaded $IMAGE_REF from $IMAGE_ARCHIVE in $(elapsed "$started") s"
    else
      log "$IMAGE_ARCHIVE does not hold $IMAGE_REF (inputs changed): building"
    fi
  fi
  if [ "${REBUILD:-0}" != 1 ] && image_exists "$IMAGE_REF"; then
    IMAGE_ACTION=reused
    log "reusing $IMAGE_REF (Containerfile, scripts/setup.sh and requirements.txt unchanged)"
    "$ENGINE" tag "$IMAGE_REF" "$IMAGE_NAME:latest" >/dev/null 2>&1 || true
    return
  fi
  started=$(now)
  detect_base
  log "base: $BASE_NOTE"
  detect_run_flags "$BASE"
  local build=("$ENGINE" "${ENGINE_FLAGS[@]}" build --file "$REPO/Containerfile" --build-arg "BASE=$BASE"
               --tag "$IMAGE_REF" --tag "$IMAGE_NAME:latest"
               --label "testbed.inputs=$hash" --label "testbed.base=$BASE")
  local ca
  ca=$(ca_bundle)
  [ -n "$ca" ] && build+=(--secret "id=ca,src=$ca")
  # Host networking for the build's apt and pip: no bridge, CNI or iptables needed.
  build+=(--network host)
  if is_podman; then
    build+=(--layers "${RUN_FLAGS[@]}")
  else
    # The Containerfile's RUN --mount needs BuildKit: Docker's default builder from 23.0 on (the
    # buildx plugin), built into older clients behind DOCKER_BUILDKIT=1.
    if ! "$ENGINE" buildx version >/dev/null 2>&1; then
      local client
      client=$("$ENGINE" version --format '{{.Client.Version}}' 2>/dev/null || echo 0)
      [ "${client%%.*}" -lt 23 ] 2>/dev/null ||
        die "docker $client has no buildx plugin, and the Containerfile needs BuildKit: install the plugin (docker-buildx-plugin, or Debian's docker-buildx), or use ENGINE=podman"
    fi
    export DOCKER_BUILDKIT=1
    build+=("${RUN_FLAGS[@]}")
  fi
  log "building $IMAGE_REF from $BASE"
  "${build[@]}" "$REPO" >&2 || die "image build failed"
  IMAGE_ACTION="built in $(elapsed "$started") s"
  log "$IMAGE_REF $IMAGE_ACTION"
  if [ -n "${IMAGE_ARCHIVE:-}" ]; then
    started=$(now)
    mkdir -p "$(dirname "$IMAGE_ARCHIVE")"
    rm -f "$IMAGE_ARCHIVE"
    local quiet=()
    is_podman && quiet=(-q)
    "$ENGINE" save "${quiet[@]}" -o "$IMAGE_ARCHIVE" "$IMAGE_REF" >&2
    log "saved to $IMAGE_ARCHIVE ($(du -h "$IMAGE_ARCHIVE" | cut -f1)) in $(elapsed "$started") s"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  started=$(now)
  ensure_image
  log "image ready in $(elapsed "$started") s"
  echo "$IMAGE_REF"
fi
