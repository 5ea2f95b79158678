"""`gateway parse`: how a running gateway would read one message, through the same code.

The message goes through the gateway's own decoder for the subscription its topic arrives on
(`SubscriptionDecoders`, as built from the config and flags), then the configured steps; the
readings it keeps are printed as the data file lines the line encoder writes, and a rejection
with the reason and detail the dead-letter file would hold. Exit 0 when something would be
stored, 1 when the message would be dead-lettered or dropped, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.cli import add_subscription_flags, apply_subscription_flags, print_problems
from gateway.config import GatewayConfig, load_config
from gateway.decode import SubscriptionDecoders
from gateway.errors import ConfigError, DecodeError
from gateway.model import Reading
from gateway.sinks.lines import LineEncoder
from gateway.transforms import Transform, Verdict, build_steps

EXIT_STORED, EXIT_NOT_STORED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway parse",
        description="Show the readings a running gateway would store for one message, or the "
        "rejection it would dead-letter, and the values its mapping leaves out.",
    )
    parser.add_argument("--topic", required=True, help="the topic the message arrives on")
    payload = parser.add_mutually_exclusive_group(required=True)
    payload.add_argument("--payload", help="the payload, as text")
    payload.add_argument("--payload-file", type=Path, help="a file holding the payload (- = stdin)")
    parser.add_argument("--config", type=Path, help="the gateway's TOML config file")
    add_subscription_flags(parser)
    parser.add_argument(
        "--received-at",
        metavar="TIME",
        help="when the message arrives (ISO 8601 or epoch seconds; default: now): to read a "
        "recorded payload whose time is long past",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main_parse(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        received_at = _received_at(args.received_at)
        payload = _payload(args)
        config = _config(args)
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    result = parse_message(config, args.topic, payload, received_at)
    print(json.dumps(result, indent=1) if args.json else _text(result))
    return EXIT_STORED if result["readings"] else EXIT_NOT_STORED


def parse_message(
    config: GatewayConfig, topic: str, payload: bytes, received_at: float
) -> dict[str, Any]:
    """What the gateway does with one message: its subscription, the stored lines (as the
    data files hold them), or the rejection (as the dead-letter file), and what was left out."""
    decoders = SubscriptionDecoders(config.mqtt.subscriptions, config.limits)
    decoder = decoders.pick(topic)
    index = decoders.index(decoder)
    sub = config.mqtt.subscriptions[index]
    notes: list[str] = []
    if decoder.mapping is not None:
        decoder.mapping.notes = notes
    result: dict[str, Any] = {
        "topic": topic,
        "subscription": {
            "index": index,
            "filter": sub.effective_filter,
            "template": sub.effective_template,
            "format": sub.format,
        },
        "readings": [],
        "rejection": None,
        "dropped": None,
        "left_out": notes,
    }
    try:
        readings = decoder(topic, payload, received_at)
    except DecodeError as exc:
        result["rejection"] = {"reason": exc.reason, "detail": exc.detail}
        return result
    if not readings:
        result["dropped"] = "filtered: nothing to store (mapping.no_metrics = drop)"
        return result
    kept, rejected, dropped = _apply_steps(build_steps(config.steps), readings)
    if rejected:
        _, reason, detail = rejected[0]
        result["rejection"] = {"reason": reason, "detail": detail, "readings": len(rejected)}
    if dropped:
        result["dropped"] = f"{dropped} reading(s) dropped by a step"
    lines = b"".join(LineEncoder()(kept).values())
    result["readings"] = [json.loads(line) for line in lines.splitlines()]
    return result


def _apply_steps(
    steps: list[Transform], readings: list[Reading]
) -> tuple[list[Reading], list[tuple[Reading, str, str]], int]:
    """The steps in order, as a Stage runs them (without its deadline)."""
    rejected: list[tuple[Reading, str, str]] = []
    dropped = 0
    for step in steps:
        if not readings:
            break
        verdict = step(readings)
        if inspect.isawaitable(verdict):
            verdict = asyncio.run(_wait(verdict))
        assert isinstance(verdict, Verdict)
        rejected.extend(verdict.rejected)
        dropped += verdict.dropped
        readings = verdict.kept
    return readings, rejected, dropped


async def _wait(awaitable: Any) -> Verdict:
    return await awaitable  # type: ignore[no-any-return]


def _config(args: argparse.Namespace) -> GatewayConfig:
    """The config file with the flags, as `gateway run` applies them. When nothing names a
    template, the topic is subscribed to as it is (`run --topic <it>`): its own template."""
    flags = argparse.Namespace(topic=None, template=args.template, format=args.format, qos=None)
    config = apply_subscription_flags(load_config(args.config), flags)
    first = config.mqtt.subscriptions[0]
    if (args.format or args.template) and first.template is None and first.preset_template is None:
        flags.topic = [args.topic]
        config = apply_subscription_flags(config, flags)
    build_steps(config.steps)  # a step that cannot be built is a config error, found now
    return config


def _payload(args: argparse.Namespace) -> bytes:
    if args.payload is not None:
        return args.payload.encode("utf-8")  # type: ignore[no-any-return]
    if str(args.payload_file) == "-":
        return sys.stdin.buffer.read()
    try:
        return args.payload_file.read_bytes()  # type: ignore[no-any-return]
    except OSError as exc:
        raise ConfigError(f"--payload-file {args.payload_file}: {exc.strerror}") from exc


def _received_at(text: str | None) -> float:
    if text is None:
        return time.time()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--received-at {text!r}: not ISO 8601 or epoch seconds") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _text(result: dict[str, Any]) -> str:
    sub = result["subscription"]
    lines = [
        f"topic {result['topic']!r}: subscription {sub['index']} (filter {sub['filter']!r}, "
        f"template {sub['template']!r}, format {sub['format']})"
    ]
    for reading in result["readings"]:
        lines.append("stored: " + json.dumps(reading))
    rejection = result["rejection"]
    if rejection is not None:
        lines.append(f"dead-lettered: {rejection['reason']}: {rejection['detail']}")
    if result["dropped"]:
        lines.append(f"dropped: {result['dropped']}")
    lines.extend(f"left out: {note}" for note in result["left_out"])
    return "\n".join(lines)
