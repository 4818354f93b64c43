#!/usr/bin/env bash
# Idempotent set-up, as root: Debian packages, the UML kernel's modules where modprobe looks,
# and the virtual environment. Fast when everything is already there, so every make target that
# needs it can simply run it first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (sudo make ...): it installs Debian packages and configures namespaces" >&2
  exit 1
fi

# Debian 12 / Ubuntu packages the testbed needs. mininet comes from Debian (PyPI's is a 2020
# snapshot without mnexec); user-mode-linux gives a kernel with ESP, netem, SCTP and ip6tnl when
# the host's lacks them.
# slurmd, slurmctld, slurm-client and munge make the one-node cluster of the sweep's Slurm test
# (scripts/slurm-cluster.sh; acl lets its ordinary user reach the checkout); chromium (headless)
# and a font open the HTML reports in the browser test (tests/host/).
PACKAGES=(mininet user-mode-linux iproute2 tcpdump tshark iputils-ping procps kmod util-linux net-tools
          python3 python3-venv ethtool make git openssl
          strongswan-charon strongswan-swanctl strongswan-pki libcharon-extra-plugins
          libcharon-extauth-plugins libstrongswan-standard-plugins freeradius freeradius-utils
          slurmd slurmctld slurm-client munge acl chromium fonts-dejavu-core)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# modprobe inside the UML guest looks in /lib/modules/<release>.
for release_dir in /usr/lib/uml/modules/*; do
  [ -d "$release_dir" ] || continue
  release=$(basename "$release_dir")
  if [ ! -e "/lib/modules/$release" ]; then
    mkdir -p /lib/modules
    ln -s "$release_dir" "/lib/modules/$release"
  fi
done

# The virtual environment sees Debian's Mininet (system site packages) and takes the rest,
# pinned, from requirements.txt. Rebuilt only when requirements.txt changes.
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: building .venv from requirements.txt"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
