"""`gateway top`: a live terminal view of one gateway's /metrics (like `vector top`).

It is a client of the exposition format: it reads only what the gateway publishes, so it works
against any gateway (or a `--processes N` supervisor) it can reach, local or not.
scrape.py reads and computes (no terminal), view.py draws, command.py runs the loop. Only the
drawing needs rich, an optional extra (`pip install 'telemetry-gateway[top]'`): the gateway and
the demo, which reads /metrics through scrape.py, run without it.
"""

from __future__ import annotations

import sys

EXTRA_HINT = "gateway top needs rich: pip install 'telemetry-gateway[top]'"


def main_top(argv: list[str]) -> int:
    """Run `gateway top`; exit 1 with a hint naming the extra when rich is not installed."""
    try:
        from gateway.top.command import main_top as run  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "rich":
            raise
        print(EXTRA_HINT, file=sys.stderr)
        return 1
    return run(argv)


__all__ = ["main_top"]
