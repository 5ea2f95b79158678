"""`gateway top`: a live terminal view of one gateway's /metrics (like `vector top`).

It is a client of the exposition format: it reads only what the gateway publishes, so it works
against any gateway (or a `--processes N` supervisor) it can reach, local or not.
scrape.py reads and computes (no terminal), view.py draws, command.py runs the loop.
"""

from gateway.top.command import main_top

__all__ = ["main_top"]
