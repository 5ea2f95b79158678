"""The dedupe window: a reading with a seq is written once; repeats are acked (after the first
copy is durable) and counted; the window is bounded by time and count; what was claimed but not
written is forgotten; `drop_duplicates` steps still load."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import Gateway
from gateway.channel import Channel
from gateway.config import DedupeConfig, FilesConfig, GatewayConfig, load_config
from gateway.decode import SubscriptionDecoders
from gateway.errors import ConfigError
from gateway.model import Ack, Envelope, Reading, format_ts
from gateway.sinks.dedupe import DedupeWindow
from gateway.sinks.files import FileSink
from gateway.sinks.lines import IdentityReader, LineEncoder, line_ms
from harness.poll import eventually
from tests.support.sinks import Acks, fresh_metrics, put_all, records, running, sample

T0 = datetime(2026, 11, 25, 11, tzinfo=UTC).timestamp()


def reading(seq: int | None, device_id: str = "dev-1", ts: float = T0) -> Reading:
    return Reading(device_id, ts + (seq or 0) / 1000, ts + 1, {"t": 1.0}, seq)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def window(window_s: float = 600, max_identities: int = 100_000, clock: Clock | None = None):
    config = DedupeConfig(window_s=window_s, max_identities=max_identities)
    return DedupeWindow(config, clock or Clock())


def seqs(readings: list[Reading]) -> list[int | None]:
    return [r.seq for r in readings]


# -- the window --------------------------------------------------------------------------------


def test_a_repeat_is_left_out_and_other_devices_and_readings_without_seq_pass() -> None:
    w = window()
    kept, claimed = w.claim([reading(1), reading(2), reading(1, "dev-2")])
    assert seqs(kept) == [1, 2, 1]
    assert len(claimed) == len(w) == 3
    kept, claimed = w.claim([reading(2), reading(3), reading(None), reading(None)])
    assert seqs(kept) == [3, None, None], "seq 2 of dev-1 was written; no seq: always written"
    assert len(claimed) == 1


def test_two_readings_of_one_batch_with_one_identity_are_written_once() -> None:
    kept, _ = window().claim([reading(s) for s in (1, 2, 1, 3, 2)])
    assert seqs(kept) == [1, 2, 3]


def test_a_device_that_restarts_its_seq_is_not_taken_for_a_repeat() -> None:
    w = window()
    w.claim([reading(s, ts=T0) for s in (1, 2, 3)])
    kept, _ = w.claim([reading(s, ts=T0 + 60) for s in (1, 2, 3)])
    assert seqs(kept) == [1, 2, 3], "same seq, later ts: new readings"


def test_identities_are_forgotten_after_window_s() -> None:
    clock = Clock()
    w = window(window_s=10, clock=clock)
    w.claim([reading(1)])
    clock.now += 9
    w.claim([reading(2)])
    assert seqs(w.claim([reading(1)])[0]) == [], "9 s later: still remembered"
    clock.now += 2  # seq 1's claim is 11 s old, seq 2's 2 s
    w.claim([reading(3)])
    assert len(w) == 2
    assert seqs(w.claim([reading(1), reading(2)])[0]) == [1]


def test_at_most_max_identities_are_remembered_oldest_forgotten_first() -> None:
    w = window(max_identities=4)
    for s in range(6):
        w.claim([reading(s)])
    assert len(w) == 4
    assert seqs(w.claim([reading(s) for s in range(6)])[0]) == [0, 1]


def test_a_reload_shrinks_the_window_at_the_next_claim() -> None:
    w = window(max_identities=10)
    for s in range(6):
        w.claim([reading(s)])
    w.reconfigure(DedupeConfig(window_s=600, max_identities=2))
    w.claim([reading(6)])
    assert len(w) == 2
    assert seqs(w.claim([reading(s) for s in range(7)])[0]) == [0, 1, 2, 3, 4]


def test_a_withdrawn_claim_is_forgotten() -> None:
    w = window()
    _, first = w.claim([reading(1)])
    _, second = w.claim([reading(2), reading(3)])
    w.withdraw(second)
    assert len(w) == 1
    assert seqs(w.claim([reading(1), reading(2), reading(3)])[0]) == [2, 3]
    w.withdraw(first)
    assert seqs(w.claim([reading(1)])[0]) == [1]


def test_seeded_identities_count_from_start_and_only_the_newest_stay() -> None:
    clock = Clock()
    w = window(window_s=10, max_identities=3, clock=clock)
    old = [("dev-1", s, line_ms(T0 + s / 1000)) for s in (1, 2)]
    new = [("dev-1", s, line_ms(T0 + s / 1000)) for s in (3, 4)]
    assert w.seed([old, new]) == 4
    assert len(w) == 2, "whole chunks go: the older chunk made room"
    assert seqs(w.claim([reading(s) for s in (1, 2, 3, 4)])[0]) == [1, 2]
    clock.now += 11
    w.claim([reading(9)])
    assert seqs(w.claim([reading(3)])[0]) == [3], "seeded at start: forgotten window_s later"


@given(
    events=st.lists(
        st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 5)), max_size=5), max_size=30
    ),
    max_identities=st.integers(1, 8),
)
def test_the_window_matches_a_plain_model(
    events: list[list[tuple[str, int]]], max_identities: int
) -> None:
    """Batches in order: a reading is kept iff its identity is not among those remembered
    (whole claims, newest first, while they fit in max_identities) nor earlier in its batch."""
    w = window(max_identities=max_identities)
    claims: list[list[tuple[str, int]]] = []
    for batch in events:
        remembered = {key for claim in claims for key in claim}
        expected: list[tuple[str, int]] = []
        for key in batch:
            if key not in remembered and key not in expected:
                expected.append(key)
        kept, _ = w.claim([reading(seq, device) for device, seq in batch])
        assert [(r.device_id, r.seq) for r in kept] == expected
        if expected:
            claims.append(expected)
        while claims and sum(map(len, claims)) > max_identities:
            claims.pop(0)
        assert len(w) == sum(map(len, claims)) <= max(max_identities, len(expected))


# -- identities agree: decoded, written, read back ---------------------------------------------


@given(
    epoch_ms=st.integers(1_700_000_000_000, 1_900_000_000_000),
    micros=st.integers(0, 999),
    form=st.sampled_from(["canonical", "epoch_ms", "epoch_s", "iso_micros"]),
)
def test_an_identity_read_back_from_a_data_line_equals_the_decoded_readings(
    epoch_ms: int, micros: int, form: str
) -> None:
    """Whatever form the device sent ts in, the identity the window claims for the decoded
    reading is the one seeding reads from the line the sink wrote for it."""
    seconds = epoch_ms / 1000 + micros / 1_000_000
    ts: str | float = {
        "canonical": format_ts(epoch_ms / 1000),
        "epoch_ms": epoch_ms,
        "epoch_s": seconds,
        "iso_micros": datetime.fromtimestamp(seconds, UTC).isoformat(),
    }[form]
    config = GatewayConfig()
    decoders = SubscriptionDecoders(config.mqtt.subscriptions, config.limits)
    payload = json.dumps({"device_id": "d-1", "ts": ts, "seq": 7, "metrics": {"t": 1.0}})
    (decoded,) = decoders("sensors/s/d-1/telemetry", payload.encode(), epoch_ms / 1000)
    _, claimed = window().claim([decoded])
    line = b"".join(LineEncoder()([decoded]).values())
    assert IdentityReader()(line) == claimed


def test_lines_that_are_not_readings_are_skipped_not_fatal() -> None:
    reader = IdentityReader()
    good = b'{"device_id":"d","ts":"2026-11-25T11:00:00.123Z","seq":1,"metrics":{}}\n'
    no_seq = b'{"device_id":"d","ts":"2026-11-25T11:00:00.123Z","metrics":{}}\n'
    assert (
        reader(good + b"{not json\n" + no_seq + b'{"seq": "x"}\n' + good)
        == [("d", 1, line_ms(T0 + 0.123))] * 2
    )
    assert reader.skipped == 2


# -- in the file sink --------------------------------------------------------------------------


def make_sink(tmp_path: Path, **files: Any) -> tuple[FileSink, Any]:
    config = FilesConfig.model_validate(
        {"data_dir": tmp_path / "data", "retry_min_s": 0.01, "retry_max_s": 0.05} | files
    )
    metrics = fresh_metrics()
    return FileSink(config, "gw-test", metrics, dedupe=DedupeConfig()), metrics


async def test_a_repeat_is_acked_counted_and_not_written_again(tmp_path: Path) -> None:
    sink, metrics = make_sink(tmp_path)
    acks: Acks[Reading] = Acks()
    batch = [reading(1), reading(2), reading(1), reading(None), reading(None)]
    metrics.in_flight.inc(len(batch))
    await sink.recover()
    channel: Channel[Reading] = Channel(1000)
    await put_all(channel, acks.envelopes(batch))
    async with running(sink.run, channel):
        await eventually(acks.reached(5))
    assert [r["seq"] for r in records(tmp_path / "data")] == [1, 2, None, None]
    assert sample(metrics, "gateway_readings_written_total") == 4
    assert sample(metrics, "gateway_readings_dropped_total", reason="duplicate") == 1
    assert sample(metrics, "gateway_readings_in_flight") == 0
    assert sample(metrics, "gateway_dedupe_identities") == 2


async def test_a_repeats_ack_waits_until_its_first_copy_is_durable(tmp_path: Path) -> None:
    """fsync = interval: the first copy is written but not yet fsynced when its repeat comes;
    the repeat is acked with its own commit, after that fsync (here: the drain's), not before."""
    sink, metrics = make_sink(tmp_path, fsync="interval", fsync_interval_s=60)
    order: list[str] = []
    first = Envelope([reading(1)], Ack(lambda: order.append("first")))
    repeat = Envelope([reading(1)], Ack(lambda: order.append("repeat")))
    await sink.recover()
    channel: Channel[Reading] = Channel(1000)
    async with running(sink.run, channel):
        await channel.put(first)
        await eventually(lambda: sample(metrics, "gateway_bytes_written_total", sink="files") > 0)
        await channel.put(repeat)
        await eventually(
            lambda: sample(metrics, "gateway_readings_dropped_total", reason="duplicate") == 1
        )
        assert order == [], "nothing is acked before the first copy is fsynced"
    assert order == ["first", "repeat"]
    assert [r["seq"] for r in records(tmp_path / "data")] == [1]


async def test_a_sink_that_fails_forgets_what_it_claimed_but_did_not_settle(
    tmp_path: Path,
) -> None:
    """Nothing unwritten may pass for written: when the sink stops with batches unsettled
    (here: it is cancelled while every write fails), their identities are withdrawn."""
    sink, metrics = make_sink(tmp_path)
    await sink.recover()
    (tmp_path / "data" / "date=2026-11-25").mkdir(parents=True)
    (tmp_path / "data" / "date=2026-11-25" / "hour=11").write_text("not a directory")
    channel: Channel[Reading] = Channel(1000)
    await put_all(channel, Acks[Reading]().envelopes([reading(1), reading(2)]))
    task = asyncio.create_task(sink.run(channel))
    await eventually(lambda: sample(metrics, "gateway_dedupe_identities") > 0)
    await eventually(
        lambda: (
            sample(metrics, "gateway_write_errors_total", sink="files", reason="not_a_directory")
            > 0
        )
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sample(metrics, "gateway_dedupe_identities") == 0


async def test_dedupe_off_writes_every_copy(tmp_path: Path) -> None:
    config = FilesConfig(data_dir=tmp_path / "data")
    sink = FileSink(config, "gw-test", fresh_metrics(), dedupe=DedupeConfig(enabled=False))
    acks: Acks[Reading] = Acks()
    await sink.recover()
    channel: Channel[Reading] = Channel(1000)
    await put_all(channel, acks.envelopes([reading(1), reading(1)]))
    async with running(sink.run, channel):
        await eventually(acks.reached(2))
    assert [r["seq"] for r in records(tmp_path / "data")] == [1, 1]


# -- config: drop_duplicates, folded in --------------------------------------------------------


def test_a_drop_duplicates_step_still_loads_and_says_it_does_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps = [{"kind": "check_range", "metric": "t", "min": 0}, {"kind": "drop_duplicates"}]
    config = load_config(None, {"steps": steps})
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        Gateway(config)
    assert "steps.1: drop_duplicates does nothing now" in caplog.text


def test_drop_duplicates_with_dedupe_off_is_refused_naming_the_step() -> None:
    steps = [{"kind": "check_range", "metric": "t", "min": 0}, {"kind": "drop_duplicates"}]
    with pytest.raises(ConfigError, match=r"steps\.1: drop_duplicates is now the \[dedupe\]"):
        load_config(None, {"steps": steps, "dedupe": {"enabled": False}})
