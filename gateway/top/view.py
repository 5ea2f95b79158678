"""Draw one pair of scrapes as rich tables: flow, broker, latency, channels, sinks, reasons."""

from __future__ import annotations

import time

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gateway.top.scrape import Scrape, counter_rate, metrics_url, quantile, rate, window

# Two columns of tables need about this many; narrower terminals get them stacked.
WIDE_COLUMNS = 100


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def fmt_count(value: float) -> str:
    return f"{value:,.0f}"


def fmt_seconds(result: tuple[float, bool] | None) -> str:
    if result is None:
        return "-"
    value, lower_bound = result
    text = f"{value * 1000:.2f} ms" if value < 1 else f"{value:.2f} s"
    return f"> {text}" if lower_bound else text


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def yes_no(ok: bool, good: bool = True) -> Text:
    return Text("yes" if ok else "no", style="green" if ok == good else "bold red")


def _table(title: str, *columns: str) -> Table:
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    for n, column in enumerate(columns):
        table.add_column(column, justify="left" if n == 0 else "right", no_wrap=True)
    return table


# -- the view ----------------------------------------------------------------------------------


def render(url: str, cur: Scrape, prev: Scrape | None, width: int = 80) -> RenderableType:
    """Every table for one pair of scrapes (rates need the previous one)."""
    tables = [
        _flow(cur, prev),
        _broker(cur),
        _latency(cur, prev),
        _channels(cur),
        _sinks(cur, prev),
        _reasons(cur, prev),
    ]
    header = _header(url, cur, prev)
    if width < WIDE_COLUMNS:
        return Group(header, *(part for table in tables for part in (Text(), table)))
    grid = Table.grid(padding=(0, 4))
    grid.add_column()
    grid.add_column()
    for left, right in zip(tables[::2], tables[1::2], strict=True):
        grid.add_row(Text(), Text())
        grid.add_row(left, right)
    return Group(header, grid)


def _header(url: str, cur: Scrape, prev: Scrape | None) -> Text:
    version = next(
        (lb.get("version", "?") for lb, _ in cur.samples.get("gateway_build_info", ())), "?"
    )
    text = Text.assemble(("gateway top", "bold"), f"  {metrics_url(url)}  version {version}")
    if cur.has("process_start_time_seconds"):
        up = time.time() - cur.value("process_start_time_seconds")
        text.append(f"  up {_duration(up)}")
    cpu = rate(cur, prev, "process_cpu_seconds_total")
    if cpu is not None:
        text.append(f"  cpu {cpu * 100:.0f}%")
    if cur.has("process_resident_memory_bytes"):
        text.append(f"  rss {fmt_bytes(cur.value('process_resident_memory_bytes'))}")
    if cur.has("gateway_workers"):
        text.append(
            f"  workers {cur.value('gateway_workers'):.0f}/"
            f"{cur.value('gateway_workers_configured'):.0f}"
        )
    return text


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _flow(cur: Scrape, prev: Scrape | None) -> Table:
    table = _table("Flow", "", "rate/s", "total")
    for label, name in (
        ("messages received", "gateway_messages_received_total"),
        ("readings received", "gateway_readings_received_total"),
        ("readings written", "gateway_readings_written_total"),
        ("rejected", "gateway_readings_rejected_total"),
        ("dropped", "gateway_readings_dropped_total"),
    ):
        table.add_row(label, fmt_rate(rate(cur, prev, name)), fmt_count(cur.value(name)))
    table.add_row("in flight", "", fmt_count(cur.value("gateway_readings_in_flight")))
    table.add_row("unacked", "", fmt_count(cur.value("gateway_unacked_messages")))
    table.add_row("devices seen", "", fmt_count(cur.value("gateway_devices_seen")))
    if cur.has("gateway_sensor_series"):
        table.add_row("sensor series", "", fmt_count(cur.value("gateway_sensor_series")))
    return table


def _broker(cur: Scrape) -> Table:
    table = _table("Broker", "", "")
    table.show_header = False
    connected = cur.value("gateway_mqtt_connected")
    text = yes_no(connected > 0)
    if connected > 1:  # a supervisor sums its workers: how many are connected
        text.append(f" ({connected:.0f})")
    table.add_row("connected", text)
    table.add_row("stalled", yes_no(cur.value("gateway_mqtt_stalled") > 0, good=False))
    for label, name in (
        ("reconnects", "gateway_mqtt_reconnects_total"),
        ("stalls", "gateway_mqtt_stalls_total"),
        ("sessions lost", "gateway_mqtt_sessions_lost_total"),
        ("redeliveries", "gateway_mqtt_redeliveries_total"),
    ):
        table.add_row(label, fmt_count(cur.value(name)))
    return table


def _latency(cur: Scrape, prev: Scrape | None) -> Table:
    table = _table("Latency", "", "p50", "p99", "over")
    for label, name in (
        ("end to end", "gateway_end_to_end_latency_seconds"),
        ("processing", "gateway_processing_seconds"),
        ("file write", "gateway_file_write_seconds"),
    ):
        buckets, over = window(cur, prev, name)
        table.add_row(
            label, fmt_seconds(quantile(buckets, 0.5)), fmt_seconds(quantile(buckets, 0.99)), over
        )
    return table


def _channels(cur: Scrape) -> Table:
    table = _table("Channels", "", "depth", "capacity", "fill")
    depths = cur.by("gateway_channel_depth", "channel")
    capacities = cur.by("gateway_channel_capacity", "channel")
    for name, capacity in capacities.items():
        depth = depths.get(name, 0.0)
        fill = depth / capacity if capacity else 0.0
        style = "bold red" if fill >= 0.9 else "yellow" if fill >= 0.5 else ""
        table.add_row(name, fmt_count(depth), fmt_count(capacity), Text(f"{fill:.0%}", style))
    return table


def _sinks(cur: Scrape, prev: Scrape | None) -> Table:
    table = _table("Sinks", "", "writable", "bytes/s", "errors")
    writable = cur.by("gateway_sink_writable", "sink")
    written = cur.by("gateway_bytes_written_total", "sink")
    before = prev.by("gateway_bytes_written_total", "sink") if prev else {}
    errors = cur.by("gateway_write_errors_total", "sink")
    for sink, ok in writable.items():
        per_s = counter_rate(written.get(sink, 0.0), before.get(sink), cur, prev)
        table.add_row(
            sink,
            yes_no(ok > 0),
            "-" if per_s is None else fmt_bytes(per_s),
            fmt_count(errors.get(sink, 0.0)),
        )
    return table


def _reasons(cur: Scrape, prev: Scrape | None) -> Table:
    table = _table("Rejects and drops", "reason", "rate/s", "total")
    for kind, name in (
        ("rejected", "gateway_readings_rejected_total"),
        ("dropped", "gateway_readings_dropped_total"),
    ):
        now = cur.by(name, "reason")
        before = prev.by(name, "reason") if prev else {}
        for reason, total in sorted(now.items()):
            if total > 0:
                per_s = counter_rate(total, before.get(reason, 0.0) if prev else None, cur, prev)
                table.add_row(f"{kind} {reason}", fmt_rate(per_s), fmt_count(total))
    if not table.rows:
        table.add_row("none", "", "")
    return table
