"""argv -> config -> run; exit codes (0 ok, 1 runtime failure, 2 bad config)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from gateway._version import __version__
from gateway.app import Gateway
from gateway.audit import main_audit
from gateway.commands import main_compact, main_identities, main_seal
from gateway.config import GatewayConfig, load_config, parse_broker_url, parse_listen_addr
from gateway.demo import main_demo
from gateway.errors import ConfigError, DrainError, StartupError
from gateway.logs import setup_logging
from gateway.supervisor import Supervisor, detach_from_terminal

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
# The gateway makes a handful of short-lived objects per message (envelopes, readings, dicts)
# and almost no reference cycles. CPython's default collects the young generation every 700
# allocations, i.e. every few messages; this makes it every ~50,000: 13% less CPU per message in
# a QoS 1 drain (2.88 -> 2.51 CPU s per 100k, benchmarks/), with the same peak RSS. The older
# generations keep their default ratios, so full collections still come every few seconds under
# load, and RSS under a long overload stays flat (benchmarks/: memory).
GC_THRESHOLDS = (50_000, 20, 10)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="MQTT telemetry gateway: readings acked only once on disk."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--config", type=Path, help="TOML config file (optional)")
    run.add_argument("--broker", help="mqtt://[user@]host:port or mqtts://... (TLS)")
    run.add_argument(
        "--topic",
        action="append",
        metavar="FILTER",
        help="subscribe to FILTER (repeatable; replaces the configured filters)",
    )
    run.add_argument("--qos", type=int, choices=(0, 1), help="QoS for the subscriptions")
    run.add_argument("--client-id", help="MQTT client id (also names the segment files)")
    run.add_argument("--data-dir", type=Path, help="where data and dead-letter files go")
    run.add_argument("--metrics-addr", metavar="HOST:PORT", help="HTTP listen address")
    run.add_argument("--log-format", choices=("text", "json"), help="log format")
    run.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker gateways on a shared subscription (ids <client-id>-w0..), supervised",
    )

    check = sub.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("file", type=Path)
    sub.add_parser(
        "demo", help="broker + simulated fleet + gateway + metrics, then an audit", add_help=False
    )
    sub.add_parser("audit", help="compare a simulator manifest with the files", add_help=False)
    sub.add_parser("top", help="live view of a running gateway's metrics", add_help=False)
    sub.add_parser("compact", help="compact closed partitions to Parquet, once", add_help=False)
    sub.add_parser("seal", help="seal a running gateway's open segments now", add_help=False)
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as a nested dict, merged over file and environment by load_config."""
    out: dict[str, Any] = {}
    mqtt: dict[str, Any] = {}
    if args.broker:
        mqtt.update(parse_broker_url(args.broker))
    if args.client_id:
        mqtt["client_id"] = args.client_id
    if mqtt:
        out["mqtt"] = mqtt
    if args.data_dir:
        out["files"] = {"data_dir": args.data_dir}
    if args.metrics_addr:
        out["http"] = parse_listen_addr(args.metrics_addr)
    logging_: dict[str, Any] = {}
    if args.log_format:
        logging_["format"] = args.log_format
    if args.log_level:
        logging_["level"] = args.log_level
    if logging_:
        out["logging"] = logging_
    return out


def apply_subscription_flags(config: GatewayConfig, args: argparse.Namespace) -> GatewayConfig:
    """--topic replaces the filters (keeping the first subscription's template and format)."""
    subs = config.mqtt.subscriptions
    if args.topic:
        subs = tuple(subs[0].model_copy(update={"filter": topic}) for topic in args.topic)
    if args.qos is not None:
        subs = tuple(s.model_copy(update={"qos": args.qos}) for s in subs)
    if subs is config.mqtt.subscriptions:
        return config
    mqtt = config.mqtt.model_copy(update={"subscriptions": subs})
    return config.model_copy(update={"mqtt": mqtt})


def resolve_config(args: argparse.Namespace) -> GatewayConfig:
    config = apply_subscription_flags(load_config(args.config, overrides_from(args)), args)
    config.mqtt.read_password()  # a missing password file is a config error, found now
    return config


def masked_config(config: GatewayConfig) -> str:
    """The effective config as JSON; secrets print as ********."""
    return json.dumps(config.model_dump(mode="json"), indent=2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # These own their flags; hand them the rest of the command line.
    if argv[:1] == ["demo"]:
        return main_demo(argv[1:])
    if argv[:1] == ["audit"]:
        return main_audit(argv[1:])
    if argv[:1] == ["compact"]:
        return main_compact(argv[1:])
    if argv[:1] == ["seal"]:
        return main_seal(argv[1:])
    if argv[:1] == ["identities"]:  # internal: a starting gateway's dedupe seeding runs it
        return main_identities(argv[1:])
    if argv[:1] == ["top"]:
        # Imported here so that rich is loaded only for this command, not in every worker.
        from gateway.top import main_top  # noqa: PLC0415

        return main_top(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    try:
        if args.processes < 1:
            raise ConfigError(f"--processes {args.processes}: must be at least 1")
        config = resolve_config(args)
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    if args.processes > 1:
        return run_supervised(config, args.processes)
    return run_gateway(config)


def run_supervised(config: GatewayConfig, processes: int) -> int:
    async def serve() -> int:
        supervisor = Supervisor(config, processes, run_worker)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, supervisor.stop)
        return await supervisor.run()

    try:
        return asyncio.run(serve())
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE


def run_worker(config: GatewayConfig, name: str) -> None:
    """A worker process of `--processes N` (spawned: a fresh interpreter)."""
    detach_from_terminal()
    setup_logging(config.logging.level, config.logging.format, worker=name)
    sys.exit(run_gateway(config))


def print_problems(exc: ConfigError) -> None:
    print("configuration error:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def check_config(path: Path) -> int:
    try:
        config = load_config(path)
        config.mqtt.read_password()
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    print(masked_config(config))
    return EXIT_OK


def run_gateway(config: GatewayConfig) -> int:
    # What was loaded so far lives as long as the process: keep it out of every collection.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        asyncio.run(_serve(config))
    except KeyboardInterrupt:
        log.warning("interrupted twice: stopped without draining; the broker redelivers")
        return EXIT_FAILURE
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    except DrainError as exc:
        log.error("stopped without draining: %s", exc)
        return EXIT_FAILURE
    except Exception as exc:
        # A task that crashed leaves the TaskGroup wrapped in an ExceptionGroup.
        causes = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for cause in causes:
            log.error("gateway failed: %s", cause, exc_info=cause)
        return EXIT_FAILURE
    return EXIT_OK


async def _serve(config: GatewayConfig) -> None:
    gateway = Gateway(config)  # raises ConfigError for a step that cannot be built
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("%s received: draining", signal.Signals(signum).name)
            gateway.stop()
        elif main_task is not None:
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    hung_up = False

    def on_hangup() -> None:
        # A worker's supervisor died (the parent-death signal; the kernel sends it again each
        # time a thread of the dying supervisor ends) or the terminal hung up: drain, once.
        nonlocal hung_up
        if not hung_up:
            hung_up = True
            log.info("SIGHUP received: draining")
            gateway.stop()

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await gateway.run()
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    log.info("stopped cleanly")
