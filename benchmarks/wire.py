"""MQTT 3.1.1 packets for the benchmark's load publisher, encoded by hand.

Benchmark-only, and on purpose not paho: paho spends ~15 µs of Python per publish (a message
object, a packet built and queued, a write pass), so a publisher built on it runs out of CPU
before Mosquitto does and the benchmark measures the publisher. Here each PUBLISH is encoded
once, before the clock starts, into one big buffer per connection; publishing is then a few
large `send()` calls. Only what a clean-session QoS 0/1 publisher needs (MQTT 3.1.1 §3.1, §3.2,
§3.3, §3.4, §3.14); the gateway never uses this.
"""

from __future__ import annotations

import struct

PROTOCOL_LEVEL_311 = 4
CONNECT_CLEAN_SESSION = 0x02
# §3.2: CONNACK, no session present (clean session), return code 0 (accepted).
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"
PUBACK_BYTES = 4
# §2.3.1: packet identifiers are 1..65535.
MAX_PACKET_ID = 65_535


def remaining_length(n: int) -> bytes:
    """§2.2.3: 7 bits per byte, least significant first, high bit = more follows."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def utf8_field(text: str) -> bytes:
    """§1.5.3: a two-byte length, then the UTF-8 bytes."""
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"string of {len(data)} bytes is too long for MQTT")
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive_s: int) -> bytes:
    """§3.1: CONNECT, MQTT 3.1.1, clean session, no will, no credentials."""
    body = (
        utf8_field("MQTT")
        + bytes([PROTOCOL_LEVEL_311, CONNECT_CLEAN_SESSION])
        + struct.pack("!H", keepalive_s)
        + utf8_field(client_id)
    )
    return b"\x10" + remaining_length(len(body)) + body


def packet_id(index: int) -> int:
    """The id of a connection's `index`-th QoS 1 publish (0-based): 1..65535, wrapping. An id
    comes back only 65,535 publishes later, so it is never reused while unacknowledged as long
    as fewer than that are in flight."""
    return index % MAX_PACKET_ID + 1


def publish_packet(topic: bytes, payload: bytes, qos: int, index: int) -> bytes:
    """§3.3: PUBLISH with `topic` already a utf8_field; QoS 1 carries packet_id(index)."""
    if qos == 0:
        return b"\x30" + remaining_length(len(topic) + len(payload)) + topic + payload
    return b"".join(
        (
            b"\x32",
            remaining_length(len(topic) + 2 + len(payload)),
            topic,
            struct.pack("!H", packet_id(index)),
            payload,
        )
    )


def puback_packet(index: int) -> bytes:
    """§3.4: the PUBACK the broker answers the `index`-th QoS 1 publish with."""
    return b"\x40\x02" + struct.pack("!H", packet_id(index))
