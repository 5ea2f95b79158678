"""`gateway-sim`: argv -> RunSpec -> run the fleet -> summary; exit 0 ok, 1 failed, 2 bad usage."""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from gateway.addresses import parse_broker_url
from gateway.errors import ConfigError
from gateway.manifest import FAULT_KINDS, FORMATS
from simulators.faults import FaultPlan, parse_fault_arg
from simulators.fleet import run_fleet
from simulators.profile import builtin_profiles, load_profile
from simulators.progress import StatusLine, summary
from simulators.spec import (
    DEFAULT_BARE_TEMPLATE,
    DEFAULT_TEMPLATE,
    BrokerSpec,
    RunSpec,
    check_spec,
    default_template,
)

MAX_DEVICES = 50_000

EPILOG = """\
examples:
  gateway-sim --devices 100 --rate 1 --duration 60
  gateway-sim --profile cold_chain --devices 500 --count 20 --fault-rate 0.01 --manifest run.jsonl
  gateway-sim --devices 1000 --count 100 --qos 0 --prebuilt --processes 2 --connections pool
  gateway-sim --devices 1000 --count 100 --prebuilt --connections pool --transport raw

fault kinds (each labelled in the manifest with the reason the gateway rejects it with):
  {kinds}
Same --seed and --start-time: byte-identical messages.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must not be negative")
    return value


def _start_time(text: str) -> int:
    """ISO 8601 (naive = UTC) or epoch seconds -> epoch ms."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not ISO 8601 or epoch seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Options given as values (spec_from_options) are a caller's mistake, not a user's
        typing: ValueError rather than exit 2 (main() still prints usage and exits 2)."""
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gateway-sim",
        description="Simulate a fleet of IoT devices publishing telemetry to an MQTT broker.",
        epilog=EPILOG.format(kinds=", ".join(FAULT_KINDS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b = parser.add_argument_group("broker")
    b.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt[s]://[user@]host[:port]")
    b.add_argument("--username", help="user name (or user@ in --broker)")
    b.add_argument("--password-file", type=Path, help="file whose first line is the password")
    b.add_argument("--ca-file", help="CA bundle to verify the broker (mqtts)")
    b.add_argument("--cert-file", help="client certificate (mutual TLS)")
    b.add_argument("--key-file", help="client private key (mutual TLS)")
    b.add_argument("--insecure", action="store_true", help="do not verify the broker certificate")
    b.add_argument("--client-id-prefix", help="client id prefix (default sim-<random>-)")
    b.add_argument("--keepalive", type=_positive_int, default=60, help="seconds (default 60)")
    b.add_argument(
        "--connect-timeout", type=_non_negative, default=15.0, help="seconds per connection"
    )
    b.add_argument(
        "--inflight", type=_positive_int, default=100, help="QoS 1 in flight per connection"
    )

    f = parser.add_argument_group("fleet")
    f.add_argument("--devices", type=_positive_int, default=10, help=f"1..{MAX_DEVICES:,}")
    f.add_argument(
        "--profile", help=f"a shipped profile ({', '.join(builtin_profiles())}) or a .toml"
    )
    f.add_argument("--sites", help="comma-separated site names, or a count N (site-01..)")
    f.add_argument("--device-id-pattern", default="dev-{n:05d}", help="fields: n, site, model")
    f.add_argument(
        "--topic-template",
        help=f"default {DEFAULT_TEMPLATE} ({DEFAULT_BARE_TEMPLATE} for bare, the preset's "
        "topic for a preset); fields: site, device_id, model, metric",
    )
    f.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="payload format: the gateway's (json, json_batch, senml, bare) or a preset's shape "
        "(gateway run --format <the same>)",
    )
    f.add_argument("--batch-size", type=_positive_int, default=10, help="readings per json_batch")
    f.add_argument("--seed", type=int, default=0, help="same seed, same messages (default 0)")
    f.add_argument("--start-time", type=_start_time, help="device clock start (default: now)")

    t = parser.add_argument_group("pace")
    t.add_argument("--rate", type=_non_negative, help="readings/s per device (default 1; 0 = max)")
    t.add_argument("--jitter", type=_non_negative, default=0.1, help="fraction of an interval")
    until = t.add_mutually_exclusive_group()
    until.add_argument("--duration", type=_non_negative, help="seconds to run")
    until.add_argument(
        "--count", type=_positive_int, help="readings per device (default: until Ctrl-C / SIGTERM)"
    )
    t.add_argument("--qos", type=int, choices=(0, 1), default=1, help="default 1")
    t.add_argument(
        "--prebuilt",
        action="store_true",
        help="build every payload before the clock starts (benchmarks; implies --rate 0 "
        "unless --rate is given)",
    )

    c = parser.add_argument_group("connections")
    c.add_argument(
        "--connections",
        choices=("per-device", "pool"),
        default="per-device",
        help="one MQTT connection per device (default), or --pool-size shared per process",
    )
    c.add_argument("--pool-size", type=_positive_int, default=4, help="connections per process")
    c.add_argument(
        "--transport",
        choices=("mqtt", "raw"),
        default="mqtt",
        help="mqtt (default): an MQTT client per connection; raw: the --prebuilt blast encoded "
        "once and written in large sends, near zero CPU (benchmarks; --connections pool, "
        "plain mqtt://, MQTT 3.1.1, --inflight is the window; needs amqtt, the `demo` extra)",
    )
    c.add_argument("--processes", type=_positive_int, default=1)
    c.add_argument(
        "--drain-timeout",
        type=_non_negative,
        default=30.0,
        help="seconds to wait for QoS 1 acknowledgements at the end",
    )
    c.add_argument(
        "--linger",
        type=_non_negative,
        default=0.0,
        help="seconds to stay connected after the last ack (for brokers that drop unforwarded "
        "messages when a publisher leaves, e.g. amqtt)",
    )

    x = parser.add_argument_group("faults and output")
    x.add_argument(
        "--fault-rate",
        type=_non_negative,
        default=0.0,
        help="probability per reading, spread over the kinds that apply",
    )
    x.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="rate of one kind (repeatable; overrides --fault-rate for it)",
    )
    x.add_argument("--manifest", type=Path, help="write what was sent here (JSON Lines)")
    shown = x.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="live status line (default: when stderr is a terminal)",
    )
    shown.add_argument("--quiet", action="store_true", help="no live status line")
    return parser


def _sites(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return default
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise ValueError("--sites: at least 1")
        return tuple(f"site-{i:02d}" for i in range(1, n + 1))
    sites = tuple(s.strip() for s in text.split(",") if s.strip())
    if not sites:
        raise ValueError("--sites: no site names")
    return sites


def _broker(args: argparse.Namespace) -> BrokerSpec:
    fields = parse_broker_url(args.broker, password_hint="use --password-file")
    password = None
    if args.password_file is not None:
        try:
            text = args.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--password-file: {exc.strerror}") from exc
        password = text.splitlines()[0] if text else ""
    tls = bool(fields["tls"]["enabled"]) or bool(args.ca_file or args.cert_file)
    if bool(args.cert_file) != bool(args.key_file):
        raise ValueError("--cert-file and --key-file go together")
    return BrokerSpec(
        host=fields["host"],
        port=fields["port"],
        tls=tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        insecure=args.insecure,
        username=args.username or fields.get("username"),
        password=password,
        keepalive_s=args.keepalive,
        connect_timeout_s=args.connect_timeout,
        inflight=args.inflight,
    )


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """Validated RunSpec; ValueError/ConfigError naming the bad option."""
    if args.devices > MAX_DEVICES:
        raise ValueError(f"--devices: at most {MAX_DEVICES:,}")
    if args.processes > args.devices:
        raise ValueError("--processes: more processes than devices")
    profile = load_profile(args.profile)
    template = args.topic_template or default_template(args.format)
    rate = args.rate if args.rate is not None else (0.0 if args.prebuilt else 1.0)
    count = args.count  # neither --count nor --duration: until SIGINT/SIGTERM
    if args.prebuilt and count is None and (args.duration is None or rate == 0):
        raise ValueError("--prebuilt needs --count (or --duration with a --rate above 0)")
    if args.fault_rate > 1:
        raise ValueError("--fault-rate: at most 1")
    per_kind = [parse_fault_arg(text) for text in args.fault]
    faults = FaultPlan.build(args.format, "{device_id}" in template, args.fault_rate, per_kind)
    start_ms = args.start_time if args.start_time is not None else int(time.time() * 1000)
    prefix = args.client_id_prefix or f"sim-{secrets.token_hex(3)}-"
    spec = RunSpec(
        devices=args.devices,
        seed=args.seed,
        format=args.format,
        qos=args.qos,
        topic_template=template,
        device_id_pattern=args.device_id_pattern,
        sites=_sites(args.sites, profile.sites),
        profile=profile,
        rate_hz=rate,
        jitter=args.jitter,
        count=count,
        duration_s=args.duration,
        start_ms=start_ms,
        batch_size=args.batch_size,
        faults=faults,
        prebuilt=args.prebuilt,
        transport=args.transport,
        connections=args.connections,
        pool_size=args.pool_size,
        processes=args.processes,
        client_id_prefix=prefix,
        drain_timeout_s=args.drain_timeout,
        linger_s=args.linger,
        broker=_broker(args),
    )
    check_spec(spec)
    return spec


def options_argv(**options: object) -> list[str]:
    """gateway-sim's arguments for options given as values, named as the flags are (`pool_size`
    for --pool-size): True for a flag that is on, None/False for one left out, a list or tuple
    for one that repeats (`fault=["duplicate=0.1"]`)."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def spec_from_options(**options: object) -> RunSpec:
    """The RunSpec gateway-sim runs for these options (see options_argv); ValueError/ConfigError
    naming a bad one. Same options, same spec, so the same messages."""
    return spec_from_args(build_parser().parse_args(options_argv(**options)))


def command(**options: object) -> list[str]:
    """The command that runs gateway-sim with these options, checked first (ValueError or
    ConfigError here, not exit 2 in a child): for a caller that runs the fleet as a process."""
    spec_from_options(**options)
    return [sys.executable, "-m", "simulators", *options_argv(**options)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        spec = spec_from_args(args)
    except (ValueError, ConfigError) as exc:
        parser.print_usage(sys.stderr)
        print(f"gateway-sim: error: {exc}", file=sys.stderr)
        return 2
    show = not args.quiet and (args.progress or sys.stderr.isatty())
    status = StatusLine(bool(show))
    try:
        result = run_fleet(spec, args.manifest, status.update)
    finally:
        status.close()
    print(summary(result), flush=True)
    return 0 if result.ok else 1
