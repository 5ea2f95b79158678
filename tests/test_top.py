"""`gateway top` against a running gateway with traffic: a snapshot, a live view, a dead URL."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from gateway import Gateway
from gateway.ports import free_port
from gateway.top.command import watch
from gateway.top.scrape import quantile
from harness.broker import Broker
from harness.poll import eventually
from tests.support.gateway import fleet, make_config, running, topic
from tests.support.publish import publish
from tests.support.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def busy_gateway(broker: Broker, tmp_path: Path, unique: str) -> AsyncIterator[Gateway]:
    """A gateway that has stored 60 readings and dead-lettered one invalid_json message."""
    gateway = Gateway(make_config(broker, tmp_path, unique))
    async with running(gateway):
        messages = [*fleet(unique, devices=3, per_device=20), (topic(unique, "dev-x"), b"{nope")]
        await publish(broker.host, broker.port, messages)
        m = gateway.metrics
        await eventually(
            lambda: (
                m.sample("gateway_readings_written_total") == 60
                and m.sample("gateway_readings_rejected_total", reason="invalid_json") == 1
            ),
            message="stored and rejected",
        )
        yield gateway


async def _top(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "top",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def _row(text: str, label: str) -> list[str]:
    """The cells of the first line holding `label` (split on runs of two or more spaces)."""
    line = next(line for line in text.splitlines() if label in line)
    return re.split(r"\s{2,}", line[line.index(label) :].strip())


async def test_once_prints_a_snapshot_with_the_gateways_numbers(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    async with busy_gateway(broker, tmp_path, unique) as gateway:
        out = await _top("--url", gateway.http_url, "--once", "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\x1b[" not in text, "plain text when not a terminal"
    assert _row(text, "messages received")[-1] == "61"
    assert _row(text, "readings written")[-1] == "60"
    assert _row(text, "rejected invalid_json")[-1] == "1"
    assert _row(text, "devices seen")[-1] == "3"
    assert _row(text, "connected")[:2] == ["connected", "yes"]
    assert _row(text, "stalled")[:2] == ["stalled", "no"]
    workers, capacity = gateway.config.pipeline.workers, gateway.config.pipeline.channel_capacity
    assert _row(text, "decoded")[2] == f"{workers * capacity:,}"
    assert _row(text, "end to end")[1].endswith("ms")


async def test_live_view_redraws_in_a_terminal_and_exits_0_on_ctrl_c(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    async with busy_gateway(broker, tmp_path, unique) as gateway:
        screen = await asyncio.to_thread(_run_in_pty, gateway.http_url, frames=3)
    assert screen.returncode == 0, screen.stdout
    assert "\x1b[" in screen.stdout, "drawn with terminal control codes"
    assert "connected" in screen.stdout
    assert "yes" in screen.stdout
    assert "Traceback" not in screen.stdout


def _run_in_pty(url: str, frames: int) -> subprocess.CompletedProcess[str]:
    """Run `gateway top` on a 120x40 terminal until it drew `frames` frames; type Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    terminal = Terminal(
        [sys.executable, "-m", "gateway", "top", "--url", url, "--interval", "0.2"],
        cwd=ROOT,
        env={**env, "TERM": "xterm-256color"},
    )
    try:
        terminal.read_until(lambda text: text.count("Broker") >= frames, timeout_s=30)
        terminal.ctrl_c()
        code = terminal.wait(timeout_s=10)
    finally:
        terminal.close()
    return subprocess.CompletedProcess(terminal.proc.args, code, terminal.text, "")


async def test_live_view_renders_each_refresh_on_a_recorded_console(
    broker: Broker, tmp_path: Path, unique: str
) -> None:
    console = Console(force_terminal=True, record=True, width=120, file=io.StringIO())
    async with busy_gateway(broker, tmp_path, unique) as gateway:
        await asyncio.to_thread(watch, gateway.http_url, 0.1, console, 2)
    text = console.export_text()
    assert text.count("Broker") >= 3, "the first frame and two refreshes"
    assert re.search(r"connected\s+yes", text)
    assert re.search(r"readings written\s+[\d.,]+\s+60\b", text)


@pytest.mark.parametrize("mode", [["--once"], []], ids=["once", "live"])
async def test_an_unreachable_url_exits_1_with_a_clear_message(mode: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = await _top("--url", url, "--interval", "0.1", *mode)
    assert out.returncode == 1
    assert f"gateway top: cannot read {url}/metrics" in out.stderr
    assert "Traceback" not in out.stderr


def test_quantiles_interpolate_within_buckets_like_prometheus() -> None:
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == (0.01, False)
    result = quantile(buckets, 0.7)
    assert result is not None
    assert result[0] == pytest.approx(0.055)
    assert quantile({0.01: 0.0, float("inf"): 4.0}, 0.99) == (0.01, True)
    assert quantile({0.01: 0.0, float("inf"): 0.0}, 0.5) is None
