"""The reliability matrix's table: each `faults` case records a row; `--reliability-report FILE`
writes them (Markdown to FILE, JSON to results/reliability.json beside it), and `python -m
tests.support.reliability FILE README.md` quotes the table into README between its markers, so
that README's figures are the ones the command measured.

Columns: case, runs, messages published, lost (readings with a seq published and acked by the
broker, never stored), duplicated (extra stored copies of readings with a seq), recovery (what
it means per case is in the case's note), peak RSS (the gateway process's VmHWM, the largest
over its runs). The session fixture `reliability` collects rows from every case.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from harness.gateway import GatewayProcess
from harness.poll import eventually
from tests.support.ledger import Key, holds_all
from tests.support.publish import Stream

BEGIN = "<!-- reliability:begin (written by `make faults`; do not edit by hand) -->"
END = "<!-- reliability:end -->"


async def stored_and_stopped(
    gw: GatewayProcess, sent: set[Key], stream: Stream | None = None, timeout_s: float = 120
) -> int:
    """The end of a case: the stream all acked by the broker, every key sent on disk, the
    gateway stopped (it must drain and exit 0). Its peak RSS."""
    if stream is not None:
        await stream.wait_all_acked(timeout_s=timeout_s)
    await eventually(holds_all(gw.data_dir, sent), timeout_s=timeout_s, interval_s=0.1)
    peak = gw.peak_rss_bytes
    assert await gw.terminate() == 0, gw.log[-3000:]
    return peak


@dataclass
class Row:
    """One case of the matrix."""

    case: str
    runs: int
    messages: int
    lost: int
    duplicated: int
    recovery_s: list[float] = field(default_factory=list)
    recovery: str = ""  # what recovery_s measures here, e.g. "kill to ready"
    peak_rss_bytes: int = 0
    note: str = ""

    def cells(self) -> list[str]:
        times = sorted(self.recovery_s)
        if times:
            if len(times) > 3:
                recovery = f"{times[len(times) // 2]:.2f} s median, {times[-1]:.2f} s max"
            else:
                recovery = ", ".join(f"{t:.2f}" for t in self.recovery_s) + " s"
            recovery += f" ({self.recovery})" if self.recovery else ""
        else:
            recovery = "—"
        rss = f"{self.peak_rss_bytes / 1e6:.0f} MB" if self.peak_rss_bytes else "—"
        return [
            self.case,
            str(self.runs),
            f"{self.messages:,}",
            f"{self.lost:,}",
            f"{self.duplicated:,}",
            recovery,
            rss,
            self.note,
        ]


class Matrix:
    """The rows recorded in this session."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def record(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def table(rows: list[Row]) -> str:
    header = [
        "case",
        "runs",
        "messages",
        "lost",
        "duplicated",
        "recovery",
        "peak RSS",
        "notes",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---:", "---:", "---:", "---:", "---", "---:", "---"]) + "|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def write_report(rows: list[Row], path: Path, seconds: float) -> None:
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = f"{table(rows)}\n\nMeasured {stamp} by `make faults` ({seconds:.0f} s; {machine}).\n"
    path.write_text(text, encoding="utf-8")
    # The rows for machines, beside the other measurements' (benchmarks/results/, not kept).
    data = path.parent / "results" / "reliability.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n", encoding="utf-8")


def quote_into(readme: Path, report: Path) -> None:
    """Replace README's table between the markers with the report's."""
    text = readme.read_text(encoding="utf-8")
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    if not rest:
        raise SystemExit(f"{readme}: no {BEGIN!r} marker")
    quoted = report.read_text(encoding="utf-8").strip()
    readme.write_text(f"{before}{BEGIN}\n{quoted}\n{END}{after}", encoding="utf-8")


def quoted_table(readme: Path) -> str:
    """The table README quotes now (between the markers)."""
    _, _, rest = readme.read_text(encoding="utf-8").partition(BEGIN)
    return rest.partition(END)[0].strip()


# -- the pytest side ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-report",
        type=Path,
        default=None,
        help="write the faults matrix's table here (Markdown; JSON in results/ beside it)",
    )


@pytest.fixture(scope="session")
def reliability(request: pytest.FixtureRequest) -> Iterator[Matrix]:
    """The matrix of this session; written at its end when --reliability-report is given."""
    matrix = Matrix()
    started = time.monotonic()
    yield matrix
    path = request.config.getoption("--reliability-report")
    if path is not None and matrix.rows:
        write_report(matrix.rows, path, time.monotonic() - started)


if __name__ == "__main__":
    quote_into(Path(sys.argv[2]), Path(sys.argv[1]))
