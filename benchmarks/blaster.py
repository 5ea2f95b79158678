"""`python -m benchmarks.blaster`: the benchmarks' load publisher, gateway-sim's prebuilt blast
at near zero CPU.

It sends exactly what `gateway-sim --prebuilt --rate 0 --connections pool` sends for the same
options (the simulators' own code builds the messages; same seed, device ids, topics and
payloads, the same devices per process and per connection, in the same order) and writes the
same manifest, so the audit works unchanged. The difference is how: messages are encoded once
(by amqtt's packet codec, wire.py) into big buffers before the clock starts and written with
large non-blocking sends (blast_worker.py), instead of one paho publish each (~15 µs of Python,
which made the simulator the bottleneck of the live-load benchmark at ~34k msg/s QoS 1).

Each process connects, then all start together (a barrier), so the first publish of one does
not wait for another still building.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.blast_worker import BlastResult, run_share
from simulators.cli import build_parser as sim_parser
from simulators.cli import spec_from_args
from simulators.fleet import join_all, part_paths, split, write_run_manifest
from simulators.spec import RunSpec

# How long a process may wait at the start line for the others to build and connect.
START_TIMEOUT_S = 120.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.blaster",
        description="Publish gateway-sim's prebuilt blast (same messages, same manifest) with "
        "almost no CPU, so the broker is the bottleneck.",
    )
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--count", type=int, required=True, help="messages per device")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-time", help="device clock start, as gateway-sim takes it")
    parser.add_argument("--client-id-prefix", help="default sim-<random>-, as gateway-sim")
    parser.add_argument("--topic-template", help="as gateway-sim's (default: its default)")
    parser.add_argument("--processes", type=int, default=2, help="devices split as gateway-sim")
    parser.add_argument("--connections", type=int, default=4, help="per process (--pool-size)")
    parser.add_argument(
        "--window", type=int, default=1000, help="QoS 1 messages unacked per connection at most"
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds for the blast (default 60 + 1 s per 10k)"
    )
    parser.add_argument("--manifest", type=Path, help="write what was sent here (JSON Lines)")
    return parser


def spec_for(args: argparse.Namespace) -> RunSpec:
    """The RunSpec gateway-sim builds from the same options (so the same messages)."""
    argv = [
        *("--broker", args.broker, "--devices", str(args.devices), "--qos", str(args.qos)),
        *("--count", str(args.count), "--seed", str(args.seed), "--prebuilt", "--rate", "0"),
        *("--connections", "pool", "--pool-size", str(args.connections)),
        *("--processes", str(args.processes), "--quiet"),
    ]
    if args.start_time is not None:
        argv += ["--start-time", args.start_time]
    if args.client_id_prefix is not None:
        argv += ["--client-id-prefix", args.client_id_prefix]
    if args.topic_template is not None:
        argv += ["--topic-template", args.topic_template]
    spec = spec_from_args(sim_parser().parse_args(argv))
    if spec.broker.tls or spec.broker.username:
        raise ValueError("--broker: plain mqtt:// without credentials only (a benchmark tool)")
    return spec


def _process_main(
    spec: RunSpec,
    *,
    process: int,
    first: int,
    stop: int,
    connections: int,
    window: int,
    timeout_s: float,
    part: Path | None,
    start: threading.Barrier,
    results: multiprocessing.Queue[BlastResult],
) -> None:
    """Entry point of a spawned process: its share, reported on `results`."""
    try:
        result = run_share(
            spec,
            process=process,
            first=first,
            stop=stop,
            connections=connections,
            window=window,
            timeout_s=timeout_s,
            part=part,
            ready=lambda: start.wait(START_TIMEOUT_S),
        )
    except Exception as exc:  # reported to the parent, which prints it and exits non-zero
        result = BlastResult(process=process, devices=stop - first, error=repr(exc))
    if result.first_at is None:
        start.abort()  # never started: the others must not wait for it
    results.put(result)


def run(
    spec: RunSpec, *, window: int, timeout_s: float, manifest: Path | None
) -> list[BlastResult]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, like gateway-sim's workers
    results_q: multiprocessing.Queue[BlastResult] = ctx.Queue()
    start = ctx.Barrier(spec.processes)
    ranges = split(spec.devices, spec.processes)
    parts = part_paths(manifest, spec.processes)
    procs = [
        ctx.Process(
            target=_process_main,
            args=(spec,),
            kwargs={
                "process": p,
                "first": first,
                "stop": stop,
                "connections": spec.pool_size,
                "window": window,
                "timeout_s": timeout_s,
                "part": parts[p],
                "start": start,
                "results": results_q,
            },
            name=f"blaster-{p}",
        )
        for p, (first, stop) in enumerate(ranges)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + START_TIMEOUT_S + timeout_s + 30
    results: dict[int, BlastResult] = {}
    try:
        while len(results) < len(procs):
            try:
                result = results_q.get(timeout=0.5)
            except queue.Empty:
                for p, proc in enumerate(procs):
                    if p not in results and not proc.is_alive() and results_q.empty():
                        results[p] = BlastResult(
                            p, ranges[p][1] - ranges[p][0], error=f"exit {proc.exitcode}"
                        )
                if time.monotonic() > deadline:
                    raise TimeoutError("blaster processes did not report in time") from None
                continue
            results[result.process] = result
    finally:
        join_all(procs)
    return [results[p] for p in range(len(procs))]


def write_blast_manifest(
    path: Path, spec: RunSpec, workers: list[BlastResult], started: float, finished: float
) -> None:
    """The manifest as gateway-sim writes it (simulators.fleet.write_run_manifest)."""
    faults: Counter[str] = Counter()
    for w in workers:
        faults.update(w.faults)
    write_run_manifest(
        path,
        spec,
        started=started,
        finished=finished,
        sent=(sum(w.messages_sent for w in workers), sum(w.readings_sent for w in workers)),
        unacked=sum(w.unacked for w in workers),
        faults=faults,
        parts=[Path(w.part) for w in workers if w.part],
    )


def summary(spec: RunSpec, workers: list[BlastResult], window: int) -> str:
    """gateway-sim's first line (benchmarks.load.SUMMARY_RATE parses it), then the rest."""
    sent = sum(w.messages_sent for w in workers)
    firsts = [w.first_at for w in workers if w.first_at is not None]
    written = [w.written_at for w in workers if w.written_at is not None]
    done = [w.done_at for w in workers if w.done_at is not None]
    write_s = max(written) - min(firsts) if firsts and written else 0.0
    done_s = max(done) - min(firsts) if firsts and done else 0.0
    cpu_s = sum(w.cpu_s for w in workers)
    lines = [
        f"blaster: sent {sent:,} messages ({sum(w.readings_sent for w in workers):,} readings) "
        f"from {spec.devices:,} devices in {write_s:.2f} s: "
        f"{sent / write_s if write_s > 0 else 0:,.0f} msg/s",
        f"  broker had all in {done_s:.2f} s ({'acked' if spec.qos else 'read to EOF'}): "
        f"{sent / done_s if done_s > 0 else 0:,.0f} msg/s; publisher CPU {cpu_s:.2f} s "
        f"({cpu_s / done_s if done_s > 0 else 0:.0%} of one CPU)",
        f"  qos {spec.qos}, seed {spec.seed}, {spec.processes} process(es) x "
        f"{spec.pool_size} connection(s), window {window if spec.qos else '-'}, "
        f"unacknowledged {sum(w.unacked for w in workers):,}",
    ]
    lines.extend(f"  FAILED process {w.process}: {w.error}" for w in workers if w.error)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_for(args)
    except ValueError as exc:
        parser.error(str(exc))
    total = spec.devices * args.count
    timeout_s = args.timeout if args.timeout is not None else 60 + total / 10_000
    started = time.time()
    workers = run(spec, window=args.window, timeout_s=timeout_s, manifest=args.manifest)
    if args.manifest is not None:
        write_blast_manifest(args.manifest, spec, workers, started, time.time())
    print(summary(spec, workers, args.window), flush=True)
    if args.manifest is not None:
        print(f"  manifest: {args.manifest}", flush=True)
    ok = all(w.error is None and w.unacked == 0 for w in workers)
    return 0 if ok and sum(w.messages_sent for w in workers) == total else 1


if __name__ == "__main__":
    sys.exit(main())
