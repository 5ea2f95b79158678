"""Fresh data is readable: sealed within files.rotate_age_s (≤ 60 s by default) or at once with
`gateway seal`; the audit of a running gateway reports readings in open segments as such; and a
running gateway compacts closed partitions to Parquet by itself."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from gateway import Gateway
from gateway.audit import audit
from gateway.config import FilesConfig
from gateway.layout import LOCK_NAME, PARQUET_NAME
from harness.broker import Broker
from harness.poll import eventually
from harness.scrape import scrape, value
from tests.support.gateway import fleet, make_config, reading_payload, running, topic
from tests.support.manifests import write_manifest_for
from tests.support.partitions import hour_dir
from tests.support.publish import publish

ROOT = Path(__file__).resolve().parents[1]
DEVICES, PER_DEVICE = 5, 20


def written(gateway: Gateway) -> float:
    return gateway.registry.get_sample_value("gateway_readings_written_total") or 0.0


def sealed_count(data: Path) -> int:
    """What a reader that skips open segments sees (README's DuckDB query)."""
    if not list(data.glob("date=*/**/*.jsonl")):
        return 0
    query = f"SELECT count(*) FROM read_json_auto('{data}/date=*/**/*.jsonl')"
    ((count,),) = duckdb.sql(query).fetchall()
    return int(count)


def test_readings_are_sealed_within_a_minute_by_default() -> None:
    assert FilesConfig().rotate_age_s <= 60


async def test_gateway_seal_makes_every_stored_reading_visible_now(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique, files={"rotate_age_s": 3600})
    data = config.files.data_dir
    gateway = Gateway(config)
    async with running(gateway):
        await publish(broker.host, broker.port, fleet(unique, DEVICES, PER_DEVICE))
        await eventually(lambda: written(gateway) == DEVICES * PER_DEVICE, message="written")
        assert sealed_count(data) == 0, "an hour before rotation, all is in open segments"

        started = time.monotonic()
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "seal", "--url", gateway.http_url],
            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"sealed": {"files": 1, "dead_letter": 0}}
        assert time.monotonic() - started < 10
        assert sealed_count(data) == DEVICES * PER_DEVICE
        assert not list(data.glob("date=*/**/*.open"))

        await publish(
            broker.host, broker.port, [(topic(unique, "dev-late"), reading_payload("dev-late", 0))]
        )
        await eventually(lambda: written(gateway) == DEVICES * PER_DEVICE + 1, message="more")
        assert len(list(data.glob("date=*/**/*.open"))) == 1, "writing goes on in a new segment"


async def test_the_audit_of_a_running_gateway_reports_open_segments_not_missing(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique, files={"rotate_age_s": 3600})
    manifest = tmp_path / "sent.manifest.jsonl"
    write_manifest_for(
        manifest, {f"dev-{d:04d}": PER_DEVICE - 1 for d in range(DEVICES)}, site="site-a"
    )
    gateway = Gateway(config)
    async with running(gateway):
        await publish(broker.host, broker.port, fleet(unique, DEVICES, PER_DEVICE))
        await eventually(lambda: written(gateway) == DEVICES * PER_DEVICE, message="written")
        report = await asyncio.to_thread(audit, manifest, config.files.data_dir)
    assert report.ok
    assert report.total.missing == 0
    assert report.total.in_open == DEVICES * PER_DEVICE
    assert report.open_files == 1


async def test_a_running_gateway_compacts_a_closed_partition_to_parquet(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(
        broker,
        tmp_path,
        unique,
        files={"rotate_age_s": 0.5},
        compaction={"grace_s": 0, "interval_s": 0.2},
    )
    data = config.files.data_dir
    two_hours_ago = time.time() - 7200  # its hour is over: due at once with no grace
    messages = [
        (topic(unique, f"dev-{d}"), reading_payload(f"dev-{d}", seq, ts=two_hours_ago + seq))
        for seq in range(PER_DEVICE)
        for d in range(DEVICES)
    ]
    gateway = Gateway(config)
    async with running(gateway):
        await publish(broker.host, broker.port, messages)
        parquet = hour_dir(data, two_hours_ago) / PARQUET_NAME

        async def compacted() -> bool:
            samples = await scrape(gateway.http_url)
            return value(samples, "gateway_compaction_rows_total") == len(messages)

        await eventually(compacted, timeout_s=60, message="compacted")
        samples = await scrape(gateway.http_url)
    assert parquet.exists()
    assert not list(parquet.parent.glob("*.jsonl*")), "the segments went once it was durable"
    rows = duckdb.sql(f"SELECT count(*), count(DISTINCT device_id) FROM read_parquet('{parquet}')")
    assert rows.fetchall() == [(len(messages), DEVICES)]
    assert value(samples, "gateway_compaction_lag_seconds") == 0
    assert value(samples, "gateway_disk_bytes", sink="files") > 0
    assert value(samples, "gateway_compaction_compression_ratio") > 1


async def test_a_failing_maintenance_pass_never_stops_ingest(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    """Compaction and retention failing (here: the lock file cannot be opened) are counted and
    logged; readings keep being stored and acked."""
    config = make_config(broker, tmp_path, unique, compaction={"interval_s": 0.2})
    data = config.files.data_dir
    (data / LOCK_NAME).mkdir(parents=True)  # a directory where the lock file must be
    gateway = Gateway(config)
    async with running(gateway):

        async def failed() -> bool:
            return value(await scrape(gateway.http_url), "gateway_compaction_errors_total",
                         reason="io_error") >= 2  # fmt: skip

        await eventually(failed, message="maintenance failed twice, and goes on")
        await publish(broker.host, broker.port, fleet(unique, DEVICES, PER_DEVICE))
        await eventually(lambda: written(gateway) == DEVICES * PER_DEVICE, message="written")
        assert gateway.ready
