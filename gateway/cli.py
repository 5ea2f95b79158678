"""argv -> config -> run; exit codes (0 ok, 1 runtime failure, 2 bad config)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway._version import __version__
from gateway.addresses import parse_broker_url, parse_listen_addr
from gateway.app import Gateway
from gateway.audit import main_audit
from gateway.commands import main_compact, main_identities, main_reload, main_seal
from gateway.config import (
    GatewayConfig,
    SubscriptionConfig,
    load_config,
    validate_subscription,
)
from gateway.decode import SubscriptionDecoders
from gateway.demo import main_demo
from gateway.errors import ConfigError, DrainError, StartupError
from gateway.hangups import PARENT_DEATH_SIGNAL, EarlyHangups
from gateway.logs import setup_logging
from gateway.subscriptions import FORMAT_NAMES
from gateway.supervisor import Supervisor, WorkerMain, detach_from_terminal, worker_config

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
# The gateway makes a handful of short-lived objects per reading (readings, dicts, envelopes)
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
    add_subscription_flags(run)
    run.add_argument("--qos", type=int, choices=(0, 1), help="QoS for the subscriptions")
    run.add_argument("--client-id", help="MQTT client id (also names the segment files)")
    run.add_argument("--username", help="broker user name (or user@ in --broker)")
    run.add_argument("--password-file", type=Path, help="file whose first line is the password")
    run.add_argument("--ca-file", type=Path, help="CA bundle to verify the broker (turns on TLS)")
    run.add_argument(
        "--cert", "--cert-file", dest="cert", type=Path, help="client certificate (mutual TLS)"
    )
    run.add_argument(
        "--key", "--key-file", dest="key", type=Path, help="client private key (mutual TLS)"
    )
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
    sub.add_parser(
        "reload", help="make a running gateway re-read its config (as SIGHUP)", add_help=False
    )
    sub.add_parser(
        "parse", help="show how a message would be read: its readings or rejection", add_help=False
    )
    return parser


def add_subscription_flags(parser: argparse.ArgumentParser) -> None:
    """--template and --format, shared by `gateway run` and `gateway parse`."""
    parser.add_argument(
        "--template",
        metavar="T",
        help="topic template, e.g. 'home/{room}/{device_id}' (+ skips a level, a last # "
        "takes the rest); the subscription filter follows from it",
    )
    parser.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        metavar="F",
        help=f"payload format: {', '.join(f for f in FORMAT_NAMES if f != 'mapping')} "
        "(mapping needs a config file)",
    )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as a nested dict, merged over file and environment by load_config."""
    out: dict[str, Any] = {}
    mqtt: dict[str, Any] = {}
    if args.broker:
        mqtt.update(parse_broker_url(args.broker))
    if args.client_id:
        mqtt["client_id"] = args.client_id
    if args.username:
        mqtt["username"] = args.username
    if args.password_file:
        mqtt["password_file"] = args.password_file
    tls = {
        key: value
        for key, value in (
            ("ca_file", args.ca_file),
            ("cert_file", args.cert),
            ("key_file", args.key),
        )
        if value is not None
    }
    if tls:
        mqtt["tls"] = {**mqtt.get("tls", {}), **tls, "enabled": True}
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
    """--topic, --template and --format replace the subscriptions with ones built from the
    first configured subscription and the flags (one per --topic); --qos applies to all.

    Without a template (configured, given or a preset's) a --topic filter is its own template:
    every topic it delivers can be read. A --format other than the configured one drops the
    configured mapping; a --template without --topic drops the configured filter.
    """
    subs = config.mqtt.subscriptions
    template = getattr(args, "template", None)
    fmt = getattr(args, "format", None)
    if args.topic or template is not None or fmt is not None:
        base = subs[0].model_dump(exclude_unset=True, exclude={"filter"})
        if fmt is not None and fmt != subs[0].format:
            base.pop("mapping", None)
            base["format"] = fmt
        if template is not None:
            base["template"] = template
        subs = tuple(
            _subscription({**base, "filter": topic}, index)
            for index, topic in enumerate(args.topic or [""])
        )
    if args.qos is not None:
        subs = tuple(s.model_copy(update={"qos": args.qos}) for s in subs)
    if subs is config.mqtt.subscriptions:
        return config
    mqtt = config.mqtt.model_copy(update={"subscriptions": subs})
    return config.model_copy(update={"mqtt": mqtt})


def _subscription(fields: dict[str, Any], index: int) -> SubscriptionConfig:
    return validate_subscription(
        fields, f"mqtt.subscriptions.{index} (from --topic/--template/--format)"
    )


def resolve_config(args: argparse.Namespace) -> GatewayConfig:
    config = apply_subscription_flags(load_config(args.config, overrides_from(args)), args)
    config.mqtt.read_password()  # a missing password file is a config error, found now
    return config


def masked_config(config: GatewayConfig) -> str:
    """The effective config as JSON; secrets print as ********. Each subscription shows the
    template, filter and mapping it runs with (a preset's filled in)."""
    shown = config.model_dump(mode="json")
    for sub, out in zip(config.mqtt.subscriptions, shown["mqtt"]["subscriptions"], strict=True):
        out["template"] = sub.effective_template
        out["filter"] = sub.effective_filter
        mapping = sub.effective_mapping
        out["mapping"] = mapping.model_dump(mode="json") if mapping is not None else None
    return json.dumps(shown, indent=2)


def main(argv: list[str] | None = None, early_hangups: EarlyHangups | None = None) -> int:
    """The `gateway` command. `early_hangups` counted SIGHUPs before this ran (__main__)."""
    argv = sys.argv[1:] if argv is None else argv
    early = early_hangups if early_hangups is not None else EarlyHangups()
    # These own their flags; hand them the rest of the command line.
    if argv[:1] == ["demo"]:
        return main_demo(argv[1:])
    if argv[:1] == ["audit"]:
        return main_audit(argv[1:])
    if argv[:1] == ["compact"]:
        return main_compact(argv[1:])
    if argv[:1] == ["seal"]:
        return main_seal(argv[1:])
    if argv[:1] == ["reload"]:
        return main_reload(argv[1:])
    if argv[:1] == ["parse"]:
        # Imported here: it uses this module's flags (and a cycle at import time is avoided).
        from gateway.parse import main_parse  # noqa: PLC0415

        return main_parse(argv[1:])
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
    raise_file_limit()
    load = functools.partial(resolve_config, args)  # a reload reads the same file and flags
    if args.processes > 1:
        worker_main = functools.partial(run_worker, args)
        return run_supervised(config, args.processes, load, worker_main, early)
    return run_gateway(config, load, early=early)


def raise_file_limit() -> None:
    """Raise the soft limit on open files to the hard limit (workers inherit it).

    The soft limit is often 1024 while the hard one is far higher; the HTTP server keeps its
    connections below the soft limit minus what the sinks need (http.FD_HEADROOM), so a higher
    limit is room, and a low hard limit still cannot be exhausted by clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return
        log.debug("open-file limit raised from %d to %d", soft, hard)


def run_supervised(
    config: GatewayConfig,
    processes: int,
    load: Callable[[], GatewayConfig],
    worker_main: WorkerMain,
    early: EarlyHangups,
) -> int:
    async def serve() -> int:
        supervisor = Supervisor(config, processes, worker_main, load)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, supervisor.stop)
        # SIGHUP: read the config again and have every worker apply it.
        loop.add_signal_handler(signal.SIGHUP, supervisor.request_reload)
        if early.count:
            supervisor.request_reload()
        return await supervisor.run()

    try:
        return asyncio.run(serve())
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE


def run_worker(args: argparse.Namespace, config: GatewayConfig, name: str, index: int) -> None:
    """A worker process of `--processes N` (spawned: a fresh interpreter). A reload (asked by
    the supervisor over HTTP) reads the same file and flags again, as worker `index`."""
    early = EarlyHangups().install()
    detach_from_terminal()
    setup_logging(config.logging.level, config.logging.format, worker=name)
    load = functools.partial(_worker_config_again, args, index, config.http.port)
    sys.exit(run_gateway(config, load, worker=name, early=early))


def _worker_config_again(args: argparse.Namespace, index: int, port: int) -> GatewayConfig:
    return worker_config(resolve_config(args), index, http_port=port)


async def _reload_when_started(gateway: Gateway) -> object:
    """A SIGHUP's reload, once the gateway runs (one during start-up waits for it)."""
    await gateway.started.wait()
    return await gateway.reload()


def print_problems(exc: ConfigError) -> None:
    print("configuration error:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def check_config(path: Path) -> int:
    try:
        config = load_config(path)
        config.mqtt.read_password()
        # The decoders the gateway builds at start, built the same way.
        decoders = SubscriptionDecoders(config.mqtt.subscriptions, config.limits)
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    except ValueError as exc:
        print_problems(ConfigError(f"mqtt.subscriptions: {exc}"))
        return EXIT_CONFIG
    for warning in decoders.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(masked_config(config))
    return EXIT_OK


def run_gateway(
    config: GatewayConfig,
    load: Callable[[], GatewayConfig] | None = None,
    worker: str = "",
    early: EarlyHangups | None = None,
) -> int:
    # What was loaded so far lives as long as the process: keep it out of every collection.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        asyncio.run(_serve(config, load, worker, early or EarlyHangups()))
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


async def _serve(
    config: GatewayConfig,
    load: Callable[[], GatewayConfig] | None,
    worker: str,
    early_hangups: EarlyHangups,
) -> None:
    gateway = Gateway(config)  # raises ConfigError for a step that cannot be built
    gateway.load_config = load
    gateway.on_logging = lambda logs: setup_logging(logs.level, logs.format, worker=worker)
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

    orphaned = False

    def on_parent_death() -> None:
        # A worker's supervisor died (the parent-death signal; the kernel sends it again each
        # time a thread of the dying supervisor ends): drain, once.
        nonlocal orphaned
        if not orphaned:
            orphaned = True
            log.info("the supervisor is gone: draining")
            gateway.stop()

    loop.add_signal_handler(PARENT_DEATH_SIGNAL, on_parent_death)
    reloads: set[asyncio.Task[object]] = set()

    def on_hangup() -> None:
        log.info("SIGHUP received: reloading the configuration")
        task = loop.create_task(_reload_when_started(gateway), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if early_hangups.count:  # a SIGHUP came while the process was starting
        on_hangup()
    try:
        await gateway.run()
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    log.info("stopped cleanly")
