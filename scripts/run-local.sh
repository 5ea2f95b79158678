#!/usr/bin/env bash
# Runs the gateway against a local Mosquitto on 127.0.0.1:${MQTT_PORT:-1883}, starting a private
# one (in a temp dir, stopped on exit) when nothing listens there. Data goes to ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${MQTT_PORT:-1883}"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  dir=$(mktemp -d)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nset_tcp_nodelay true\n' \
    "$port" > "$dir/mosquitto.conf"
  mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  # Its own session: Ctrl-C must reach the gateway (which drains), not the broker under it.
  setsid "$mosquitto" -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
  broker=$!
  trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
  echo "started a private mosquitto on 127.0.0.1:$port (log: $dir/mosquitto.log)"
fi
# The gateway handles Ctrl-C itself (it drains, then exits 0); this shell only waits for it.
trap '' INT
.venv/bin/gateway run --broker "mqtt://127.0.0.1:$port" --data-dir ./data "$@"
