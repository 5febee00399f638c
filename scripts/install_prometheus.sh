#!/usr/bin/env bash
# Install a Prometheus server from Debian's packages, for tests/test_prometheus.py (a real server
# scraping tensorgate's /metrics). Idempotent; uses sudo for apt when not root.
set -euo pipefail
if command -v prometheus >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=()
if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null; then SUDO=(sudo -E); fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { "${SUDO[@]}" apt-get update -qq \
         && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
prometheus --version 2>&1 | head -1
