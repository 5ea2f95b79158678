"""`gateway top [--url URL] [--interval S] [--once]`: scrape, draw, repeat."""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from gateway.top.scrape import fetch, metrics_url, why
from gateway.top.view import render

DEFAULT_URL = "http://127.0.0.1:9108"


def snapshot(url: str, interval_s: float, console: Console) -> None:
    """Print one view: two scrapes interval_s apart, so that rates mean something.

    Tables are stacked whatever the width, so that each line holds one row: easy to grep.
    """
    prev = fetch(url)
    time.sleep(interval_s)
    console.print(render(url, fetch(url), prev, width=0))


def watch(url: str, interval_s: float, console: Console, refreshes: int | None = None) -> None:
    """Redraw every interval_s until interrupted (or `refreshes` times, for tests).

    An unreachable gateway is shown and retried: a restart should not end the view.
    """
    prev = fetch(url)
    with Live(render(url, prev, None, console.width), console=console, auto_refresh=False) as live:
        done = 0
        while refreshes is None or done < refreshes:
            time.sleep(interval_s)
            done += 1
            try:
                cur = fetch(url)
            except (OSError, ValueError) as exc:
                problem = Text(f"cannot read {metrics_url(url)}: {why(exc)}; retrying", "bold red")
                live.update(Group(problem, render(url, prev, None, console.width)), refresh=True)
                continue
            live.update(render(url, cur, prev, console.width), refresh=True)
            prev = cur


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway top", description="Live view of a gateway's /metrics: rates, latency, state."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"gateway base URL ({DEFAULT_URL})")
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between reads (1)"
    )
    parser.add_argument(
        "--once", action="store_true", help="print one snapshot (rates over one interval), exit"
    )
    return parser


def main_top(argv: list[str], console: Console | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.interval <= 0:
        print("gateway top: --interval must be positive", file=sys.stderr)
        return 2
    console = console or Console()
    try:
        if args.once:
            snapshot(args.url, args.interval, console)
        else:
            watch(args.url, args.interval, console)
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"gateway top: cannot read {metrics_url(args.url)}: {why(exc)}", file=sys.stderr)
        return 1
    return 0
