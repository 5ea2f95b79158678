"""TLS to the broker: verified by default, mutual TLS with a client certificate, and a clear
refusal (not a silent fallback) when the broker's certificate does not verify."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway
from gateway.ports import free_port
from harness.broker import Broker
from harness.poll import eventually
from tests.support.gateway import make_config, read_lines, reading_payload, running, topic

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl tool")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}", "-keyout", str(key), "-out", str(cert), cwd=directory)  # fmt: skip
    return key, cert


def issue(directory: Path, ca: tuple[Path, Path], name: str, san: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(csr), cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
             cwd=directory)  # fmt: skip
    return key, cert


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    client_key: Path
    client_cert: Path


@dataclass
class TlsBroker(Broker):
    """Mosquitto with one TLS listener that requires a client certificate from our CA."""

    pki_dir: Path | None = None

    def write_config(self) -> Path:
        conf = super().write_config()
        assert self.pki_dir is not None
        d = self.pki_dir
        text = conf.read_text().replace(f"listener {self.port} 127.0.0.1\n", "")
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {d / 'ca.crt'}\ncertfile {d / 'broker.crt'}\nkeyfile {d / 'broker.key'}\n"
            "require_certificate true\n" + text
        )
        return conf


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "ca")
    other = make_ca(d, "other-ca")
    issue(d, ca, "broker", "IP:127.0.0.1,DNS:localhost")
    client = issue(d, ca, "gateway", "DNS:gateway")
    return Pki(ca=ca[1], other_ca=other[1], client_key=client[0], client_cert=client[1])


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    broker = TlsBroker(tmp_path / "mosquitto", port=free_port(), pki_dir=pki.ca.parent).start()
    yield broker
    broker.stop()


async def test_mutual_tls_with_verification_stores_readings(
    tls_broker: Broker, pki: Pki, tmp_path: Path, unique: str, protocol: str
) -> None:
    tls = {
        "enabled": True,
        "ca_file": pki.ca,
        "cert_file": pki.client_cert,
        "key_file": pki.client_key,
    }
    config = make_config(tls_broker, tmp_path, unique, mqtt={"tls": tls, "protocol": protocol})
    assert config.mqtt.tls.verify, "verification is on by default"
    async with running(Gateway(config)) as gateway:
        # A test publisher with its own certificate from the same CA.
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{unique}")
        pub.tls_set(
            ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key)
        )
        pub.connect("127.0.0.1", tls_broker.port)
        pub.loop_start()
        infos = [
            pub.publish(topic(unique, "dev-1"), reading_payload("dev-1", n), qos=1)
            for n in range(20)
        ]
        for info in infos:
            info.wait_for_publish(timeout=30)
        pub.disconnect()
        pub.loop_stop()
        await eventually(lambda: gateway.metrics.sample("gateway_readings_written_total") == 20)
    assert len(read_lines(config.files.data_dir)) == 20


async def test_a_broker_certificate_from_another_ca_is_refused(
    tls_broker: Broker,
    pki: Pki,
    tmp_path: Path,
    unique: str,
    protocol: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = {
        "enabled": True,
        "ca_file": pki.other_ca,
        "cert_file": pki.client_cert,
        "key_file": pki.client_key,
    }
    config = make_config(tls_broker, tmp_path, unique, mqtt={"tls": tls, "protocol": protocol})
    async with running(Gateway(config), connected=False) as gateway:
        await eventually(lambda: gateway.metrics.sample("gateway_mqtt_reconnects_total") >= 1)
        assert not gateway.checks()["broker_connected"]
        failures = gateway.metrics.sample(
            "gateway_mqtt_connection_failures_total", reason="tls_error"
        )
        assert failures >= 1
    assert "the broker's certificate: self-signed certificate in certificate chain" in caplog.text


async def test_tls_to_a_plaintext_port_is_named_as_such(
    broker: Broker, pki: Pki, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    tls = {"enabled": True, "ca_file": pki.ca}
    config = make_config(broker, tmp_path, unique, mqtt={"tls": tls})
    async with running(Gateway(config), connected=False) as gateway:
        await eventually(
            lambda: (
                gateway.metrics.sample("gateway_mqtt_connection_failures_total", reason="tls_error")
                >= 1
            )
        )
    assert "is this port TLS (mqtts://)?" in caplog.text


async def test_plaintext_to_a_tls_port_is_named_as_such(
    tls_broker: Broker, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tls_broker, tmp_path, unique)
    async with running(Gateway(config), connected=False) as gateway:
        await eventually(lambda: gateway.metrics.sample("gateway_mqtt_reconnects_total") >= 1)
        assert not gateway.checks()["broker_connected"]
    assert "a TLS port spoken to without TLS" in caplog.text


async def test_a_missing_client_certificate_is_named(
    tls_broker: Broker,
    pki: Pki,
    tmp_path: Path,
    unique: str,
    protocol: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker requires a client certificate and we offer none. On MQTT 5 the TLS alert says
    so; paho (3.1.1) does not pass it on, so the message names it as the likely cause."""
    tls = {"enabled": True, "ca_file": pki.ca}
    config = make_config(tls_broker, tmp_path, unique, mqtt={"tls": tls, "protocol": protocol})
    async with running(Gateway(config), connected=False) as gateway:
        reason = "tls_error" if protocol == "5" else "connection_lost"
        await eventually(
            lambda: (
                gateway.metrics.sample("gateway_mqtt_connection_failures_total", reason=reason) >= 1
            )
        )
    assert "our client certificate" in caplog.text
    assert "mqtt.tls.cert_file and key_file" in caplog.text
