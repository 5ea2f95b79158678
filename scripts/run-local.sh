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
  "$mosquitto" -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
  broker=$!
  trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
  echo "started a private mosquitto on 127.0.0.1:$port (log: $dir/mosquitto.log)"
fi
.venv/bin/gateway run --broker "mqtt://127.0.0.1:$port" --data-dir ./data "$@"
