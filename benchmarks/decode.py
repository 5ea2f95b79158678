"""`python -m benchmarks.decode`: CPU per reading of a mapping decode against the json format.

The same simulated fleet (gateway-sim's devices and values: temperature and humidity, the
default profile) in each shape the gateway reads — the json format, the same json payload read
through a mapping, flat_json and every preset's shape as gateway-sim sends it (awkward parts
included) — decoded by the gateway's own `SubscriptionDecoder` (size check, topic match, format
decode, the common checks): the decode step of the hot path, without the broker, the steps and
the files. Rounds alternate between the shapes; each reports CPU seconds (process_time) over
all its messages; the median of the rounds is printed, per reading and as a ratio to json.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.config import LimitsConfig
from gateway.decode import SubscriptionDecoder
from gateway.presets import PRESETS
from gateway.subscriptions import SubscriptionConfig
from simulators.spec import RunSpec, default_template
from simulators.stream import device_for, message_at

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = ("json", "json_via_mapping", *PRESETS)
# The json payload read by a mapping: the same bytes as the json format's, another decoder.
JSON_MAPPING = {
    "root": "metrics",
    "device_id": "payload:device_id",
    "ts": "payload:ts",
    "seq": "payload:seq",
}


@dataclass
class Shape:
    name: str
    decoder: SubscriptionDecoder
    messages: list[tuple[str, bytes]]
    readings: int = 0
    metric_values: int = 0


def build(name: str, devices: int, per_device: int, now: float) -> Shape:
    fmt = "json" if name == "json_via_mapping" else name
    spec = RunSpec(
        format=fmt,  # type: ignore[arg-type]
        topic_template=default_template(fmt),
        devices=devices,
        seed=3,
        start_ms=int((now - per_device - 5) * 1000),
        rate_hz=1.0,
    )
    messages = [
        (m.topic, m.payload)
        for seq in range(per_device)
        for index in range(devices)
        for m in message_at(spec, index, seq)
    ]
    if name == "json_via_mapping":
        sub = SubscriptionConfig(format="mapping", mapping=JSON_MAPPING)
    else:
        sub = SubscriptionConfig(format=fmt)
    decoder = SubscriptionDecoder(sub, LimitsConfig())
    shape = Shape(name, decoder, messages)
    for topic, payload in messages:  # warm up: every topic and key set seen once
        for reading in decoder(topic, payload, now):
            shape.readings += 1
            shape.metric_values += len(reading.metrics)
    assert device_for(spec, 0)  # the fleet is the simulator's own
    return shape


def round_cpu_s(shape: Shape, now: float) -> float:
    decode = shape.decoder
    started = time.process_time()
    for topic, payload in shape.messages:
        decode(topic, payload, now)
    return time.process_time() - started


def run(devices: int, per_device: int, rounds: int) -> dict[str, dict[str, float]]:
    now = time.time()
    shapes = [build(name, devices, per_device, now) for name in SHAPES]
    times: dict[str, list[float]] = {s.name: [] for s in shapes}
    gc.freeze()  # what was built stays; the rounds measure decoding alone
    for _ in range(rounds):
        for shape in shapes:
            times[shape.name].append(round_cpu_s(shape, now))
    results: dict[str, dict[str, float]] = {}
    for shape in shapes:
        cpu = statistics.median(times[shape.name])
        results[shape.name] = {
            "messages": len(shape.messages),
            "readings": shape.readings,
            "metric_values": shape.metric_values,
            "us_per_message": cpu / len(shape.messages) * 1e6,
            "us_per_reading": cpu / shape.readings * 1e6,
            "us_per_metric_value": cpu / shape.metric_values * 1e6,
        }
    base = results["json"]["us_per_reading"]
    for row in results.values():
        row["ratio_to_json"] = row["us_per_reading"] / base
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| shape | messages | metric values per reading | µs per reading | µs per metric value "
        "| vs json (per reading) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        per = row["metric_values"] / row["readings"]
        lines.append(
            f"| {name} | {int(row['messages']):,} | {per:.1f} | {row['us_per_reading']:.2f} "
            f"| {row['us_per_metric_value']:.2f} | {row['ratio_to_json']:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--per-device", type=int, default=20, help="readings per device")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    results = run(args.devices, args.per_device, args.rounds)
    print(table(results))
    print(
        f"(median of {args.rounds} alternating rounds, CPU time, {args.devices} devices x "
        f"{args.per_device} readings each; Python {sys.version.split()[0]})"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
