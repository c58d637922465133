#!/usr/bin/env bash
# Install whatever keymutex needs that this Debian 12 machine lacks.
# Idempotent: installs nothing when everything is present.
set -euo pipefail

PKGS=(build-essential clang meson ninja-build pkg-config
      libck-dev liburcu-dev libcriterion-dev
      libclang-rt-14-dev gnuplot-nox libuv1-dev valgrind spin cmake g++ python3
      man-db groff-base)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
