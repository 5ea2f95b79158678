"""MQTT 3.1.1 packets of `gateway-sim --transport raw`, encoded once with amqtt's codec.

On purpose not published through paho: paho spends ~15 µs of Python per publish (a message
object, a packet built and queued, a write pass), so a publisher built on it runs out of CPU
before Mosquitto does and a benchmark measures the publisher. Here each PUBLISH is encoded once,
before the clock starts, by amqtt's packet classes (the MQTT framing is theirs, ~4 µs a packet),
into one big buffer per connection; publishing is then a few large `send()` calls. amqtt comes
with the `demo` extra (it is also the demo's broker); the gateway never uses this.
"""

from __future__ import annotations

from amqtt.mqtt.connack import CONNECTION_ACCEPTED, ConnackPacket
from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket

# A clean-session CONNECT is answered with exactly this: no session present, accepted.
CONNACK_ACCEPTED = ConnackPacket.build(0, CONNECTION_ACCEPTED).to_bytes()
DISCONNECT = DisconnectPacket().to_bytes()
PUBACK_BYTES = len(PubackPacket.build(1).to_bytes())
# MQTT 3.1.1 §2.3.1: packet identifiers are 1..65535.
MAX_PACKET_ID = 65_535


def connect_packet(client_id: str, keepalive_s: int) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no will, no credentials."""
    header = ConnectVariableHeader(keep_alive=keepalive_s)
    header.clean_session_flag = True
    packet = ConnectPacket(variable_header=header, payload=ConnectPayload(client_id=client_id))
    return packet.to_bytes()


def packet_id(index: int) -> int:
    """The id of a connection's `index`-th QoS 1 publish (0-based): 1..65535, wrapping. An id
    comes back only 65,535 publishes later, so it is never reused while unacknowledged as long
    as fewer than that are in flight."""
    return index % MAX_PACKET_ID + 1


def publish_packet(topic: str, payload: bytes, qos: int, index: int) -> bytes:
    """PUBLISH of `payload` to `topic`; QoS 1 carries packet_id(index)."""
    packet_id_or_none = packet_id(index) if qos else None
    return PublishPacket.build(topic, payload, packet_id_or_none, False, qos, False).to_bytes()


def puback_packet(index: int) -> bytes:
    """The PUBACK the broker answers the `index`-th QoS 1 publish with."""
    return PubackPacket.build(packet_id(index)).to_bytes()
