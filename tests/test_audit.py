"""audit(): what a simulator run sent versus what the gateway's files hold."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit import audit, format_table, main_audit
from gateway.compaction.maintenance import Maintenance
from gateway.config import CompactionConfig, RetentionConfig
from gateway.manifest import (
    DeviceRecord,
    FaultRecord,
    ManifestHeader,
    payload_digest,
    write_manifest,
)
from gateway.metrics import Registry, StorageMetrics
from gateway.model import Reading, Rejection
from tests.support.readings import dead_letter_line_of, line_of

TS = 1_795_600_000.0
DEVICES = ("dev-00000", "dev-00001", "dev-00002")
COUNT = 10
# dev-00001's seq 4 was sent broken; the gateway must dead-letter it as invalid_json.
BROKEN = b'{"device_id":"dev-00001","ts":"2026-11-25T11:00:04.000Z","seq":4,"metr'
BROKEN_SEQ = 4
# A payload that is not UTF-8: its dead-letter copy is base64.
BINARY = b"\xff\xfe\x00garbage from dev-00002"
BINARY_SEQ = 6


@dataclass
class Run:
    manifest: Path
    data_dir: Path

    @property
    def segment(self) -> Path:
        return self.data_dir / "date=2026-11-25" / "hour=11" / "gw-00000001.jsonl"

    @property
    def dead_letter(self) -> Path:
        return self.data_dir / "dead-letter" / "date=2026-11-25" / "gw-00000001.jsonl"

    def lines(self) -> list[str]:
        return self.segment.read_text(encoding="utf-8").splitlines(keepends=True)

    def rewrite(self, lines: list[str]) -> None:
        self.segment.write_text("".join(lines), encoding="utf-8")


def topic(device_id: str) -> str:
    return f"sensors/site-01/{device_id}/telemetry"


def data_line(device_id: str, seq: int | None, metrics: dict[str, float] | None = None) -> str:
    reading = Reading(
        device_id=device_id,
        ts=TS + (seq or 0),
        received_at=TS + 1 + (seq or 0),
        metrics=metrics or {"temperature": 21.5, "humidity": 40.0},
        seq=seq,
        units={"temperature": "Cel", "humidity": "%RH"},
        tags={"site": "site-01"},
    )
    return line_of(reading).decode()


def dead_letter_line(device_id: str, payload: bytes, reason: str) -> str:
    rejection = Rejection(topic(device_id), payload, reason, "detail", TS + 2)
    return dead_letter_line_of(rejection).decode()


def fault(seq: int, kind: str, reason: str | None, payload: bytes) -> FaultRecord:
    return FaultRecord(
        seq=seq, kind=kind, reason=reason, digest=payload_digest(payload), bytes=len(payload)
    )  # type: ignore[arg-type]


def write_run(tmp_path: Path, fmt: str = "json") -> Run:
    """Three devices, seqs 0..9 each; two rejecting faults and one duplicate; all stored right."""
    duplicate_payload = b'{"device_id":"dev-00000","seq":2}'
    faults = {
        "dev-00000": (fault(2, "duplicate", None, duplicate_payload),),
        "dev-00001": (fault(BROKEN_SEQ, "malformed_json", "invalid_json", BROKEN),),
        "dev-00002": (fault(BINARY_SEQ, "malformed_json", "invalid_json", BINARY),),
    }
    records = [
        DeviceRecord(
            device_id=device_id,
            index=i,
            site="site-01",
            model="climate",
            topic=topic(device_id),
            metrics=("temperature", "humidity"),
            seq=((0, COUNT - 1),),
            messages=COUNT,
            faults=faults[device_id],
        )
        for i, device_id in enumerate(DEVICES)
    ]
    header = ManifestHeader(
        seed=7,
        format=fmt,  # type: ignore[arg-type]
        qos=1,
        topic_template="sensors/{site}/{device_id}/telemetry",
        device_id_pattern="dev-{n:05d}",
        profile="default",
        devices=len(DEVICES),
        started_at="2026-11-25T11:00:00.000Z",
        finished_at="2026-11-25T11:00:10.000Z",
        messages_sent=3 * COUNT + 1,
        readings_sent=3 * COUNT,
        faults={"malformed_json": 2, "duplicate": 1},
    )
    manifest = tmp_path / "run.manifest.jsonl"
    write_manifest(manifest, header, records)
    run = Run(manifest, tmp_path / "data")
    rejected = {("dev-00001", BROKEN_SEQ), ("dev-00002", BINARY_SEQ)}
    lines = [
        data_line(d, None if fmt in ("senml", "bare") else seq)
        for d in DEVICES
        for seq in range(COUNT)
        if (d, seq) not in rejected
    ]
    run.segment.parent.mkdir(parents=True)
    run.rewrite(lines)
    run.dead_letter.parent.mkdir(parents=True)
    run.dead_letter.write_text(
        dead_letter_line("dev-00001", BROKEN, "invalid_json")
        + dead_letter_line("dev-00002", BINARY, "invalid_json"),
        encoding="utf-8",
    )
    return run


def test_a_clean_run_is_ok(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    report = audit(run.manifest, run.data_dir)
    assert report.ok
    t = report.total
    assert (t.expected, t.found, t.missing, t.duplicated, t.unexpected) == (28, 28, 0, 0, 0)
    assert (t.faults_expected, t.faults_found, t.faults_missing) == (2, 2, 0)
    assert report.keyed_by == "seq"
    assert "OK" in format_table(report).splitlines()[-1]
    assert main_audit(["--manifest", str(run.manifest), "--data-dir", str(run.data_dir)]) == 0


def test_a_deleted_line_is_missing_and_not_ok(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    lines = run.lines()
    gone = data_line("dev-00002", 7)
    lines.remove(gone)
    run.rewrite(lines)
    report = audit(run.manifest, run.data_dir)
    assert not report.ok
    assert report.total.missing == 1
    (device,) = [d for d in report.devices if d.missing]
    assert device.device_id == "dev-00002"
    assert device.missing_seqs == [(7, 7)]
    table = format_table(report)
    assert "missing dev-00002: seq 7" in table
    assert table.splitlines()[-1].startswith("NOT OK: 1 missing")
    assert main_audit(["--manifest", str(run.manifest), "--data-dir", str(run.data_dir)]) == 1


def test_a_duplicated_line_is_counted_and_still_ok(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    run.rewrite([*run.lines(), data_line("dev-00000", 3), data_line("dev-00000", 3)])
    report = audit(run.manifest, run.data_dir)
    assert report.ok, "at least once: duplicates are allowed"
    assert report.total.duplicated == 2
    assert report.total.missing == 0
    assert "2 duplicates" in format_table(report)


def test_a_missing_dead_letter_record_is_not_ok(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    run.dead_letter.write_text(
        dead_letter_line("dev-00002", BINARY, "invalid_json"), encoding="utf-8"
    )
    report = audit(run.manifest, run.data_dir)
    assert not report.ok
    assert report.total.faults_missing == 1
    assert report.total.missing == 0
    (device,) = [d for d in report.devices if d.faults_missing]
    assert device.device_id == "dev-00001"
    assert report.faults_missing_by_kind == {"malformed_json": 1}
    table = format_table(report)
    assert table.splitlines()[-1] == "NOT OK: 1 faults not dead-lettered (malformed_json 1)"
    assert "faults not dead-lettered: malformed_json 1" in table


def test_each_missing_fault_kind_is_named_and_one_stored_as_a_reading_is_said_so(
    tmp_path: Path,
) -> None:
    """Issue 11, problem 6: "NOT OK: 7 faults not dead-lettered" named no kind. An
    out_of_range fault stored by a gateway without a check_range step is also explained."""
    run = write_run(tmp_path)
    # dev-00002's fault becomes an out_of_range one, which the gateway stored as a reading.
    manifest = run.manifest.read_text(encoding="utf-8").splitlines(keepends=True)
    manifest[3] = manifest[3].replace('"malformed_json","reason":"invalid_json"',
                                      '"out_of_range","reason":"out_of_range"')  # fmt: skip
    run.manifest.write_text("".join(manifest), encoding="utf-8")
    out_of_range = data_line("dev-00002", BINARY_SEQ, {"temperature": 1e6})
    run.rewrite([*run.lines(), out_of_range])
    run.dead_letter.write_text("", encoding="utf-8")
    report = audit(run.manifest, run.data_dir)
    assert report.faults_missing_by_kind == {"malformed_json": 1, "out_of_range": 1}
    assert report.faults_stored_by_kind == {"out_of_range": 1}
    table = format_table(report)
    assert table.splitlines()[-1] == (
        "NOT OK: 2 faults not dead-lettered (malformed_json 1, out_of_range 1)"
    )
    assert "faults not dead-lettered: malformed_json 1\n" in table
    assert (
        "faults not dead-lettered: out_of_range 1 (1 stored as readings instead); a gateway "
        "rejects these only with a check_range step" in table
    )
    body = json.loads(report.to_json())
    assert body["faults_missing_by_kind"] == {"malformed_json": 1, "out_of_range": 1}


def test_a_dead_letter_record_with_the_wrong_reason_is_reported(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    run.dead_letter.write_text(
        dead_letter_line("dev-00001", BROKEN, "invalid_schema")
        + dead_letter_line("dev-00002", BINARY, "invalid_json"),
        encoding="utf-8",
    )
    report = audit(run.manifest, run.data_dir)
    assert not report.ok
    assert report.total.faults_wrong_reason == 1
    (wrong,) = report.wrong_reasons
    assert (wrong.device_id, wrong.seq, wrong.expected, wrong.got) == (
        "dev-00001",
        BROKEN_SEQ,
        "invalid_json",
        "invalid_schema",
    )
    assert "expected invalid_json, got invalid_schema" in format_table(report)


def test_a_rejected_fault_found_in_the_data_is_unexpected(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    run.rewrite([*run.lines(), data_line("dev-00001", BROKEN_SEQ), data_line("dev-00001", 99)])
    report = audit(run.manifest, run.data_dir)
    assert report.total.unexpected == 2
    assert report.ok, "stored extras are reported, not a loss"


def test_gzip_segments_are_read(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    lines = run.lines()
    packed = run.segment.with_name("gw-00000002.jsonl.gz")
    with gzip.open(packed, "wt", encoding="utf-8") as out:
        out.writelines(lines[10:])
    run.rewrite(lines[:10])
    report = audit(run.manifest, run.data_dir)
    assert report.ok
    assert report.data_files == 2
    assert report.total.found == 28


def test_a_segment_and_its_gzip_copy_are_counted_once(tmp_path: Path) -> None:
    """After a crash between gzip and unlink both exist; recovery keeps the .gz."""
    run = write_run(tmp_path)
    with gzip.open(run.segment.with_name(run.segment.name + ".gz"), "wt") as out:
        out.writelines(run.lines())
    report = audit(run.manifest, run.data_dir)
    assert report.total.duplicated == 0
    assert report.data_files == 1


def test_readings_in_open_segments_are_reported_as_open_not_missing(tmp_path: Path) -> None:
    """A running gateway's open segment holds stored, acked readings: found, and said so."""
    run = write_run(tmp_path)
    lines = run.lines()
    lines.remove(data_line("dev-00000", 9))
    run.rewrite(lines)
    still_open = run.segment.with_name("gw-00000002.jsonl.open")
    # The last line is a write in progress: no newline yet, so it is not counted.
    still_open.write_text(
        data_line("dev-00000", 9) + data_line("dev-00000", 1).rstrip("\n"), encoding="utf-8"
    )
    report = audit(run.manifest, run.data_dir)
    assert report.ok
    assert report.total.missing == 0
    assert report.total.in_open == 1
    assert report.total.duplicated == 0
    assert (report.data_files, report.open_files) == (2, 1)
    assert "1 of the readings found are in open segments" in format_table(report)


def test_dead_letter_files_are_not_read_as_data(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    run.dead_letter.write_text(
        run.dead_letter.read_text(encoding="utf-8") + data_line("dev-00000", 0), encoding="utf-8"
    )
    report = audit(run.manifest, run.data_dir)
    assert report.total.duplicated == 0
    assert report.dead_letter_files == 1


def test_a_valid_reading_dead_lettered_is_missing_and_attributed(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    lines = run.lines()
    lines.remove(data_line("dev-00000", 5))
    run.rewrite(lines)
    payload = json.dumps({"device_id": "dev-00000", "seq": 5, "metrics": {}}).encode()
    with run.dead_letter.open("a", encoding="utf-8") as out:
        out.write(dead_letter_line("dev-00000", payload, "missing_field"))
    report = audit(run.manifest, run.data_dir)
    assert not report.ok
    assert report.total.missing == 1
    assert report.total.dead_lettered_valid == 1
    assert report.dead_letter_unmatched == {}


@pytest.mark.parametrize("fmt", ["senml", "bare"])
def test_formats_without_seq_are_compared_by_counts(tmp_path: Path, fmt: str) -> None:
    run = write_run(tmp_path, fmt)
    report = audit(run.manifest, run.data_dir)
    assert report.keyed_by == "count"
    assert report.ok
    assert report.total.expected == 28 * 2  # metric values
    assert any("no seq" in note for note in report.notes)
    run.rewrite(run.lines()[1:])
    report = audit(run.manifest, run.data_dir)
    assert not report.ok
    assert report.total.missing == 2


def test_json_output_is_machine_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path)
    code = main_audit(["--manifest", str(run.manifest), "--data-dir", str(run.data_dir), "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0
    assert body["ok"] is True
    assert body["total"]["found"] == 28
    assert [d["device_id"] for d in body["devices"]] == list(DEVICES)


def test_a_missing_manifest_fails(tmp_path: Path) -> None:
    assert main_audit(["--manifest", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("fmt", ["json", "senml"])
@pytest.mark.parametrize("keep_jsonl", [False, True])
def test_compacted_partitions_are_read_from_parquet_and_counted_once(
    tmp_path: Path, fmt: str, keep_jsonl: bool
) -> None:
    """By (device, seq) or by metric values; with the JSON Lines kept beside the file too."""
    run = write_run(tmp_path, fmt)
    Maintenance(
        run.data_dir,
        CompactionConfig(),
        RetentionConfig(keep_jsonl=keep_jsonl),
        StorageMetrics(Registry()),
    ).run_pass(now=TS + 86400)
    assert (run.segment.parent / "readings.parquet").exists()
    assert run.segment.exists() == keep_jsonl
    report = audit(run.manifest, run.data_dir)
    assert report.ok
    assert (report.parquet_files, report.data_files) == (1, 1)
    t = report.total
    expected = 28 if fmt == "json" else 28 * 2
    assert (t.expected, t.found, t.missing, t.duplicated) == (expected, expected, 0, 0)
    assert report.data_lines == 28


def test_several_data_directories_are_audited_as_one_store(tmp_path: Path) -> None:
    """The gateways of a scale-out each write their own directory, with the same file names:
    audited together, each file counts once; audited alone, one holds only part of the run."""
    run = write_run(tmp_path)
    other = tmp_path / "data-2"
    moved = other / run.segment.relative_to(run.data_dir)  # same partition, same segment name
    moved.parent.mkdir(parents=True)
    lines = run.lines()
    moved.write_text("".join(lines[10:]), encoding="utf-8")
    run.rewrite(lines[:10])
    dead = other / run.dead_letter.relative_to(run.data_dir)
    dead.parent.mkdir(parents=True)
    run.dead_letter.rename(dead)

    report = audit(run.manifest, [run.data_dir, other])
    assert report.ok
    t = report.total
    assert (t.expected, t.found, t.missing, t.duplicated) == (28, 28, 0, 0)
    assert (report.data_files, report.dead_letter_files) == (2, 1)
    assert report.data_dir == f"{run.data_dir}, {other}"
    assert not audit(run.manifest, run.data_dir).ok, "one directory alone misses the rest"
    argv = ["--manifest", str(run.manifest), "--data-dir", str(run.data_dir)]
    assert main_audit([*argv, "--data-dir", str(other)]) == 0
    assert main_audit(argv) == 1
