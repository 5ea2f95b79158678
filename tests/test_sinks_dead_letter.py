"""DeadLetterSink: rejections are stored as received, by day, acked and counted once durable."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gateway.channel import Channel
from gateway.config import DeadLetterConfig, FilesConfig
from gateway.layout import DEAD_LETTER_DIR
from gateway.metrics import GatewayMetrics
from gateway.model import Rejection, rejection_of
from gateway.sinks.dead_letter import DeadLetterSink
from gateway.sinks.files import FileSink
from harness.poll import eventually
from tests.support.readings import dead_letter_line_of, expected_dead_letter
from tests.support.sinks import (
    Acks,
    files,
    fresh_metrics,
    lines_of,
    put_all,
    records,
    running,
    sample,
)

CLIENT = "gw-test"
T0 = datetime(2026, 11, 25, 23, 59, 59, tzinfo=UTC).timestamp()
DAY = Path("date=2026-11-25")


def rejection(n: int, payload: bytes = b'{"device_id": 1}', received_at: float = T0) -> Rejection:
    return Rejection(
        topic=f"sensors/lab/dev-{n}/telemetry",
        payload=payload,
        reason="invalid_schema" if n % 2 else "invalid_json",
        detail=f"problem {n}",
        received_at=received_at,
    )


def make_sink(
    tmp_path: Path, max_payload_bytes: int = 1024, **fields: Any
) -> tuple[DeadLetterSink, GatewayMetrics, Path]:
    files_config = FilesConfig.model_validate(
        {"data_dir": tmp_path / "data", "retry_min_s": 0.01, "retry_max_s": 0.05} | fields
    )
    metrics = fresh_metrics()
    sink = DeadLetterSink(
        DeadLetterConfig(max_payload_bytes=max_payload_bytes), files_config, CLIENT, metrics
    )
    return sink, metrics, tmp_path / "data" / DEAD_LETTER_DIR


async def store(sink: DeadLetterSink, acks: Acks[Rejection], items: list[Rejection]) -> None:
    await sink.recover()
    channel: Channel[Rejection] = Channel(10_000)
    await put_all(channel, acks.envelopes(items))
    channel.close()
    await sink.run(channel)


async def test_rejections_are_stored_by_day_then_acked_and_counted_by_reason(
    tmp_path: Path,
) -> None:
    sink, metrics, root = make_sink(tmp_path)
    seen_at_ack: list[bool] = []

    def on_disk(r: Rejection) -> None:
        lines = [x for p in files(root, "*.jsonl*") for x in lines_of(p)]
        seen_at_ack.append(any(x["detail"] == r.detail for x in lines))

    acks: Acks[Rejection] = Acks(on_disk)
    items = [rejection(n) for n in range(5)] + [rejection(5, received_at=T0 + 1)]
    metrics.in_flight.inc(len(items))
    await store(sink, acks, items)

    assert acks.count == 6
    assert all(seen_at_ack)
    by_day = {p.parent.name: lines_of(p) for p in files(root, "*.jsonl")}
    assert sorted(by_day) == ["date=2026-11-25", "date=2026-11-26"]
    assert by_day["date=2026-11-25"] == [expected_dead_letter(r, 1024) for r in items[:5]]
    assert by_day["date=2026-11-25"][0] == {
        "received_at": "2026-11-25T23:59:59.000Z",
        "topic": "sensors/lab/dev-0/telemetry",
        "reason": "invalid_json",
        "detail": "problem 0",
        "payload": '{"device_id": 1}',
        "payload_encoding": "utf-8",
    }
    assert sample(metrics, "gateway_readings_rejected_total", reason="invalid_json") == 3
    assert sample(metrics, "gateway_readings_rejected_total", reason="invalid_schema") == 3
    assert sample(metrics, "gateway_readings_in_flight") == 0
    assert sample(metrics, "gateway_readings_written_total") == 0
    assert sample(metrics, "gateway_file_write_seconds_count", sink="dead_letter") == 1


async def test_binary_payload_is_base64_and_long_payload_is_truncated(tmp_path: Path) -> None:
    sink, _, root = make_sink(tmp_path, max_payload_bytes=16)
    binary = b"\xff\xfe\x00\x01 not utf-8"
    long = b"x" * 100
    await store(sink, Acks(), [rejection(0, binary), rejection(1, long)])

    stored_binary, stored_long = records(root)
    assert stored_binary["payload_encoding"] == "base64"
    assert base64.b64decode(stored_binary["payload"]) == binary
    assert "payload_truncated" not in stored_binary
    assert stored_long["payload"] == "x" * 16
    assert stored_long["payload_encoding"] == "utf-8"
    assert stored_long["payload_truncated"] is True
    assert stored_long["payload_bytes"] == 100
    assert stored_long["payload_sha256"] == hashlib.sha256(long).hexdigest(), "the whole's hash"


def test_the_default_record_keeps_a_few_kib_of_a_payload_with_its_size_and_hash() -> None:
    """A rejected 4 MiB payload is cut as soon as it is rejected (rejection_of), and its record
    keeps the prefix, the full size and the SHA-256: not 1 MiB of it, as it once did."""
    payload = bytes(range(256)) * 16384  # 4 MiB, not UTF-8
    cut = rejection_of("t/x", payload, "payload_too_large", "too big", T0, 4096)
    assert cut.payload == payload[:4096]
    assert cut.payload_bytes == len(payload)
    assert cut.payload_sha256 == hashlib.sha256(payload).hexdigest()
    default = DeadLetterConfig().max_payload_bytes
    assert 1024 <= default <= 16 * 1024, "a few KiB"
    sink = DeadLetterSink(
        DeadLetterConfig(),
        FilesConfig.model_validate({"data_dir": "unused"}),
        CLIENT,
        fresh_metrics(),
    )
    record = json.loads(sink.encode(rejection_of("t/x", payload, "invalid_json", "", T0, default)))
    assert base64.b64decode(record["payload"]) == payload[:default]
    assert record["payload_truncated"] is True
    assert record["payload_bytes"] == len(payload)
    assert record["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    small = rejection_of("t/x", b"{}", "invalid_schema", "", T0, default)
    assert small.payload_sha256 is None
    assert "payload_sha256" not in json.loads(sink.encode(small))


async def test_duckdb_reads_dead_letter_files(tmp_path: Path) -> None:
    sink, _, root = make_sink(tmp_path)
    await store(sink, Acks(), [rejection(n) for n in range(7)])
    query = (
        "SELECT count(*), max(detail) FILTER (WHERE reason = 'invalid_schema') "
        "FROM read_json_auto(?)"
    )
    [(rows, detail)] = duckdb.connect().execute(query, [f"{root}/**/*.jsonl"]).fetchall()
    assert rows == 7
    assert detail == "problem 5"


async def test_each_sink_recovers_only_its_own_tree(tmp_path: Path) -> None:
    """The file sink's recovery never touches dead-letter segments, and the other way round."""
    sink, metrics, root = make_sink(tmp_path)
    part = root / DAY
    part.mkdir(parents=True)
    line = dead_letter_line_of(rejection(1), 1024).decode()
    left_open = part / f"{CLIENT}-00000003.jsonl.open"
    left_open.write_text(line + '{"received_at":"2026')

    file_sink = FileSink(
        FilesConfig.model_validate({"data_dir": tmp_path / "data"}), CLIENT, fresh_metrics()
    )
    await file_sink.recover()
    assert left_open.exists()

    await sink.recover()
    assert (part / f"{CLIENT}-00000003.jsonl").read_text() == line
    assert sample(metrics, "gateway_torn_lines_recovered_total", sink="dead_letter") == 1
    await store(sink, Acks(), [rejection(2)])
    assert (part / f"{CLIENT}-00000004.jsonl").exists()


async def test_unwritable_dead_letter_dir_is_retried_then_written_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.sinks")
    sink, metrics, root = make_sink(tmp_path)
    root.parent.mkdir(parents=True)
    root.write_text("a file where the dead-letter directory goes\n")
    await sink.recover()
    acks: Acks[Rejection] = Acks()
    channel: Channel[Rejection] = Channel(100)
    await put_all(channel, acks.envelopes([rejection(n) for n in range(3)]))

    async with running(sink.run, channel):

        def errors() -> float:
            return sample(
                metrics, "gateway_write_errors_total", sink="dead_letter", reason="not_a_directory"
            )

        await eventually(lambda: errors() >= 2, timeout_s=10)
        assert acks.count == 0
        assert sink.writable is False
        assert sample(metrics, "gateway_sink_writable", sink="dead_letter") == 0
        assert sample(metrics, "gateway_sink_writable", sink="files") == 1
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

        root.unlink()
        await eventually(lambda: acks.count == 3, timeout_s=10)
        assert sink.writable is True
    assert [r["detail"] for r in records(root)] == [f"problem {n}" for n in range(3)]
