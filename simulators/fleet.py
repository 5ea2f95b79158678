"""Runs the fleet: devices spread over processes, their progress summed, their manifests merged."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import FrameType

from gateway.manifest import ManifestHeader, write_manifest
from simulators.payloads import format_ts
from simulators.spec import RunSpec
from simulators.worker import Progress, WorkerResult, run_worker

# How long a raw blast's process may wait at the start line for the others to build and connect.
START_TIMEOUT_S = 120.0


@dataclass
class FleetResult:
    """What the whole fleet did."""

    spec: RunSpec
    workers: list[WorkerResult]
    started_at: float
    finished_at: float
    manifest: Path | None

    def total(self, name: str) -> int:
        return sum(int(getattr(w, name)) for w in self.workers)

    @property
    def faults(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for w in self.workers:
            total.update(w.faults)
        return total

    @property
    def errors(self) -> list[str]:
        return [f"process {w.process}: {w.error}" for w in self.workers if w.error]

    @property
    def publish_window_s(self) -> float:
        """From the first publish of any process to the last message written by any."""
        firsts = [w.first_at for w in self.workers if w.first_at is not None]
        lasts = [w.last_at for w in self.workers if w.last_at is not None]
        if not firsts or not lasts:
            return 0.0
        return max(lasts) - min(firsts)

    @property
    def rate(self) -> float:
        window = self.publish_window_s
        return self.total("messages_sent") / window if window > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.total("errors") == 0 and self.total("unacked") == 0


def _process_main(
    spec: RunSpec,
    *,
    process: int,
    first: int,
    stop_index: int,
    part: Path | None,
    results: multiprocessing.Queue[tuple[str, int, object]],
    start: Barrier | None,
) -> None:
    """Entry point of a spawned process: run, and report progress and the result on `results`."""
    if spec.transport == "raw":
        assert start is not None
        raw = _raw_share(spec, process, first, stop_index, part=part, start=start)
        results.put(("done", process, raw))
        return
    # Ctrl-C reaches every process of the terminal's group; the parent turns it into one SIGTERM
    # per child, so each stops once, drains, and still reports what it sent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM can come while this process is still starting (a short run, a quick Ctrl-C):
    # note it until the worker's own handlers take over, rather than die without a report.
    terms: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: terms.append(signum))

    def report(progress: Progress) -> None:
        results.put(("progress", process, progress))

    try:
        result = asyncio.run(
            run_worker(
                spec,
                process=process,
                first=first,
                stop_index=stop_index,
                report=report,
                part=part,
                stopped_early=lambda: bool(terms),
            )
        )
    except Exception as exc:  # reported to the parent, which prints it and exits non-zero
        result = WorkerResult(process=process, devices=stop_index - first, error=repr(exc))
    results.put(("done", process, result))


def _raw_share(
    spec: RunSpec, process: int, first: int, stop_index: int, *, part: Path | None, start: Barrier
) -> WorkerResult:
    """A raw blast's share; every process starts together (the barrier), so the first publish
    of one does not wait for another still building."""
    # Imported here: it needs amqtt (the `demo` extra), which only the raw transport uses.
    from simulators.raw_worker import run_raw_worker  # noqa: PLC0415

    try:
        result = run_raw_worker(
            spec,
            process=process,
            first=first,
            stop_index=stop_index,
            part=part,
            ready=lambda: start.wait(START_TIMEOUT_S),
        )
    except Exception as exc:  # reported to the parent, which prints it and exits non-zero
        result = WorkerResult(process=process, devices=stop_index - first, error=repr(exc))
    if result.first_at is None:
        start.abort()  # never started: the others must not wait for it
    return result


def split(devices: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous [first, stop) device ranges, as even as possible."""
    bounds = [devices * p // processes for p in range(processes + 1)]
    return [(bounds[p], bounds[p + 1]) for p in range(processes)]


def _run_processes(
    spec: RunSpec, parts: list[Path | None], on_progress: Callable[[Progress], None]
) -> list[WorkerResult]:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads or a loop
    results_q: multiprocessing.Queue[tuple[str, int, object]] = ctx.Queue()
    ranges = split(spec.devices, spec.processes)
    start = ctx.Barrier(spec.processes) if spec.transport == "raw" else None
    procs = [
        ctx.Process(
            target=_process_main,
            args=(spec,),
            kwargs={
                "process": p,
                "first": first,
                "stop_index": stop,
                "part": parts[p],
                "results": results_q,
                "start": start,
            },
            name=f"gateway-sim-{p}",
        )
        for p, (first, stop) in enumerate(ranges)
    ]

    # A child reports as soon as its own signal handlers are in place; one that has not yet is
    # stopped when it first reports, so a SIGTERM never meets a child still starting up.
    heard: set[int] = set()
    stopping: list[bool] = []

    def stop_children(signum: int = 0, frame: FrameType | None = None) -> None:
        stopping.append(True)
        for p, proc in enumerate(procs):
            if p in heard and proc.is_alive():
                proc.terminate()  # SIGTERM: the child stops, drains and reports

    # Handlers, not KeyboardInterrupt: Ctrl-C must not tear this loop down before the children
    # have reported what they sent.
    previous = {sig: signal.signal(sig, stop_children) for sig in (signal.SIGINT, signal.SIGTERM)}
    for proc in procs:
        proc.start()
    results: dict[int, WorkerResult] = {}
    latest: dict[int, Progress] = {}
    silent_polls = 0
    try:
        while len(results) < len(procs):
            try:
                kind, p, payload = results_q.get(timeout=0.2)
            except queue.Empty:
                silent_polls += 1
                if silent_polls >= 10:  # 2 s without a word: anyone dead without a result?
                    for p, proc in enumerate(procs):
                        if p not in results and not proc.is_alive():
                            results[p] = WorkerResult(
                                process=p,
                                devices=ranges[p][1] - ranges[p][0],
                                error=f"exited with code {proc.exitcode} without a result",
                            )
                continue
            silent_polls = 0
            if p not in heard:
                heard.add(p)
                if stopping and procs[p].is_alive():
                    procs[p].terminate()
            if kind == "progress":
                assert isinstance(payload, Progress)
                latest[p] = payload
                on_progress(sum(latest.values(), Progress()))
            else:
                assert isinstance(payload, WorkerResult)
                results[p] = payload
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        join_all(procs)
    return [results[p] for p in range(len(procs))]


def part_paths(manifest: Path | None, processes: int) -> list[Path | None]:
    """Where each process writes its devices' manifest lines, merged after the run."""
    return [
        manifest.with_name(f"{manifest.name}.part-{p}") if manifest else None
        for p in range(processes)
    ]


def join_all(procs: Sequence[BaseProcess], timeout_s: float = 10.0) -> None:
    """Wait for each process to end; kill one that is still there after `timeout_s`."""
    for proc in procs:
        proc.join(timeout=timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join()


def run_fleet(
    spec: RunSpec, manifest: Path | None, on_progress: Callable[[Progress], None]
) -> FleetResult:
    """Run the fleet (in this process when --processes 1) and write the merged manifest."""
    started = time.time()
    parts = part_paths(manifest, spec.processes)
    if spec.processes == 1 and spec.transport == "raw":
        from simulators.raw_worker import run_raw_worker  # noqa: PLC0415 (as in _raw_share)

        only_raw = run_raw_worker(spec, process=0, first=0, stop_index=spec.devices, part=parts[0])
        workers = [only_raw]
    elif spec.processes == 1:
        only = run_worker(
            spec, process=0, first=0, stop_index=spec.devices, report=on_progress, part=parts[0]
        )
        workers = [asyncio.run(only)]
    else:
        workers = _run_processes(spec, parts, on_progress)
    finished = time.time()
    result = FleetResult(spec, workers, started, finished, manifest)
    if manifest is not None:
        write_run_manifest(
            manifest,
            spec,
            started=started,
            finished=finished,
            sent=(result.total("messages_sent"), result.total("readings_sent")),
            unacked=result.total("unacked"),
            faults=result.faults,
            parts=[Path(w.part) for w in workers if w.part],
        )
    return result


def write_run_manifest(
    path: Path,
    spec: RunSpec,
    *,
    started: float,
    finished: float,
    sent: tuple[int, int],
    unacked: int,
    faults: Mapping[str, int],
    parts: list[Path],
) -> None:
    """The run's manifest: its header (`sent` = messages, readings), then each process's part
    (device lines), which is then removed."""
    header = ManifestHeader(
        seed=spec.seed,
        format=spec.format,
        qos=spec.qos,
        topic_template=spec.topic_template,
        device_id_pattern=spec.device_id_pattern,
        profile=spec.profile.name,
        devices=spec.devices,
        started_at=format_ts(int(started * 1000)),
        finished_at=format_ts(int(finished * 1000)),
        messages_sent=sent[0],
        readings_sent=sent[1],
        messages_unacked=unacked,
        faults=dict(sorted(faults.items())),
    )
    write_manifest(path, header, parts=parts)
    for part in parts:
        part.unlink()
