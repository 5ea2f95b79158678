#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, when they are missing:
# mosquitto (the broker the tests run), mosquitto-clients (the benchmark's reference),
# prometheus (promtool checks the deploy files) and openssl (the TLS tests make their own CA).
# Uses sudo when not root.
set -euo pipefail
need=()
if [ "${1:-}" = "venv" ]; then
  # Only what `python3 -m venv` needs (Debian splits ensurepip out of python3): for `make demo`.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
else
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
fi
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start system services we do not need; tests start their own.
for svc in mosquitto prometheus; do
  $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
