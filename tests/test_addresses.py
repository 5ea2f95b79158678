"""Addresses on a command line: a broker URL and a listen address."""

from __future__ import annotations

import pytest

from gateway.addresses import parse_broker_url, parse_listen_addr
from gateway.errors import ConfigError


def test_a_broker_url_gives_host_port_tls_and_user() -> None:
    assert parse_broker_url("mqtts://ops@broker.example") == {
        "host": "broker.example",
        "port": 8883,
        "tls": {"enabled": True},
        "username": "ops",
    }
    assert parse_broker_url("mqtt://127.0.0.1:1884")["port"] == 1884


def test_a_password_in_the_url_is_refused_with_the_callers_own_hint() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_MQTT__PASSWORD"):
        parse_broker_url("mqtt://ops:secret@broker")
    with pytest.raises(ConfigError, match=r"use --password-file$"):
        parse_broker_url("mqtt://ops:secret@broker", password_hint="use --password-file")


def test_a_listen_address_needs_a_port() -> None:
    assert parse_listen_addr("[::1]:9100") == {"host": "::1", "port": 9100}
    assert parse_listen_addr(":9100") == {"host": "127.0.0.1", "port": 9100}
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen_addr("9100")
