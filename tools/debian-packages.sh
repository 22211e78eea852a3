#!/usr/bin/env bash
# Installs the Debian packages the tests run for real, when they are missing:
#   prometheus   scrapes the gateway in the monitoring tests
#   postgresql   the SQL source with a password (tests/pipelines/test_sql_credentials.py)
# As root on Debian/Ubuntu it uses apt-get, with services kept from starting (a
# policy-rc.d that says no while it runs: the tests start their own servers on free
# ports). Elsewhere it says what to install and fails. A second run does nothing.
set -euo pipefail

packages=("$@")
((${#packages[@]})) || packages=(prometheus postgresql)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
((${#missing[@]})) || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "the tests need these packages: ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
fi
echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
