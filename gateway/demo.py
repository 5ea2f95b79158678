"""`gateway demo`: an embedded broker, a simulated fleet and the gateway, then an audit.

The broker is Mosquitto when it is on PATH, else amqtt (pure Python). The fleet runs as a
`gateway-sim` subprocess (the gateway package never imports the simulators). Children run in
their own sessions, so a terminal's Ctrl-C reaches only us and we stop them in order:
fleet first, then wait until the gateway has everything the broker took, then drain, then audit.
Should we die without stopping them, they get SIGTERM (the parent-death signal).

One demo per data directory (a lock beside the data). Each run starts from an empty one: the
previous run's files are removed first, so the audit sees this run's files only. Exit 0 only
after a complete drain and an OK audit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.addresses import parse_listen_addr
from gateway.app import Gateway
from gateway.audit import audit, format_table
from gateway.config import GatewayConfig
from gateway.demo_terminal import Metrics, StatusLine, foreground_group
from gateway.errors import GatewayError
from gateway.local_broker import amqtt_config, amqtt_path, mosquitto_config, mosquitto_path
from gateway.logs import setup_logging
from gateway.manifest import read_header
from gateway.parent_death import dying_with_us
from gateway.ports import LOOPBACK, free_port, wait_for_port
from gateway.sinks.claim import DataDirLock

DEMO_LOCK = "demo"  # <data-dir>/demo.lock
# What a run leaves in its data directory, removed before the next run (the locks stay).
RUN_FILES = ("date=*", "dead-letter", "manifest.ndjson")
TAKE_ALL_TIMEOUT_S = 60.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway demo", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=200, help="simulated devices (default 200)")
    p.add_argument("--rate", type=float, default=1.0, help="readings/s per device (default 1)")
    p.add_argument("--fault-rate", type=float, default=0.01, help="share of faulty messages")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("./demo-data"),
        help="where the gateway writes (default ./demo-data); the previous run's files there "
        "are removed first",
    )
    p.add_argument(
        "--metrics-addr",
        default="127.0.0.1:9108",
        help="HOST:PORT of the gateway's /metrics (default 127.0.0.1:9108; port 0 = any)",
    )
    p.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    return p


def _spawn(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """A child in its own session (Ctrl-C is ours to handle) that gets SIGTERM when we die.

    Call from the main thread: the parent-death signal follows the thread that forked."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        dying_with_us(cmd), start_new_session=True, **kwargs
    )


def stop_process(proc: subprocess.Popen[bytes], signum: int, timeout_s: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_broker(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """A private broker on a free loopback port; returns (process, port, name)."""
    port = free_port()
    mosquitto = mosquitto_path()
    if kind == "mosquitto" or (kind == "auto" and mosquitto):
        if not mosquitto:
            raise RuntimeError("mosquitto is not installed")
        conf = workdir / "mosquitto.conf"
        # Large queues and window: the at-least-once settings the README recommends.
        conf.write_text(
            mosquitto_config(
                LOOPBACK,
                port,
                log=workdir / "mosquitto.log",
                max_inflight=1000,
                max_queued=100_000,
            ),
            encoding="utf-8",
        )
        cmd, name = [mosquitto, "-c", str(conf)], "mosquitto"
    else:
        conf = workdir / "amqtt.yaml"
        conf.write_text(amqtt_config(LOOPBACK, port), encoding="utf-8")
        cmd, name = [amqtt_path(), "-c", str(conf)], "amqtt"
    with (workdir / "broker.err").open("wb") as err:
        proc = _spawn(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_port(port, timeout_s=20, alive=lambda: proc.poll() is None)
    except ChildProcessError:
        raise RuntimeError(f"the broker exited with {proc.returncode}") from None
    except TimeoutError:
        stop_process(proc, signal.SIGTERM)
        raise RuntimeError(f"the broker did not listen on {port}") from None
    return proc, port, name


def stop_broker(proc: subprocess.Popen[bytes], name: str) -> None:
    # amqtt (0.12) stops cleanly on SIGINT only; SIGTERM kills it at once, mid-forward.
    stop_process(proc, signal.SIGINT if name == "amqtt" else signal.SIGTERM)


def demo_config(port: int, data_dir: Path, metrics_addr: str, broker: str) -> GatewayConfig:
    # amqtt speaks only MQTT 3.1.1: say so, rather than let "auto" find out (a few seconds).
    protocol = "3.1.1" if broker == "amqtt" else "auto"
    return GatewayConfig.model_validate(
        {
            "mqtt": {"port": port, "client_id": "demo-gateway", "protocol": protocol},
            "files": {"data_dir": data_dir, "rotate_age_s": 60},
            "http": parse_listen_addr(metrics_addr),
            # Duplicates (the fleet sends some on purpose) are dropped by [dedupe], on by default.
            "steps": [{"kind": "check_range", "metric": "temperature", "min": -60, "max": 150}],
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
        # amqtt (0.12) drops what it acked but had not forwarded when a publisher leaves: the
        # fleet stays connected 5 s after its last publish (tests/test_demo.py runs it on amqtt).
        "--linger", "5" if broker == "amqtt" else "0",
    ]  # fmt: skip
    return _spawn(cmd)


def clear_previous_run(data_dir: Path) -> bool:
    """Remove what an earlier run left (data, dead letters, manifest); True if anything."""
    found = [path for pattern in RUN_FILES for path in data_dir.glob(pattern)]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return bool(found)


async def _until(stop: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await stop.wait()


async def run_demo(args: argparse.Namespace, status: StatusLine) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # First of all: a SIGTERM at any later point must still stop the broker and the fleet.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        lock = DataDirLock.take(args.data_dir, DEMO_LOCK, who="another demo")
    except GatewayError as exc:
        status.say(f"demo: cannot start: {exc}")
        return 1
    try:
        if clear_previous_run(args.data_dir):
            status.say(f"demo: removed the previous run's files from {args.data_dir}")
        work = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
        try:
            return await _run(args, status, stop, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()


async def _run(
    args: argparse.Namespace, status: StatusLine, stop: asyncio.Event, work: Path
) -> int:
    # Not *.jsonl: readers glob `<data-dir>/**/*.jsonl` for data, and this is not data.
    manifest = args.data_dir / "manifest.ndjson"
    broker, port, name = start_broker(args.broker, work)
    fleet: subprocess.Popen[bytes] | None = None
    try:
        gateway = Gateway(demo_config(port, args.data_dir, args.metrics_addr, name))
        task = asyncio.create_task(gateway.run(), name="gateway")
        started = asyncio.create_task(gateway.started.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, started, stopped}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        stopped.cancel()
        if task.done():  # it could not start: the data directory or the metrics address
            status.say(f"demo: cannot start: {task.exception()}")
            return 1
        if stop.is_set():
            gateway.stop()
            await task
            return 1
        # The fleet starts once the gateway is subscribed: before that, the broker keeps nothing
        # for it (its session does not exist yet on a first run).
        connected = asyncio.create_task(gateway.wait_connected())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait(
            {connected, stopped, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        connected.cancel()
        stopped.cancel()
        fleet = start_fleet(args, port, manifest, name)
        status.say(
            f"demo: {name} on 127.0.0.1:{port}, {args.devices} devices at {args.rate} Hz, "
            f"data in {args.data_dir}, metrics on {gateway.http_url}/metrics — Ctrl-C to stop"
        )
        metrics = Metrics(gateway.http_url)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set() and not task.done():
            if deadline is not None and time.monotonic() >= deadline:
                break
            status.show(await metrics.status())
            await _until(stop, 1.0)
        if task.done():
            status.end()
            status.say(f"demo: the gateway failed: {task.exception()}")
            return 1
        status.end()
        status.say("demo: stopping the fleet …")
        fleet.send_signal(signal.SIGINT)
        await asyncio.to_thread(fleet.wait, 60)
        sent = read_header(manifest).messages_sent
        status.say(f"demo: {sent} messages sent; waiting for the gateway to take them …")
        until = time.monotonic() + TAKE_ALL_TIMEOUT_S
        # Polled over HTTP, as an operator would: no in-process event to wait on.
        while time.monotonic() < until and not await metrics.took(sent):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        gateway.stop()
        try:
            await task
        except GatewayError as exc:
            status.say(f"demo: {exc}")
            return 1
    finally:
        if fleet is not None:
            stop_process(fleet, signal.SIGKILL)
        stop_broker(broker, name)
    report = audit(manifest, args.data_dir)
    print(format_table(report))
    return 0 if report.ok else 1


def main_demo(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = StatusLine(sys.stderr)
    setup_logging("WARNING", "text", stream=status)
    with foreground_group():
        try:
            return asyncio.run(run_demo(args, status))
        finally:
            status.end()
