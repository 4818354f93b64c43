#!/usr/bin/env bash
# The main job while the host is busy: two CPU hogs (stress-ng from Debian) for the whole
# `make run-scenario`, stopped by their recorded PID however the run ends. Its exit status is the
# run's: non-zero when any handover failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v stress-ng >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stress-ng >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stress-ng >/dev/null; }
fi
workers=${LOAD_WORKERS:-$(nproc)}
stress-ng --cpu "$workers" --timeout 3h --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true' EXIT
echo "loaded-run: $workers CPU hogs (stress-ng, PID $hog) for the whole run" >&2
make run-scenario ${SCENARIO:+SCENARIO="$SCENARIO"}
