"""One device's messages in send order: readings, injected faults, duplicates and swaps.

`device_messages(spec, device)` is a pure function of (spec, device index): run it twice and
the same bytes come out in the same order. Nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from simulators import payloads
from simulators.devices import Device, make_device
from simulators.draws import GOLDEN, MASK64, SALT_CLOCK, SALT_FAULT, derive, mix64, unit, unit_at
from simulators.faults import reasons_for
from simulators.preset_payloads import (
    PRESET_FORMATS,
    broken_preset,
    preset_messages,
    stored_metrics,
)
from simulators.spec import RunSpec


@dataclass(slots=True)
class Message:
    """One MQTT message to publish, and what the manifest must say about it."""

    due_ms: float  # when to send it, in ms after the device's start (its own clock)
    topic: str
    payload: bytes
    seqs: tuple[int, ...]  # the readings it carries (one, or a batch)
    fault: str | None = None
    reason: str | None = None
    disconnect_after: bool = False


def device_for(spec: RunSpec, index: int) -> Device:
    return make_device(
        spec.seed,
        index,
        profile=spec.profile,
        sites=spec.sites,
        device_id_pattern=spec.device_id_pattern,
        start_s=spec.start_ms / 1000,
    )


def manifest_metrics(spec: RunSpec, device: Device) -> tuple[str, ...]:
    """The metric names the gateway stores per reading of `device` in this run's format."""
    return stored_metrics(spec.format, device) if spec.format in PRESET_FORMATS else device.metrics


def device_topic(spec: RunSpec, device: Device, metric: str = "{metric}") -> str:
    return spec.topic_template.format(
        site=device.site, device_id=device.device_id, model=device.model, metric=metric
    )


class DeviceClock:
    """When reading `seq` is taken: start + phase + seq * interval, plus jitter (device time)."""

    __slots__ = ("_interval", "_jitter", "_key", "_phase", "_start_ms")

    def __init__(self, spec: RunSpec, device: Device) -> None:
        self._start_ms = spec.start_ms
        self._interval = spec.interval_ms
        # Devices are spread over the first interval, so they do not all fire at once.
        self._phase = unit(derive(device.key, SALT_CLOCK)) * self._interval if spec.rate_hz else 0
        # Jitter stays within ±jitter/2 of an interval, so device time never runs backwards.
        self._jitter = min(max(spec.jitter, 0.0), 1.0) * self._interval if spec.rate_hz else 0.0
        self._key = derive(device.key, SALT_CLOCK, 1)

    def offset_ms(self, seq: int) -> float:
        offset = self._phase + seq * self._interval
        if self._jitter:
            offset += (unit_at(self._key, seq) - 0.5) * self._jitter
        return offset

    def ts_ms(self, seq: int) -> int:
        return self._start_ms + int(self.offset_ms(seq))


class _Maker:
    """Builds the messages of one device; state is only the batch being filled."""

    def __init__(self, spec: RunSpec, device: Device) -> None:
        self.spec = spec
        self.device = device
        self.clock = DeviceClock(spec, device)
        self.fmt = spec.format
        self.topic = device_topic(spec, device)
        self.metric_topics = {m: device_topic(spec, device, m) for m in device.metrics}
        self.fault_key = derive(device.key, SALT_FAULT)
        self.reasons = reasons_for(spec.format, spec.topic_has_device_id)
        self.batch: list[tuple[int, dict[str, object]]] = []
        self.batch_due = 0.0

    def fault_at(self, seq: int) -> str | None:
        plan = self.spec.faults
        if not plan:
            return None
        return plan.pick(unit(mix64((self.fault_key + seq * GOLDEN) & MASK64)))

    def messages(self, end: int | None) -> Iterator[Message]:
        seq = 0
        while end is None or seq < end:
            kind = self.fault_at(seq)
            if kind == "out_of_order" and end is not None and seq + 1 >= end:
                kind = None  # the last reading has nothing to swap with: a clean one
            if kind == "out_of_order":
                following = self.fault_at(seq + 1)
                if following == "out_of_order":
                    following = None  # one swap at a time, so every label is exact
                yield from self.emit(seq + 1, following, seq + 1)
                yield from self.emit(seq, "out_of_order", seq + 1)
                seq += 2
            else:
                yield from self.emit(seq, kind, seq)
                seq += 1
        if self.batch:
            yield self.flush()

    def emit(self, seq: int, kind: str | None, due_seq: int) -> Iterator[Message]:
        ts_ms = self.clock.ts_ms(seq)
        due = self.clock.offset_ms(due_seq)
        values = self.device.sample(seq, ts_ms / 1000)
        if kind is None and self.fmt == "json_batch":
            self.batch.append((seq, self.reading(seq, ts_ms, values)))
            self.batch_due = due
            if len(self.batch) >= self.spec.batch_size:
                yield self.flush()
            return
        if kind is None:
            yield from self.valid(seq, ts_ms, values, due)
            return
        if self.batch:  # a faulty reading travels alone, after what came before it
            yield self.flush()
        reason = self.reasons[kind]
        if kind == "duplicate":
            originals = list(self.valid(seq, ts_ms, values, due))
            yield from originals
            for m in originals:
                yield Message(due, m.topic, m.payload, m.seqs, kind, None)
        elif kind in ("out_of_order", "disconnect"):
            messages = list(self.valid(seq, ts_ms, values, due))
            labelled = messages[-1]
            labelled.fault = kind
            labelled.disconnect_after = kind == "disconnect"
            yield from messages
        else:
            topic, payload = self.broken(kind, seq, ts_ms, values)
            yield Message(due, topic, payload, (seq,), kind, reason)

    def reading(self, seq: int, ts_ms: int, values: dict[str, float]) -> dict[str, object]:
        d = self.device
        return payloads.reading_object(d.device_id, ts_ms, seq, values, d.units)

    def flush(self) -> Message:
        seqs = tuple(seq for seq, _ in self.batch)
        payload = payloads.json_batch_payload([obj for _, obj in self.batch])
        self.batch = []
        return Message(self.batch_due, self.topic, payload, seqs)

    def valid(
        self, seq: int, ts_ms: int, values: dict[str, float], due: float
    ) -> Iterator[Message]:
        d = self.device
        fmt = self.fmt
        if fmt in PRESET_FORMATS:
            for part, payload in preset_messages(fmt, d, seq, ts_ms, values):
                yield Message(due, self.preset_topic(part), payload, (seq,))
        elif fmt == "json":
            obj = self.reading(seq, ts_ms, values)
            yield Message(due, self.topic, payloads.json_payload(obj), (seq,))
        elif fmt == "json_batch":
            obj = self.reading(seq, ts_ms, values)
            yield Message(due, self.topic, payloads.json_batch_payload([obj]), (seq,))
        elif fmt == "senml":
            payload = payloads.senml_payload(d.device_id, ts_ms, values, d.units)
            yield Message(due, self.topic, payload, (seq,))
        else:
            for metric, value in values.items():
                yield Message(due, self.metric_topics[metric], payloads.bare_payload(value), (seq,))

    def preset_topic(self, part: str, device_id: str | None = None) -> str:
        """A preset message's topic; `part` is the Shelly component of a status topic."""
        d = self.device
        if not part and device_id is None:
            return self.topic
        return self.spec.topic_template.format(
            site=d.site, device_id=device_id or d.device_id, model=d.model, metric=part
        )

    def broken(
        self, kind: str, seq: int, ts_ms: int, values: dict[str, float]
    ) -> tuple[str, bytes]:
        d = self.device
        if self.fmt in PRESET_FORMATS:
            part, payload = broken_preset(self.fmt, kind, d, seq=seq, ts_ms=ts_ms, values=values)
            traversal = payloads.TRAVERSAL_TOPIC_LEVEL if kind == "path_traversal" else None
            return self.preset_topic(part, traversal), payload
        if self.fmt in ("json", "json_batch"):
            batch = self.fmt == "json_batch"
            payload = payloads.broken_json(
                kind,
                device_id=d.device_id,
                ts_ms=ts_ms,
                seq=seq,
                metrics=values,
                units=d.units,
                batch=batch,
            )
            return self.topic, payload
        if self.fmt == "senml":
            return self.topic, payloads.broken_senml(kind, d.device_id, ts_ms, values, d.units)
        metric = d.metrics[0]
        if kind == "out_of_range":
            metric = payloads.OUT_OF_RANGE_METRIC
        topic = self.metric_topics.get(metric) or device_topic(self.spec, d, metric)
        if kind == "path_traversal":
            topic = self.spec.topic_template.format(
                site=d.site, device_id=payloads.TRAVERSAL_TOPIC_LEVEL, model=d.model, metric=metric
            )
        return topic, payloads.broken_bare(kind, d.device_id, seq, values[d.metrics[0]])


def device_messages(spec: RunSpec, device: Device, end: int | None = None) -> Iterator[Message]:
    """The messages of `device` in send order, for seqs 0..end-1 (forever when end is None)."""
    return _Maker(spec, device).messages(end)


def message_at(spec: RunSpec, index: int, seq: int, kind: str | None = None) -> list[Message]:
    """The messages carrying reading `seq` of device `index`, broken as `kind` when given.

    For tests and tools: the same bytes the fleet sends (outside a batch), without running it.
    """
    maker = _Maker(spec, device_for(spec, index))
    messages = list(maker.emit(seq, kind, seq))
    if maker.batch:
        messages.append(maker.flush())
    return messages
