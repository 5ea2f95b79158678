"""Reloading the configuration: only what changed is applied, the session is kept where it can
be, nothing is lost, and a reload that cannot be applied changes nothing and says why."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import Gateway
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.reload import plan_reload
from gateway.sinks.claim import DataDirLock
from gateway.sinks.subscriptions import remembered_subscriptions
from harness.broker import Broker
from harness.gateway import ROOT, GatewayProcess
from harness.poll import eventually
from harness.scrape import get
from tests.support.gateway import make_config, read_lines, running, topic
from tests.support.gateway import reading_payload as payload
from tests.support.ledger import accounting, keys_of, readings, stored
from tests.support.publish import Stream, publish


def connects(broker: Broker, client_id: str) -> int:
    """How often the broker let `client_id` in (Mosquitto logs each CONNECT at notice)."""
    log = broker.log_path.read_text(encoding="utf-8", errors="replace")
    return sum(
        1
        for line in log.splitlines()
        if "New client connected" in line and f" as {client_id} " in line
    )


def with_changes(config: GatewayConfig, **sections: dict[str, Any]) -> GatewayConfig:
    """`config` with whole sections replaced (validated as a loaded config would be)."""
    data = config.model_dump()
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return GatewayConfig.model_validate(data)


def written(gateway: Gateway) -> float:
    return gateway.metrics.sample("gateway_readings_written_total")


# -- what is live, what needs a new session, what needs a restart ------------------------------


def test_each_kind_of_change_is_classified(tmp_path: Path) -> None:
    base = GatewayConfig.model_validate({"files": {"data_dir": str(tmp_path)}})
    steps = [{"kind": "check_range", "metric": "t", "max": 1}]
    live = with_changes(
        base,
        steps=steps,
        files={"rotate_age_s": 10.0},
        logging={"level": "DEBUG"},
        dedupe={"max_identities": 10},
    )
    plan = plan_reload(base, live)
    assert (sorted(plan.live), plan.session, plan.restart) == (
        ["dedupe.max_identities", "files.rotate_age_s", "logging.level", "steps"],
        [],
        {},
    )
    subs = [{"template": "home/{device_id}"}]
    plan = plan_reload(base, with_changes(base, mqtt={"subscriptions": subs}))
    assert plan.live == ["mqtt.subscriptions"]
    plan = plan_reload(base, with_changes(base, mqtt={"host": "broker.example", "client_id": "x"}))
    assert sorted(plan.session) == ["mqtt.client_id", "mqtt.host"]
    plan = plan_reload(
        base,
        with_changes(
            base, files={"data_dir": str(tmp_path / "b")}, http={"port": 1}, dedupe={"seed": False}
        ),
    )
    assert sorted(plan.restart) == ["dedupe.seed", "files.data_dir", "http.port"]
    assert plan_reload(base, base).empty


def test_a_rotated_password_in_the_same_file_is_a_change(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("one\n", encoding="utf-8")
    mqtt = {"username": "gw", "password_file": str(secret)}
    before = GatewayConfig.model_validate({"mqtt": mqtt})
    secret.write_text("two\n", encoding="utf-8")
    after = GatewayConfig.model_validate({"mqtt": mqtt})
    assert plan_reload(before, after).session == ["mqtt.password"]


# -- live: a topic added and a step changed, on the same session --------------------------------


async def test_a_reload_adds_a_topic_and_changes_a_step_without_reconnecting_or_losing_any(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    steps = [{"kind": "check_range", "metric": "temperature", "min": -50, "max": 100}]
    config = make_config(broker, tmp_path, unique, mqtt={"protocol": protocol}, steps=steps)
    client_id = config.mqtt.client_id
    streamed = readings(unique, devices=20, seqs=range(60))  # 1,200 over ~1.5 s
    async with running(Gateway(config)) as gateway:
        stream = Stream(broker, streamed, per_round=40, pause_s=0.05).start()
        try:
            await eventually(lambda: written(gateway) >= 200, message="the stream flows")
            second = {"template": f"{unique}b/{{site}}/{{device_id}}/telemetry"}
            tighter = [{"kind": "check_range", "metric": "temperature", "min": -50, "max": 25}]
            outcome = await gateway.reload(
                with_changes(
                    config,
                    mqtt={"subscriptions": [*config.model_dump()["mqtt"]["subscriptions"], second]},
                    steps=tighter,
                )
            )
            assert outcome.result == "applied", outcome.message
            assert "mqtt.subscriptions" in outcome.changes
            assert "steps" in outcome.changes
            await stream.wait_all_acked()
        finally:
            stream.close()
        # The new topic is stored from now on; the changed step applies to what comes now.
        await publish(
            broker.host,
            broker.port,
            [
                (topic(f"{unique}b", "dev-new"), payload("dev-new", 1, {"temperature": 20.0})),
                (topic(unique, "dev-hot"), payload("dev-hot", 1, {"temperature": 30.0})),
            ],
        )
        data_dir = config.files.data_dir
        await eventually(
            lambda: any(r["device_id"] == "dev-new" for r in read_lines(data_dir, True))
        )
        await eventually(
            lambda: (
                gateway.metrics.sample("gateway_readings_rejected_total", reason="out_of_range")
                >= 1
            )
        )
        assert gateway.metrics.sample("gateway_config_reloads_total", result="applied") == 1
    assert connects(broker, client_id) == 1, "the reload kept the session"
    missing, _, summary = accounting(stored(data_dir), keys_of(streamed))
    hot_before = {k for k in missing if _temperature(streamed, k) > 25}
    assert missing == hot_before, f"only readings the tighter step rejected are absent: {summary}"


def _temperature(messages: list[tuple[str, bytes]], key: tuple[str, int]) -> float:
    for _, body in messages:
        reading = json.loads(body)
        if (reading["device_id"], reading["seq"]) == key:
            return float(reading["metrics"]["temperature"])
    raise KeyError(key)


# -- a new session: a rotated password -------------------------------------------------------


@pytest.fixture
def auth_broker(tmp_path: Path) -> Any:
    """A broker that checks the gateway's password (anonymous publishers still allowed)."""
    passwords = tmp_path / "mosquitto-passwords"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "gw", "first-secret"], check=True
    )
    broker = Broker(tmp_path / "mosquitto", extra_config=f"password_file {passwords}\n").start()
    broker.passwords = passwords  # type: ignore[attr-defined]
    yield broker
    broker.stop()


async def test_a_changed_password_reconnects_once_and_loses_nothing(
    auth_broker: Broker, tmp_path: Path, unique: str
) -> None:
    secret = tmp_path / "gw-password"
    secret.write_text("first-secret\n", encoding="utf-8")
    config = make_config(
        auth_broker, tmp_path, unique, mqtt={"username": "gw", "password_file": str(secret)}
    )
    streamed = readings(unique, devices=20, seqs=range(60))
    async with running(Gateway(config)) as gateway:
        stream = Stream(auth_broker, streamed, per_round=40, pause_s=0.05).start()
        try:
            await eventually(lambda: written(gateway) >= 200, message="the stream flows")
            # The broker learns the new password (SIGHUP re-reads its file), then the gateway.
            await asyncio.to_thread(
                subprocess.run,
                ["mosquitto_passwd", "-b", str(auth_broker.passwords), "gw", "second-secret"],  # type: ignore[attr-defined]
                check=True,
            )
            assert auth_broker.proc is not None
            auth_broker.proc.send_signal(signal.SIGHUP)
            secret.write_text("second-secret\n", encoding="utf-8")
            outcome = await gateway.reload(GatewayConfig.model_validate(config.model_dump()))
            assert outcome.result == "applied", outcome.message
            assert outcome.changes == ["mqtt.password"]
            await stream.wait_all_acked()
        finally:
            stream.close()
        data_dir = config.files.data_dir
        sent = keys_of(streamed)
        await eventually(lambda: sent <= stored(data_dir, include_open=True).keys(), timeout_s=30)
    assert connects(auth_broker, config.mqtt.client_id) == 2, "one reconnect"
    missing, _, summary = accounting(stored(data_dir), sent)
    assert not missing, summary


# -- refused: nothing changes ---------------------------------------------------------------------


async def test_a_reload_that_needs_a_restart_or_is_invalid_is_refused_and_changes_nothing(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    config = make_config(broker, tmp_path, unique)
    gateway = Gateway(config)
    async with running(gateway):
        before = gateway.config_hash
        moved = with_changes(config, files={"data_dir": str(tmp_path / "elsewhere")})
        outcome = await gateway.reload(moved)
        assert outcome.result == "refused"
        assert "files.data_dir" in outcome.message
        assert "restart" in outcome.message

        def invalid() -> GatewayConfig:
            raise ConfigError("gateway.toml: limits.max_metrics: must be >= 1", ["x"])

        gateway.load_config = invalid
        outcome = await gateway.reload()
        assert outcome.result == "refused"
        assert gateway.config_hash == before
        assert gateway.config is config
        status, body = await get(f"{gateway.http_url}/readyz")
        assert status == 200
        assert json.loads(body)["config_hash"] == before
        assert gateway.metrics.sample("gateway_config_reloads_total", result="refused") == 2


# -- across restarts: what is no longer configured is unsubscribed -------------------------------


async def test_a_removed_subscription_is_unsubscribed_at_the_next_start(
    broker: Broker, tmp_path: Path, unique: str, protocol: str
) -> None:
    """A persistent session keeps its subscriptions at the broker: a filter removed from the
    config while the gateway was down must not keep delivering."""
    a = {"template": f"{unique}/{{site}}/{{device_id}}/telemetry"}
    b = {"template": f"{unique}b/{{site}}/{{device_id}}/telemetry"}
    both = make_config(
        broker, tmp_path, unique, mqtt={"subscriptions": [a, b], "protocol": protocol}
    )
    async with running(Gateway(both)):
        pass
    filters = remembered_subscriptions(both.files.data_dir, both.mqtt.client_id)
    assert sorted(filters) == sorted(s.effective_filter for s in both.mqtt.subscriptions)
    only_a = make_config(
        broker, tmp_path, unique, mqtt={"subscriptions": [a], "protocol": protocol}
    )
    async with running(Gateway(only_a)) as gateway:
        await publish(
            broker.host,
            broker.port,
            [
                (topic(f"{unique}b", "dev-b"), payload("dev-b", 1)),
                (topic(unique, "dev-a"), payload("dev-a", 1)),  # a marker, sent after
            ],
        )
        data_dir = only_a.files.data_dir
        await eventually(lambda: any(r["device_id"] == "dev-a" for r in read_lines(data_dir, True)))
        assert gateway.metrics.sample("gateway_messages_received_total") == 1
    assert remembered_subscriptions(data_dir, only_a.mqtt.client_id) == [
        only_a.mqtt.subscriptions[0].effective_filter
    ]


# -- the process: SIGHUP, `gateway reload`, --processes ----------------------------------------


def _rewrite(gw: GatewayProcess, old: str, new: str) -> None:
    text = gw.config_path.read_text(encoding="utf-8")
    assert old in text
    gw.config_path.write_text(text.replace(old, new), encoding="utf-8")


async def _reload_command(url: str) -> tuple[int, dict[str, Any]]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "reload", "--url", url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


async def test_sighup_during_start_up_does_not_kill_and_gateway_reload_applies_a_new_topic(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
    try:
        gw.start()
        assert gw.proc is not None
        pid = gw.proc.pid
        # From its first line of Python on, the process catches SIGHUP (before that, only the
        # interpreter exists): then, while it imports, recovers and connects, three of them.
        await eventually(lambda: _catches_sighup(pid), interval_s=0.001, message="handler set")
        assert not await _answers(gw.url), "still starting"
        for _ in range(3):
            gw.proc.send_signal(signal.SIGHUP)
        await gw.ready()
        await eventually(lambda: "reload unchanged" in gw.log, message="the early SIGHUP reloads")
        status, body = await get(f"{gw.url}/readyz")
        before = json.loads(body)["config_hash"]
        added = f'[[mqtt.subscriptions]]\ntemplate = "{unique}b/{{site}}/{{device_id}}/telemetry"\n'
        _rewrite(gw, "[files]", f"{added}\n[files]")
        code, outcome = await _reload_command(gw.url)
        assert code == 0, outcome
        assert outcome["result"] == "applied"
        status, body = await get(f"{gw.url}/readyz")
        assert status == 200
        assert json.loads(body)["config_hash"] == outcome["config_hash"] != before
        await publish(
            broker.host, broker.port, [(topic(f"{unique}b", "dev-b"), payload("dev-b", 1))]
        )
        await eventually(lambda: _metric(gw, "gateway_readings_written_total"))
        # A broken file: refused, exit 1, the gateway runs on.
        _rewrite(gw, "[files]", "[files\n")
        code, outcome = await _reload_command(gw.url)
        assert code == 1
        assert outcome["result"] == "refused"
        assert "not valid TOML" in outcome["message"]
        assert await gw.terminate() == 0
    finally:
        gw.cleanup()


def _catches_sighup(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (bit 0 of SigCgt in /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & 1 << (signal.SIGHUP - 1))


async def _answers(url: str) -> bool:
    try:
        await get(f"{url}/healthz")
    except OSError:
        return False
    return True


async def _metric(gw: GatewayProcess, name: str) -> bool:
    return await gw.metric(name) >= 1


async def test_a_supervisor_reload_reaches_every_worker_and_names_one_that_refuses(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    gw = GatewayProcess.subscribed_to(broker, tmp_path, unique)
    try:
        gw.start("--processes", "2")
        await gw.ready(timeout_s=60)
        _rewrite(gw, "retry_min_s = 0.05", "retry_min_s = 0.06")
        code, outcome = await _reload_command(gw.url)
        assert code == 0, outcome
        assert outcome["workers"] == {"worker_0": "ok", "worker_1": "ok"}
        # Worker 1's next client id is taken: it refuses, worker 0 applies, /readyz says so.
        holder = DataDirLock.take(gw.data_dir, f"gw-{unique}-new-w1", who="a test")
        try:
            _rewrite(gw, f'client_id = "gw-{unique}"', f'client_id = "gw-{unique}-new"')
            code, outcome = await _reload_command(gw.url)
            assert code == 1
            assert outcome["result"] == "failed"
            assert outcome["workers"]["worker_0"] == "ok"
            assert "gw-" in str(outcome["workers"]["worker_1"])

            async def named() -> bool:
                status, body = await get(f"{gw.url}/readyz")
                return status == 503 and json.loads(body)["checks"]["worker_1_config"] is False

            await eventually(named, message="/readyz names the worker")
        finally:
            holder.release()
        assert await gw.terminate() == 0, gw.log[-3000:]
    finally:
        gw.cleanup()
