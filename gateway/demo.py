"""`gateway demo`: an embedded broker, a simulated fleet and the gateway, then an audit.

The broker is Mosquitto when it is on PATH, else amqtt (pure Python). The fleet runs as a
`gateway-sim` subprocess (the gateway package never imports the simulators). Children run in
their own sessions, so a terminal's Ctrl-C reaches only us and we stop them in order:
fleet first, then wait until the gateway has everything the broker took, then drain, then audit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.app import Gateway
from gateway.audit import audit, format_table
from gateway.config import GatewayConfig, parse_listen_addr
from gateway.errors import REJECT_REASONS
from gateway.logs import setup_logging
from gateway.manifest import read_header

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway demo", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=200, help="simulated devices (default 200)")
    p.add_argument("--rate", type=float, default=1.0, help="readings/s per device (default 1)")
    p.add_argument("--fault-rate", type=float, default=0.01, help="share of faulty messages")
    p.add_argument("--data-dir", type=Path, default=Path("./demo-data"))
    p.add_argument("--metrics-addr", default="127.0.0.1:9108", help="HOST:PORT (port 0 = any)")
    p.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    return p


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not listen on {port}") from None
            time.sleep(0.05)


def start_broker(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """A private broker on a free loopback port; returns (process, port, name)."""
    port = _free_port()
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if kind == "mosquitto" or (kind == "auto" and mosquitto):
        if not mosquitto:
            raise RuntimeError("mosquitto is not installed")
        conf = workdir / "mosquitto.conf"
        # Large queues and window: the at-least-once settings the README recommends.
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n"
            "max_queued_messages 100000\nset_tcp_nodelay true\n"
            f"log_dest file {workdir / 'mosquitto.log'}\n",
            encoding="utf-8",
        )
        cmd, name = [mosquitto, "-c", str(conf)], "mosquitto"
    else:
        conf = workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n",
            encoding="utf-8",
        )
        amqtt = shutil.which("amqtt") or str(Path(sys.executable).with_name("amqtt"))
        cmd, name = [amqtt, "-c", str(conf)], "amqtt"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "broker.err").open("wb"),
        start_new_session=True,
    )
    _wait_for_port(port, proc)
    return proc, port, name


def demo_config(port: int, data_dir: Path, metrics_addr: str, broker: str) -> GatewayConfig:
    # amqtt speaks only MQTT 3.1.1: say so, rather than let "auto" find out (a few seconds).
    protocol = "3.1.1" if broker == "amqtt" else "auto"
    return GatewayConfig.model_validate(
        {
            "mqtt": {"port": port, "client_id": "demo-gateway", "protocol": protocol},
            "files": {"data_dir": data_dir, "rotate_age_s": 60},
            "http": parse_listen_addr(metrics_addr),
            "steps": [
                {"kind": "check_range", "metric": "temperature", "min": -60, "max": 150},
                {"kind": "drop_duplicates"},
            ],
            "shutdown_grace_s": 30,
        }
    )


def start_fleet(
    args: argparse.Namespace, port: int, manifest: Path, broker: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "simulators",
        "--broker", f"mqtt://127.0.0.1:{port}",
        "--devices", str(args.devices),
        "--rate", str(args.rate),
        "--fault-rate", str(args.fault_rate),
        "--seed", str(args.seed),
        "--qos", "1",
        "--manifest", str(manifest),
        "--quiet",
        # amqtt drops what it acked but had not forwarded when a publisher leaves (FACTS.md).
        "--linger", "5" if broker == "amqtt" else "0",
    ]  # fmt: skip
    return subprocess.Popen(cmd, start_new_session=True)


class Status:
    """The live status line, from the gateway's own metrics."""

    def __init__(self, gateway: Gateway) -> None:
        self._m = gateway.metrics
        self._gateway = gateway
        self._last = (time.monotonic(), 0.0)
        self._tty = sys.stderr.isatty()
        self._printed = 0.0

    def line(self) -> str:
        m = self._m
        now = time.monotonic()
        received = m.sample("gateway_messages_received_total")
        then, before = self._last
        rate = (received - before) / max(now - then, 1e-9)
        self._last = (now, received)
        dead = sum(
            m.sample("gateway_readings_rejected_total", reason=reason) for reason in REJECT_REASONS
        )
        written = m.sample("gateway_readings_written_total")
        unacked = m.sample("gateway_unacked_messages")
        p99 = m.latency_quantile(0.99)
        depth = sum(m.channel_depths().values())
        return (
            f"in {rate:7.0f} msg/s | written {written:9.0f} | "
            f"dead-lettered {dead:6.0f} | unacked {unacked:5.0f} | "
            f"depth {depth:5.0f} | p99 e2e {p99 * 1000:7.1f} ms"
        )

    def show(self) -> None:
        text = self.line()
        if self._tty:
            sys.stderr.write("\r" + text)
            sys.stderr.flush()
        elif time.monotonic() - self._printed >= 5:
            print(text, file=sys.stderr, flush=True)
            self._printed = time.monotonic()


async def run_demo(args: argparse.Namespace) -> int:
    args.data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    # Not *.jsonl: readers glob `<data-dir>/**/*.jsonl` for data, and this is not data.
    manifest = args.data_dir / "manifest.ndjson"
    broker, port, name = start_broker(args.broker, work)
    fleet: subprocess.Popen[bytes] | None = None
    try:
        gateway = Gateway(demo_config(port, args.data_dir, args.metrics_addr, name))
        task = asyncio.create_task(gateway.run(), name="gateway")
        await gateway.started.wait()
        # The fleet starts once the gateway is subscribed: before that, the broker keeps nothing
        # for it (its session does not exist yet on a first run).
        connected = asyncio.create_task(gateway.wait_connected())
        await asyncio.wait({connected, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        fleet = start_fleet(args, port, manifest, name)
        print(
            f"demo: {name} on 127.0.0.1:{port}, {args.devices} devices at {args.rate} Hz, "
            f"data in {args.data_dir}, metrics on {gateway.http_url}/metrics — Ctrl-C to stop",
            file=sys.stderr,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        status = Status(gateway)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set() and not task.done():
            if deadline is not None and time.monotonic() >= deadline:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await stop.wait()
            status.show()
        if task.done():
            task.result()  # the gateway failed: surface why
        print("\ndemo: stopping the fleet …", file=sys.stderr)
        fleet.send_signal(signal.SIGINT)
        await asyncio.to_thread(fleet.wait, 60)
        sent = read_header(manifest).messages_sent
        print(
            f"demo: {sent} messages sent; waiting for the gateway to take them …", file=sys.stderr
        )
        m = gateway.metrics
        until = time.monotonic() + 60
        while time.monotonic() < until and not (
            m.sample("gateway_messages_received_total") >= sent
            and m.sample("gateway_readings_in_flight") == 0
        ):
            await asyncio.sleep(0.1)
            status.show()
        gateway.stop()
        await task
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.kill()
        broker.send_signal(signal.SIGINT if name == "amqtt" else signal.SIGTERM)
        try:
            broker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.kill()
        shutil.rmtree(work, ignore_errors=True)
    report = audit(manifest, args.data_dir)
    print(format_table(report))
    return 0 if report.ok else 1


def main_demo(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("WARNING", "text")
    return asyncio.run(run_demo(args))
